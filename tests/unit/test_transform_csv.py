"""The processed / rejected file encoding: read back with pandas and as raw CSV text."""

from __future__ import annotations

import csv
import gzip
import io
import math

import pandas as pd
import pytest

from functions.common.schema import COLUMN_NAMES, REJECT_REASON_COLUMN
from functions.transform.csv_gz import csv_bytes, rejected_to_csv_gz, to_csv_gz
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
        market_cap=1e22,
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
    assert tricky["market_cap"] == "1e+22"
    assert tricky["market_cap_rank"] == "" and tricky["total_supply"] == ""
    assert tricky["roi_times"] == "3.0000000000000004"
    assert tricky["ath_date"] == "2024-03-14 07:10:36.635000+00:00"
    assert float(tricky["market_cap_dominance_pct"]) == 1e22 / (1381651251183 + 1e22 + 1000) * 100


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
