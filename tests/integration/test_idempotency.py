"""Idempotency on real components (folder lake, replay server, fakesnow server, the real
handlers and state machine): a handler invoked twice with the same input leaves the same lake
objects and tables; two executions of one snapshot converge to one copy; two snapshots loaded
at once both land whole."""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Iterator
from typing import Any
from unittest import mock

import pytest

from functions.common.context import LocalLambdaContext
from functions.load.loader import ensure_objects
from functions.load.sql import Names
from local_mode.replay_server import ReplayServer, SyntheticSource
from local_mode.warehouse_faults import FaultBench
from state_machine.local_runner import default_handlers

pytestmark = pytest.mark.integration

# What a repeated Load rewrites by design: the load's own times, and the run-log row's
# inserted/replaced counts (a repeat replaces every row it inserted the first time).
LOAD_TIME_COLUMNS = {"LOADED_AT", "LOAD_STARTED_AT"}
RUN_COUNT_COLUMNS = {"ROWS_INSERTED", "ROWS_REPLACED"}


@pytest.fixture(scope="module")
def bench(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FaultBench]:
    # The bench deploys the pipeline under moto with its environment: the handlers called
    # directly below see the same lake, replay server and warehouse (through the proxy).
    with FaultBench(tmp_path_factory.mktemp("idempotency")) as b:
        yield b


def _ctx(name: str) -> LocalLambdaContext:
    return LocalLambdaContext(function_name=name, timeout_seconds=900)


def _extract_event(bench: FaultBench, snapshot_id: str, execution: str) -> dict[str, Any]:
    arn = f"arn:aws:states:us-east-1:123456789012:execution:crypto-etl-pipeline:{execution}"
    return {
        "input": bench.execution_input(snapshot_id),
        "execution": {"name": execution, "id": arn, "start_time": "2026-11-30T00:00:00+00:00"},
    }


def _lake(bench: FaultBench) -> dict[str, str]:
    """Every lake object's key -> SHA-256 of its bytes."""
    return {
        p.relative_to(bench.lake_dir).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(bench.lake_dir.rglob("*"))
        if p.is_file()
    }


def _rows(bench: FaultBench, table: str, where: str, drop: set[str]) -> list[dict[str, Any]]:
    cols = [
        c[0]
        for c in bench.query(
            "SELECT COLUMN_NAME FROM INFORMATION_SCHEMA.COLUMNS"
            f" WHERE TABLE_NAME = '{table}' ORDER BY ORDINAL_POSITION"
        )
    ]
    rows = bench.query(f"SELECT * FROM {table} WHERE {where}")
    out = [{c: v for c, v in zip(cols, row, strict=True) if c not in drop} for row in rows]
    return sorted(out, key=repr)


def _tables(bench: FaultBench, snapshot_id: str) -> dict[str, list[dict[str, Any]]]:
    where = f"SNAPSHOT_ID = '{snapshot_id}'"
    return {
        "CRYPTO_DATA": _rows(bench, "CRYPTO_DATA", where, LOAD_TIME_COLUMNS),
        "ETL_RUNS": _rows(bench, "ETL_RUNS", where, LOAD_TIME_COLUMNS | RUN_COUNT_COLUMNS),
        "CRYPTO_ASSET_DIM": _rows(bench, "CRYPTO_ASSET_DIM", "TRUE", set()),
    }


def test_each_handler_twice_with_the_same_input_changes_nothing(bench: FaultBench):
    handlers = default_handlers()
    event = _extract_event(bench, "idem-handlers", "idem-handlers-run")

    extracted = handlers["extract"](event, _ctx("extract"))
    lake = _lake(bench)
    assert extracted["done"] is True and extracted["run_id"] == "idem-handlers-run"
    # Same execution, so same run id and progress.json: the repeat rewrites nothing.
    assert handlers["extract"](event, _ctx("extract")) == extracted
    assert _lake(bench) == lake

    transformed = handlers["transform"](extracted, _ctx("transform"))
    lake = _lake(bench)
    assert handlers["transform"](extracted, _ctx("transform")) == transformed
    assert _lake(bench) == lake  # processed and rejected files byte for byte

    first = handlers["load"](transformed, _ctx("load"))
    lake, tables = _lake(bench), _tables(bench, "idem-handlers")
    second = handlers["load"](transformed, _ctx("load"))
    assert (first["rows_inserted"], first["rows_replaced"]) == (bench.coins, 0)
    assert (second["rows_inserted"], second["rows_replaced"]) == (0, bench.coins)
    assert _tables(bench, "idem-handlers") == tables
    assert len(tables["CRYPTO_DATA"]) == bench.coins
    assert len(tables["ETL_RUNS"]) == 1  # the execution's row, replaced by the repeat
    # The lake differs only by the snapshot index's load time.
    index_key = "snapshots/idem-handlers.json"
    assert {k: v for k, v in _lake(bench).items() if k != index_key} == {
        k: v for k, v in lake.items() if k != index_key
    }
    index = bench.snapshot_index("idem-handlers")
    assert index is not None and index["current"]["run_id"] == "idem-handlers-run"


