"""The transform's rules on hand-made pages: types, dedupe, rejects, dominance, trimming."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime

import pandas as pd
import pytest

from functions.common.errors import DataQualityError, ValidationError
from functions.common.schema import COLUMN_NAMES, REJECT_REASON_COLUMN
from functions.transform.csv_gz import rejected_to_csv_gz
from functions.transform.transform import REJECTED_COLUMNS, global_totals, transform

FETCHED_AT = "2026-11-23T08:00:00Z"


def coin(coin_id: str | None, rank: int = 1, **fields) -> dict:
    """A CoinGecko /coins/markets row (every field CoinGecko sends, sensible values)."""
    row = {
        "id": coin_id,
        "symbol": (coin_id or "x")[:3],
        "name": (coin_id or "x").title(),
        "image": f"https://assets.example/{coin_id}/large.png",
        "current_price": 10.0,
        "market_cap": 1000,
        "market_cap_rank": rank,
        "fully_diluted_valuation": 2000,
        "total_volume": 50,
        "high_24h": 11.0,
        "low_24h": 9.5,
        "price_change_24h": 0.5,
        "price_change_percentage_24h": 5.0,
        "market_cap_change_24h": 50,
        "market_cap_change_percentage_24h": 5.0,
        "circulating_supply": 100.0,
        "total_supply": 200.0,
        "max_supply": None,
        "ath": 20.0,
        "ath_change_percentage": -50.0,
        "ath_date": "2021-11-10T14:24:11.849Z",
        "atl": 0.5,
        "atl_change_percentage": 1900.0,
        "atl_date": "2013-07-06T00:00:00.000Z",
        "roi": None,
        "last_updated": "2026-11-23T07:59:01.123Z",
    }
    if coin_id is None:
        del row["id"]
    row.update(fields)
    return row


def manifest_for(*pages: list, counts: list[int] | None = None, max_coins=None) -> dict:
    counts = counts or [len(p) for p in pages]
    out = {
        "snapshot_id": "snap-1",
        "vs_currency": "usd",
        "pages": [
            {"page": i + 1, "key": f"raw/markets/page-{i + 1:04d}.json", "count": c}
            for i, c in enumerate(counts)
        ],
    }
    if max_coins is not None:
        out["max_coins"] = max_coins
    return out


def run(*pages: list, global_body=None, counts=None, manifest_max=None, **kwargs):
    return transform(
        manifest_for(*pages, counts=counts, max_coins=manifest_max),
        list(pages),
        global_body,
        snapshot_id="snap-1",
        fetched_at=FETCHED_AT,
        fetch_date="2026-11-23",
        vs_currency="usd",
        **kwargs,
    )


def global_body(cap=None, vol=None, vs="usd") -> dict:
    data: dict = {"total_market_cap": {}, "total_volume": {}, "market_cap_percentage": {}}
    if cap is not None:
        data["total_market_cap"][vs] = cap
    if vol is not None:
        data["total_volume"][vs] = vol
    return {"data": data}


def row_of(df: pd.DataFrame, coin_id: str) -> pd.Series:
    matches = df[df["coin_id"] == coin_id]
    assert len(matches) == 1, f"{coin_id}: {len(matches)} rows"
    return matches.iloc[0]


def accounted(result) -> None:
    q = result.quality
    assert q["rows_in"] == q["rows_out"] + q["rejected"] + q["duplicates"]
    assert q["rows_out"] == len(result.processed) and q["rejected"] == len(result.rejected)
    json.dumps(q, allow_nan=False)


# --- dedupe ---------------------------------------------------------------------------------


def test_same_id_on_two_pages_is_kept_once_from_the_first_page() -> None:
    page1 = [coin("bitcoin", 1, current_price=100.0), coin("ethereum", 2)]
    page2 = [coin("bitcoin", 3, current_price=99.0), coin("solana", 4)]
    result = run(page1, page2)
    assert list(result.processed["coin_id"]) == ["bitcoin", "ethereum", "solana"]
    assert row_of(result.processed, "bitcoin")["current_price"] == 100.0
    assert row_of(result.processed, "bitcoin")["market_cap_rank"] == 1
    assert result.duplicate_count == 1
    assert result.quality["duplicate_ids"] == ["bitcoin"]
    assert result.rejected_count == 0
    check = {c["name"]: c for c in result.quality["checks"]}
    assert check["unique_coin_ids"]["passed"] and check["rows_accounted"]["passed"]
    accounted(result)


def test_invalid_first_copy_leaves_the_valid_second_copy() -> None:
    page1 = [coin("bitcoin", 1, current_price=-1.0), coin("ethereum", 2)]
    page2 = [coin("bitcoin", 3, current_price=99.0)]
    result = run(page1, page2)
    assert row_of(result.processed, "bitcoin")["current_price"] == 99.0
    assert result.duplicate_count == 0 and result.rejected_count == 1
    assert result.rejected.loc[0, REJECT_REASON_COLUMN] == "negative:current_price"
    assert (result.rejected.loc[0, "source_page"], result.rejected.loc[0, "source_row"]) == (1, 1)
    accounted(result)


# --- rejects ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("row", "reason", "detail"),
    [
        (coin(None), "missing_id", "id=null"),
        (coin("x", id=None), "missing_id", "id=null"),
        (coin("x", id=""), "missing_id", "id=''"),
        (coin("x", id="   "), "missing_id", "id='   '"),
        (coin("x", id=123), "invalid_type:id", "id=123"),
        (coin("x", id="a" * 201), "too_long:coin_id", "id='aaaa"),
        (coin("neg", current_price=-0.01), "negative:current_price", "current_price=-0.01"),
        (coin("neg", market_cap=-5), "negative:market_cap", "market_cap=-5.0"),
        (coin("neg", total_volume="-2e3"), "negative:total_volume", "total_volume=-2000.0"),
        (coin("bad", current_price="abc"), "invalid_number:current_price", "'abc'"),
        (coin("bad", current_price=""), "invalid_number:current_price", "current_price=''"),
        (coin("bad", market_cap=True), "invalid_number:market_cap", "market_cap=True"),
        (coin("bad", high_24h={"usd": 1}), "invalid_number:high_24h", "{'usd': 1}"),
        (coin("bad", ath="inf"), "invalid_number:ath", "ath='inf'"),
        (coin("bad", atl=float("inf")), "invalid_number:atl", "atl=inf"),
        (coin("bad", market_cap_rank=1.5), "invalid_number:market_cap_rank", "1.5"),
        (coin("bad", ath_date="yesterday"), "invalid_timestamp:ath_date", "'yesterday'"),
        (coin("bad", last_updated=1700000000), "invalid_timestamp:last_updated", "1700000000"),
        (coin("bad", symbol=7), "invalid_type:symbol", "symbol=7"),
        (coin("bad", image=5), "invalid_type:image", "image=5"),
        (coin("bad", roi="10x"), "invalid_type:roi", "roi='10x'"),
        (
            coin("bad", roi={"times": "x", "currency": "usd", "percentage": 1}),
            "invalid_number:roi_times",
            "roi.times='x'",
        ),
        (
            coin("bad", roi={"times": 1, "currency": 5, "percentage": 1}),
            "invalid_type:roi.currency",
            "roi.currency=5",
        ),
        (None, "not_an_object", "row=null"),
        ("bitcoin", "not_an_object", "row='bitcoin'"),
        ([1, 2], "not_an_object", "row=[1, 2]"),
    ],
)
def test_rejects_carry_reason_and_raw_value(row, reason: str, detail: str) -> None:
    result = run([coin("good", 1), row, coin("also-good", 3)])
    assert list(result.processed["coin_id"]) == ["good", "also-good"]
    assert result.rejected_count == 1
    rejected = result.rejected.iloc[0]
    assert rejected[REJECT_REASON_COLUMN] == reason
    assert detail in rejected["reject_detail"]
    assert (rejected["source_page"], rejected["source_row"]) == (1, 2)
    assert result.quality["rejected_by_reason"] == {reason: 1}
    assert list(result.rejected.columns) == list(REJECTED_COLUMNS)
    assert pd.isna(rejected["market_cap_dominance_pct"]) and pd.isna(rejected["dominance_basis"])
    accounted(result)


def test_a_row_with_several_problems_lists_them_all() -> None:
    result = run([coin("ok"), coin("bad", current_price=-1, market_cap="x", atl_date="?")])
    reasons = result.rejected.loc[0, REJECT_REASON_COLUMN].split("; ")
    assert sorted(reasons) == [
        "invalid_number:market_cap",
        "invalid_timestamp:atl_date",
        "negative:current_price",
    ]
    assert result.quality["rejected_by_reason"] == {r: 1 for r in reasons}
    # the values that could be derived are kept in the rejected row
    assert result.rejected.loc[0, "coin_id"] == "bad"
    assert result.rejected.loc[0, "current_price"] == -1.0
    assert pd.isna(result.rejected.loc[0, "market_cap"])


def test_no_silent_drop_in_a_mixed_batch() -> None:
    page1 = [coin("a"), coin(None), coin("b", market_cap=-1), coin("c")]
    page2 = [coin("a"), coin("d", current_price="1e400"), coin("c"), coin("e")]
    result = run(page1, page2)
    q = result.quality
    assert (q["rows_in"], q["rows_out"], q["rejected"], q["duplicates"]) == (8, 3, 3, 2)
    assert list(result.processed["coin_id"]) == ["a", "c", "e"]
    assert sorted(result.rejected[REJECT_REASON_COLUMN]) == [
        "invalid_number:current_price",
        "missing_id",
        "negative:market_cap",
    ]
    assert q["duplicate_ids"] == ["a", "c"]
    accounted(result)


def test_no_valid_rows_raises_data_quality_error() -> None:
    page = [coin(None), coin("x", current_price=-1)]
    with pytest.raises(DataQualityError, match=r"no valid rows out of 2"):
        run(page)
    result = run(page, allow_empty=True)
    assert result.row_count == 0 and result.rejected_count == 2
    assert not {c["name"]: c for c in result.quality["checks"]}["has_rows"]["passed"]


def test_empty_snapshot_raises_data_quality_error() -> None:
    with pytest.raises(DataQualityError, match="no valid rows out of 0"):
        run([])


# --- type normalisation ------------------------------------------------------------------------


def test_numbers_in_every_json_form() -> None:
    rows = [
        coin("exp-str", current_price="1.2e-7", market_cap="12345", total_volume=" 42 "),
        coin("ints", current_price=3, market_cap=10**15, total_volume=0, market_cap_rank="7"),
        coin("floats", current_price=0.1, market_cap=1.5e9, market_cap_rank=2.0),
        coin("nulls", current_price=None, market_cap=None, market_cap_rank=None),
    ]
    del rows[3]["total_volume"]  # an absent key is NULL too
    out = run(rows).processed
    assert row_of(out, "exp-str")["current_price"] == 1.2e-7
    assert row_of(out, "exp-str")["market_cap"] == 12345.0
    assert row_of(out, "exp-str")["total_volume"] == 42.0
    assert row_of(out, "ints")["market_cap"] == 1e15
    assert row_of(out, "ints")["market_cap_rank"] == 7
    assert row_of(out, "floats")["current_price"] == 0.1
    assert row_of(out, "floats")["market_cap_rank"] == 2
    nulls = row_of(out, "nulls")
    assert math.isnan(nulls["current_price"]) and math.isnan(nulls["total_volume"])
    assert pd.isna(nulls["market_cap_rank"])
    assert str(out["market_cap_rank"].dtype) == "Int64"
    assert all(str(out[c].dtype) == "float64" for c in ("current_price", "market_cap", "ath"))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2024-03-14T07:10:36.635Z", datetime(2024, 3, 14, 7, 10, 36, 635000, UTC)),
        ("2024-03-14T09:10:36+02:00", datetime(2024, 3, 14, 7, 10, 36, tzinfo=UTC)),
        ("2024-03-14T01:40:36.000001-05:30", datetime(2024, 3, 14, 7, 10, 36, 1, UTC)),
        ("2024-03-14T07:10:36", datetime(2024, 3, 14, 7, 10, 36, tzinfo=UTC)),
        (None, None),
    ],
)
def test_timestamps_become_utc(text, expected) -> None:
    # a mix of forms in one column, so each is parsed alongside the others
    rows = [coin("a", ath_date=text), coin("b", ath_date="2020-01-01T00:00:00+09:00")]
    out = run(rows).processed
    got = row_of(out, "a")["ath_date"]
    if expected is None:
        assert pd.isna(got)
    else:
        assert got.to_pydatetime() == expected
    assert row_of(out, "b")["ath_date"].to_pydatetime() == datetime(2019, 12, 31, 15, tzinfo=UTC)
    assert str(out["ath_date"].dt.tz) == "UTC"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1600-01-01T00:00:00Z", datetime(1600, 1, 1, tzinfo=UTC)),
        ("9999-12-31T23:59:59.999999Z", datetime(9999, 12, 31, 23, 59, 59, 999999, UTC)),
        ("0001-01-01T00:00:00Z", datetime(1, 1, 1, tzinfo=UTC)),
        ("1600-02-29T12:00:00+05:30", datetime(1600, 2, 29, 6, 30, tzinfo=UTC)),  # leap year
        ("1677-09-21T00:00:00Z", datetime(1677, 9, 21, tzinfo=UTC)),  # pandas 2 ns bound
        ("2262-04-12T00:00:00Z", datetime(2262, 4, 12, tzinfo=UTC)),  # pandas 2 ns bound
        ("2400-02-29T00:00:00.123456789Z", datetime(2400, 2, 29, 0, 0, 0, 123456, UTC)),
        ("1066-10-14T09:00", datetime(1066, 10, 14, 9, tzinfo=UTC)),  # naive = UTC
    ],
)
def test_timestamps_in_any_year_from_0001_to_9999(text, expected) -> None:
    rows = [coin("a", ath_date=text), coin("b")]
    result = run(rows)
    assert result.rejected_count == 0, result.rejected["reject_detail"].tolist()
    assert row_of(result.processed, "a")["ath_date"].to_pydatetime() == expected
    assert str(result.processed["ath_date"].dtype) == "datetime64[us, UTC]"


@pytest.mark.parametrize(
    "text",
    [
        "0001-01-01T00:00:00+01:00",  # 0000-12-31 in UTC
        "9999-12-31T23:00:00-05:00",  # year 10000 in UTC
        "1700-02-29T00:00:00Z",  # not a leap year (inside the directly parsed window)
        "2100-02-29T00:00:00Z",  # not a leap year (read through the 400-year shift)
        "1500-13-01T00:00:00Z",
        " 1600-01-01T00:00:00Z",  # far year not at the start: refused on pandas 2 and 3 alike
    ],
)
def test_timestamps_outside_the_years_or_the_calendar_are_rejected(text: str) -> None:
    result = run([coin("a", atl_date=text), coin("b")])
    assert list(result.rejected[REJECT_REASON_COLUMN]) == ["invalid_timestamp:atl_date"]
    assert list(result.processed["coin_id"]) == ["b"]


@pytest.mark.parametrize(
    ("field", "reason"),
    [
        ("current_price", "invalid_number:current_price"),
        ("max_supply", "invalid_number:max_supply"),  # a column that is otherwise all null
        ("market_cap_rank", "invalid_number:market_cap_rank"),
        ("roi.times", "invalid_number:roi_times"),
        ("roi", "invalid_type:roi"),
        ("roi.currency", "invalid_type:roi.currency"),
        ("name", "invalid_type:name"),
        ("id", "invalid_type:id"),
        ("last_updated", "invalid_timestamp:last_updated"),
    ],
)
def test_json_nan_literal_is_rejected_not_nulled(field: str, reason: str) -> None:
    """json.loads reads the literal NaN as float('nan'); JSON null and an absent key stay NULL."""
    bad = coin("bad", 2, roi={"times": 2.0, "currency": "usd", "percentage": 100.0})
    if field.startswith("roi."):
        bad["roi"][field[4:]] = float("nan")
    else:
        bad[field] = float("nan")
    absent = coin("absent", 3)
    del absent["current_price"], absent["market_cap_rank"], absent["last_updated"]
    page = json.loads(json.dumps([coin("good", 1), bad, absent, coin("null", 4, roi=None)]))
    assert "NaN" in json.dumps(page)  # the real literal went through the parser

    result = run(page)
    assert list(result.processed["coin_id"]) == ["good", "absent", "null"]
    assert list(result.rejected[REJECT_REASON_COLUMN]) == [reason]
    assert result.rejected.loc[0, "reject_detail"] == f"{field}=NaN"
    absent_row = row_of(result.processed, "absent")
    assert pd.isna(absent_row["current_price"]) and pd.isna(absent_row["market_cap_rank"])
    assert pd.isna(absent_row["last_updated"])
    accounted(result)


@pytest.mark.parametrize("text", ["NaN", "nan", " NaN ", "-nan"])
def test_nan_strings_in_number_fields_are_rejected(text: str) -> None:
    result = run([coin("a", current_price=text), coin("b")])
    assert list(result.rejected[REJECT_REASON_COLUMN]) == ["invalid_number:current_price"]


@pytest.mark.parametrize(
    ("fields", "reason", "column", "detail"),
    [
        ({"id": "bad\ud83d"}, "invalid_text:coin_id", "coin_id", "id='bad\\ud83d'"),
        ({"symbol": "b\x00"}, "invalid_text:symbol", "symbol", "symbol='b\\x00'"),
        ({"name": "Bad \ud83d Coin"}, "invalid_text:name", "name", "name='Bad \\ud83d Coin'"),
        ({"name": "\udc00"}, "invalid_text:name", "name", "name='\\udc00'"),
        ({"image": "https://x/\ud83d.png"}, "invalid_text:image_url", "image_url", "\\ud83d"),
        ({"image": {"large": "l\x00"}}, "invalid_text:image_url", "image_url", "\\x00"),
        (
            {"roi": {"times": 1.0, "currency": "u\ud800", "percentage": 1.0}},
            "invalid_text:roi_currency",
            "roi_currency",
            "roi.currency='u\\ud800'",
        ),
    ],
)
def test_text_that_cannot_be_stored_rejects_the_row(fields, reason, column, detail) -> None:
    """A lone surrogate (valid JSON "\\ud83d") cannot be encoded as UTF-8; NUL is refused too."""
    page = json.loads(json.dumps([coin("good", 1), coin("bad", 2, **fields), coin("ok", 3)]))
    result = run(page)
    assert list(result.processed["coin_id"]) == ["good", "ok"]
    assert list(result.rejected[REJECT_REASON_COLUMN]) == [reason]
    assert detail in result.rejected.loc[0, "reject_detail"]
    assert pd.isna(result.rejected.loc[0, column])  # the raw value is only in the detail
    rejected_to_csv_gz(result.rejected)  # so the rejected file still encodes as UTF-8
    accounted(result)


def test_valid_astral_and_control_text_is_kept() -> None:
    text = '🚀 比特币\r\n\t\\ "q" é'
    out = run(json.loads(json.dumps([coin("a", name=text, symbol="🚀"), coin("b")]))).processed
    assert row_of(out, "a")["name"] == text and row_of(out, "a")["symbol"] == "🚀"


def test_text_is_kept_as_given_and_empty_is_null() -> None:
    rows = [coin("a", symbol="BTC", name=" Spaced "), coin("b", symbol="", name=None)]
    out = run(rows).processed
    assert row_of(out, "a")["symbol"] == "BTC"  # not lower-cased
    assert row_of(out, "a")["name"] == " Spaced "
    assert pd.isna(row_of(out, "b")["symbol"]) and pd.isna(row_of(out, "b")["name"])


@pytest.mark.parametrize(
    ("image", "expected"),
    [
        ("https://x/large.png", "https://x/large.png"),
        ({"thumb": "t", "small": "s", "large": "l"}, "l"),
        ({"thumb": "t", "small": "s"}, "s"),
        ({"thumb": "t"}, "t"),
        ({"large": "", "small": None, "thumb": "t"}, "t"),
        ({}, None),
        ("", None),
        (None, None),
    ],
)
def test_image_becomes_one_url(image, expected) -> None:
    out = run([coin("a", image=image), coin("b")]).processed
    got = row_of(out, "a")["image_url"]
    assert got == expected if expected is not None else pd.isna(got)


def test_roi_is_flattened() -> None:
    roi = {"times": 104.8161668423025, "currency": "btc", "percentage": "10481.61668423025"}
    out = run([coin("a", roi=roi), coin("b", roi=None)]).processed
    a, b = row_of(out, "a"), row_of(out, "b")
    assert (a["roi_times"], a["roi_currency"], a["roi_percentage"]) == (
        104.8161668423025,
        "btc",
        10481.61668423025,
    )
    assert (
        math.isnan(b["roi_times"])
        and pd.isna(b["roi_currency"])
        and math.isnan(b["roi_percentage"])
    )


def test_unneeded_fields_are_dropped_and_listed() -> None:
    rows = [
        coin("a", sparkline_in_7d={"price": [1, 2]}, price_change_percentage_7d_in_currency=1.0),
        coin("b"),
    ]
    result = run(rows)
    assert list(result.processed.columns) == list(COLUMN_NAMES)
    assert result.quality["dropped_fields"] == [
        "price_change_percentage_7d_in_currency",
        "sparkline_in_7d",
    ]


def test_snapshot_columns_are_added() -> None:
    out = run([coin("a"), coin("b")]).processed
    assert set(out["snapshot_id"]) == {"snap-1"} and set(out["vs_currency"]) == {"usd"}
    assert {t.to_pydatetime() for t in out["fetched_at"]} == {datetime(2026, 11, 23, 8, tzinfo=UTC)}
    assert {str(d) for d in out["fetch_date"]} == {"2026-11-23"}


# --- dominance ---------------------------------------------------------------------------------


def test_dominance_against_global_totals() -> None:
    rows = [
        coin("a", market_cap=600, total_volume=30),
        coin("b", market_cap=300, total_volume=None),
        coin("c", market_cap=None, total_volume=10),
    ]
    result = run(rows, global_body=global_body(cap="2e3", vol=200.0))
    out = result.processed
    assert row_of(out, "a")["market_cap_dominance_pct"] == 600 / 2000 * 100
    assert row_of(out, "b")["market_cap_dominance_pct"] == 300 / 2000 * 100
    assert math.isnan(row_of(out, "c")["market_cap_dominance_pct"])  # null cap -> null
    assert row_of(out, "a")["volume_pct"] == 30 / 200 * 100
    assert math.isnan(row_of(out, "b")["volume_pct"])
    assert set(out["dominance_basis"]) == {"global"}
    assert result.quality["dominance_sum_pct"] == pytest.approx(45.0)
    assert result.quality["total_market_cap"] == 2000.0


@pytest.mark.parametrize(
    ("body", "why"),
    [
        (None, "no /global body"),
        ({"status": {"error_code": 429, "error_message": "busy"}}, "no 'data' object"),
        (global_body(cap=2000, vol=200, vs="eur"), "lacks 'usd'"),
        (global_body(cap=0, vol=200), "data.total_market_cap has 0 for 'usd'"),
        (global_body(cap=2000), "data.total_volume lacks 'usd'"),
    ],
)
def test_fallback_to_fetched_sums(body, why: str) -> None:
    rows = [
        coin("a", market_cap=600, total_volume=30),
        coin("b", market_cap=300, total_volume=10),
        coin("c", market_cap=None, total_volume=0),
        coin("rejected", market_cap=10**6, total_volume=10**6, current_price=-1),
    ]
    page2 = [coin("a", market_cap=10**6, total_volume=10**6)]  # duplicate: not in the sums
    result = run(rows, page2, global_body=body)
    out = result.processed
    assert set(out["dominance_basis"]) == {"fetched"}
    assert why in result.quality["dominance_basis_reason"]
    assert row_of(out, "a")["market_cap_dominance_pct"] == 600 / 900 * 100
    assert row_of(out, "b")["market_cap_dominance_pct"] == 300 / 900 * 100
    assert math.isnan(row_of(out, "c")["market_cap_dominance_pct"])
    assert row_of(out, "a")["volume_pct"] == 30 / 40 * 100
    assert row_of(out, "c")["volume_pct"] == 0.0
    assert result.quality["dominance_sum_pct"] == pytest.approx(100.0)


def test_global_error_explains_the_fetched_basis() -> None:
    rows = [coin("a", market_cap=600), coin("b", market_cap=400)]
    result = run(rows, global_error="HTTP 403: This endpoint is temporarily unavailable")
    assert result.quality["dominance_basis"] == "fetched"
    assert result.quality["dominance_basis_reason"] == (
        "/global unavailable: HTTP 403: This endpoint is temporarily unavailable"
    )
    assert row_of(result.processed, "a")["market_cap_dominance_pct"] == 60.0
    # With a body the error is not the reason (the body is used, or says what it lacks).
    result = run(rows, global_body=global_body(cap=2000, vol=100), global_error="stale")
    assert result.quality["dominance_basis"] == "global"
    assert result.quality["dominance_basis_reason"] == ""


def test_a_coin_above_the_global_total_is_rejected_not_stored() -> None:
    """A cap above the whole market's, beside coins consistent with /global: rejected."""
    rows = [
        coin("bitcoin", 1, market_cap=600, total_volume=30),
        coin("above", 2, market_cap=5000, total_volume=20),  # 2.5x the market, no 1e6 outlier
        coin("stable", 3, market_cap=300, total_volume=100),
        coin("alt", 4, market_cap=100, total_volume=10),
    ]
    result = run(rows, global_body=global_body(cap=2000, vol=200))
    assert list(result.processed["coin_id"]) == ["bitcoin", "stable", "alt"]
    rejected = result.rejected.set_index("coin_id")
    assert rejected.loc["above", REJECT_REASON_COLUMN] == "exceeds_global_total:market_cap"
    assert rejected.loc["above", "reject_detail"] == (
        "market_cap=5000.0 > /global total_market_cap=2000.0"
    )
    assert row_of(result.processed, "bitcoin")["market_cap_dominance_pct"] == 30.0
    assert result.quality["dominance_basis"] == "global"
    assert result.quality["rejected_by_reason"] == {"exceeds_global_total:market_cap": 1}
    assert [r["coin_id"] for r in result.quality["rejected_coins"]] == ["above"]
    accounted(result)


