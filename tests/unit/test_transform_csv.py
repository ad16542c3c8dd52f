"""The processed / rejected file encoding: read back with pandas and as raw CSV text."""

from __future__ import annotations

import csv
import gzip
import io
import math

import pandas as pd
import pytest

from functions.common.errors import DataQualityError
from functions.common.schema import COLUMN_NAMES, REJECT_REASON_COLUMN
from functions.transform import csv_gz
from functions.transform.csv_gz import csv_bytes, gzip_bytes, rejected_to_csv_gz, to_csv_gz
from functions.transform.transform import REJECTED_COLUMNS, transform
from tests.unit.test_transform_rules import coin, manifest_for


def _transform(rows: list, **kwargs):
    return transform(
        manifest_for(rows),
        [rows],
        kwargs.pop("global_body", None),
        snapshot_id="csv-1",
        fetched_at="2026-11-23T08:00:00.5+01:00",
        fetch_date="2026-11-23",
        vs_currency="usd",
        **kwargs,
    )


ROWS = [
    coin("plain", current_price=0.1, market_cap=1381651251183, market_cap_rank=1),
    coin(
        "tricky",
        name='Comma, "Quote" & Ünïcödé',
        symbol="NA",  # a symbol pandas would read as NaN by default
        current_price="1.2e-7",
        market_cap=1e17,
        market_cap_rank=None,
        total_supply=None,
        roi={"times": 3.0000000000000004, "currency": "usd", "percentage": 200.00000000000003},
        ath_date="2024-03-14T09:10:36.635+02:00",
    ),
    coin("line\nbreak", name="two\nlines", current_price=123456789.12345679),
]


def _read_back(data: bytes) -> pd.DataFrame:
    text = gzip.decompress(data)
    return pd.read_csv(io.BytesIO(text), dtype=str, keep_default_na=False, na_values=[""])


def test_round_trip_keeps_values_and_nulls() -> None:
    result = _transform(ROWS)
    back = _read_back(to_csv_gz(result.processed))
    assert list(back.columns) == list(COLUMN_NAMES)
    assert len(back) == 3
    original = result.processed
    for i in range(3):
        for name in COLUMN_NAMES:
            value, text = original.loc[i, name], back.loc[i, name]
            if pd.isna(value):
                assert pd.isna(text), (name, text)
            elif isinstance(value, float):
                assert float(text) == value, name  # full precision
            elif isinstance(value, pd.Timestamp):
                assert pd.Timestamp(text) == value, name
            else:
                assert text == str(value), name
    assert back.loc[1, "symbol"] == "NA"
    assert back.loc[1, "name"] == 'Comma, "Quote" & Ünïcödé'
    assert back.loc[2, "coin_id"] == "line\nbreak"


def test_text_form_of_numbers_timestamps_and_nulls() -> None:
    result = _transform(ROWS)
    lines = list(csv.reader(io.StringIO(gzip.decompress(to_csv_gz(result.processed)).decode())))
    header = lines[0]
    plain, tricky = (dict(zip(header, line, strict=True)) for line in lines[1:3])
    assert header == list(COLUMN_NAMES)
    assert plain["market_cap_rank"] == "1"  # ints without ".0"
    assert plain["current_price"] == "0.1"
    assert plain["market_cap"] == "1381651251183.0"
    assert plain["fetched_at"] == "2026-11-23 07:00:00.500000+00:00"
    assert plain["fetch_date"] == "2026-11-23"
    assert plain["ath_date"] == "2021-11-10 14:24:11.849000+00:00"
    assert plain["max_supply"] == "" and plain["roi_times"] == ""  # NULL = empty field
    assert tricky["current_price"] == "1.2e-07"
    assert tricky["market_cap"] == "1e+17"
    assert tricky["market_cap_rank"] == "" and tricky["total_supply"] == ""
    assert tricky["roi_times"] == "3.0000000000000004"
    assert tricky["ath_date"] == "2024-03-14 07:10:36.635000+00:00"
    assert float(tricky["market_cap_dominance_pct"]) == 1e17 / (1381651251183 + 1e17 + 1000) * 100


def test_output_is_deterministic() -> None:
    first = to_csv_gz(_transform(ROWS).processed)
    second = to_csv_gz(_transform(ROWS).processed)
    assert first == second
    assert first[:2] == b"\x1f\x8b" and first[4:8] == b"\0\0\0\0"  # gzip magic, mtime 0


def test_rejected_file_has_the_reason_columns() -> None:
    rows = [coin("ok"), coin("neg", current_price=-3), coin(None)]
    result = _transform(rows)
    back = _read_back(rejected_to_csv_gz(result.rejected))
    assert list(back.columns) == list(REJECTED_COLUMNS)
    assert list(back[REJECT_REASON_COLUMN]) == ["negative:current_price", "missing_id"]
    assert list(back["source_row"]) == ["2", "3"]
    assert back.loc[0, "reject_detail"] == "current_price=-3.0"
    assert math.isclose(float(back.loc[0, "current_price"]), -3.0)
    assert pd.isna(back.loc[1, "coin_id"])


def test_writer_refuses_a_frame_without_the_schema_columns() -> None:
    frame = _transform(ROWS).processed.drop(columns=["volume_pct"])
    with pytest.raises(ValueError, match="volume_pct"):
        to_csv_gz(frame)


def test_empty_frame_writes_only_the_header() -> None:
    result = _transform([coin(None)], allow_empty=True)
    assert csv_bytes(result.processed).decode() == ",".join(COLUMN_NAMES) + "\n"


# --- quoting: every text field, whatever the Python version ----------------------------------


