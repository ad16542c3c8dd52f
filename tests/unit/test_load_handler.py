"""The Load handler on a real Transform output: fakesnow server over HTTP, a folder lake.

Each test has its own lake and its own warehouse schema. The Transform outputs come from the real
Extract (HTTP to the replay server) and Transform handlers, so the event is the real contract.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from datetime import date
from pathlib import Path
from typing import Any

import pytest

from functions.common import keys
from functions.common.errors import LoadError, StorageError, ValidationError
from functions.common.storage import LocalStorage
from functions.extract import handler as extract
from functions.load import handler as load
from functions.load.config import SnowflakeConfig
from functions.load.connection import connect
from functions.transform import handler as transform
from local_mode.replay_server import ReplayServer
from local_mode.warehouse import LocalWarehouse
from tests.unit.test_extract_handler import config_for

BUCKET = "crypto-etl-test"
ARN = "arn:aws:states:us-east-1:123456789012:execution:crypto-etl:"
COINS = 30
_schemas = itertools.count()


@pytest.fixture(scope="module")
def warehouse(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalWarehouse]:
    with LocalWarehouse(tmp_path_factory.mktemp("warehouse")) as wh:
        yield wh


@pytest.fixture
def cfg(warehouse: LocalWarehouse) -> SnowflakeConfig:
    """The warehouse's config with a schema of this test's own."""
    return SnowflakeConfig.from_env({**warehouse.env(), "SNOWFLAKE_SCHEMA": f"L{next(_schemas)}"})


@pytest.fixture(scope="module")
def server() -> Iterator[ReplayServer]:
    with ReplayServer.synthetic(coins=COINS, seed=8) as srv:
        yield srv


@pytest.fixture
def lake(tmp_path: Path) -> LocalStorage:
    return LocalStorage(tmp_path / "lake", bucket=BUCKET)


def transformed(server: ReplayServer, lake: LocalStorage, name: str, day: str = "27") -> dict:
    """Extract + Transform of snapshot ``s`` by execution ``name``: the Load's input event."""
    ev = {
        "input": {"snapshot_id": "s"},
        "execution": {"name": name, "id": ARN + name, "start_time": f"2026-11-{day}T08:00:00Z"},
    }
    out = extract.run(ev, config=config_for(server), storage=lake)
    return transform.run(out, storage=lake)


def q(cfg: SnowflakeConfig, statement: str) -> list[tuple]:
    conn = connect(cfg)
    try:
        with conn.cursor() as cur:
            cur.execute(statement)
            return [tuple(r) for r in cur.fetchall()]
    finally:
        conn.close()


def warehouse_state(cfg: SnowflakeConfig) -> tuple[list[tuple], list[tuple]]:
    return (
        q(cfg, "SELECT * FROM CRYPTO_DATA ORDER BY SNAPSHOT_ID, COIN_ID"),
        q(cfg, "SELECT * FROM ETL_RUNS ORDER BY SNAPSHOT_ID, EXECUTION_ID, LOADED_AT"),
    )


def index_of(lake: LocalStorage) -> dict[str, Any]:
    return json.loads(lake.get_bytes("snapshots/s.json"))


def test_load_puts_the_rows_in_the_warehouse_and_switches_the_index(server, lake, cfg) -> None:
    event = transformed(server, lake, "exec-A")
    assert index_of(lake)["current"] is None  # extracted and transformed, not loaded yet

    out = load.run(event, storage=lake, config=cfg)

    assert out == {
        **event,
        "rows_inserted": COINS,
        "rows_replaced": 0,
        "table": f"CRYPTO_ETL_DB.{cfg.schema}.CRYPTO_DATA",
        "asset_dim_merged": True,
        "snapshot_index_key": "snapshots/s.json",
    }
    assert event["row_count"] == COINS
    assert q(cfg, "SELECT COUNT(*), COUNT(DISTINCT COIN_ID) FROM CRYPTO_DATA") == [(COINS, COINS)]
    assert q(cfg, "SELECT DISTINCT SNAPSHOT_ID FROM CRYPTO_DATA") == [("s",)]
    assert q(cfg, "SELECT EXECUTION_ID, STATUS, ROWS_LOADED, PROCESSED_KEY FROM ETL_RUNS") == [
        (ARN + "exec-A", "SUCCEEDED", COINS, event["processed_key"])
    ]
    index = index_of(lake)
    current = index.pop("current")
    loaded_at = current.pop("loaded_at")
    assert current == {
        "run_id": "exec-A",
        "execution_id": ARN + "exec-A",
        "manifest_key": "raw/dt=2026-11-27/snapshot=s/run=exec-A/manifest.json",
        "processed_key": "processed/dt=2026-11-27/snapshot=s/run=exec-A/crypto_data.csv.gz",
        "rejected_key": "rejected/dt=2026-11-27/snapshot=s/run=exec-A/rejected.csv.gz",
        "rows": COINS,
    }
    assert isinstance(loaded_at, str) and loaded_at
    assert (index["snapshot_id"], index["partition_date"]) == ("s", "2026-11-27")


