"""The quality gate through the real local pipeline: the ASL under moto, the replay server over
HTTP, the real handlers, the folder lake and real SQL on the fakesnow server.

A 600-coin snapshot loads; a 200-coin snapshot of the same currency and ``max_coins`` then fails
at Transform (fewer than half the previous snapshot's rows): DataQualityError naming the check,
one alert, no processed file, and the warehouse exactly as before. With
``QUALITY_MIN_ROW_FRACTION=0`` the same snapshot loads.
"""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from local_mode.run_command import RunOptions, RunReport, run_pipeline
from local_mode.warehouse_commands import query

pytestmark = pytest.mark.integration

MAX_COINS = 600  # both runs: offline max_coins defaults to --coins, so it is set explicitly


def _run(local_dir: Path, coins: int, snapshot_id: str, env: dict[str, str] | None = None):
    return run_pipeline(
        RunOptions(
            local_dir=local_dir,
            offline=True,
            coins=coins,
            max_coins=MAX_COINS,
            snapshot_id=snapshot_id,
            extra_env=env or {},
        ),
        out=io.StringIO(),  # the progress lines are not under test
    )


def _warehouse(local_dir: Path) -> dict[str, list]:
    """What the warehouse holds: rows per snapshot, the asset dimension, the run log."""
    _, per_snapshot = query(
        local_dir, "SELECT SNAPSHOT_ID, COUNT(*) FROM CRYPTO_DATA GROUP BY 1 ORDER BY 1"
    )
    _, assets = query(local_dir, "SELECT COUNT(*), MAX(LAST_SEEN_AT) FROM CRYPTO_ASSET_DIM")
    _, runs = query(
        local_dir,
        "SELECT SNAPSHOT_ID, EXECUTION_ID, STATUS, ROWS_INSERTED FROM ETL_RUNS ORDER BY 1, 2",
    )
    return {"rows": per_snapshot, "assets": assets, "runs": runs}


def _successful(runs: list) -> list:
    """The run log's successful loads (the failure run log may add a row per failed run)."""
    return [r for r in runs if r[2] == "SUCCEEDED"]


def _processed_files(local_dir: Path, snapshot_id: str) -> list[Path]:
    return sorted((local_dir / "lake" / "processed").glob(f"dt=*/snapshot={snapshot_id}/**/*"))


def test_a_snapshot_a_third_the_size_of_the_previous_fails_at_transform(tmp_path: Path):
    local_dir = tmp_path / "local"
    first = _run(local_dir, 600, "qg-600")
    assert first.status == "SUCCEEDED", first.error_message
    gate = first.state_outputs["Transform"]["quality"]["gate"]
    assert gate["passed"] and gate["previous"] is None
    before = _warehouse(local_dir)
    assert before["rows"] == [("qg-600", 600)] and len(before["runs"]) == 1

    second: RunReport = _run(local_dir, 200, "qg-200")
    assert second.status == "FAILED"
    assert second.failed_state == "Transform"
    assert second.error == "DataQualityError"
    message = second.error_message or ""
    assert "quality gate failed 1 of 5 checks" in message
    assert "gate_row_count_vs_previous: 200 rows" in message
    assert "threshold >= 0.5 x the previous snapshot's rows = 300 rows" in message
    assert "200 rows vs 600 in the previous snapshot qg-600" in message
    assert len(second.alerts) == 1
    alert = second.alerts[0]
    assert alert["failed_state"] == "Transform" and alert["error"] == "DataQualityError"
    assert "gate_row_count_vs_previous" in str(alert)
    assert "Load" not in second.state_outputs
    assert _processed_files(local_dir, "qg-200") == []
    after_failure = _warehouse(local_dir)
    assert after_failure["rows"] == before["rows"]
    assert after_failure["assets"] == before["assets"]
    assert _successful(after_failure["runs"]) == before["runs"]
    # A failure record, if the run log keeps one, names this snapshot and inserted nothing.
    new = [r for r in after_failure["runs"] if r not in before["runs"]]
    for snapshot_id, _, status, inserted in new:
        assert (snapshot_id, status, inserted or 0) == ("qg-200", "FAILED", 0)

    # The same market again with the row-count check off loads.
    third = _run(local_dir, 200, "qg-200", {"QUALITY_MIN_ROW_FRACTION": "0"})
    assert third.status == "SUCCEEDED", third.error_message
    gate = third.state_outputs["Transform"]["quality"]["gate"]
    assert gate["passed"] and gate["min_row_fraction"] == 0.0
    after = _warehouse(local_dir)
    assert after["rows"] == [("qg-200", 200), ("qg-600", 600)]
    assert [r[0] for r in _successful(after["runs"])] == ["qg-200", "qg-600"]