def _lines(data: bytes) -> list[str]:
    return gzip.decompress(data).decode("utf-8").split("\n")


def test_every_text_field_is_quoted_and_null_is_an_unquoted_empty_field() -> None:
    result = _transform([coin("plain", market_cap_rank=1, symbol=None, roi=None)])
    assert _lines(to_csv_gz(result.processed))[1] == (
        '"csv-1",2026-11-23 07:00:00.500000+00:00,2026-11-23,"usd","plain",,"Plain",'
        '"https://assets.example/plain/large.png",10.0,1000.0,1,2000.0,50.0,11.0,9.5,0.5,5.0,'
        "50.0,5.0,100.0,200.0,,20.0,-50.0,2021-11-10 14:24:11.849000+00:00,0.5,1900.0,"
        "2013-07-06 00:00:00.000000+00:00,,,,2026-11-23 07:59:01.123000+00:00,100.0,100.0,"
        '"fetched"'
    )


@pytest.mark.parametrize(
    "name",
    [
        "Carriage\rReturn Coin",  # Python's csv writer < 3.11.9 / 3.12.3 left this unquoted
        "CR LF\r\n",
        '"quoted", with commas',
        "ends with a backslash \\",
        "tab\there",
        "   ",
        "🚀 比特币",
    ],
)
def test_hostile_text_is_enclosed_and_parses_back(name: str) -> None:
    rows = [coin("a"), coin("b", name=name), coin("c")]
    result = _transform(rows)
    data = to_csv_gz(result.processed)
    enclosed = '"' + name.replace('"', '""') + '"'
    assert f",{enclosed}," in gzip.decompress(data).decode("utf-8")
    text = io.StringIO(gzip.decompress(data).decode("utf-8"), newline="")
    parsed = list(csv.reader(text, strict=True))
    assert len(parsed) == 4 and all(len(r) == len(COLUMN_NAMES) for r in parsed)
    assert parsed[2][COLUMN_NAMES.index("name")] == name
    csv_gz.verify_csv_gz(data, 3)


def test_timestamps_of_any_year_are_written_with_four_digit_years() -> None:
    rows = [
        coin("a", ath_date="0001-01-01T00:00:00Z", atl_date="1600-02-29T23:59:59.5+01:00"),
        coin("b", ath_date="9999-12-31T23:59:59.999999Z", atl_date="0999-06-01T12:00:00Z"),
    ]
    result = _transform(rows)
    assert result.rejected_count == 0
    lines = list(csv.reader(io.StringIO(gzip.decompress(to_csv_gz(result.processed)).decode())))
    at = {name: COLUMN_NAMES.index(name) for name in ("ath_date", "atl_date")}
    assert [(line[at["ath_date"]], line[at["atl_date"]]) for line in lines[1:]] == [
        ("0001-01-01 00:00:00.000000+00:00", "1600-02-29 22:59:59.500000+00:00"),
        ("9999-12-31 23:59:59.999999+00:00", "0999-06-01 12:00:00.000000+00:00"),
    ]


def test_text_that_utf8_cannot_encode_fails_naming_row_and_column() -> None:
    frame = _transform(ROWS).processed
    frame.loc[1, "name"] = "lone \ud83d"
    with pytest.raises(DataQualityError, match=r"data row 2 \(coin_id 'tricky'\), column name"):
        csv_bytes(frame)


# --- verify_csv_gz: the file parses back before it is staged ----------------------------------


def _file(*lines: str) -> bytes:
    return gzip_bytes("".join(line + "\n" for line in lines).encode("utf-8"))


HEADER = ",".join(COLUMN_NAMES)


def _row(coin_id_field: str) -> str:
    """A data row, NULL but for its coin_id field (written as given)."""
    return ",".join(coin_id_field if c == "coin_id" else "" for c in COLUMN_NAMES)


ROW = _row('"coin_id"')


def test_verify_accepts_the_writers_output() -> None:
    result = _transform(ROWS)
    csv_gz.verify_csv_gz(to_csv_gz(result.processed), 3)
    csv_gz.verify_csv_gz(rejected_to_csv_gz(result.rejected), 0, REJECTED_COLUMNS)


@pytest.mark.parametrize(
    ("data", "rows", "message"),
    [
        # What the old writer produced on Python 3.11.7: a bare CR left unquoted ends the row.
        (
            _file(HEADER, _row("bare\rcr")),
            1,
            r"data row 1 \(coin_id 'bare'\) has 5 fields, expected 35",
        ),
        (_file(HEADER, ROW, ROW), 1, "parses to 2 data rows, expected 1"),
        (_file(HEADER, ROW), 2, "parses to 1 data rows, expected 2"),
        (_file(HEADER.replace("volume_pct", "vol"), ROW), 1, r"header is \["),
        (_file(HEADER, ROW, ROW + ",extra"), 2, "data row 2 \\(coin_id 'coin_id'\\) has 36"),
        (
            _file(HEADER, _row('"a"b"')),
            1,
            "does not parse as CSV at data row 1",
        ),
        (
            _file(HEADER, _row('"nul\x00"')),
            1,
            "NUL character in column coin_id",
        ),
        (b"not gzip", 0, "not gzip'd UTF-8"),
        (gzip_bytes(b"\xff\xfe"), 0, "not gzip'd UTF-8"),
        (_file(HEADER, "", ROW), 2, "data row 1 has 0 fields"),
    ],
)
def test_verify_names_the_first_bad_row(data: bytes, rows: int, message: str) -> None:
    with pytest.raises(DataQualityError, match=message):
        csv_gz.verify_csv_gz(data, rows)
