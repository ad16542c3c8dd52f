"""The backfill's load (``"action": "load_history"``): market_chart bodies in a folder lake ->
CRYPTO_PRICE_HISTORY on a real fakesnow server through the real connector (real SQL).

Each test works in its own schema of the module's warehouse. Bodies are built here in
CoinGecko's shape (``[unix ms, value]`` arrays, daily points at 00:00 UTC and a last point for
the current, partial day), plus the recorded real bodies of ../shared/data/coingecko.
"""

from __future__ import annotations

import gzip
import itertools
import json
import math
from collections.abc import Iterator, Mapping
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from functions.common import keys
from functions.common.errors import LoadError, ValidationError
from functions.common.storage import LocalStorage
from functions.load import handler as load_handler
from functions.load import history, sql
from functions.load.config import SnowflakeConfig
from functions.load.connection import connect
from functions.load.history import MalformedHistory, load_history_run, parse_market_chart
from functions.load.sql import Names
from local_mode.warehouse import LocalWarehouse

BUCKET = "crypto-etl-test"
BACKFILL = "bf-test"
PREFIX = keys.history_prefix(BACKFILL)
TODAY = date(2026, 11, 27)
_schemas = itertools.count()
DAY_MS = 86_400_000


def ms(day: date, hours: float = 0) -> int:
    return int(datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp() * 1000) + int(
        hours * 3_600_000
    )


def chart(
    coin: int, last_day: date, points: int = 366, *, partial_hours: float | None = 14.5
) -> dict[str, list[list[Any]]]:
    """``points`` daily points ending at ``last_day`` 00:00 UTC, then (optionally) a partial-day
    point ``partial_hours`` later: price = 100 * (coin + 1) + day index, cap x1000, vol x10."""
    first = last_day - timedelta(days=points - 1)
    stamps = [(ms(first + timedelta(days=i)), i) for i in range(points)]
    if partial_hours is not None:
        stamps.append((ms(last_day, partial_hours), points + 0.5))
    price = [[t, 100.0 * (coin + 1) + i] for t, i in stamps]
    return {
        "prices": price,
        "market_caps": [[t, v * 1000] for t, v in price],
        "total_volumes": [[t, v * 10] for t, v in price],
    }


# --- parsing (pure) ----------------------------------------------------------------------------


def test_one_row_per_utc_date_keeping_the_days_last_point():
    parsed = parse_market_chart(json.dumps(chart(0, TODAY, points=3)))
    assert [r.day for r in parsed.rows] == [TODAY - timedelta(days=2), TODAY - timedelta(1), TODAY]
    # Today has two points (00:00 and 14:30): the later one is today's row.
    assert parsed.rows[-1].price == 100.0 + 3.5
    assert parsed.rows[-1].market_cap == (100.0 + 3.5) * 1000
    assert parsed.rows[-1].total_volume == (100.0 + 3.5) * 10
    assert parsed.rejected == []


def test_series_are_aligned_by_date_and_a_missing_or_null_point_is_null():
    body = {
        "prices": [[ms(TODAY), 1.5], [ms(TODAY, 1), 2.5]],
        "market_caps": [[ms(TODAY - timedelta(1)), 7]],
        "total_volumes": [[ms(TODAY), None]],
    }
    rows = parse_market_chart(json.dumps(body)).rows
    assert [(r.day, r.price, r.market_cap, r.total_volume) for r in rows] == [
        (TODAY - timedelta(1), None, 7.0, None),
        (TODAY, 2.5, None, None),
    ]


