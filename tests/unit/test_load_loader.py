"""The load against a real fakesnow server over HTTP (the real connector, real SQL).

Each test works in its own schema of the module's warehouse, so tests do not see each other.
Processed files are written here by hand with the csv module, following the encoding rules of
functions.common.schema (NULL = empty field, floats full precision, UTC timestamps).
"""

from __future__ import annotations

import csv
import gzip
import io
import itertools
from collections.abc import Iterator, Mapping
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pytest
from snowflake.connector.errors import OperationalError

from functions.common import keys
from functions.common.errors import LoadError, ValidationError
from functions.common.schema import COLUMN_NAMES, TIMESTAMP_FORMAT
from functions.common.storage import LocalStorage
from functions.load import handler as load_handler
from functions.load import sql
from functions.load.config import SnowflakeConfig
from functions.load.connection import connect
from functions.load.loader import RunInfo, ensure_objects, load_snapshot
from functions.load.sql import Names
from local_mode.warehouse import LocalWarehouse

BUCKET = "crypto-etl-test"
T1 = datetime(2024, 5, 1, 12, 0, 0, 123456, tzinfo=UTC)
T2 = datetime(2024, 5, 1, 18, 30, 0, tzinfo=UTC)
_schemas = itertools.count()


def coin(coin_id: str, snapshot_id: str, fetched_at: datetime, **fields: Any) -> dict[str, Any]:
    """One processed row with plausible values; ``fields`` override (None = NULL)."""
    price = fields.pop("current_price", 100.0)
    row: dict[str, Any] = dict.fromkeys(COLUMN_NAMES)
    row.update(
        snapshot_id=snapshot_id,
        fetched_at=fetched_at,
        fetch_date=fetched_at.date(),
        vs_currency="usd",
        coin_id=coin_id,
        symbol=coin_id[:3],
        name=coin_id.title(),
        image_url=f"https://img.example/{coin_id}.png",
        current_price=price,
        market_cap=price * 1e7,
        market_cap_rank=1,
        total_volume=price * 1e5,
        price_change_percentage_24h=1.25,
        circulating_supply=1e7,
        max_supply=2.1e7,
        ath=price * 2,
        ath_date=datetime(2021, 11, 10, 14, 24, 11, 849000, tzinfo=UTC),
        last_updated=fetched_at,
        market_cap_dominance_pct=10.0,
        volume_pct=5.0,
        dominance_basis="global",
    )
    row.update(fields)
    return row


def _encode(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, datetime):
        return value.astimezone(UTC).strftime(TIMESTAMP_FORMAT)
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, float):
        return repr(value)
    return str(value)


def processed_bytes(rows: list[Mapping[str, Any]], raw_rows: list[list[str]] = ()) -> bytes:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(COLUMN_NAMES)
    writer.writerows([_encode(r[c]) for c in COLUMN_NAMES] for r in rows)
    writer.writerows(raw_rows)
    return gzip.compress(buf.getvalue().encode())


def write_processed(path: Path, rows: list[Mapping[str, Any]]) -> Path:
    path.write_bytes(processed_bytes(rows))
    return path


@pytest.fixture(scope="module")
def warehouse(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalWarehouse]:
    with LocalWarehouse(tmp_path_factory.mktemp("warehouse")) as wh:
        yield wh


@pytest.fixture
def cfg(warehouse: LocalWarehouse) -> SnowflakeConfig:
    """The warehouse's config with a schema of this test's own."""
    return SnowflakeConfig.from_env({**warehouse.env(), "SNOWFLAKE_SCHEMA": f"T{next(_schemas)}"})


@pytest.fixture
def names(cfg: SnowflakeConfig) -> Names:
    return Names(cfg.database, cfg.schema)


@pytest.fixture
def conn(cfg: SnowflakeConfig, names: Names) -> Iterator[Any]:
    c = connect(cfg)
    ensure_objects(c, names)
    yield c
    c.close()


def q(conn: Any, statement: str, params: Mapping[str, Any] | None = None) -> list[tuple]:
    with conn.cursor() as cur:
        cur.execute(statement, params)
        return [tuple(r) for r in cur.fetchall()]


def snapshot_state(conn: Any) -> tuple[list[tuple], list[tuple]]:
    """Everything in CRYPTO_DATA and ETL_RUNS, in a stable order."""
    data = q(conn, "SELECT * FROM CRYPTO_DATA ORDER BY SNAPSHOT_ID, COIN_ID")
    runs = q(conn, "SELECT * FROM ETL_RUNS ORDER BY SNAPSHOT_ID, EXECUTION_ID, LOADED_AT")
    return data, runs


