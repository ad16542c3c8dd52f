"""A failed execution is recorded in ETL_RUNS through the Catch path: the real local pipeline
(moto's Step Functions running the real definition and handlers, the local replay server, the
fakesnow warehouse), with a page the API keeps failing."""

from __future__ import annotations

import contextlib
import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from local_mode.run_command import RunOptions, run_pipeline
from local_mode.warehouse_commands import query
from tests.integration.test_pipeline import FAST_RETRY_ENV


def _rows(local_dir: Path, statement: str) -> list[dict[str, Any]]:
    columns, rows = query(local_dir, statement)
    return [dict(zip(columns, r, strict=True)) for r in rows]


def _replay_with_a_permanent_500_on_page_2(tmp_path: Path) -> Path:
    from local_mode.synthetic import generate_markets

    replay = tmp_path / "replay"
    replay.mkdir()
    (replay / "markets-page-0001.json").write_text(json.dumps(generate_markets(250, seed=7)))
    (replay / "markets-page-0002.json").write_text(
        json.dumps({"status": {"error_code": 500, "error_message": "Internal server error"}})
    )
    return replay


@contextlib.contextmanager
def _closed_port() -> Iterator[int]:
    """A port that refuses connections for as long as the block runs: bound but never
    listening, so no other server (the run's own warehouse included) can take it meanwhile."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        yield s.getsockname()[1]


@pytest.fixture(scope="module")
def loaded(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A local directory whose warehouse holds one loaded snapshot (``it-ok``, 40 coins)."""
    local_dir = tmp_path_factory.mktemp("local")
    report = run_pipeline(
        RunOptions(local_dir=local_dir, offline=True, coins=40, snapshot_id="it-ok")
    )
    assert report.status == "SUCCEEDED", report
    return local_dir


def _data(local_dir: Path) -> list[tuple]:
    return query(local_dir, "SELECT * FROM CRYPTO_DATA ORDER BY SNAPSHOT_ID, COIN_ID")[1]


def test_a_failed_extract_is_recorded_in_etl_runs_and_alerted_once(loaded, tmp_path):
    before = _data(loaded)
    report = run_pipeline(
        RunOptions(
            local_dir=loaded,
            replay_dir=_replay_with_a_permanent_500_on_page_2(tmp_path),
            snapshot_id="it-fail",
            extra_env=FAST_RETRY_ENV,
        )
    )
    assert (report.status, report.failed_state, report.error) == (
        "FAILED",
        "Extract",
        "SourceUnavailableError",
    )
    [alert] = report.alerts
    assert (alert["failed_state"], alert["error"]) == ("Extract", "SourceUnavailableError")
    assert alert["run_log"]["recorded"] is True
    [row] = _rows(loaded, "SELECT * FROM ETL_RUNS WHERE STATUS = 'FAILED'")
    assert row["SNAPSHOT_ID"] == "it-fail"
    assert row["EXECUTION_ID"] == report.execution_arn
    assert (row["FAILED_STATE"], row["ERROR_NAME"]) == ("Extract", "SourceUnavailableError")
    assert "500" in row["ERROR_MESSAGE"]
    assert row["ERROR_MESSAGE"] in (report.error_message or "")
    nothing_loaded = query(
        loaded,
        "SELECT COUNT(*) FROM ETL_RUNS WHERE STATUS = 'FAILED'"
        " AND ROWS_LOADED IS NULL AND ROWS_INSERTED IS NULL AND ROWS_REPLACED IS NULL",
    )[1]
    assert nothing_loaded == [(1,)]
    # The data and the earlier success row are as they were.
    assert _data(loaded) == before
    ok = _rows(loaded, "SELECT STATUS, FAILED_STATE FROM ETL_RUNS WHERE SNAPSHOT_ID = 'it-ok'")
    assert ok == [{"STATUS": "SUCCEEDED", "FAILED_STATE": None}]


def test_with_the_warehouse_down_the_failure_still_alerts_and_fails_with_its_own_error(
    loaded, tmp_path
):
    before = _data(loaded)
    # The recording's connection goes to a port nobody listens on (the Extract needs none),
    # held for the whole run: a port merely found free could be the run's own warehouse's.
    with _closed_port() as port:
        down = {
            **FAST_RETRY_ENV,
            "SNOWFLAKE_PORT": str(port),
            "SNOWFLAKE_LOGIN_TIMEOUT": "5",
            "SNOWFLAKE_NETWORK_TIMEOUT": "5",
        }
        report = run_pipeline(
            RunOptions(
                local_dir=loaded,
                replay_dir=_replay_with_a_permanent_500_on_page_2(tmp_path),
                snapshot_id="it-down",
                extra_env=down,
            )
        )
    assert (report.status, report.failed_state, report.error) == (
        "FAILED",
        "Extract",
        "SourceUnavailableError",
    )
    assert "500" in (report.error_message or "")
    [alert] = report.alerts
    assert (alert["failed_state"], alert["error"]) == ("Extract", "SourceUnavailableError")
    assert alert["run_log"]["recorded"] is False
    assert alert["run_log"]["error"]["Error"] == "LoadError"
    assert query(loaded, "SELECT COUNT(*) FROM ETL_RUNS WHERE SNAPSHOT_ID = 'it-down'")[1] == [(0,)]
    assert _data(loaded) == before
