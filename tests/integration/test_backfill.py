"""The history backfill: its state machine run locally (stand-in handlers, then the real ones
through ``crypto-etl backfill`` against the replay server and the fakesnow warehouse), and the
probe that says why the local runner runs the Distributed Map's items itself."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from functions.common.storage import LocalStorage
from local_mode.warehouse_commands import query
from state_machine import definition
from state_machine.local_runner import LocalStepFunctions, MapEvent, StateEvent

pytestmark = pytest.mark.integration

REPO_ROOT = Path(__file__).resolve().parents[2]
BUCKET = "crypto-etl-local"


# -- moto and the Distributed Map ------------------------------------------------------------


def test_moto_still_cannot_run_the_distributed_map_so_the_runner_runs_its_items() -> None:
    """The probe behind the local runner's design (its module docstring). If a moto upgrade
    parses the backfill's Fetch state as written, this fails: then try running it as is."""
    import boto3
    from moto import mock_aws

    asl = json.loads(
        definition.render({k: "arn:aws:x" for k in definition.BACKFILL_SUBSTITUTIONS}, "backfill")
    )
    with mock_aws(config={"stepfunctions": {"execute_state_machine": True}}):
        sfn = boto3.client("stepfunctions", region_name="us-east-1")
        with pytest.raises(sfn.exceptions.ClientError, match="ItemBatcher"):
            sfn.create_state_machine(
                name="probe",
                definition=json.dumps(asl),
                roleArn="arn:aws:iam::123456789012:role/r",
            )


# -- the definition, with stand-in handlers ---------------------------------------------------


def _stand_ins(lake: Path, crash: str = "crash") -> tuple[dict[str, Any], list[dict[str, Any]]]:
    seen: list[dict[str, Any]] = []

    def extract(event: dict[str, Any], context: Any) -> dict[str, Any]:
        seen.append(event)
        if event["action"] == "plan_backfill":
            ids = event["input"]["coin_ids"]
            items = [{"coin_id": c, "rank": i + 1} for i, c in enumerate(ids)]
            key = "raw/history/backfill=b1/items.json"
            LocalStorage(lake, BUCKET).put_bytes(key, json.dumps(items).encode())
            return {
                "backfill_id": "b1",
                "bucket": BUCKET,
                "vs_currency": "usd",
                "days": 30,
                "coin_count": len(items),
                "items_key": key,
                "history_prefix": "raw/history/backfill=b1/",
                "results_prefix": "raw/history/backfill=b1/results/",
                "batch_size": event["input"].get("batch_size", 2),
                "max_concurrency": 2,
                "child_rate_limit": "1/1",
                "rate_limit": "2/1",
                "source": "coin_ids",
                "plan_warnings": [],
            }
        batch = event["batch"]
        if any(i["coin_id"] == crash for i in batch["Items"]):
            raise RuntimeError("the child crashed")
        ids = [i["coin_id"] for i in batch["Items"]]
        return {
            "ok": [{"coin_id": c, "key": f"k/{c}", "points": 31} for c in ids if c != "gone"],
            "failed": [
                {"coin_id": c, "error": "HTTP 404: coin not found"} for c in ids if c == "gone"
            ],
            "api_calls": len(ids),
            "retries": 0,
            "rate_limited": 0,
        }

    def load(event: dict[str, Any], context: Any) -> dict[str, Any]:
        seen.append(event)
        return {"loaded": True, "event": event}

    return {"extract": extract, "load": load, "transform": load}, seen


