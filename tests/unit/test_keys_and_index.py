"""Lake keys, run ids, the snapshot index, and the lake staying consistent across runs.

The consistency tests run the real Extract (HTTP to the replay server) and Transform handlers on
a folder lake: one snapshot id, several executions, one of them failing half-way.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import json
from datetime import date
from pathlib import Path

import pytest

from functions.common import keys
from functions.common.errors import SourceUnavailableError, ValidationError
from functions.common.snapshot_index import claim_partition_date, read_index, switch_current
from functions.common.storage import LocalStorage, put_json
from functions.extract import handler as extract
from functions.transform import handler as transform
from local_mode.replay_server import ReplayServer, Scripted
from tests.unit.test_extract_handler import config_for

BUCKET = "crypto-etl-test"
DAY = date(2026, 11, 27)
ARN = "arn:aws:states:us-east-1:123456789012:execution:crypto-etl:"


@pytest.fixture
def lake(tmp_path: Path) -> LocalStorage:
    return LocalStorage(tmp_path / "lake", bucket=BUCKET)


# --- keys ------------------------------------------------------------------------------------


def test_every_file_of_a_run_lives_under_its_run_prefix() -> None:
    prefix = keys.raw_prefix("daily", DAY, "exec-1")
    assert prefix == "raw/dt=2026-11-27/snapshot=daily/run=exec-1/"
    assert keys.page_key(prefix, 7) == f"{prefix}markets/page-0007.json"
    assert keys.global_key(prefix) == f"{prefix}global.json"
    assert keys.manifest_key(prefix) == f"{prefix}manifest.json"
    assert (
        keys.processed_key("daily", DAY, "exec-1")
        == "processed/dt=2026-11-27/snapshot=daily/run=exec-1/crypto_data.csv.gz"
    )
    assert (
        keys.rejected_key("daily", DAY, "exec-1")
        == "rejected/dt=2026-11-27/snapshot=daily/run=exec-1/rejected.csv.gz"
    )
    assert keys.snapshot_index_key("daily") == "snapshots/daily.json"


@pytest.mark.parametrize(
    ("validate", "value", "field"),
    [
        (keys.validate_snapshot_id, "snap-1\n", "snapshot_id"),
        (keys.validate_snapshot_id, "snap-1\r", "snapshot_id"),
        (keys.validate_snapshot_id, "a..b", "snapshot_id"),
        (keys.validate_snapshot_id, "x" * 81, "snapshot_id"),
        (keys.validate_bucket, "my-bucket\n", "bucket"),
        (keys.validate_bucket, "My-Bucket", "bucket"),
        (keys.validate_run_id, "run-1\n", "run_id"),
        (keys.validate_run_id, "run 1", "run_id"),
        (keys.validate_run_id, "a..b", "run_id"),
        (keys.validate_run_id, "", "run_id"),
        (keys.validate_run_id, None, "run_id"),
    ],
)
def test_validators_match_the_whole_string(validate, value, field) -> None:
    with pytest.raises(ValidationError) as err:
        validate(value)
    assert err.value.field == field
    assert repr(value) in str(err.value)


def test_validators_name_the_field_they_are_given() -> None:
    with pytest.raises(ValidationError) as err:
        keys.validate_snapshot_id("snap-1\n", field="execution.name")
    assert err.value.field == "execution.name"
    with pytest.raises(ValidationError) as err:
        keys.validate_bucket("my-bucket\n", field="event.bucket")
    assert err.value.field == "event.bucket"


@pytest.mark.parametrize("key_of", [keys.raw_prefix, keys.processed_key, keys.rejected_key])
def test_key_builders_refuse_unsafe_parts(key_of) -> None:
    with pytest.raises(ValidationError) as err:
        key_of("daily", DAY, "exec-1\n")
    assert err.value.field == "run_id"
    with pytest.raises(ValidationError) as err:
        key_of("daily\n", DAY, "exec-1")
    assert err.value.field == "snapshot_id"


@pytest.mark.parametrize(
    "name",
    [
        "exec-1",
        "a",
        "2026-11-27T08.00.00_manual",
        "x" * 80,
    ],
)
def test_a_key_safe_execution_name_is_the_run_id(name: str) -> None:
    assert keys.run_id(name, ARN + name) == name


@pytest.mark.parametrize(
    "name",
    [
        "x" * 81,  # Step Functions allows 80 characters, but be safe with anything longer
        "manual run",
        "exec-1\n",
        "a..b",
        "-starts-with-dash",
        "日次",  # names may be Unicode; keys stay ASCII
    ],
)
def test_an_unsafe_execution_name_gives_a_digest_of_the_execution_id(name: str) -> None:
    execution_id = ARN + name
    run = keys.run_id(name, execution_id)
    assert run == "x-" + hashlib.sha256(execution_id.encode()).hexdigest()[:16]
    assert keys.validate_run_id(run) == run
    assert keys.run_id(name, execution_id) == run  # stable: a retried task writes the same keys
    assert keys.run_id(name, execution_id + "-2") != run  # another execution, another run


# --- the snapshot index ----------------------------------------------------------------------


def test_the_first_run_claims_the_partition_date_and_later_runs_read_it(lake) -> None:
    assert read_index(lake, "daily") is None
    first = claim_partition_date(
        lake, "daily", today=DAY, execution_id=ARN + "a", now_iso="2026-11-27T23:59:00+00:00"
    )
    assert first == DAY
    stored = lake.get_bytes("snapshots/daily.json")
    assert json.loads(stored) == {
        "snapshot_id": "daily",
        "partition_date": "2026-11-27",
        "created_at": "2026-11-27T23:59:00+00:00",
        "created_by_execution": ARN + "a",
        "current": None,
    }
    later = claim_partition_date(
        lake,
        "daily",
        today=date(2026, 11, 28),
        execution_id=ARN + "b",
        now_iso="2026-11-28T00:01:00+00:00",
    )
    assert later == DAY
    assert lake.get_bytes("snapshots/daily.json") == stored  # read, not rewritten


def test_switch_current_points_the_index_at_the_loaded_run(lake) -> None:
    claim_partition_date(lake, "daily", today=DAY, execution_id=ARN + "a", now_iso="t0")
    current = {"run_id": "b", "processed_key": keys.processed_key("daily", DAY, "b"), "rows": 3}
    index = switch_current(lake, "daily", partition_date=DAY.isoformat(), current=current)
    assert index == read_index(lake, "daily")
    assert index["current"] == current
    # the partition date and creator stay those of the first run
    assert (index["partition_date"], index["created_by_execution"]) == ("2026-11-27", ARN + "a")


@pytest.mark.parametrize(
    ("index", "field"),
    [
        ([1, 2], "snapshots/daily.json"),
        ({"snapshot_id": "other", "partition_date": "2026-11-27"},
         "snapshots/daily.json: snapshot_id"),
        ({"snapshot_id": "daily", "partition_date": "27/11/2026"},
         "snapshots/daily.json: partition_date"),
        ({"snapshot_id": "daily"}, "snapshots/daily.json: partition_date"),
    ],
)  # fmt: skip
def test_a_bad_index_is_refused_naming_it(lake, index, field) -> None:
    put_json(lake, "snapshots/daily.json", index)
    with pytest.raises(ValidationError) as err:
        read_index(lake, "daily")
    assert err.value.field == field
    with pytest.raises(ValidationError):  # the extract refuses to write under a bad index
        claim_partition_date(lake, "daily", today=DAY, execution_id="x", now_iso="t")


# --- one snapshot id, several executions: the lake stays consistent ---------------------------


def execution(name: str, start_time: str, **inputs) -> dict:
    return {
        "input": {"snapshot_id": "s", "max_coins": 500, **inputs},
        "execution": {"name": name, "id": ARN + name, "start_time": start_time},
    }


@pytest.fixture
def server():
    with ReplayServer.synthetic(coins=600, seed=3) as srv:
        yield srv


def files(lake: LocalStorage, prefix: str = "") -> dict[str, bytes]:
    return {k: lake.get_bytes(k) for k in lake.list_keys(prefix)}


def run_a(server: ReplayServer, lake: LocalStorage) -> tuple[dict, dict]:
    out = extract.run(
        execution("exec-A", "2026-11-27T23:50:00Z"), config=config_for(server), storage=lake
    )
    return out, transform.run(out, storage=lake)


def test_a_failed_rerun_leaves_the_first_run_and_the_index_untouched(server, lake) -> None:
    out_a, result_a = run_a(server, lake)
    assert out_a["raw_prefix"] == "raw/dt=2026-11-27/snapshot=s/run=exec-A/"
    assert (
        result_a["processed_key"]
        == "processed/dt=2026-11-27/snapshot=s/run=exec-A/crypto_data.csv.gz"
    )
    before = files(lake)
    run_a_keys = [k for k in before if "/run=exec-A/" in k]
    assert len(run_a_keys) == 7  # 2 pages, global, progress, manifest, processed, rejected

    server.script("/coins/markets", *[Scripted.error(500, "Internal server error")] * 3, page=2)
    with pytest.raises(SourceUnavailableError, match="HTTP 500"):
        extract.run(
            execution("exec-B", "2026-11-28T00:10:00Z"), config=config_for(server), storage=lake
        )

    after = files(lake)
    assert {k: after[k] for k in before} == before  # every file of run A, and the index
    # run B's files are kept under its own prefix; without a manifest it is incomplete
    assert sorted(set(after) - set(before)) == [
        "raw/dt=2026-11-27/snapshot=s/run=exec-B/global.json",
        "raw/dt=2026-11-27/snapshot=s/run=exec-B/markets/page-0001.json",
        "raw/dt=2026-11-27/snapshot=s/run=exec-B/progress.json",
    ]


def test_a_rerun_the_next_day_writes_under_the_snapshot_partition(server, lake) -> None:
    out_a, _ = run_a(server, lake)
    before = files(lake)

    out_c = extract.run(
        execution("exec-C", "2026-11-28T08:00:00Z"), config=config_for(server), storage=lake
    )
    assert (out_c["partition_date"], out_c["fetch_date"]) == ("2026-11-27", "2026-11-28")
    assert out_c["raw_prefix"] == "raw/dt=2026-11-27/snapshot=s/run=exec-C/"
    manifest = json.loads(lake.get_bytes(out_c["manifest_key"]))
    assert (manifest["partition_date"], manifest["fetch_date"]) == ("2026-11-27", "2026-11-28")
    result_c = transform.run(out_c, storage=lake)
    assert result_c["processed_key"] == keys.processed_key("s", DAY, "exec-C")
    assert result_c["rejected_key"] == keys.rejected_key("s", DAY, "exec-C")

    # one dt= partition per snapshot id, whatever day it is re-run
    assert {k.split("/")[1] for k in lake.list_keys("") if not k.startswith("snapshots/")} == {
        "dt=2026-11-27"
    }
    after = files(lake)
    assert {k: after[k] for k in before} == before
    rows = list(
        csv.DictReader(
            io.StringIO(gzip.decompress(lake.get_bytes(result_c["processed_key"])).decode())
        )
    )
    assert len(rows) == result_c["row_count"] == 500
    assert {r["fetch_date"] for r in rows} == {"2026-11-28"}
    assert {r["snapshot_id"] for r in rows} == {"s"}
    index = json.loads(lake.get_bytes("snapshots/s.json"))
    assert (index["partition_date"], index["created_by_execution"]) == (
        "2026-11-27",
        out_a["execution_id"],
    )


def test_a_page_changed_after_the_extract_fails_the_transform(server, lake) -> None:
    out = extract.run(
        execution("exec-A", "2026-11-27T23:50:00Z"), config=config_for(server), storage=lake
    )
    page1 = keys.page_key(out["raw_prefix"], 1)
    body = json.loads(lake.get_bytes(page1))
    body[0]["current_price"] = 0.01
    lake.put_bytes(page1, json.dumps(body).encode())
    with pytest.raises(ValidationError, match="SHA-256") as err:
        transform.run(out, storage=lake)
    assert err.value.field == page1
    assert lake.list_keys(keys.PROCESSED) == []