def test_load_writes_typed_rows_run_log_and_asset_dim(conn, names, tmp_path):
    rows = [
        coin("bitcoin", "s1", T1, current_price=65000.5, market_cap=1.2e12, market_cap_rank=1),
        coin(
            "odd,coin",
            "s1",
            T1,
            name='Name, with "quotes"',
            current_price=1.5e-8,
            market_cap=0.0,
            market_cap_rank=None,
            max_supply=None,
            ath_date=None,
            image_url=None,
        ),
        coin("ethereum", "s1", T1, current_price=3000.0, market_cap=3.6e11, market_cap_rank=2),
    ]
    path = write_processed(tmp_path / "s1.csv.gz", rows)
    run = RunInfo(execution_id="exec-1", fetched_at=T1.strftime(TIMESTAMP_FORMAT),
                  fetch_date="2024-05-01", vs_currency="usd", coin_count=3, rejected_count=1,
                  duplicate_count=2, api_calls=4, retries=1, pages=1,
                  processed_key="processed/dt=2024-05-01/snapshot=s1/crypto_data.csv.gz",
                  quality={"rows": 3})  # fmt: skip

    result = load_snapshot(
        conn, local_file=path, snapshot_id="s1", row_count=3, names=names, run=run
    )

    assert (result.rows_inserted, result.rows_replaced, result.rows_loaded) == (3, 0, 3)
    assert result.table == f"CRYPTO_ETL_DB.{names.schema}.CRYPTO_DATA"
    (btc,) = q(
        conn,
        "SELECT FETCHED_AT, FETCH_DATE, CURRENT_PRICE, MARKET_CAP, MARKET_CAP_RANK, ATH_DATE,"
        " DOMINANCE_BASIS, LOADED_AT FROM CRYPTO_DATA WHERE COIN_ID = 'bitcoin'",
    )
    assert btc[0] == T1 and btc[1] == date(2024, 5, 1)
    assert btc[2] == 65000.5 and btc[3] == 1.2e12 and btc[4] == 1 and isinstance(btc[4], int)
    assert btc[5] == datetime(2021, 11, 10, 14, 24, 11, 849000, tzinfo=UTC)
    assert btc[6] == "global"
    assert abs((btc[7] - datetime.now(UTC)).total_seconds()) < 600
    # Quoting, commas, tiny floats and NULLs survive (NULLs checked in SQL: the bare emulator
    # fetches a NULL TIMESTAMP_TZ back as 1970-01-01 UTC).
    (odd,) = q(
        conn,
        "SELECT NAME, CURRENT_PRICE, MARKET_CAP, MARKET_CAP_RANK IS NULL, MAX_SUPPLY IS NULL,"
        " ATH_DATE IS NULL, IMAGE_URL IS NULL, FULLY_DILUTED_VALUATION IS NULL"
        " FROM CRYPTO_DATA WHERE COIN_ID = 'odd,coin'",
    )
    assert odd == ('Name, with "quotes"', 1.5e-8, 0.0, True, True, True, True, True)
    assert q(conn, "SELECT ATH_DATE FROM CRYPTO_DATA WHERE COIN_ID = 'odd,coin'") == [(None,)]
    # The run log row (one SUCCEEDED row with the load's and the event's counts).
    runs = q(
        conn,
        "SELECT SNAPSHOT_ID, EXECUTION_ID, STATUS, ROWS_LOADED, ROWS_INSERTED, ROWS_REPLACED,"
        " COIN_COUNT, REJECTED_COUNT, DUPLICATE_COUNT, API_CALLS, RETRIES, PAGES, FETCHED_AT,"
        " FETCH_DATE, DOMINANCE_BASIS, QUALITY, PROCESSED_KEY FROM ETL_RUNS",
    )
    assert runs == [
        ("s1", "exec-1", "SUCCEEDED", 3, 3, 0, 3, 1, 2, 4, 1, 1, T1, date(2024, 5, 1), "global",
         '{"rows": 3}', "processed/dt=2024-05-01/snapshot=s1/crypto_data.csv.gz"),
    ]  # fmt: skip
    assert q(conn, "SELECT COUNT(*) FROM ETL_RUNS WHERE LOADED_AT = %(t)s::TIMESTAMP_TZ",
             {"t": result.loaded_at}) == [(1,)]  # fmt: skip
    # The asset dimension holds every coin once, first and last seen at this snapshot.
    dim = q(
        conn,
        "SELECT COIN_ID, NAME, FIRST_SEEN_AT, LAST_SEEN_AT, FIRST_SNAPSHOT_ID, LAST_SNAPSHOT_ID,"
        " LAST_MARKET_CAP_RANK FROM CRYPTO_ASSET_DIM ORDER BY COIN_ID",
    )
    assert [(d[0], d[1], d[2], d[3], d[4], d[5]) for d in dim] == [
        ("bitcoin", "Bitcoin", T1, T1, "s1", "s1"),
        ("ethereum", "Ethereum", T1, T1, "s1", "s1"),
        ("odd,coin", 'Name, with "quotes"', T1, T1, "s1", "s1"),
    ]
    assert q(conn, "SELECT COUNT(*) FROM CRYPTO_ASSET_DIM WHERE LAST_MARKET_CAP_RANK IS NULL") == [
        (1,)
    ]