def test_the_map_runs_batches_of_the_items_file_as_child_executions_and_writes_results(
    tmp_path: Path,
) -> None:
    handlers, seen = _stand_ins(tmp_path)
    events: list[StateEvent] = []
    map_events: list[MapEvent] = []
    env = {"LAKE_LOCAL_DIR": str(tmp_path), "LAKE_BUCKET": BUCKET}
    with LocalStepFunctions(handlers, env=env, definition="backfill") as sfn:
        result = sfn.execute(
            {"coin_ids": ["a", "b", "c", "gone", "e"], "days": 30},
            name="bf-1",
            on_event=events.append,
            on_map_event=map_events.append,
        )
    assert result.status == "SUCCEEDED", result
    fetches = [e for e in seen if e.get("action") == "fetch_history"]
    # ItemBatcher: batches of batch_size, each {"Items", "BatchInput"} with the plan's members.
    assert sorted(len(e["batch"]["Items"]) for e in fetches) == [1, 2, 2]
    assert sorted(i["coin_id"] for e in fetches for i in e["batch"]["Items"]) == [
        "a",
        "b",
        "c",
        "e",
        "gone",
    ]
    assert fetches[0]["batch"]["BatchInput"] == {
        "backfill_id": "b1",
        "bucket": BUCKET,
        "vs_currency": "usd",
        "days": 30,
        "history_prefix": "raw/history/backfill=b1/",
        "child_rate_limit": "1/1",
    }
    # LoadHistory gets the whole state: the plan, the map's ResultWriterDetails and its action.
    (load_event,) = [e for e in seen if e.get("action") == "load_history"]
    assert load_event["coin_count"] == 5 and load_event["plan_warnings"] == []
    details = load_event["fetch"]["ResultWriterDetails"]
    assert details["Bucket"] == BUCKET
    assert details["Key"].startswith("raw/history/backfill=b1/results/")
    manifest = json.loads((tmp_path / details["Key"]).read_text())
    assert manifest["MapRunArn"] == load_event["fetch"]["MapRunArn"]
    assert manifest["ResultFiles"]["FAILED"] == []
    (succeeded,) = manifest["ResultFiles"]["SUCCEEDED"]
    records = json.loads((tmp_path / succeeded["Key"]).read_text())
    assert len(records) == 3 and {r["Status"] for r in records} == {"SUCCEEDED"}
    failed = [f for r in records for f in json.loads(r["Output"])["failed"]]
    assert failed == [{"coin_id": "gone", "error": "HTTP 404: coin not found"}]
    # Progress: the three states, and each batch started and done once.
    entered = [e.state for e in events if e.kind == "entered"]
    assert entered == ["Plan", "Fetch", "LoadHistory", "Succeeded"]
    assert [e.kind for e in map_events].count("batch_done") == 3
    assert map_events[0].kind == "started" and map_events[0].batches == 3


def test_max_concurrency_bounds_the_children_running_at_once(tmp_path: Path) -> None:
    handlers, _ = _stand_ins(tmp_path)
    running, peak = 0, 0
    inner = handlers["extract"]

    def extract(event: dict[str, Any], context: Any) -> dict[str, Any]:
        nonlocal running, peak
        if event["action"] != "fetch_history":
            return inner(event, context)
        running += 1
        peak = max(peak, running)
        time.sleep(0.3)
        running -= 1
        return inner(event, context)

    handlers["extract"] = extract
    env = {"LAKE_LOCAL_DIR": str(tmp_path), "LAKE_BUCKET": BUCKET}
    with LocalStepFunctions(handlers, env=env, definition="backfill") as sfn:
        result = sfn.execute({"coin_ids": list("abcdefgh"), "days": 30, "batch_size": 1})
    assert result.status == "SUCCEEDED", result
    assert peak == 2  # the plan's max_concurrency, with 8 batches to run


def test_a_crashed_child_past_the_tolerated_failures_fails_the_map_with_an_alert(
    tmp_path: Path,
) -> None:
    handlers, seen = _stand_ins(tmp_path)
    env = {"LAKE_LOCAL_DIR": str(tmp_path), "LAKE_BUCKET": BUCKET}
    with LocalStepFunctions(handlers, env=env, definition="backfill") as sfn:
        result = sfn.execute({"coin_ids": ["a", "crash", "c"], "days": 30})
    assert result.status == "FAILED"
    assert result.failed_state == "Fetch"
    assert result.error == "States.ExceedToleratedFailureThreshold"
    assert "2 of 3 items failed" in result.cause
    assert not [e for e in seen if e.get("action") == "load_history"]  # nothing loaded
    [alert] = result.alerts
    assert alert["failed_state"] == "Fetch"
    assert alert["error"] == "States.ExceedToleratedFailureThreshold"


# -- crypto-etl backfill: the real handlers, replay server, warehouse ------------------------------