def test_an_absurd_outlier_is_rejected_on_either_basis() -> None:
    """The issue's spam token (3e27 USD): with /global, and with /global unavailable, where it
    would otherwise take ~100 % of the fetched basis and leave every real coin ~0 %."""
    rows = [
        coin("bitcoin", 1, market_cap=1.3e12, total_volume=3e10),
        coin("ethereum", 2, market_cap=4e11, total_volume=1.5e10),
        coin("spam", 3, market_cap=3e27, total_volume=7e20),
    ]
    for body in (global_body(cap=2.5e12, vol=1e11), None):
        result = run(rows, global_body=body)
        assert list(result.processed["coin_id"]) == ["bitcoin", "ethereum"], body
        reason = result.rejected.set_index("coin_id").loc["spam", REJECT_REASON_COLUMN]
        if body is None:
            assert reason == "implausible_outlier:market_cap"
            btc = row_of(result.processed, "bitcoin")["market_cap_dominance_pct"]
            assert btc == pytest.approx(1.3e12 / 1.7e12 * 100)
        else:
            assert reason.startswith("exceeds_global_total:market_cap")
            btc = row_of(result.processed, "bitcoin")["market_cap_dominance_pct"]
            assert btc == pytest.approx(1.3e12 / 2.5e12 * 100)
        accounted(result)