def test_backslashes_and_delimiters_in_text_survive_the_copy(conn, names, tmp_path):
    rows = [
        coin("slash", "bs", T1, name="ends with a backslash\\", symbol="a\\b,c"),
        coin("tab", "bs", T1, name="tab\\tnot-a-tab", symbol="x"),
    ]
    path = write_processed(tmp_path / "bs.csv.gz", rows)
    load_snapshot(conn, local_file=path, snapshot_id="bs", row_count=2, names=names)
    got = q(conn, f"SELECT COIN_ID, NAME, SYMBOL FROM {names.q('CRYPTO_DATA')}"
               " WHERE SNAPSHOT_ID = 'bs' ORDER BY COIN_ID")  # fmt: skip
    assert got == [
        ("slash", "ends with a backslash\\", "a\\b,c"),
        ("tab", "tab\\tnot-a-tab", "x"),
    ]
    sql_text = sql.copy_into_staging("T", "S").sql
    assert "ESCAPE_UNENCLOSED_FIELD = NONE" in sql_text


def test_reloading_a_snapshot_replaces_it_and_another_snapshot_adds_rows(conn, names, tmp_path):
    first = [coin(c, "s1", T1) for c in ("a", "b", "c")]
    path = write_processed(tmp_path / "s1.csv.gz", first)
    load_snapshot(conn, local_file=path, snapshot_id="s1", row_count=3, names=names,
                  run=RunInfo(execution_id="e1"))  # fmt: skip
    before = q(conn, "SELECT COIN_ID, CURRENT_PRICE FROM CRYPTO_DATA ORDER BY COIN_ID")

    again = load_snapshot(conn, local_file=path, snapshot_id="s1", row_count=3, names=names,
                          run=RunInfo(execution_id="e1"))  # fmt: skip
    assert (again.rows_inserted, again.rows_replaced) == (0, 3)
    assert q(conn, "SELECT COIN_ID, CURRENT_PRICE FROM CRYPTO_DATA ORDER BY COIN_ID") == before
    # A retried task of the same execution replaces its run-log row instead of adding one.
    assert q(conn, "SELECT EXECUTION_ID, ROWS_INSERTED, ROWS_REPLACED FROM ETL_RUNS") == [
        ("e1", 0, 3)
    ]

    # The same snapshot from another execution, with one coin gone and one new: replaced whole.
    changed = [coin("a", "s1", T1, current_price=7.0), coin("b", "s1", T1), coin("d", "s1", T1)]
    path2 = write_processed(tmp_path / "s1b.csv.gz", changed)
    res = load_snapshot(conn, local_file=path2, snapshot_id="s1", row_count=3, names=names,
                        run=RunInfo(execution_id="e2"))  # fmt: skip
    assert (res.rows_inserted, res.rows_replaced) == (1, 3)
    assert q(conn, "SELECT COIN_ID, CURRENT_PRICE FROM CRYPTO_DATA ORDER BY COIN_ID") == [
        ("a", 7.0), ("b", 100.0), ("d", 100.0)
    ]  # fmt: skip
    assert q(conn, "SELECT COUNT(*) FROM ETL_RUNS") == [(2,)]

    # A different snapshot adds its rows next to the first one's.
    second = [coin(c, "s2", T2, current_price=200.0) for c in ("a", "b")]
    path3 = write_processed(tmp_path / "s2.csv.gz", second)
    res = load_snapshot(conn, local_file=path3, snapshot_id="s2", row_count=2, names=names)
    assert (res.rows_inserted, res.rows_replaced) == (2, 0)
    assert q(conn, "SELECT SNAPSHOT_ID, COUNT(*) FROM CRYPTO_DATA GROUP BY 1 ORDER BY 1") == [
        ("s1", 3), ("s2", 2)
    ]  # fmt: skip


def test_asset_dim_converges_whatever_the_snapshot_order(conn, names, tmp_path):
    old = write_processed(tmp_path / "old.csv.gz", [coin("a", "old", T1, name="Old Name")])
    new = write_processed(
        tmp_path / "new.csv.gz",
        [coin("a", "new", T2, name="New Name", market_cap_rank=5), coin("b", "new", T2)],
    )
    dim_sql = (
        "SELECT COIN_ID, NAME, FIRST_SEEN_AT, LAST_SEEN_AT, FIRST_SNAPSHOT_ID, LAST_SNAPSHOT_ID,"
        " LAST_MARKET_CAP_RANK FROM CRYPTO_ASSET_DIM ORDER BY COIN_ID"
    )
    expected = [("a", "New Name", T1, T2, "old", "new", 5), ("b", "B", T2, T2, "new", "new", 1)]
    load_snapshot(conn, local_file=new, snapshot_id="new", row_count=2, names=names)
    load_snapshot(conn, local_file=old, snapshot_id="old", row_count=1, names=names)
    assert q(conn, dim_sql) == expected
    # Replaying both (a retried execution) changes nothing.
    load_snapshot(conn, local_file=old, snapshot_id="old", row_count=1, names=names)
    load_snapshot(conn, local_file=new, snapshot_id="new", row_count=2, names=names)
    assert q(conn, dim_sql) == expected


