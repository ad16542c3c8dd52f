"""The run log records failures too: the load function's ``record_failure`` action against a
real fakesnow server over HTTP, and the definition's Catch path under moto (stand-in Extract /
Transform / Load, the real ``record_failure`` for the "Record failure" step).

Each test works in its own schema of the module's warehouse.
"""

from __future__ import annotations

import itertools
import json
import socket
from collections.abc import Callable, Iterator, Mapping
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from functions.common.errors import LoadError, SourceUnavailableError, ValidationError
from functions.load import handler as load_handler
from functions.load import sql
from functions.load.config import SnowflakeConfig
from functions.load.connection import connect
from functions.load.loader import RunInfo, ensure_objects, load_snapshot
from functions.load.sql import Names
from local_mode.warehouse import LocalWarehouse
from state_machine.local_runner import LocalStepFunctions
from tests.unit.test_load_loader import coin, write_processed

ARN = "arn:aws:states:us-east-1:123456789012:execution:crypto-etl-pipeline:"
_schemas = itertools.count()


@pytest.fixture(scope="module")
def warehouse(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalWarehouse]:
    with LocalWarehouse(tmp_path_factory.mktemp("warehouse")) as wh:
        yield wh


@pytest.fixture
def cfg(warehouse: LocalWarehouse) -> SnowflakeConfig:
    """The warehouse's config with a schema of this test's own."""
    return SnowflakeConfig.from_env({**warehouse.env(), "SNOWFLAKE_SCHEMA": f"F{next(_schemas)}"})


def q(cfg: SnowflakeConfig, statement: str, params: Mapping[str, Any] | None = None) -> list:
    conn = connect(cfg)
    try:
        with conn.cursor() as cur:
            cur.execute(statement, params)
            return [tuple(r) for r in cur.fetchall()]
    finally:
        conn.close()


def runs(cfg: SnowflakeConfig, where: str = "TRUE") -> list[dict[str, Any]]:
    conn = connect(cfg)
    try:
        with conn.cursor() as cur:
            cur.execute(f"SELECT * FROM ETL_RUNS WHERE {where} ORDER BY LOADED_AT")
            cols = [d[0] for d in cur.description]
            return [dict(zip(cols, r, strict=True)) for r in cur.fetchall()]
    finally:
        conn.close()


def lambda_cause(error_type: str, message: str) -> str:
    """A Lambda function error's Cause as Step Functions passes it to a Catch."""
    return json.dumps(
        {"errorType": error_type, "errorMessage": message, "stackTrace": ["  File ...\n"]}
    )


def failure_event(name: str = "exec-F", **changes: Any) -> dict[str, Any]:
    """A record_failure event as the "Record failure" step builds it for a failed Transform."""
    event: dict[str, Any] = {
        "action": "record_failure",
        "failed_state": "Transform",
        "error": {
            "Error": "DataQualityError",
            "Cause": lambda_cause("DataQualityError", "no valid rows in snapshot s"),
        },
        "execution": {"name": name, "id": ARN + name, "start_time": "2026-11-27T08:00:00Z"},
        "state_input": {
            "snapshot_id": "s",
            "execution_id": ARN + name,
            "fetched_at": "2026-11-27T08:00:01+00:00",
            "fetch_date": "2026-11-27",
            "vs_currency": "usd",
            "coin_count": 250,
            "pages": 2,
            "api_calls": 3,
            "retries": 1,
            "done": True,
            "error": {"Error": "DataQualityError", "Cause": "..."},
        },
    }
    event.update(changes)
    return event


# --- the record_failure action on the emulator ---------------------------------------------------