def test_a_global_total_the_coins_contradict_is_set_aside_not_obeyed() -> None:
    """/global is auxiliary: a wrong positive total must neither fail the run nor drop the
    top coins. Below every coin, below the coins' sum, or below one coin's volume: fetched."""
    rows = [
        coin("bitcoin", 1, market_cap=1.3e12, total_volume=3e10),
        coin("ethereum", 2, market_cap=4e11, total_volume=1.5e10),
        coin("tether", 3, market_cap=1e11, total_volume=5e10),
    ]
    for cap, vol, says in (
        (50_000, 1e11, "below the market cap of 3 of 3 coins"),
        (1.5e12, 1e11, "below the sum of the fetched coins"),
        (2.5e12, 2.05e10, "below the volume of bitcoin, tether"),
    ):
        result = run(rows, global_body=global_body(cap=cap, vol=vol))
        assert result.row_count == 3 and result.rejected_count == 0, (cap, vol)
        assert result.quality["dominance_basis"] == "fetched"
        assert says in result.quality["dominance_basis_reason"]
        assert result.quality["dominance_sum_pct"] == pytest.approx(100.0)


def test_without_global_a_huge_coin_is_kept_and_sums_use_kept_rows() -> None:
    rows = [coin("a", market_cap=600), coin("huge", market_cap=3e27), coin("neg", market_cap=-1)]
    result = run(rows)
    assert result.rejected_count == 1  # only the negative one: no total to exceed
    assert result.quality["total_market_cap"] == 600 + 3e27
    assert result.quality["dominance_sum_pct"] == pytest.approx(100.0)