def test_reporting_views(conn, names, tmp_path):
    early = [
        coin("a", "s-early", T1, current_price=10.0, price_change_percentage_24h=-30.0),
        coin("b", "s-early", T1, current_price=5.0, price_change_percentage_24h=2.0),
    ]
    late = [
        coin("a", "s-late", T2, current_price=12.0, price_change_percentage_24h=-20.0,
             market_cap_rank=1),
        coin("b", "s-late", T2, current_price=4.0, price_change_percentage_24h=50.0,
             market_cap_rank=2),
        coin("c", "s-late", T2, current_price=1.0, price_change_percentage_24h=10.0,
             market_cap_rank=3),
        coin("dust", "s-late", T2, price_change_percentage_24h=900.0, market_cap_rank=9999),
        coin("flat", "s-late", T2, price_change_percentage_24h=None, market_cap_rank=4),
    ]  # fmt: skip
    load_snapshot(conn, local_file=write_processed(tmp_path / "l.csv.gz", late),
                  snapshot_id="s-late", row_count=len(late), names=names)  # fmt: skip
    load_snapshot(conn, local_file=write_processed(tmp_path / "e.csv.gz", early),
                  snapshot_id="s-early", row_count=len(early), names=names)  # fmt: skip

    # LATEST_SNAPSHOT: the snapshot fetched last, even though it was loaded first.
    assert q(conn, "SELECT DISTINCT SNAPSHOT_ID FROM LATEST_SNAPSHOT") == [("s-late",)]
    assert q(conn, "SELECT COUNT(*) FROM LATEST_SNAPSHOT") == [(5,)]
    # DAILY_ROLLUP: open/close/high/low over the day's two snapshots.
    rollup = q(
        conn,
        "SELECT COIN_ID, SNAPSHOTS, OPEN_PRICE, CLOSE_PRICE, HIGH_PRICE, LOW_PRICE,"
        " DAY_CHANGE_PCT FROM DAILY_ROLLUP WHERE COIN_ID IN ('a', 'b') ORDER BY COIN_ID",
    )
    assert rollup == [("a", 2, 10.0, 12.0, 12.0, 10.0, 20.0), ("b", 2, 5.0, 4.0, 5.0, 4.0, -20.0)]
    # TOP_MOVERS: ranked per direction within the top coins; no NULL moves, no dust.
    movers = q(conn, "SELECT DIRECTION, MOVE_RANK, COIN_ID FROM TOP_MOVERS ORDER BY 1, 2")
    assert movers == [("GAINER", 1, "b"), ("GAINER", 2, "c"), ("LOSER", 1, "a")]
    # DATE_DIM: one row per date present.
    assert q(conn, "SELECT DATE_KEY, CALENDAR_YEAR, MONTH_NUMBER, DAY_NAME, IS_WEEKEND,"
                   " WEEK_START FROM DATE_DIM") == [
        (date(2024, 5, 1), 2024, 5, "Wed", False, date(2024, 4, 29))
    ]  # fmt: skip


# --- failures leave CRYPTO_DATA and ETL_RUNS exactly as they were ------------------------------


@pytest.fixture
def loaded(conn, names, tmp_path) -> tuple[list[tuple], list[tuple]]:
    """A warehouse holding snapshot s1 (3 coins), and its state."""
    path = write_processed(tmp_path / "base.csv.gz", [coin(c, "s1", T1) for c in "abc"])
    load_snapshot(conn, local_file=path, snapshot_id="s1", row_count=3, names=names,
                  run=RunInfo(execution_id="e1"))  # fmt: skip
    return snapshot_state(conn)


def test_row_count_mismatch_is_refused_before_any_change(conn, names, loaded, tmp_path):
    path = write_processed(tmp_path / "s1.csv.gz", [coin(c, "s1", T1, current_price=1.0)
                                                    for c in "ab"])  # fmt: skip
    with pytest.raises(LoadError, match=r"COPY loaded 2 rows .* row_count is 3"):
        load_snapshot(conn, local_file=path, snapshot_id="s1", row_count=3, names=names)
    assert snapshot_state(conn) == loaded