def test_a_rerun_of_the_snapshot_replaces_the_rows_and_moves_the_index(server, lake, cfg) -> None:
    load.run(transformed(server, lake, "exec-A"), storage=lake, config=cfg)
    event_b = transformed(server, lake, "exec-B", day="28")  # the next day: same partition
    assert event_b["processed_key"] == keys.processed_key("s", date(2026, 11, 27), "exec-B")

    out = load.run(event_b, storage=lake, config=cfg)

    assert (out["rows_inserted"], out["rows_replaced"]) == (0, COINS)
    assert q(cfg, "SELECT COUNT(*) FROM CRYPTO_DATA") == [(COINS,)]
    assert q(cfg, "SELECT DISTINCT FETCH_DATE FROM CRYPTO_DATA") == [(date(2026, 11, 28),)]
    index = index_of(lake)
    assert (index["current"]["run_id"], index["current"]["processed_key"]) == (
        "exec-B",
        event_b["processed_key"],
    )
    assert index["partition_date"] == "2026-11-27"


def test_a_failed_load_leaves_the_index_and_the_warehouse_unchanged(server, lake, cfg) -> None:
    load.run(transformed(server, lake, "exec-A"), storage=lake, config=cfg)
    index_before = lake.get_bytes("snapshots/s.json")
    state_before = warehouse_state(cfg)
    event_b = transformed(server, lake, "exec-B")

    # The file holds row_count rows; an event claiming one more is refused by the loader.
    with pytest.raises(LoadError, match=f"row_count is {COINS + 1}"):
        load.run({**event_b, "row_count": COINS + 1}, storage=lake, config=cfg)

    assert lake.get_bytes("snapshots/s.json") == index_before
    assert index_of(lake)["current"]["run_id"] == "exec-A"
    assert warehouse_state(cfg) == state_before


def test_an_index_failure_after_commit_says_the_warehouse_changed(server, lake, cfg) -> None:
    """After COMMIT the warehouse holds the new rows: a failure to switch the index must say so
    (not read as 'nothing loaded'), and a re-run repairs the index."""
    load.run(transformed(server, lake, "exec-A"), storage=lake, config=cfg)
    event_b = transformed(server, lake, "exec-B")
    lake.put_bytes("snapshots/s.json", b'{"snapshot_id": "s", "partition_date": "bogus"}')
    with pytest.raises(
        StorageError, match=r"COMMITTED snapshot s .*re-running the snapshot is safe"
    ):
        load.run(event_b, storage=lake, config=cfg)
    lake.put_bytes("snapshots/s.json", b'{"snapshot_id": "s", "partition_date": "2026-11-27"}')
    load.run(event_b, storage=lake, config=cfg)
    assert index_of(lake)["current"]["run_id"] == "exec-B"


def test_a_failed_first_load_leaves_the_index_with_no_current_run(server, lake, cfg) -> None:
    event = transformed(server, lake, "exec-A")
    index_before = lake.get_bytes("snapshots/s.json")
    with pytest.raises(LoadError):
        load.run({**event, "row_count": COINS - 1}, storage=lake, config=cfg)
    assert lake.get_bytes("snapshots/s.json") == index_before
    assert index_of(lake)["current"] is None


OTHER_DAY = date(2026, 11, 26)


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"processed_key": keys.processed_key("s", date(2026, 11, 27), "exec-B")},
         "processed_key"),
        ({"processed_key": keys.processed_key("other", date(2026, 11, 27), "exec-A")},
         "processed_key"),
        ({"processed_key": keys.processed_key("s", OTHER_DAY, "exec-A")}, "processed_key"),
        ({"partition_date": OTHER_DAY.isoformat()}, "processed_key"),
        ({"run_id": "exec-B"}, "processed_key"),
        ({"run_id": None}, "run_id"),
        ({"run_id": "exec-A\n"}, "run_id"),
        ({"partition_date": None}, "partition_date"),
        ({"partition_date": "27/11/2026"}, "partition_date"),
        ({"snapshot_id": "s\n"}, "snapshot_id"),
        ({"bucket": f"{BUCKET}\n"}, "bucket"),
    ],
)  # fmt: skip
def test_a_processed_key_that_is_not_this_runs_is_refused(
    server, lake, change: dict, field: str
) -> None:
    event = transformed(server, lake, "exec-A")
    # The other run's file exists too: only the key's owner decides.
    transformed(server, lake, "exec-B")
    index_before = lake.get_bytes("snapshots/s.json")

    def no_config() -> SnowflakeConfig:
        raise AssertionError("configuration must not be read for a bad event")

    with pytest.raises(ValidationError) as err:
        load.run({**event, **change}, storage=lake, config=no_config)
    assert err.value.field == field
    assert lake.get_bytes("snapshots/s.json") == index_before