def test_a_bad_value_rejects_its_row_never_nulls_it():
    day = [ms(TODAY - timedelta(d)) for d in range(5)][::-1]
    body = {
        "prices": [[day[0], "12"], [day[1], -1.0], [day[2], True], [day[3], 3.0], [day[4], 4.0]],
        "market_caps": [[t, 1.0] for t in day],
        "total_volumes": [[t, 1.0] for t in day[:3]] + [[day[3], float("nan")], [day[4], 0]],
    }
    parsed = parse_market_chart(json.dumps(body))  # json writes NaN as the NaN literal
    assert [(r.day, r.price, r.total_volume) for r in parsed.rows] == [(TODAY, 4.0, 0.0)]
    assert [reason for _, reason in parsed.rejected] == [
        "invalid_number:price",
        "negative:price",
        "invalid_number:price",
        "invalid_number:total_volume",
    ]
    # A timestamp that is not a whole number of ms in years 1-9999 cannot be dated.
    bad_time = {
        "prices": [["2026-11-27", 1.0], [1.5, 1.0], [10**20, 1.0], [ms(TODAY), 1.0]],
        "market_caps": [],
        "total_volumes": [],
    }
    parsed = parse_market_chart(json.dumps(bad_time))
    assert len(parsed.rows) == 1 and len(parsed.rejected) == 3
    assert {r for _, r in parsed.rejected} == {"invalid_timestamp:prices"}


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"<html>502</html>", "not JSON"),
        (b"[]", "JSON list, not an object"),
        (b'{"error": "coin not found"}', "CoinGecko error body: coin not found"),
        (b'{"status": {"error_code": 429, "error_message": "rate"}}', "rate \\(error_code 429"),
        (b'{"prices": [], "market_caps": []}', "'total_volumes' is missing"),
        (b'{"prices": {}, "market_caps": [], "total_volumes": []}', "'prices' is missing or not"),
        (b'{"prices": [[1, 2, 3]], "market_caps": [], "total_volumes": []}', "prices\\[0\\]"),
        (b'{"prices": [], "market_caps": [], "total_volumes": []}', "no data points"),
    ],
)
def test_a_malformed_body_is_refused_whole(body, message):
    with pytest.raises(MalformedHistory, match=message):
        parse_market_chart(body)


def test_recorded_daily_body_gives_one_row_per_date(shared_coingecko_dir: Path):
    # GET /coins/bitcoin/market_chart?days=90&interval=daily, recorded 2021-05-15 14:42 GMT:
    # 91 points, the last two on 2021-05-15 (00:00 and 14:39).
    raw = (shared_coingecko_dir / "market_chart_julianfssen_coingecko_ruby_1.json").read_bytes()
    body = json.loads(raw)
    parsed = parse_market_chart(raw)
    assert len(body["prices"]) == 91 and len(parsed.rows) == 90 and parsed.rejected == []
    last = parsed.rows[-1]
    assert last.day == date(2021, 5, 15)
    assert (last.price, last.market_cap, last.total_volume) == tuple(
        body[s][-1][1] for s, _ in history.SERIES
    )
    days = [r.day for r in parsed.rows]
    assert days == sorted(set(days)) and days[0] == date(2021, 2, 15)


def test_csv_quotes_text_and_round_trips_floats():
    rows = [history.HistoryRow(TODAY, 0.1 + 0.2, None, 1e300)]
    line = history.history_csv_lines('we"ird\rcoin', "usd", rows)
    assert line == f'"we""ird\rcoin",2026-11-27,"usd",{0.1 + 0.2!r},,1e+300\n'
    assert history.history_csv_header().rstrip("\n").split(",") == list(sql.HISTORY_FILE_COLUMNS)


def test_the_history_table_can_gain_columns_like_etl_runs():
    assert sql.PRICE_HISTORY in sql.TABLES and sql.PRICE_HISTORY in sql.ADDED_COLUMNS
    assert sql.expected_columns(sql.PRICE_HISTORY) == tuple(c for c, _ in sql.HISTORY_COLUMNS)
    with pytest.raises(ValueError, match="not a column the load may add"):
        sql.add_column(Names(), sql.PRICE_HISTORY, "PRICE")


# --- the warehouse -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def warehouse(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalWarehouse]:
    with LocalWarehouse(tmp_path_factory.mktemp("warehouse")) as wh:
        yield wh


@pytest.fixture
def cfg(warehouse: LocalWarehouse) -> SnowflakeConfig:
    return SnowflakeConfig.from_env({**warehouse.env(), "SNOWFLAKE_SCHEMA": f"H{next(_schemas)}"})


@pytest.fixture
def lake(tmp_path: Path) -> LocalStorage:
    return LocalStorage(tmp_path / "lake", BUCKET)


def q(cfg: SnowflakeConfig, statement: str) -> list[tuple]:
    conn = connect(cfg)
    try:
        with conn.cursor() as cur:
            cur.execute(statement)
            return [tuple(r) for r in cur.fetchall()]
    finally:
        conn.close()


