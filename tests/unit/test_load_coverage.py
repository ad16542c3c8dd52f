"""Coverage against /global in the run log (ETL_RUNS), through the real handler and emulator.

The Transform output's ``coverage`` object lands in seven nullable ETL_RUNS columns; an event
without one (older Transform) writes NULLs; an ETL_RUNS created by the previous version (without
those columns) is upgraded in place by the load, keeping its rows. Real SQL against the fakesnow
server, as in test_load_loader.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

import pytest

from functions.common.errors import LoadError, ValidationError
from functions.common.storage import LocalStorage
from functions.load import handler as load_handler
from functions.load.config import SnowflakeConfig
from functions.load.connection import connect
from functions.load.loader import ensure_objects
from functions.load.sql import Names
from local_mode.warehouse import LocalWarehouse
from tests.unit.test_load_loader import BUCKET, T1, _event, coin, processed_bytes, q

_schemas = itertools.count()

COVERAGE = {
    "coins_fetched": 17_250,
    "active_cryptocurrencies": 17_500,
    "coin_pct": 98.57142857142857,
    "market_cap_fetched": 2.41e12,
    "total_market_cap": 2.45e12,
    "market_cap_pct": 98.36734693877551,
    "min_pct": 95.0,
    "whole_market": True,
    "warning": None,
}
COVERAGE_COLUMNS = (
    "COINS_FETCHED, ACTIVE_CRYPTOCURRENCIES, COIN_COVERAGE_PCT, MARKET_CAP_FETCHED,"
    " TOTAL_MARKET_CAP, MARKET_CAP_COVERAGE_PCT, COVERAGE_WARNING"
)

# ETL_RUNS exactly as the previous version created it (before the coverage columns).
PREVIOUS_ETL_RUNS = """CREATE TABLE {table} (
    SNAPSHOT_ID VARCHAR(80) NOT NULL, EXECUTION_ID VARCHAR(2048), STATUS VARCHAR(16) NOT NULL,
    FETCHED_AT TIMESTAMP_TZ, FETCH_DATE DATE, LOAD_STARTED_AT TIMESTAMP_TZ,
    LOADED_AT TIMESTAMP_TZ NOT NULL, VS_CURRENCY VARCHAR(16), COIN_COUNT INTEGER,
    ROWS_LOADED INTEGER, ROWS_INSERTED INTEGER, ROWS_REPLACED INTEGER, REJECTED_COUNT INTEGER,
    DUPLICATE_COUNT INTEGER, API_CALLS INTEGER, RETRIES INTEGER, PAGES INTEGER,
    PROCESSED_KEY VARCHAR(1024), REJECTED_KEY VARCHAR(1024), DOMINANCE_BASIS VARCHAR(16),
    QUALITY VARCHAR
) COMMENT = 'One row per successful load of a snapshot (per execution)'"""


@pytest.fixture(scope="module")
def warehouse(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalWarehouse]:
    with LocalWarehouse(tmp_path_factory.mktemp("warehouse")) as wh:
        yield wh


@pytest.fixture
def cfg(warehouse: LocalWarehouse) -> SnowflakeConfig:
    return SnowflakeConfig.from_env({**warehouse.env(), "SNOWFLAKE_SCHEMA": f"C{next(_schemas)}"})


@pytest.fixture
def names(cfg: SnowflakeConfig) -> Names:
    return Names(cfg.database, cfg.schema)


@pytest.fixture
def conn(cfg: SnowflakeConfig) -> Iterator[Any]:
    c = connect(cfg)
    yield c
    c.close()


@pytest.fixture
def lake(tmp_path) -> LocalStorage:
    return LocalStorage(tmp_path / "lake", BUCKET)


def load(lake: LocalStorage, cfg: SnowflakeConfig, snapshot_id: str, **extra: Any) -> dict:
    """Run the Load handler on a two-coin processed file of ``snapshot_id``."""
    event = _event(snapshot_id, **extra)
    rows = [coin(c, snapshot_id, T1) for c in ("bitcoin", "ethereum")]
    lake.put_bytes(event["processed_key"], processed_bytes(rows))
    return load_handler.run(event, storage=lake, config=cfg)


def columns(conn: Any, names: Names) -> list[str]:
    return [
        r[0]
        for r in q(
            conn,
            f"SELECT COLUMN_NAME FROM {names.database}.INFORMATION_SCHEMA.COLUMNS"
            " WHERE TABLE_SCHEMA = %(s)s AND TABLE_NAME = 'ETL_RUNS' ORDER BY ORDINAL_POSITION",
            {"s": names.schema},
        )
    ]


def test_a_load_with_coverage_records_it_in_the_run_log(conn, cfg, lake):
    warning = "coins fetched 98.6 % of /global's active_cryptocurrencies, below 99 %"
    out = load(lake, cfg, "cov1", coverage={**COVERAGE, "warning": warning}, max_coins="all")
    assert out["max_coins"] == "all" and out["rows_inserted"] == 2
    assert q(conn, f"SELECT {COVERAGE_COLUMNS} FROM ETL_RUNS") == [
        (17_250, 17_500, COVERAGE["coin_pct"], 2.41e12, 2.45e12, COVERAGE["market_cap_pct"],
         warning)
    ]  # fmt: skip


def test_coverage_without_global_totals_records_nulls_for_them(conn, cfg, lake):
    coverage = {"coins_fetched": 600, "active_cryptocurrencies": None, "coin_pct": None,
                "market_cap_fetched": 1.5e9, "total_market_cap": None, "market_cap_pct": None,
                "min_pct": 95, "whole_market": False, "warning": None}  # fmt: skip
    load(lake, cfg, "cov2", coverage=coverage, max_coins=600)
    assert q(
        conn,
        "SELECT COINS_FETCHED, MARKET_CAP_FETCHED, ACTIVE_CRYPTOCURRENCIES IS NULL,"
        " COIN_COVERAGE_PCT IS NULL, TOTAL_MARKET_CAP IS NULL, MARKET_CAP_COVERAGE_PCT IS NULL,"
        " COVERAGE_WARNING IS NULL FROM ETL_RUNS",
    ) == [(600, 1.5e9, True, True, True, True, True)]


def test_an_event_without_coverage_records_nulls(conn, cfg, lake):
    load(lake, cfg, "cov3")
    nulls = " AND ".join(f"{c.strip()} IS NULL" for c in COVERAGE_COLUMNS.split(","))
    assert q(conn, f"SELECT COUNT(*), COUNT(CASE WHEN {nulls} THEN 1 END) FROM ETL_RUNS") == [
        (1, 1)
    ]


def test_a_run_log_from_the_previous_version_is_upgraded_and_keeps_its_rows(conn, cfg, names, lake):
    q(conn, f"CREATE SCHEMA IF NOT EXISTS {names.database}.{names.schema}")
    q(conn, PREVIOUS_ETL_RUNS.format(table=names.q("ETL_RUNS")))
    q(
        conn,
        f"INSERT INTO {names.q('ETL_RUNS')} (SNAPSHOT_ID, EXECUTION_ID, STATUS, LOADED_AT,"
        " ROWS_LOADED) VALUES ('old', 'exec-old', 'SUCCEEDED',"
        " CAST('2024-04-30T12:00:00+00:00' AS TIMESTAMP_TZ), 500)",
    )
    before = columns(conn, names)
    assert "COINS_FETCHED" not in before

    load(lake, cfg, "cov4", coverage=COVERAGE)
    ensure_objects(conn, names)  # a second upgrade finds nothing to add

    after = columns(conn, names)
    assert after[: len(before)] == before
    # The coverage columns, then the failure ones (issue 14), all added by the load itself.
    added = [c.strip() for c in COVERAGE_COLUMNS.split(",")]
    assert after[len(before) :] == [*added, "FAILED_STATE", "ERROR_NAME", "ERROR_MESSAGE"]
    assert q(
        conn,
        f"SELECT SNAPSHOT_ID, EXECUTION_ID, ROWS_LOADED, COINS_FETCHED, COIN_COVERAGE_PCT,"
        f" COINS_FETCHED IS NULL FROM {names.q('ETL_RUNS')} ORDER BY SNAPSHOT_ID",
    ) == [
        ("cov4", _event("cov4")["execution_id"], 2, 17_250, COVERAGE["coin_pct"], False),
        ("old", "exec-old", 500, None, None, True),
    ]


def test_a_run_log_missing_an_original_column_is_refused_and_left_as_it_is(conn, names):
    q(conn, f"CREATE SCHEMA IF NOT EXISTS {names.database}.{names.schema}")
    table = PREVIOUS_ETL_RUNS.format(table=names.q("ETL_RUNS"))
    q(conn, table.replace(" PAGES INTEGER,", ""))
    before = columns(conn, names)
    with pytest.raises(LoadError, match=r"ETL_RUNS exists but lacks columns \['PAGES'\]; .*ADD"):
        ensure_objects(conn, names)
    assert columns(conn, names) == before


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ("not an object", "coverage"),
        ({"coins_fetched": None}, "coverage.coins_fetched"),
        ({"coins_fetched": "17250"}, "coverage.coins_fetched"),
        ({"coins_fetched": 1.5}, "coverage.coins_fetched"),
        ({"coins_fetched": True}, "coverage.coins_fetched"),
        ({"active_cryptocurrencies": -1}, "coverage.active_cryptocurrencies"),
        ({"coin_pct": "98.6"}, "coverage.coin_pct"),
        ({"coin_pct": float("nan")}, "coverage.coin_pct"),
        ({"coin_pct": True}, "coverage.coin_pct"),
        ({"market_cap_fetched": float("inf")}, "coverage.market_cap_fetched"),
        ({"total_market_cap": -1.0}, "coverage.total_market_cap"),
        ({"market_cap_pct": [98.4]}, "coverage.market_cap_pct"),
        ({"min_pct": "95"}, "coverage.min_pct"),
        ({"whole_market": "yes"}, "coverage.whole_market"),
        ({"warning": 3}, "coverage.warning"),
    ],
)
def test_bad_coverage_is_refused_naming_the_field(change, field, lake):
    def no_config():
        raise AssertionError("configuration must not be read for a bad event")

    coverage = change if isinstance(change, str) else {**COVERAGE, **change}
    with pytest.raises(ValidationError) as err:
        load_handler.run(_event(coverage=coverage), storage=lake, config=no_config)
    assert err.value.field == field


def test_max_coins_all_and_integer_coverage_figures_are_accepted(lake):
    coverage = {**COVERAGE, "coin_pct": 100, "min_pct": 95}
    request = load_handler.parse_event(_event(coverage=coverage, max_coins="all"), bucket=BUCKET)
    assert request.run.coverage is not None
    assert (request.run.coverage.coin_pct, request.run.coverage.whole_market) == (100.0, True)