def test_a_value_copy_cannot_parse_fails_the_copy_step(conn, names, loaded, tmp_path):
    good = [coin(c, "s1", T1, current_price=1.0) for c in "ab"]
    bad = coin("c", "s1", T1)
    raw = [_encode(bad[c]) for c in COLUMN_NAMES]
    raw[COLUMN_NAMES.index("current_price")] = "not-a-number"
    path = tmp_path / "bad.csv.gz"
    path.write_bytes(processed_bytes(good, [raw]))
    with pytest.raises(LoadError, match="'copy into staging' failed for snapshot s1"):
        load_snapshot(conn, local_file=path, snapshot_id="s1", row_count=3, names=names)
    assert snapshot_state(conn) == loaded


def test_a_file_whose_columns_differ_from_the_schema_is_refused(conn, names, loaded, tmp_path):
    rows = [coin(c, "s1", T1) for c in "abc"]
    swapped = list(COLUMN_NAMES)
    i, j = swapped.index("high_24h"), swapped.index("low_24h")
    swapped[i], swapped[j] = swapped[j], swapped[i]
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(swapped)
    writer.writerows([_encode(r[c]) for c in swapped] for r in rows)
    path = tmp_path / "swapped.csv.gz"
    path.write_bytes(gzip.compress(buf.getvalue().encode()))
    with pytest.raises(LoadError, match="same columns in another order"):
        load_snapshot(conn, local_file=path, snapshot_id="s1", row_count=3, names=names)
    assert snapshot_state(conn) == loaded


def test_duplicate_coin_ids_and_foreign_snapshot_ids_are_refused(conn, names, loaded, tmp_path):
    dup = write_processed(tmp_path / "dup.csv.gz", [coin("a", "s1", T1), coin("a", "s1", T1)])
    with pytest.raises(LoadError, match="repeats 1 COIN_ID"):
        load_snapshot(conn, local_file=dup, snapshot_id="s1", row_count=2, names=names)
    other = write_processed(tmp_path / "other.csv.gz", [coin("a", "s9", T1)])
    with pytest.raises(LoadError, match="not only the event's snapshot_id 's1'"):
        load_snapshot(conn, local_file=other, snapshot_id="s1", row_count=1, names=names)
    assert snapshot_state(conn) == loaded


def test_a_failure_inside_the_transaction_rolls_everything_back(
    conn, names, loaded, tmp_path, monkeypatch
):
    """DELETE and INSERT have run when the run-log insert fails: the ROLLBACK undoes them."""
    real_insert_run = sql.insert_run

    def failing_insert_run(n: Names, values: Mapping[str, Any]) -> sql.Statement:
        stmt = real_insert_run(n, values)
        return sql.Statement(stmt.label, stmt.sql.replace(" QUALITY", " NO_SUCH_COLUMN", 1),
                             stmt.params)  # fmt: skip

    monkeypatch.setattr(sql, "insert_run", failing_insert_run)
    path = write_processed(tmp_path / "new.csv.gz", [coin(c, "s1", T1, current_price=9.0)
                                                     for c in "abcd"])  # fmt: skip
    with pytest.raises(LoadError, match=r"'insert run log row' failed .* rolled back") as err:
        load_snapshot(conn, local_file=path, snapshot_id="s1", row_count=4, names=names,
                      run=RunInfo(execution_id="e2"))  # fmt: skip
    assert "NO_SUCH_COLUMN" in str(err.value)
    assert snapshot_state(conn) == loaded
    # The session is usable afterwards and the same load then succeeds.
    monkeypatch.setattr(sql, "insert_run", real_insert_run)
    res = load_snapshot(conn, local_file=path, snapshot_id="s1", row_count=4, names=names,
                        run=RunInfo(execution_id="e2"))  # fmt: skip
    assert (res.rows_inserted, res.rows_replaced) == (1, 3)


def test_an_asset_dim_failure_after_commit_is_reported_not_raised(
    conn, names, loaded, tmp_path, monkeypatch
):
    """The snapshot is committed: failing the execution would wrongly claim nothing changed."""
    real_merge = sql.merge_asset_dim

    def failing_merge(n: Names, staging: str) -> sql.Statement:
        stmt = real_merge(n, staging)
        return sql.Statement(stmt.label, stmt.sql.replace("MERGE INTO", "MERGE INTO NO_SUCH."),
                             stmt.params)  # fmt: skip

    monkeypatch.setattr(sql, "merge_asset_dim", failing_merge)
    path = write_processed(tmp_path / "m.csv.gz", [coin(c, "s9", T1) for c in "pq"])
    res = load_snapshot(conn, local_file=path, snapshot_id="s9", row_count=2, names=names,
                        run=RunInfo(execution_id="e9"))  # fmt: skip
    assert res.asset_dim_error
    assert res.rows_inserted == 2
    count = q(conn, f"SELECT COUNT(*) FROM {names.q('CRYPTO_DATA')} WHERE SNAPSHOT_ID = 's9'")
    assert count == [(2,)]