def table(cfg: SnowflakeConfig) -> list[tuple]:
    return q(cfg, "SELECT * FROM CRYPTO_PRICE_HISTORY ORDER BY COIN_ID, DATE")


def plan(lake: LocalStorage, coins: list[str], bodies: Mapping[str, Any]) -> None:
    """items.json for ``coins`` and one stored body per entry of ``bodies`` (bytes as is)."""
    items = [{"coin_id": c, "rank": i + 1} for i, c in enumerate(coins)]
    lake.put_bytes(keys.history_items_key(BACKFILL), json.dumps(items).encode())
    for coin_id, body in bodies.items():
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        lake.put_bytes(keys.history_coin_key(BACKFILL, coin_id), data)


def event(**change: Any) -> dict[str, Any]:
    """The state the backfill ASL passes: the plan, the Map's output, the action."""
    base = {
        "action": "load_history",
        "backfill_id": BACKFILL,
        "bucket": BUCKET,
        "vs_currency": "usd",
        "days": 365,
        "coin_count": 3,
        "items_key": keys.history_items_key(BACKFILL),
        "history_prefix": PREFIX,
        "results_prefix": keys.history_results_prefix(BACKFILL),
        "batch_size": 10,
        "max_concurrency": 5,
        "child_rate_limit": "6/60",
        "source": "coin_ids",
        "plan_warnings": [],
        "fetch": None,
    }
    return {**base, **change}


COINS = ["bitcoin", "ethereum", "tether"]


def test_load_rerun_and_a_later_range(cfg, lake):
    plan(lake, COINS, {c: chart(i, TODAY) for i, c in enumerate(COINS)})
    out = load_history_run(event(), storage=lake, config=cfg)
    # 366 points at 00:00 (the last one today) + today's partial point: 366 dates per coin.
    assert out["rows"] == out["rows_inserted"] == 3 * 366
    assert (out["coins_loaded"], out["coins_failed"], out["rows_replaced"]) == (3, [], 0)
    assert (out["first_date"], out["last_date"]) == ("2025-11-27", "2026-11-27")
    assert out["table"] == f"CRYPTO_ETL_DB.{cfg.schema}.CRYPTO_PRICE_HISTORY"
    first = table(cfg)
    assert len(first) == 3 * 366
    assert first[365][:7] == ("bitcoin", TODAY, "usd", 100 + 366.5, 466_500.0, 4665.0,
                              "market_chart")  # fmt: skip
    assert q(cfg, "SELECT COUNT(*) FROM CRYPTO_PRICE_HISTORY WHERE PRICE IS NULL") == [(0,)]

    # The same range again: nothing changes, not even LOADED_AT.
    again = load_history_run(event(), storage=lake, config=cfg)
    assert (again["rows_inserted"], again["rows_replaced"], again["rows_unchanged"]) == (
        0, 0, 3 * 366,
    )  # fmt: skip
    assert table(cfg) == first

    # Five days later, 30 days: five new dates, and the former partial day is now a full day
    # with other values (replaced); the older dates stay as they were.
    later = TODAY + timedelta(days=5)
    plan(lake, COINS, {c: chart(i + 10, later, points=30) for i, c in enumerate(COINS)})
    out = load_history_run(event(days=30), storage=lake, config=cfg)
    assert (out["rows"], out["rows_inserted"], out["rows_replaced"]) == (90, 15, 75)
    rows = table(cfg)
    assert len(rows) == 3 * (366 + 5)
    assert rows[0] == first[0]  # bitcoin's first date, untouched
    by_key = {(r[0], r[1]): r for r in rows}
    assert by_key[("bitcoin", later)][3] == 1100 + 30.5  # its partial day
    assert by_key[("bitcoin", TODAY)][3] == 1100 + 24  # the later range's value