def test_global_totals_reads_the_currency_case_insensitively() -> None:
    assert global_totals(global_body(cap=5, vol=6), "USD") == (5.0, 6.0, "")


def test_fallback_with_no_caps_at_all_gives_null_percentages() -> None:
    out = run([coin("a", market_cap=None, total_volume=0)]).processed
    assert math.isnan(out.loc[0, "market_cap_dominance_pct"]) and math.isnan(
        out.loc[0, "volume_pct"]
    )


def test_quality_checks_flag_bad_data_without_failing() -> None:
    # 104 %: within the tolerance for /global fetched seconds apart from the pages.
    rows = [coin("a", rank=0, market_cap=520), coin("b", rank=2, market_cap=520)]
    result = run(rows, global_body=global_body(cap=1000, vol=10**9))
    checks = {c["name"]: c for c in result.quality["checks"]}
    assert not checks["ranks_positive"]["passed"]
    assert not checks["dominance_sum_le_100"]["passed"]
    assert "104.0" in checks["dominance_sum_le_100"]["detail"]
    assert not result.quality["passed"]
    assert result.row_count == 2


def test_failed_checks_name_the_coins_behind_them() -> None:
    # 25 coins of 50-74 (1550 in all) against a total of 1500: 103 %, within the tolerance.
    rows = [coin(f"c{i:02d}", rank=i, market_cap=50 + i) for i in range(25)]
    rows[3]["market_cap_rank"] = 0
    rows[7]["market_cap_rank"] = 0  # (a negative rank would be rejected, not loaded)
    result = run(rows, global_body=global_body(cap=1500, vol=10**9))
    q = result.quality
    checks = {c["name"]: c for c in q["checks"]}
    assert q["failed_checks"] == ["ranks_positive", "dominance_sum_le_100"]
    assert checks["ranks_positive"]["coins"] == ["c00", "c03", "c07"]  # rank 0 from coin("c00")
    assert checks["ranks_positive"]["coin_count"] == 3
    dominance = checks["dominance_sum_le_100"]
    assert dominance["coin_count"] == 25
    assert dominance["coins"] == [f"c{i:02d}" for i in range(24, 4, -1)]  # largest share first
    for name in ("has_rows", "rows_accounted", "unique_coin_ids", "volume_sum_le_200"):
        assert checks[name]["passed"] and checks[name]["coins"] == []
        assert checks[name]["coin_count"] == 0
    json.dumps(q, allow_nan=False)