def test_a_failed_execution_gets_one_failed_row_with_its_state_error_and_counts(cfg) -> None:
    out = load_handler.record_failure_run(failure_event(), config=cfg)

    assert out["recorded"] is True
    assert out["table"] == f"CRYPTO_ETL_DB.{cfg.schema}.ETL_RUNS"
    assert (out["snapshot_id"], out["failed_state"], out["error"]) == (
        "s",
        "Transform",
        "DataQualityError",
    )
    [row] = runs(cfg)
    assert row["STATUS"] == "FAILED"
    assert row["SNAPSHOT_ID"] == "s"
    assert row["EXECUTION_ID"] == ARN + "exec-F"
    assert row["FAILED_STATE"] == "Transform"
    assert row["ERROR_NAME"] == "DataQualityError"
    # The message of the Lambda error, not its JSON envelope nor its stack trace.
    assert row["ERROR_MESSAGE"] == "no valid rows in snapshot s"
    assert (row["COIN_COUNT"], row["PAGES"], row["API_CALLS"], row["RETRIES"]) == (250, 2, 3, 1)
    assert row["VS_CURRENCY"] == "usd"
    assert str(row["FETCH_DATE"]) == "2026-11-27"
    # Nothing was loaded: the load's own columns are NULL (tested in SQL: the emulator fetches
    # a NULL TIMESTAMP_TZ back as 1970-01-01).
    nulls = q(
        cfg,
        "SELECT ROWS_LOADED IS NULL AND ROWS_INSERTED IS NULL AND ROWS_REPLACED IS NULL"
        " AND LOAD_STARTED_AT IS NULL AND FETCHED_AT IS NOT NULL AND LOADED_AT IS NOT NULL"
        " FROM ETL_RUNS",
    )
    assert nulls == [(True,)]
    # Only ETL_RUNS was written: CRYPTO_DATA (created empty) holds nothing.
    assert q(cfg, "SELECT COUNT(*) FROM CRYPTO_DATA") == [(0,)]


def test_a_retried_record_replaces_the_executions_failed_row(cfg) -> None:
    load_handler.record_failure_run(failure_event(), config=cfg)
    retried = failure_event()
    retried["state_input"] = {**retried["state_input"], "retries": 4}
    load_handler.record_failure_run(retried, config=cfg)
    load_handler.record_failure_run(failure_event("exec-G"), config=cfg)

    rows = runs(cfg)
    assert [(r["EXECUTION_ID"], r["RETRIES"]) for r in rows] == [
        (ARN + "exec-F", 4),
        (ARN + "exec-G", 1),
    ]


def test_a_failure_row_leaves_the_success_rows_and_crypto_data_alone(cfg, tmp_path) -> None:
    """A snapshot loaded by execution A, then execution A's failure after the commit (e.g. the
    lake index) and a failure of execution B: the SUCCEEDED row and the data stay as they were,
    and a retried load of A replaces only its SUCCEEDED row."""
    names = Names(cfg.database, cfg.schema)
    t1 = datetime(2026, 11, 27, 8, 0, tzinfo=UTC)
    path = write_processed(tmp_path / "s.csv.gz", [coin(c, "s", t1) for c in ("btc", "eth")])
    run = RunInfo(execution_id=ARN + "exec-A", coin_count=2)
    conn = connect(cfg)
    try:
        ensure_objects(conn, names)
        load_snapshot(conn, local_file=path, snapshot_id="s", row_count=2, names=names, run=run)
        before = q(cfg, "SELECT * FROM CRYPTO_DATA ORDER BY COIN_ID")
        succeeded = runs(cfg)
        load_handler.record_failure_run(failure_event("exec-A", failed_state="Load"), config=cfg)
        load_handler.record_failure_run(failure_event("exec-B"), config=cfg)
        assert q(cfg, "SELECT * FROM CRYPTO_DATA ORDER BY COIN_ID") == before
        assert runs(cfg, "STATUS = 'SUCCEEDED'") == succeeded
        assert [r["FAILED_STATE"] for r in succeeded] == [None]
        # The load's retry in execution A replaces its own SUCCEEDED row, not the FAILED one.
        load_snapshot(conn, local_file=path, snapshot_id="s", row_count=2, names=names, run=run)
    finally:
        conn.close()
    statuses = sorted((r["EXECUTION_ID"][-6:], r["STATUS"]) for r in runs(cfg))
    assert statuses == [("exec-A", "FAILED"), ("exec-A", "SUCCEEDED"), ("exec-B", "FAILED")]


def test_an_etl_runs_from_an_older_version_gets_the_failure_columns(cfg) -> None:
    names = Names(cfg.database, cfg.schema)
    first_release = [
        (c, t) for c, t in sql.ETL_RUN_COLUMNS if c not in sql.ADDED_COLUMNS[sql.ETL_RUNS]
    ]
    cols = ", ".join(f"{c} {t}" for c, t in first_release)
    q(cfg, f"CREATE SCHEMA IF NOT EXISTS {cfg.database}.{cfg.schema}")
    q(cfg, f"CREATE TABLE {names.q(sql.ETL_RUNS)} ({cols})")
    q(
        cfg,
        f"INSERT INTO {names.q(sql.ETL_RUNS)} (SNAPSHOT_ID, EXECUTION_ID, STATUS, LOADED_AT)"
        " VALUES ('old', 'exec-old', 'SUCCEEDED', CAST('2026-01-01T00:00:00+00:00' AS"
        " TIMESTAMP_TZ))",
    )

    load_handler.record_failure_run(failure_event(), config=cfg)

    rows = {r["EXECUTION_ID"]: r for r in runs(cfg)}
    assert rows["exec-old"]["STATUS"] == "SUCCEEDED"
    assert rows["exec-old"]["FAILED_STATE"] is None
    assert rows[ARN + "exec-F"]["ERROR_NAME"] == "DataQualityError"