def test_a_malformed_body_fails_that_coin_and_the_rest_load(cfg, lake):
    bad = {"prices": [[ms(TODAY), 1.0]], "market_caps": "n/a", "total_volumes": []}
    plan(lake, [*COINS, "delisted"], {"bitcoin": chart(0, TODAY, 10), "ethereum": bad,
                                      "tether": chart(2, TODAY, 10)})  # fmt: skip
    out = load_history_run(event(), storage=lake, config=cfg)
    assert out["coins_loaded"] == 2 and out["rows"] == 20
    assert out["coins_failed"] == [
        {"coin_id": "ethereum", "error": "malformed market_chart body: 'market_caps' is missing"
         " or not a list"},
        {"coin_id": "delisted", "error": history.NO_BODY},
    ]  # fmt: skip
    assert out["coins_failed_count"] == 2
    assert q(cfg, "SELECT COIN_ID, COUNT(*) FROM CRYPTO_PRICE_HISTORY GROUP BY COIN_ID"
                  " ORDER BY COIN_ID") == [("bitcoin", 10), ("tether", 10)]  # fmt: skip


def test_failure_reasons_come_from_the_maps_result_writer_files(cfg, lake):
    plan(lake, ["bitcoin", "gone", "b1", "b2", "x"], {"bitcoin": chart(0, TODAY, 2)})
    results = keys.history_results_prefix(BACKFILL) + "run-1/"
    ok = {"ok": [{"coin_id": "bitcoin"}], "failed": [
        {"coin_id": "gone", "error": "404 Not Found: coin not found"}]}  # fmt: skip
    lake.put_bytes(results + "SUCCEEDED_0.json", json.dumps([
        {"Status": "SUCCEEDED", "Input": json.dumps({"Items": [{"coin_id": "bitcoin"}]}),
         "Output": json.dumps(ok)}]).encode())  # fmt: skip
    lake.put_bytes(results + "FAILED_0.json", json.dumps([
        {"Status": "FAILED", "Error": "Lambda.Unknown", "Cause": "out of memory",
         "Input": json.dumps({"Items": [{"coin_id": "b1"}, {"coin_id": "b2"}],
                              "BatchInput": {}})}]).encode())  # fmt: skip
    manifest = {"ResultFiles": {"FAILED": [{"Key": results + "FAILED_0.json"}], "PENDING": [],
                                "SUCCEEDED": [{"Key": results + "SUCCEEDED_0.json"}]}}  # fmt: skip
    lake.put_bytes(results + "manifest.json", json.dumps(manifest).encode())
    fetch = {
        "MapRunArn": "arn:x",
        "ResultWriterDetails": {"Bucket": BUCKET, "Key": results + "manifest.json"},
    }
    out = load_history_run(event(fetch=fetch), storage=lake, config=cfg)
    assert out["coins_loaded"] == 1 and out["rows"] == 2
    assert {f["coin_id"]: f["error"] for f in out["coins_failed"]} == {
        "gone": "404 Not Found: coin not found",
        "b1": "fetch batch failed: Lambda.Unknown out of memory",
        "b2": "fetch batch failed: Lambda.Unknown out of memory",
        "x": history.NO_BODY,
    }
    assert out["failure_reasons"]["fetch batch failed: Lambda.Unknown out of memory"] == 2
    assert out["warnings"] == []


def test_every_coin_failing_loads_nothing_and_says_so(cfg, lake):
    plan(lake, ["a", "b"], {"a": b"{}"})
    out = load_history_run(event(fetch=[{"failed": [{"coin_id": "b", "error": "range"}]}]),
                           storage=lake, config=cfg)  # fmt: skip
    assert (out["rows"], out["coins_loaded"], out["coins_failed_count"]) == (0, 0, 2)
    assert out["coins_failed"][1] == {"coin_id": "b", "error": "range"}
    assert "every coin failed" in out["warnings"][0]
    assert table(cfg) == []  # the table exists, empty


def test_a_failure_inside_the_transaction_changes_nothing(cfg, lake):
    plan(lake, COINS, {c: chart(i, TODAY, 5) for i, c in enumerate(COINS)})
    load_history_run(event(), storage=lake, config=cfg)
    before = table(cfg)
    plan(lake, COINS, {c: chart(i + 1, TODAY + timedelta(2), 5) for i, c in enumerate(COINS)})

    class FailingInsert:
        """A real connection whose cursor fails the history INSERT (after the DELETE ran)."""

        def __init__(self, conn: Any) -> None:
            self._conn = conn

        def cursor(self) -> Any:
            cur = self._conn.cursor()
            execute = cur.execute

            def guarded(statement: str, params: Any = None) -> Any:
                if statement.startswith("INSERT INTO") and "CRYPTO_PRICE_HISTORY" in statement:
                    raise OSError("connection reset")
                return execute(statement, params)

            cur.execute = guarded
            return cur

        def close(self) -> None:
            self._conn.close()

    with pytest.raises(LoadError, match=r"'insert history' failed.*rolled back"):
        load_history_run(
            event(), storage=lake, config=cfg, connect=lambda c: FailingInsert(connect(c))
        )
    assert table(cfg) == before