def test_an_empty_snapshot_replaces_the_rows_only_if_the_file_is_empty(
    conn, names, loaded, tmp_path
):
    not_empty = write_processed(tmp_path / "one.csv.gz", [coin("a", "s1", T1)])
    with pytest.raises(LoadError, match="holds 1 data lines but the event's row_count is 0"):
        load_snapshot(conn, local_file=not_empty, snapshot_id="s1", row_count=0, names=names)
    assert snapshot_state(conn) == loaded
    empty = write_processed(tmp_path / "empty.csv.gz", [])
    res = load_snapshot(conn, local_file=empty, snapshot_id="s1", row_count=0, names=names)
    assert (res.rows_inserted, res.rows_replaced, res.rows_loaded) == (0, 3, 0)
    assert q(conn, "SELECT COUNT(*) FROM CRYPTO_DATA") == [(0,)]
    assert q(conn, "SELECT ROWS_LOADED, ROWS_REPLACED FROM ETL_RUNS ORDER BY LOADED_AT") == [
        (3, 0), (0, 3)
    ]  # fmt: skip


def test_a_table_from_an_older_version_is_reported(cfg, names):
    c = connect(cfg)
    try:
        q(c, f"CREATE TABLE {names.q('ETL_RUNS')} (SNAPSHOT_ID VARCHAR(80))")
        with pytest.raises(LoadError, match=r"ETL_RUNS exists but lacks columns \['EXECUTION_ID'"):
            ensure_objects(c, names)
    finally:
        c.close()


# --- the schema, and the database an admin must create ----------------------------------------


def test_ensure_objects_creates_a_missing_schema_and_the_load_uses_it(cfg, tmp_path):
    c = connect(cfg)  # a session on the test's own schema; the target is another one
    target = Names(cfg.database, f"{cfg.schema}_NEW")
    schemata = (
        f"SELECT COUNT(*) FROM {cfg.database}.INFORMATION_SCHEMA.SCHEMATA WHERE SCHEMA_NAME = %(s)s"
    )
    try:
        assert q(c, schemata, {"s": target.schema}) == [(0,)]
        ensure_objects(c, target)
        assert q(c, schemata, {"s": target.schema}) == [(1,)]
        ensure_objects(c, target)  # idempotent
        path = write_processed(tmp_path / "n.csv.gz", [coin(x, "n1", T1) for x in "ab"])
        res = load_snapshot(c, local_file=path, snapshot_id="n1", row_count=2, names=target)
        assert res.table == target.q("CRYPTO_DATA")
        assert q(c, f"SELECT COUNT(*) FROM {target.q('CRYPTO_DATA')}") == [(2,)]
    finally:
        c.close()


def test_a_missing_database_is_reported_for_an_admin_to_create(conn):
    with pytest.raises(LoadError) as err:
        ensure_objects(conn, Names("NO_SUCH_DB", "PUBLIC"))
    message = str(err.value)
    assert "database NO_SUCH_DB does not exist or this role cannot use it" in message
    assert "an admin must CREATE DATABASE NO_SUCH_DB" in message


# --- COMMIT fails: report what really happened ------------------------------------------------


class _Cursor:
    """A real cursor whose COMMIT raises as if the connection dropped (optionally after it ran)."""

    def __init__(self, cur: Any, commit_applied: bool) -> None:
        self._cur = cur
        self._commit_applied = commit_applied

    def execute(self, statement: str, params: Any = None) -> Any:
        if statement.strip().upper() == "COMMIT":
            if self._commit_applied:
                self._cur.execute(statement)
            raise OperationalError(msg="connection reset by peer while reading the reply")
        return self._cur.execute(statement, params)

    def __enter__(self) -> _Cursor:
        return self

    def __exit__(self, *exc: object) -> None:
        self._cur.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._cur, name)


class _CommitFails:
    """A real connection whose cursors' COMMIT fails (see _Cursor)."""

    def __init__(self, conn: Any, *, commit_applied: bool) -> None:
        self._conn = conn
        self._commit_applied = commit_applied

    def cursor(self) -> _Cursor:
        return _Cursor(self._conn.cursor(), self._commit_applied)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)