def test_the_message_is_bounded_and_a_configured_secret_never_stored(cfg) -> None:
    long = "x" * 5000
    cause = lambda_cause("LoadError", f"login as etl with {cfg.password} failed: {long}")
    event = failure_event(error={"Error": "LoadError", "Cause": cause})
    load_handler.record_failure_run(event, config=cfg)
    [row] = runs(cfg)
    assert len(row["ERROR_MESSAGE"]) == sql.ERROR_MESSAGE_MAX_CHARS
    assert row["ERROR_MESSAGE"].endswith("…")
    assert cfg.password not in row["ERROR_MESSAGE"]
    assert row["ERROR_MESSAGE"].startswith("login as etl with *** failed: xxx")


def test_a_failed_state_input_that_is_invalid_is_recorded_as_far_as_it_is_valid(cfg) -> None:
    """The failed state's input may be what failed: bad counts and a bad snapshot id are left
    out (the row falls back to the execution name), never a reason not to record."""
    event = failure_event(
        "exec-H",
        state_input={"snapshot_id": "../x", "pages": -1, "coin_count": "7", "api_calls": 2},
    )
    out = load_handler.record_failure_run(event, config=cfg)
    [row] = runs(cfg)
    assert out["snapshot_id"] == row["SNAPSHOT_ID"] == "exec-H"
    assert (row["PAGES"], row["COIN_COUNT"], row["API_CALLS"]) == (None, None, 2)


def test_a_cause_that_is_not_a_lambda_error_is_kept_as_is() -> None:
    assert (
        load_handler.error_message("Task timed out after\n 120 s") == "Task timed out after 120 s"
    )
    assert load_handler.error_message("") is None
    assert load_handler.error_message(None) is None
    assert load_handler.error_message(lambda_cause("E", "m")) == "m"


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"action": "recordfailure"}, "action"),
        ({"failed_state": ""}, "failed_state"),
        ({"failed_state": "Load'; DROP TABLE ETL_RUNS; --"}, "failed_state"),
        ({"error": "boom"}, "error"),
        ({"error": {"Cause": "x"}}, "error.Error"),
        ({"error": {"Error": "E", "Cause": 42}}, "error.Cause"),
        ({"execution": {"name": "n"}}, "execution.id"),
        ({"execution": {"id": ARN + "n", "name": " "}}, "execution.name"),
        ({"state_input": [1]}, "state_input"),
        ({"bucket": "crypto-etl"}, "bucket"),
    ],
)
def test_bad_record_failure_events_are_refused_naming_the_field(change, field) -> None:
    with pytest.raises(ValidationError) as err:
        load_handler.parse_failure_event(failure_event(**change))
    assert err.value.field == field


def test_the_handler_dispatches_on_action_and_refuses_an_unknown_one(monkeypatch, cfg) -> None:
    monkeypatch.setattr(load_handler, "SnowflakeConfig", _config_class(cfg))
    out = load_handler.handler(failure_event(), None)
    assert out["recorded"] is True
    with pytest.raises(ValidationError) as err:
        load_handler.handler({"action": "drop"}, None)
    assert err.value.field == "action"


def _config_class(cfg: SnowflakeConfig) -> Any:
    class _Config:
        @staticmethod
        def from_env(env: Mapping[str, str]) -> SnowflakeConfig:
            return cfg

    return _Config


def test_a_warehouse_that_is_down_fails_the_record_with_a_load_error(cfg) -> None:
    down = replace(cfg, port=_closed_port(), login_timeout=5, network_timeout=5)
    with pytest.raises(LoadError, match="cannot connect"):
        load_handler.record_failure_run(failure_event(), config=down)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- the Catch path under moto ------------------------------------------------------------------