def test_the_handler_dispatches_load_history(warehouse, cfg, lake, monkeypatch, lambda_context):
    plan(lake, ["bitcoin"], {"bitcoin": chart(0, TODAY, 3)})
    env = {**warehouse.env(), "SNOWFLAKE_SCHEMA": cfg.schema, "LAKE_LOCAL_DIR": str(lake.root),
           "LAKE_BUCKET": BUCKET, "POWERTOOLS_LOG_LEVEL": "WARNING"}  # fmt: skip
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    out = load_handler.handler(event(), lambda_context)
    assert (out["backfill_id"], out["rows_inserted"], out["coins_loaded"]) == (BACKFILL, 3, 1)
    with pytest.raises(ValidationError, match="load_history") as err:
        load_handler.handler({"action": "load-history"}, lambda_context)
    assert err.value.field == "action"


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"action": "load"}, "action"),
        ({"bucket": "someone-elses-bucket"}, "bucket"),
        ({"backfill_id": "x'; DROP TABLE CRYPTO_PRICE_HISTORY; --"}, "backfill_id"),
        ({"backfill_id": None}, "backfill_id"),
        ({"history_prefix": "raw/history/backfill=other/"}, "history_prefix"),
        ({"history_prefix": None}, "history_prefix"),
        ({"items_key": "raw/history/backfill=bf-test/../items.json"}, "items_key"),
        ({"results_prefix": "raw/"}, "results_prefix"),
        ({"vs_currency": "USD"}, "vs_currency"),
        ({"vs_currency": None}, "vs_currency"),
        ({"days": 0}, "days"),
        ({"days": "365"}, "days"),
        ({"days": True}, "days"),
        ({"fetch": "done"}, "fetch"),
        ({"fetch": [1]}, "fetch[0]"),
        ({"fetch": {"MapRunArn": "arn"}}, "fetch.ResultWriterDetails"),
        ({"fetch": {"ResultWriterDetails": {"Bucket": "other-b", "Key": PREFIX + "results/m"}}},
         "fetch.ResultWriterDetails.Bucket"),
        ({"fetch": {"ResultWriterDetails": {"Bucket": BUCKET, "Key": "processed/m.json"}}},
         "fetch.ResultWriterDetails.Key"),
    ],
)  # fmt: skip
def test_bad_events_raise_validation_error_naming_the_field(change, field, lake):
    def no_config() -> SnowflakeConfig:
        raise AssertionError("configuration must not be read for a bad event")

    with pytest.raises(ValidationError) as err:
        load_history_run(event(**change), storage=lake, config=no_config)
    assert err.value.field == field


def test_missing_or_bad_items_are_refused_before_connecting(lake):
    def no_config() -> SnowflakeConfig:
        raise AssertionError("must not connect")

    with pytest.raises(ValidationError, match="does not exist") as err:
        load_history_run(event(), storage=lake, config=no_config)
    assert err.value.field == "items_key"
    lake.put_bytes(keys.history_items_key(BACKFILL), b'[{"coin_id": "../etc"}]')
    with pytest.raises(ValidationError, match="item 0") as err:
        load_history_run(event(), storage=lake, config=no_config)
    assert err.value.field == "items_key"


def test_the_staged_file_is_gzip_csv_with_one_line_per_row(lake, tmp_path):
    plan(lake, ["a", "b"], {"a": chart(0, TODAY, 4), "b": b"nope"})
    path = tmp_path / "h.csv.gz"
    written = history.write_history_file(
        lake, path, coins=[(c, keys.history_coin_key(BACKFILL, c)) for c in "ab"],
        vs_currency="usd",
    )  # fmt: skip
    lines = gzip.decompress(path.read_bytes()).decode().splitlines()
    assert len(lines) == 1 + written.rows == 5 and written.coins_loaded == ["a"]
    assert set(written.failed) == {"b"}
    assert all(not math.isnan(float(v)) for v in lines[1].split(",")[3:])