def test_a_commit_whose_reply_is_lost_is_verified_on_a_new_session(cfg, conn, names, tmp_path):
    path = write_processed(tmp_path / "c.csv.gz", [coin(x, "c1", T1) for x in "abc"])
    reconnects: list[Any] = []

    def reconnect() -> Any:
        reconnects.append(connect(cfg))
        return reconnects[-1]

    res = load_snapshot(_CommitFails(conn, commit_applied=True), local_file=path,
                        snapshot_id="c1", row_count=3, names=names,
                        run=RunInfo(execution_id="e1"), reconnect=reconnect)  # fmt: skip
    assert res.commit_reply_lost is True
    assert (res.rows_inserted, res.rows_replaced, res.asset_dim_error) == (3, 0, None)
    assert len(reconnects) == 1
    assert q(conn, "SELECT COUNT(*) FROM CRYPTO_DATA WHERE SNAPSHOT_ID = 'c1'") == [(3,)]
    assert q(conn, "SELECT EXECUTION_ID, ROWS_LOADED FROM ETL_RUNS") == [("e1", 3)]
    assert q(conn, "SELECT COUNT(*) FROM CRYPTO_ASSET_DIM") == [(3,)]


def test_a_commit_that_did_not_happen_is_reported_unchanged(cfg, conn, names, loaded, tmp_path):
    path = write_processed(tmp_path / "c.csv.gz", [coin(x, "s1", T1, current_price=5.0)
                                                   for x in "abcd"])  # fmt: skip
    with pytest.raises(LoadError) as err:
        load_snapshot(_CommitFails(conn, commit_applied=False), local_file=path,
                      snapshot_id="s1", row_count=4, names=names,
                      run=RunInfo(execution_id="e2"), reconnect=lambda: connect(cfg))  # fmt: skip
    message = str(err.value)
    assert "COMMIT failed for snapshot s1" in message
    assert "connection reset by peer" in message
    assert "the transaction did not commit" in message
    assert "CRYPTO_DATA and ETL_RUNS unchanged" in message
    assert "UNKNOWN" not in message
    assert snapshot_state(conn) == loaded
    # The session is usable afterwards and the same load then succeeds.
    res = load_snapshot(conn, local_file=path, snapshot_id="s1", row_count=4, names=names,
                        run=RunInfo(execution_id="e2"))  # fmt: skip
    assert (res.rows_inserted, res.rows_replaced, res.commit_reply_lost) == (1, 3, False)


def _no_new_session() -> Any:
    raise LoadError("cannot connect to Snowflake: the network is down")


@pytest.mark.parametrize("reconnect", [None, _no_new_session], ids=["none", "failing"])
def test_a_commit_that_cannot_be_checked_is_reported_unknown(
    conn, names, loaded, tmp_path, reconnect
):
    """The COMMIT ran, so saying "rolled back, unchanged" would be false."""
    path = write_processed(tmp_path / "c.csv.gz", [coin(x, "s1", T1, current_price=5.0)
                                                   for x in "abcd"])  # fmt: skip
    kwargs = {} if reconnect is None else {"reconnect": reconnect}
    with pytest.raises(LoadError) as err:
        load_snapshot(_CommitFails(conn, commit_applied=True), local_file=path,
                      snapshot_id="s1", row_count=4, names=names,
                      run=RunInfo(execution_id="e2"), **kwargs)  # fmt: skip
    message = str(err.value)
    assert "COMMIT failed for snapshot s1" in message
    assert "its outcome is UNKNOWN" in message
    assert "A retry is safe" in message
    assert "rolled back" not in message and "unchanged" not in message
    if reconnect is not None:
        assert "the network is down" in message
    # Indeed the load is committed.
    assert q(conn, "SELECT COUNT(*) FROM CRYPTO_DATA WHERE CURRENT_PRICE = 5.0") == [(4,)]
    assert snapshot_state(conn) != loaded


# --- database and network failures are LoadErrors naming the step -----------------------------


class _FailingStatement:
    """A real connection whose statements starting with ``prefix`` raise ``error``."""

    def __init__(self, conn: Any, prefix: str, error: OSError) -> None:
        self._conn, self._prefix, self._error = conn, prefix, error

    def cursor(self) -> Any:
        cur = self._conn.cursor()
        real_execute = cur.execute

        def execute(statement: str, params: Any = None) -> Any:
            if statement.startswith(self._prefix):
                raise self._error
            return real_execute(statement, params)

        cur.execute = execute
        return cur

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)


@pytest.mark.parametrize(
    ("prefix", "error", "step"),
    [
        ("PUT ", FileNotFoundError(2, "No such file or directory"), "'put file'"),
        ("COPY INTO", ConnectionResetError(104, "Connection reset by peer"), "'copy into"),
        ("INSERT INTO CRYPTO_ETL_DB", ConnectionResetError(104, "Connection reset by peer"),
         "'insert snapshot'"),
    ],
)  # fmt: skip
def test_os_errors_become_load_errors_naming_the_step(
    conn, names, loaded, tmp_path, prefix, error, step
):
    path = write_processed(tmp_path / "o.csv.gz", [coin(x, "s1", T1, current_price=2.0)
                                                   for x in "abcd"])  # fmt: skip
    with pytest.raises(LoadError) as err:
        load_snapshot(_FailingStatement(conn, prefix, error), local_file=path,
                      snapshot_id="s1", row_count=4, names=names)  # fmt: skip
    assert f"load step {step}" in str(err.value)
    assert type(error).__name__ in str(err.value)
    assert snapshot_state(conn) == loaded