def _cli(local: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    for name in (
        "POWERTOOLS_LOG_LEVEL",
        "LOG_LEVEL",
        "CRYPTO_ETL_LOCAL_DIR",
        "COINGECKO_RATE_LIMIT",
    ):
        env.pop(name, None)
    return subprocess.run(
        [sys.executable, "-m", "local_mode.cli", "--local-dir", str(local), "backfill", *args],
        capture_output=True,
        text=True,
        timeout=180,
        env=env,
        cwd=REPO_ROOT,
        check=False,
    )


def _count(local: Path) -> int:
    _, rows = query(local, "SELECT COUNT(*) AS N FROM CRYPTO_PRICE_HISTORY")
    return int(rows[0][0])


@pytest.fixture(scope="module")
def top5(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    local = tmp_path_factory.mktemp("backfill")
    proc = _cli(local, "--offline", "--top-n", "5", "--days", "30", "--json")
    assert proc.returncode == 0, proc.stderr
    return local, json.loads(proc.stdout)


def test_backfill_offline_top_5_loads_one_row_per_coin_and_day(
    top5: tuple[Path, dict[str, Any]],
) -> None:
    local, summary = top5
    assert summary["status"] == "SUCCEEDED"
    assert summary["coins"] == {"requested": 5, "loaded": 5, "failed": 0}
    # days=30 with interval=daily covers 30 UTC dates: 30 daily points and the current one on
    # today's date (a real recording: days=90 -> 91 points on 90 dates,
    # ../shared/data/coingecko/market_chart_julianfssen_coingecko_ruby_1.json).
    assert summary["rows"] == summary["rows_inserted"] == 5 * 30
    assert _count(local) == 150
    _, per_coin = query(
        local,
        "SELECT COIN_ID, COUNT(*), COUNT(DISTINCT DATE) FROM CRYPTO_PRICE_HISTORY GROUP BY 1",
    )
    assert len(per_coin) == 5 and all(n == d == 30 for _, n, d in per_coin)
    assert summary["api_calls"] >= 5  # /coins/markets for the plan + one chart per coin
    assert summary["table"].endswith("CRYPTO_PRICE_HISTORY")


def test_a_rerun_of_the_same_range_adds_nothing(top5: tuple[Path, dict[str, Any]]) -> None:
    local, _ = top5
    _, keys_before = query(local, "SELECT COIN_ID, DATE FROM CRYPTO_PRICE_HISTORY ORDER BY 1, 2")
    proc = _cli(local, "--offline", "--top-n", "5", "--days", "30", "--json")
    assert proc.returncode == 0, proc.stderr
    again = json.loads(proc.stdout)
    assert again["rows"] == 150 and again["rows_inserted"] == 0
    assert again["rows_replaced"] + again["rows_unchanged"] == 150
    assert _count(local) == 150
    _, keys_after = query(local, "SELECT COIN_ID, DATE FROM CRYPTO_PRICE_HISTORY ORDER BY 1, 2")
    assert keys_after == keys_before


def test_a_coin_that_404s_is_reported_and_the_rest_load(tmp_path: Path) -> None:
    from local_mode.synthetic import generate_markets

    coin = generate_markets()[0]["id"]  # the synthetic market's largest coin
    proc = _cli(tmp_path, "--offline", "--coin-ids", f"{coin},no-such-coin", "--days", "7")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "Backfill SUCCEEDED" in out
    assert "coins ok      1" in out
    assert "coins failed  1" in out
    assert "no-such-coin:" in out and "404" in out
    assert "batch 1/1: 1 ok, 1 failed" in out  # piped: one line per batch
    assert _count(tmp_path) == 7


@pytest.mark.parametrize(
    ("args", "flag"),
    [
        (("--top-n", "5", "--days", "0"), "--days"),
        (("--coin-ids", "Bad Id", "--days", "7"), "--coin-ids"),
        (("--top-n", "5", "--days", "7", "--rate-limit", "fast"), "--rate-limit"),
        (("--top-n", "5", "--days", "7", "--offline", "--vs-currency", "xyz"), "--vs-currency"),
    ],
)
def test_bad_options_are_refused_before_anything_starts(
    tmp_path: Path, args: tuple[str, ...], flag: str
) -> None:
    proc = _cli(tmp_path / "local", *args)
    assert proc.returncode == 2
    assert flag in proc.stderr
    assert not (tmp_path / "local" / "warehouse").exists() or flag != "--local-dir"
    assert "Traceback" not in proc.stderr


def test_top_coins_of_a_drifted_or_smaller_lake_snapshot_all_have_a_history(tmp_path):
    # make demo loads snapshots of the market drifted to --as-of; `run --coins 300` one of
    # another size: the offline backfill takes its top coins from the latest and must find a
    # history for each (it once answered 404 for coins the fixed 1000-coin market lacks).
    import io

    from local_mode.backfill_command import BackfillOptions, run_backfill
    from local_mode.run_command import RunOptions, run_pipeline

    local = tmp_path / "local"
    for as_of, coins in (("2026-10-01T08:00:00+00:00", 1000), (None, 300)):
        snap = run_pipeline(
            RunOptions(
                local_dir=local,
                offline=True,
                coins=coins,
                as_of=datetime.fromisoformat(as_of) if as_of else None,
                snapshot_id=f"lake-{coins}",
            ),
            io.StringIO(),
        )
        assert snap.status == "SUCCEEDED"
        report = run_backfill(
            BackfillOptions(local_dir=local, offline=True, top_n=40, days=3), io.StringIO()
        )
        assert report.status == "SUCCEEDED"
        assert report.failed_coins() == [], report.failed_coins()
        assert report.load["coins_loaded"] == 40


def test_a_backfill_where_every_coin_fails_exits_1(tmp_path):
    # The execution succeeds (a per-coin failure is not a crash), but nothing was loaded.
    proc = _cli(tmp_path / "local", "--offline", "--coin-ids", "no-such-coin", "--days", "3")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "no coin was loaded: every coin failed" in proc.stdout
    assert "no-such-coin" in proc.stdout and "Traceback" not in proc.stdout + proc.stderr