def test_rejected_coins_are_sampled_in_the_quality_summary() -> None:
    rows = [coin("ok"), coin(None), coin("neg", current_price=-1)]
    rows += [coin(f"bad{i:02d}", market_cap="x") for i in range(25)]
    q = run(rows).quality
    assert q["rejected"] == 27 and len(q["rejected_coins"]) == 20
    assert q["rejected_coins"][:3] == [
        {"coin_id": None, "reason": "missing_id", "source_page": 1, "source_row": 2},
        {"coin_id": "neg", "reason": "negative:current_price", "source_page": 1, "source_row": 3},
        {
            "coin_id": "bad00",
            "reason": "invalid_number:market_cap",
            "source_page": 1,
            "source_row": 4,
        },
    ]


def test_null_counts() -> None:
    rows = [coin("a", max_supply=None, market_cap_rank=None), coin("b", symbol=None)]
    nulls = run(rows).quality["null_counts"]
    assert nulls["market_cap_rank"] == 1 and nulls["symbol"] == 1 and nulls["current_price"] == 0


# --- pages and trimming ------------------------------------------------------------------------


def test_pages_are_cut_to_manifest_counts_and_max_coins() -> None:
    page1 = [coin("a"), coin("b"), coin("c")]
    page2 = [coin("d"), coin("e"), coin("f")]
    result = run(page1, page2, counts=[2, 3], manifest_max=4)
    assert list(result.processed["coin_id"]) == ["a", "b", "d", "e"]
    assert result.quality["rows_in"] == 4 and result.quality["rows_trimmed"] == 2
    # an explicit max_coins (the event's) wins over the manifest's
    result = run(page1, page2, manifest_max=5, max_coins=3)
    assert list(result.processed["coin_id"]) == ["a", "b", "c"]
    assert run(page1, page2).row_count == 6