# --- the handler: event validation, download, connect, ensure, load ----------------------------


RUN_ID = "r1"


def _event(snapshot_id: str = "h1", row_count: int = 2, **extra: Any) -> dict[str, Any]:
    return {
        "snapshot_id": snapshot_id,
        "run_id": RUN_ID,
        "partition_date": "2024-05-01",
        "execution_id": f"arn:aws:states:us-east-1:123456789012:execution:sm:{snapshot_id}",
        "fetched_at": "2024-05-01T12:00:00.123456Z",
        "fetch_date": "2024-05-01",
        "vs_currency": "usd",
        "bucket": BUCKET,
        "raw_prefix": keys.raw_prefix(snapshot_id, date(2024, 5, 1), RUN_ID),
        "pages": 1,
        "coin_count": row_count,
        "api_calls": 2,
        "retries": 0,
        "processed_key": keys.processed_key(snapshot_id, date(2024, 5, 1), RUN_ID),
        "rejected_key": None,
        "row_count": row_count,
        "rejected_count": 0,
        "duplicate_count": 0,
        "quality": {"dominance_basis": "global"},
        **extra,
    }


@pytest.fixture
def lake(tmp_path) -> LocalStorage:
    return LocalStorage(tmp_path / "lake", BUCKET)


def test_handler_loads_the_processed_file_and_returns_the_contract(
    warehouse, cfg, lake, monkeypatch, lambda_context
):
    event = _event()
    lake.put_bytes(event["processed_key"], processed_bytes([coin(c, "h1", T1) for c in "xy"]))
    env = {**warehouse.env(), "SNOWFLAKE_SCHEMA": cfg.schema, "LAKE_LOCAL_DIR": str(lake.root),
           "LAKE_BUCKET": BUCKET, "POWERTOOLS_LOG_LEVEL": "WARNING"}  # fmt: skip
    for k, v in env.items():
        monkeypatch.setenv(k, v)

    out = load_handler.handler(event, lambda_context)
    assert out == {**event, "rows_inserted": 2, "rows_replaced": 0,
                   "table": f"CRYPTO_ETL_DB.{cfg.schema}.CRYPTO_DATA",
                   "asset_dim_merged": True,
                   "snapshot_index_key": keys.snapshot_index_key("h1")}  # fmt: skip
    out = load_handler.handler(event, lambda_context)
    assert (out["rows_inserted"], out["rows_replaced"]) == (0, 2)
    c = connect(cfg)
    try:
        assert q(c, "SELECT COUNT(*) FROM CRYPTO_DATA WHERE SNAPSHOT_ID = 'h1'") == [(2,)]
        assert q(c, "SELECT EXECUTION_ID, FETCHED_AT, STATUS FROM ETL_RUNS") == [
            (event["execution_id"], T1, "SUCCEEDED")
        ]
    finally:
        c.close()


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"bucket": "someone-elses-bucket"}, "bucket"),
        ({"processed_key": "raw/dt=2024-05-01/snapshot=h1/crypto_data.csv.gz"}, "processed_key"),
        ({"processed_key": "processed/../secret.csv.gz"}, "processed_key"),
        ({"processed_key": "processed/dt=2024-05-01/snapshot=other/crypto_data.csv.gz"},
         "processed_key"),
        ({"snapshot_id": "h1'; DROP TABLE CRYPTO_DATA; --"}, "snapshot_id"),
        ({"row_count": "2"}, "row_count"),
        ({"row_count": -1}, "row_count"),
        ({"row_count": True}, "row_count"),
        ({"row_count": None}, "row_count"),
        ({"fetched_at": "yesterday"}, "fetched_at"),
        ({"fetched_at": "2024-05-01T12:00:00"}, "fetched_at"),
        ({"quality": [1]}, "quality"),
        ({"rejected_key": "processed/x.csv.gz"}, "rejected_key"),
        ({"pages": 1.5}, "pages"),
        ({"execution_id": None}, "execution_id"),
        ({"execution_id": "  "}, "execution_id"),
    ],
)  # fmt: skip
def test_bad_events_raise_validation_error_naming_the_field(change, field, lake):
    def no_config():
        raise AssertionError("configuration must not be read for a bad event")

    with pytest.raises(ValidationError) as err:
        load_handler.run({**_event(), **change}, storage=lake, config=no_config)
    assert err.value.field == field


def test_missing_processed_file_is_reported_before_connecting(lake):
    def no_config():
        raise AssertionError("must not connect")

    with pytest.raises(ValidationError, match="does not exist"):
        load_handler.run(_event(), storage=lake, config=no_config)