def _pipeline(
    fail_in: str | None, record: Callable[[dict[str, Any]], dict[str, Any]]
) -> tuple[dict[str, Any], list[tuple[str, dict[str, Any]]]]:
    """Stand-in Extract/Transform/Load (``fail_in`` raises); the load function's
    record_failure action goes to ``record``."""
    seen: list[tuple[str, dict[str, Any]]] = []

    def extract(event: dict[str, Any], context: Any) -> dict[str, Any]:
        seen.append(("extract", event))
        if fail_in == "extract":
            raise SourceUnavailableError("page 2: HTTP 500 after 4 attempts")
        if fail_in == "extract-contract":
            return {"snapshot_id": "s", "pages": 1}
        return {"snapshot_id": "s", "done": True, "coin_count": 250, "pages": 1, "api_calls": 2}

    def transform(event: dict[str, Any], context: Any) -> dict[str, Any]:
        seen.append(("transform", event))
        if fail_in == "transform":
            raise ValidationError("raw page", "sha-256 mismatch")
        return {**event, "row_count": 240, "rejected_count": 10}

    def load(event: dict[str, Any], context: Any) -> dict[str, Any]:
        if event.get("action") == "record_failure":
            seen.append(("record_failure", event))
            return record(event)
        seen.append(("load", event))
        if fail_in == "load":
            raise LoadError("load step 'insert snapshot' failed; rolled back")
        return {**event, "rows_inserted": event["row_count"]}

    return {"extract": extract, "transform": transform, "load": load}, seen


@pytest.mark.parametrize(
    ("fail_in", "state", "error", "counts"),
    [
        ("extract", "Extract", "SourceUnavailableError", (None, None, None)),
        ("extract-contract", "Extract", "ExtractContractError", (None, 1, None)),
        ("transform", "Transform", "ValidationError", (250, 1, None)),
        ("load", "Load", "LoadError", (250, 1, 10)),
    ],
)
def test_each_failing_state_is_recorded_as_a_failed_row(cfg, fail_in, state, error, counts):
    handlers, seen = _pipeline(fail_in, lambda ev: load_handler.record_failure_run(ev, config=cfg))
    with LocalStepFunctions(handlers, retry_sleep=lambda s: None) as sfn:
        result = sfn.execute({"snapshot_id": "s"}, name=f"x-{fail_in}")
    assert (result.status, result.failed_state, result.error) == ("FAILED", state, error)
    [record_event] = [e for name, e in seen if name == "record_failure"]
    assert record_event["execution"]["id"] == result.execution_arn
    [row] = runs(cfg)
    assert (row["STATUS"], row["FAILED_STATE"], row["ERROR_NAME"]) == ("FAILED", state, error)
    assert row["SNAPSHOT_ID"] == "s"
    assert row["EXECUTION_ID"] == result.execution_arn
    assert (row["COIN_COUNT"], row["PAGES"], row["REJECTED_COUNT"]) == counts
    [alert] = result.alerts
    assert (alert["failed_state"], alert["error"]) == (state, error)
    assert alert["run_log"] == {"recorded": True, "table": f"CRYPTO_ETL_DB.{cfg.schema}.ETL_RUNS"}
    assert result.run_log == alert["run_log"]


def test_a_recording_that_fails_still_alerts_and_fails_with_the_original_error(cfg) -> None:
    down = replace(cfg, port=_closed_port(), login_timeout=5, network_timeout=5)
    handlers, seen = _pipeline(
        "transform", lambda ev: load_handler.record_failure_run(ev, config=down)
    )
    with LocalStepFunctions(handlers, retry_sleep=lambda s: None) as sfn:
        result = sfn.execute({}, name="x-down")
    assert [name for name, _ in seen] == ["extract", "transform", "record_failure"]
    # The execution fails with the Transform's error, not the recording's.
    assert (result.status, result.failed_state, result.error) == (
        "FAILED",
        "Transform",
        "ValidationError",
    )
    assert "sha-256 mismatch" in (result.cause or "")
    [alert] = result.alerts
    assert (alert["failed_state"], alert["error"]) == ("Transform", "ValidationError")
    assert "sha-256 mismatch" in alert["cause"]
    # ...and says the failure is not in ETL_RUNS, and why.
    assert alert["run_log"]["recorded"] is False
    assert alert["run_log"]["error"]["Error"] == "LoadError"
    assert "cannot connect" in alert["run_log"]["error"]["Cause"]
    assert result.run_log == alert["run_log"]


def test_a_record_step_that_raises_anything_leaves_the_original_error(tmp_path: Path) -> None:
    def record(event: dict[str, Any]) -> dict[str, Any]:
        raise RuntimeError("unexpected")

    handlers, _ = _pipeline("load", record)
    with LocalStepFunctions(handlers, retry_sleep=lambda s: None) as sfn:
        result = sfn.execute({}, name="x-raise")
    assert (result.status, result.failed_state, result.error) == ("FAILED", "Load", "LoadError")
    [alert] = result.alerts
    assert alert["error"] == "LoadError"
    assert alert["run_log"]["error"]["Error"] == "RuntimeError"