def test_two_executions_of_one_snapshot_converge_to_one_copy(bench: FaultBench):
    runs = [bench.execute("idem-twice") for _ in range(2)]
    assert [r.status for r in runs] == ["SUCCEEDED", "SUCCEEDED"]
    assert bench.snapshot_rows("idem-twice") == (bench.coins, bench.coins)
    second = runs[1].output or {}
    index = bench.snapshot_index("idem-twice")
    assert index is not None
    assert index["current"]["run_id"] == second["run_id"]
    assert index["current"]["execution_id"] == second["execution_id"]
    # The table holds one run's rows (the second's), not a mix.
    loaded = bench.query(
        "SELECT COUNT(DISTINCT LOADED_AT) FROM CRYPTO_DATA WHERE SNAPSHOT_ID = 'idem-twice'"
    )
    assert loaded == [(1,)]
    log = bench.query(
        "SELECT EXECUTION_ID, ROWS_INSERTED, ROWS_REPLACED FROM ETL_RUNS"
        " WHERE SNAPSHOT_ID = 'idem-twice' AND STATUS = 'SUCCEEDED' ORDER BY LOADED_AT"
    )
    # One row per execution (README: a re-run adds a row saying what it replaced).
    assert log == [
        (runs[0].output["execution_id"], bench.coins, 0),
        (second["execution_id"], 0, bench.coins),
    ]


def test_two_snapshots_loaded_at_once_both_land_whole(bench: FaultBench):
    """Two Load invocations at the same moment against one fakesnow server, mostly different
    coins (two synthetic markets): no lost update in CRYPTO_ASSET_DIM or ETL_RUNS."""
    handlers = default_handlers()
    extract, transform = handlers["extract"], handlers["transform"]
    a = transform(extract(_extract_event(bench, "conc-a", "conc-a-run"), _ctx("e")), _ctx("t"))
    other = ReplayServer(SyntheticSource(bench.coins, seed=2))
    with other, mock.patch.dict(os.environ, {"COINGECKO_BASE_URL": other.start().base_url}):
        b_extract = extract(_extract_event(bench, "conc-b", "conc-b-run"), _ctx("e"))
    b = transform(b_extract, _ctx("t"))
    conn = bench.connect()  # the tables exist, as after any first load
    try:
        ensure_objects(conn, Names(bench.warehouse.database, bench.warehouse.schema))
    finally:
        conn.close()

    results: dict[str, Any] = {}
    start = threading.Barrier(2)

    def load(event: dict[str, Any]) -> None:
        start.wait()
        try:
            results[event["snapshot_id"]] = handlers["load"](event, _ctx("load"))
        except Exception as exc:  # reported below with the other thread's outcome
            results[event["snapshot_id"]] = exc

    threads = [threading.Thread(target=load, args=(e,)) for e in (a, b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert all(isinstance(r, dict) for r in results.values()), results
    assert [results[s]["asset_dim_merged"] for s in ("conc-a", "conc-b")] == [True, True]

    ids = {
        s: {r[0] for r in bench.query(f"SELECT COIN_ID FROM CRYPTO_DATA WHERE SNAPSHOT_ID = '{s}'")}
        for s in ("conc-a", "conc-b")
    }
    assert len(ids["conc-a"]) == len(ids["conc-b"]) == bench.coins
    assert len(ids["conc-a"] & ids["conc-b"]) < bench.coins // 2  # mostly different coins
    for s in ("conc-a", "conc-b"):
        assert bench.snapshot_rows(s) == (bench.coins, bench.coins)
    dim = {r[0] for r in bench.query("SELECT COIN_ID FROM CRYPTO_ASSET_DIM")}
    assert ids["conc-a"] | ids["conc-b"] <= dim
    log = bench.query(
        "SELECT SNAPSHOT_ID, EXECUTION_ID FROM ETL_RUNS WHERE SNAPSHOT_ID IN ('conc-a', 'conc-b')"
        " AND STATUS = 'SUCCEEDED' ORDER BY 1"
    )
    assert [(s, e.rsplit(":", 1)[-1]) for s, e in log] == [
        ("conc-a", "conc-a-run"),
        ("conc-b", "conc-b-run"),
    ]