def test_page_shorter_than_its_manifest_count_is_an_error() -> None:
    with pytest.raises(ValidationError, match=r"page 2.*holds 1 rows but the manifest count is 3"):
        run([coin("a")], [coin("b")], counts=[1, 3])


def test_page_body_that_is_not_a_list_is_an_error() -> None:
    with pytest.raises(ValidationError, match="page 1"):
        transform(
            manifest_for([1]),
            [{"status": {"error_code": 429}}],
            None,
            snapshot_id="s",
            fetched_at=FETCHED_AT,
            fetch_date="2026-11-23",
            vs_currency="usd",
        )


def test_manifest_and_bodies_must_align() -> None:
    with pytest.raises(ValidationError, match=r"manifest.pages"):
        transform(
            manifest_for([coin("a")], [coin("b")]),
            [[coin("a")]],
            None,
            snapshot_id="s",
            fetched_at=FETCHED_AT,
            fetch_date="2026-11-23",
            vs_currency="usd",
        )


def test_fetched_at_must_have_a_zone() -> None:
    with pytest.raises(ValidationError, match="fetched_at"):
        transform(
            manifest_for([coin("a")]),
            [[coin("a")]],
            None,
            snapshot_id="s",
            fetched_at="2026-11-23T08:00:00",
            fetch_date="2026-11-23",
            vs_currency="usd",
        )
