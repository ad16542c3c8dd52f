"""Load Lambda: validate the Transform output, fetch the processed file, load it into Snowflake;
or, with ``"action": "record_failure"``, record a failed execution in ETL_RUNS.

Input: the Transform contract (``bucket``, ``processed_key``, ``snapshot_id``, ``run_id``,
``partition_date``, ``row_count``, the Extract/Transform counts and, when present, ``coverage``,
recorded in ETL_RUNS). Other fields (e.g. ``max_coins``, an int or ``"all"``) are not read and
are passed through. Output: the input plus ``rows_inserted``, ``rows_replaced``, ``table``,
``asset_dim_merged`` and ``snapshot_index_key``.

After the warehouse transaction has committed, the snapshot index (``snapshots/<id>.json``) is
switched to this run, so the lake names the run whose rows the warehouse holds; a failed load
leaves it pointing at the previous run.

The ``record_failure`` action (the state machine's "Record failure" step, on the Catch path)
takes ``{"action": "record_failure", "failed_state", "error": {"Error", "Cause"}, "execution":
{"name", "id", "start_time"}, "state_input"}`` and writes the execution's FAILED row
(:func:`record_failure_run`); it touches neither CRYPTO_DATA nor the lake.

The ``load_history`` action (the backfill state machine's last step) loads the backfill's
``market_chart`` bodies into CRYPTO_PRICE_HISTORY: :mod:`functions.load.history`.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

from functions.common import keys
from functions.common import observability as obs
from functions.common.errors import CryptoEtlError, StorageError, ValidationError
from functions.common.log import context_or_local, get_logger
from functions.common.schema import TIMESTAMP_FORMAT
from functions.common.snapshot_index import switch_current
from functions.common.storage import Storage, storage_from_env
from functions.load import sql
from functions.load.config import SnowflakeConfig
from functions.load.history import ACTION_LOAD_HISTORY, load_history_run
from functions.load.loader import (
    Coverage,
    FailureRecord,
    RunInfo,
    ensure_objects,
    load_snapshot,
    record_failure,
)
from functions.load.sql import Names

logger = get_logger("load")
metrics = obs.get_metrics("load")
tracer = obs.get_tracer("load")

_COUNT_FIELDS = (
    "coin_count",
    "rejected_count",
    "duplicate_count",
    "api_calls",
    "retries",
    "pages",
)


@dataclass(frozen=True)
class LoadRequest:
    """The validated part of the event the load uses."""

    bucket: str
    processed_key: str
    snapshot_id: str
    run_id: str
    partition_date: str
    manifest_key: str | None
    row_count: int
    run: RunInfo


def _count(event: Mapping[str, Any], field: str, *, required: bool = False) -> int | None:
    value = event.get(field)
    if value is None and not required:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValidationError(field, f"{value!r} must be an integer >= 0")
    return value


def _optional_str(event: Mapping[str, Any], field: str) -> str | None:
    value = event.get(field)
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise ValidationError(field, f"{value!r} must be a non-empty string")
    return value.strip()


def _timestamp(event: Mapping[str, Any], field: str) -> str | None:
    """ISO-8601 text -> the processed file's UTC format (what CAST AS TIMESTAMP_TZ reads)."""
    value = _optional_str(event, field)
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError as exc:
        raise ValidationError(field, f"{value!r} is not an ISO-8601 timestamp") from exc
    if parsed.tzinfo is None:
        raise ValidationError(field, f"{value!r} has no time zone (expected UTC)")
    return parsed.astimezone(UTC).strftime(TIMESTAMP_FORMAT)


def _date(event: Mapping[str, Any], field: str) -> str | None:
    value = _optional_str(event, field)
    if value is None:
        return None
    try:
        return date.fromisoformat(value).isoformat()
    except ValueError as exc:
        raise ValidationError(field, f"{value!r} is not a YYYY-MM-DD date") from exc


def _cov_int(cov: Mapping[str, Any], name: str, *, required: bool = False) -> int | None:
    value = cov.get(name)
    if value is None and not required:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValidationError(f"coverage.{name}", f"{value!r} must be an integer >= 0")
    return value


def _cov_number(cov: Mapping[str, Any], name: str) -> float | None:
    value = cov.get(name)
    if value is None:
        return None
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value < 0
    ):
        raise ValidationError(f"coverage.{name}", f"{value!r} must be a finite number >= 0")
    return float(value)


def parse_coverage(value: Any) -> Coverage | None:
    """The Transform output's ``coverage`` object -> Coverage; None when absent (older events).

    Shape: ``coins_fetched`` int >= 0 (required); ``active_cryptocurrencies`` int >= 0 or null;
    ``coin_pct``, ``market_cap_fetched``, ``total_market_cap`` (USD or the vs_currency),
    ``market_cap_pct`` (%) finite numbers >= 0 or null; ``min_pct`` (%) a number and
    ``whole_market`` a boolean when present; ``warning`` a string or null. Other keys are
    ignored. Raises ValidationError naming the field, e.g. ``coverage.coin_pct``.
    """
    if value is None:
        return None
    cov = keys.validate_object(value, "coverage")
    whole_market = cov.get("whole_market")
    if whole_market is not None and not isinstance(whole_market, bool):
        raise ValidationError("coverage.whole_market", f"{whole_market!r} must be a boolean")
    warning = cov.get("warning")
    if warning is not None and not isinstance(warning, str):
        raise ValidationError("coverage.warning", f"{warning!r} must be a string or null")
    coins_fetched = _cov_int(cov, "coins_fetched", required=True)
    assert coins_fetched is not None
    return Coverage(
        coins_fetched=coins_fetched,
        active_cryptocurrencies=_cov_int(cov, "active_cryptocurrencies"),
        coin_pct=_cov_number(cov, "coin_pct"),
        market_cap_fetched=_cov_number(cov, "market_cap_fetched"),
        total_market_cap=_cov_number(cov, "total_market_cap"),
        market_cap_pct=_cov_number(cov, "market_cap_pct"),
        min_pct=_cov_number(cov, "min_pct"),
        whole_market=whole_market,
        warning=warning or None,
    )


def parse_event(event: Any, *, bucket: str) -> LoadRequest:
    """Check the Transform contract; raise ValidationError naming the first bad field."""
    event = keys.validate_object(event, "event")
    keys.validate_bucket(event.get("bucket"), expected=bucket)
    snapshot_id = keys.validate_snapshot_id(event.get("snapshot_id"))
    run_id = keys.validate_run_id(event.get("run_id"))
    partition_date = _date(event, "partition_date")
    if partition_date is None:
        raise ValidationError("partition_date", "is required (a YYYY-MM-DD date)")
    processed_key = keys.validate_key(event.get("processed_key"), "processed_key", keys.PROCESSED)
    expected = keys.processed_key(snapshot_id, date.fromisoformat(partition_date), run_id)
    if processed_key != expected:
        raise ValidationError(
            "processed_key", f"{processed_key!r} is not run {run_id}'s file {expected!r}"
        )
    manifest_key = event.get("manifest_key")
    if manifest_key is not None:
        keys.validate_key(manifest_key, "manifest_key", keys.RAW)
    row_count = _count(event, "row_count", required=True)
    assert row_count is not None
    rejected_key = event.get("rejected_key")
    if rejected_key is not None:
        keys.validate_key(rejected_key, "rejected_key", keys.REJECTED)
    quality = event.get("quality")
    if quality is not None:
        keys.validate_object(quality, "quality")
    counts = {f: _count(event, f) for f in _COUNT_FIELDS}
    run = RunInfo(
        # Required: a Lambda-level retry after COMMIT replaces its own ETL_RUNS row by it.
        execution_id=_required_str(event, "execution_id"),
        fetched_at=_timestamp(event, "fetched_at"),
        fetch_date=_date(event, "fetch_date"),
        vs_currency=_optional_str(event, "vs_currency"),
        processed_key=processed_key,
        rejected_key=rejected_key,
        quality=quality,
        coverage=parse_coverage(event.get("coverage")),
        **counts,
    )
    return LoadRequest(
        bucket=event["bucket"],
        processed_key=processed_key,
        snapshot_id=snapshot_id,
        run_id=run_id,
        partition_date=partition_date,
        manifest_key=manifest_key,
        row_count=row_count,
        run=run,
    )


def run(
    event: Mapping[str, Any],
    *,
    storage: Storage,
    config: SnowflakeConfig | Callable[[], SnowflakeConfig],
    connect: Callable[[SnowflakeConfig], Any] | None = None,
) -> dict[str, Any]:
    """Validate, download, connect, ensure the objects, load, close; return the contract.

    ``config`` may be a callable so that a bad event is reported before missing credentials.
    """
    request = parse_event(event, bucket=storage.bucket)
    logger.append_keys(snapshot_id=request.snapshot_id)
    if not storage.exists(request.processed_key):
        raise ValidationError(
            "processed_key", f"{request.processed_key!r} does not exist in {storage.bucket}"
        )
    cfg = config() if callable(config) else config
    if connect is None:
        from functions.load.connection import connect
    names = Names(cfg.database, cfg.schema)
    with tempfile.TemporaryDirectory(prefix="crypto-etl-load-") as tmp:
        local_file = Path(tmp) / f"{request.snapshot_id}.csv.gz"
        storage.download(request.processed_key, local_file)
        logger.info("connecting to Snowflake", extra={"snowflake": cfg.describe()})
        conn = connect(cfg)
        try:
            ensure_objects(conn, names)
            result = load_snapshot(
                conn,
                local_file=local_file,
                snapshot_id=request.snapshot_id,
                row_count=request.row_count,
                names=names,
                run=request.run,
                reconnect=lambda: connect(cfg),
            )
        finally:
            # A dead session may fail to close: that must not hide the load's own error.
            with contextlib.suppress(Exception):
                conn.close()
    if result.commit_reply_lost:
        logger.warning("COMMIT's reply was lost; a new session found this load committed")
    try:
        index = switch_current(
            storage,
            request.snapshot_id,
            partition_date=request.partition_date,
            current={
                "run_id": request.run_id,
                "execution_id": request.run.execution_id,
                "manifest_key": request.manifest_key,
                "processed_key": request.processed_key,
                "rejected_key": request.run.rejected_key,
                "rows": result.rows_loaded,
                "loaded_at": result.loaded_at,
            },
        )
    except CryptoEtlError as exc:
        # The warehouse has changed: say so, so nobody reads the failure as "nothing loaded".
        raise StorageError(
            f"the warehouse COMMITTED snapshot {request.snapshot_id} (run {request.run_id},"
            f" {result.rows_loaded} rows in {result.table}), but the lake's snapshot index"
            f" {keys.snapshot_index_key(request.snapshot_id)} could not be switched to this run"
            f" ({type(exc).__name__}: {exc}); re-running the snapshot is safe and fixes it"
        ) from exc
    logger.info("snapshot index switched", extra={"current": index["current"]})
    return {
        **event,
        "rows_inserted": result.rows_inserted,
        "rows_replaced": result.rows_replaced,
        "table": result.table,
        "asset_dim_merged": result.asset_dim_error is None,
        "snapshot_index_key": keys.snapshot_index_key(request.snapshot_id),
    }


def _required_str(event: Mapping[str, Any], field: str, label: str | None = None) -> str:
    value = event.get(field)
    if not isinstance(value, str) or not value.strip():
        raise ValidationError(label or field, f"{value!r} must be a non-empty string")
    return value


# --- record_failure ------------------------------------------------------------------------

ACTION_LOAD = "load"
ACTION_RECORD_FAILURE = "record_failure"
_FAILURE_FIELDS = {"action", "failed_state", "error", "execution", "state_input"}
_STATE_NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9 _?-]{0,63}$")
_CURRENCY_RE = re.compile(r"^[a-z0-9_-]{1,16}$")


@dataclass(frozen=True)
class FailureRequest:
    """The validated ``record_failure`` event: what the FAILED row records."""

    record: FailureRecord
    execution_name: str
    cause: str | None  # the error's Cause as received (ERROR_MESSAGE is derived from it)


def bounded(text: str, limit: int) -> str:
    """``text`` on one line (runs of whitespace -> one space), cut to ``limit`` characters
    (the last one then ``…``)."""
    one_line = " ".join(text.split())
    return one_line if len(one_line) <= limit else one_line[: limit - 1] + "…"


def error_message(cause: str | None, secrets: Sequence[str | None] = ()) -> str | None:
    """The message of a Step Functions error ``Cause``, bounded to ERROR_MESSAGE_MAX_CHARS.

    A Lambda function's error arrives as the JSON text ``{"errorType", "errorMessage",
    "stackTrace"}`` (docs.aws.amazon.com/lambda/latest/dg/python-exceptions.html): its
    ``errorMessage`` is kept (not the stack trace); any other Cause is kept as it is. Each of
    ``secrets`` (4 characters or more) is replaced by ``***`` before bounding (defence in
    depth: the handlers' messages never hold them).
    """
    if cause is None or not cause.strip():
        return None
    text = cause
    try:
        parsed = json.loads(cause)
    except ValueError:
        parsed = None
    if isinstance(parsed, dict) and isinstance(parsed.get("errorMessage"), str):
        text = parsed["errorMessage"]
    for secret in secrets:
        if secret and len(secret) >= 4:
            text = text.replace(secret, "***")
    return bounded(text, sql.ERROR_MESSAGE_MAX_CHARS) or None


def _lenient(parse: Callable[[], Any]) -> Any:
    """The parsed value, or None when it is invalid: the failed state's input is recorded as
    far as it is valid (it may be what failed), never a reason not to record the failure."""
    try:
        return parse()
    except ValidationError:
        return None


def _progress(state_input: Mapping[str, Any]) -> RunInfo:
    """The counts so far from the failed state's input (each invalid value -> None)."""

    def count(name: str) -> int | None:
        return _lenient(lambda: _count(state_input, name))

    def key(name: str, prefix: str) -> str | None:
        value = state_input.get(name)
        return None if value is None else _lenient(lambda: keys.validate_key(value, name, prefix))

    currency = state_input.get("vs_currency")
    quality = state_input.get("quality")
    return RunInfo(
        fetched_at=_lenient(lambda: _timestamp(state_input, "fetched_at")),
        fetch_date=_lenient(lambda: _date(state_input, "fetch_date")),
        vs_currency=currency.lower()
        if isinstance(currency, str) and _CURRENCY_RE.fullmatch(currency.lower())
        else None,
        processed_key=key("processed_key", keys.PROCESSED),
        rejected_key=key("rejected_key", keys.REJECTED),
        quality=quality if isinstance(quality, Mapping) else None,
        coverage=_lenient(lambda: parse_coverage(state_input.get("coverage"))),
        **{f: count(f) for f in _COUNT_FIELDS},
    )


def parse_failure_event(event: Any) -> FailureRequest:
    """Check a ``record_failure`` event strictly; raise ValidationError naming the bad field.

    Shape: ``action`` "record_failure"; ``failed_state`` a state name (1-64 letters, digits,
    spaces, ``_ - ?``); ``error`` ``{"Error": non-empty string, "Cause": string or null}`` (as
    a Catch's ResultPath stores it); ``execution`` ``{"name", "id"}`` non-empty strings (and
    ``start_time``); ``state_input`` the failed state's input, an object or null: its counts
    (``coin_count, pages, api_calls, retries, rejected_count, duplicate_count``, ``coverage``,
    ...) are recorded where valid and its ``snapshot_id`` names the row's snapshot (else the
    execution name, else the run id). Other top-level fields are refused.
    """
    event = keys.validate_object(event, "event")
    unknown = sorted(str(k) for k in event if k not in _FAILURE_FIELDS)
    if unknown:
        raise ValidationError(unknown[0], f"is not a field of a record_failure event ({unknown})")
    if event.get("action") != ACTION_RECORD_FAILURE:
        raise ValidationError(
            "action", f"{event.get('action')!r:.80} must be {ACTION_RECORD_FAILURE!r}"
        )
    failed_state = event.get("failed_state")
    if not isinstance(failed_state, str) or not _STATE_NAME_RE.fullmatch(failed_state):
        raise ValidationError(
            "failed_state",
            f"{failed_state!r:.80} must be a state name (1-64 letters, digits, spaces)",
        )
    error = keys.validate_object(event.get("error"), "error")
    name = error.get("Error")
    if not isinstance(name, str) or not name.strip():
        raise ValidationError("error.Error", f"{name!r} must be a non-empty string")
    cause = error.get("Cause")
    if cause is not None and not isinstance(cause, str):
        raise ValidationError("error.Cause", f"{type(cause).__name__} must be a string or null")
    execution = keys.validate_object(event.get("execution"), "execution")
    execution_id = _required_str(execution, "id", "execution.id")
    execution_name = _required_str(execution, "name", "execution.name")
    if len(execution_id) > 2048:
        raise ValidationError("execution.id", "must be at most 2048 characters")
    state_input = event.get("state_input")
    if state_input is None:
        state_input = {}
    state_input = keys.validate_object(state_input, "state_input")
    snapshot_id = (
        _lenient(lambda: keys.validate_snapshot_id(state_input.get("snapshot_id")))
        or _lenient(lambda: keys.validate_snapshot_id(execution_name))
        or keys.run_id(execution_name, execution_id)
    )
    progress = _progress(state_input)
    record = FailureRecord(
        snapshot_id=snapshot_id,
        execution_id=execution_id,
        failed_state=failed_state,
        error_name=bounded(name, sql.ERROR_NAME_MAX_CHARS),
        error_message=error_message(cause),
        run=replace(progress, execution_id=execution_id),
    )
    return FailureRequest(record=record, execution_name=execution_name, cause=cause)


def record_failure_run(
    event: Mapping[str, Any],
    *,
    config: SnowflakeConfig | Callable[[], SnowflakeConfig],
    connect: Callable[[SnowflakeConfig], Any] | None = None,
) -> dict[str, Any]:
    """Validate a ``record_failure`` event and write the execution's FAILED ETL_RUNS row.

    Creates the schema and tables if missing and adds the columns an older ETL_RUNS lacks
    (not the views). Idempotent: a retry replaces the execution's FAILED row. Returns
    ``{"recorded": true, "table", "snapshot_id", "execution_id", "failed_state", "error",
    "recorded_at"}``. Raises ValidationError (bad event), ConfigError (no credentials) or
    LoadError (the warehouse failed: nothing recorded).
    """
    request = parse_failure_event(event)
    record = request.record
    logger.append_keys(snapshot_id=record.snapshot_id)
    cfg = config() if callable(config) else config
    secrets = (cfg.password, cfg.private_key, cfg.private_key_passphrase)
    record = replace(record, error_message=error_message(request.cause, secrets))
    if connect is None:
        from functions.load.connection import connect
    names = Names(cfg.database, cfg.schema)
    logger.info("connecting to Snowflake", extra={"snowflake": cfg.describe()})
    conn = connect(cfg)
    try:
        ensure_objects(conn, names, views=False)
        recorded_at = record_failure(conn, record, names=names)
    finally:
        with contextlib.suppress(Exception):
            conn.close()
    return {
        "recorded": True,
        "table": names.q(sql.ETL_RUNS),
        "snapshot_id": record.snapshot_id,
        "execution_id": record.execution_id,
        "failed_state": record.failed_state,
        "error": record.error_name,
        "recorded_at": recorded_at,
    }


# The snapshot id of a load event, else of a record_failure event's failed state, else the
# execution name (as parse_failure_event picks it).
CORRELATION_ID_PATH = "snapshot_id || state_input.snapshot_id || execution.name"


def emit_load_metrics(out: Mapping[str, Any], load_seconds: float) -> None:
    """A successful load's metrics: rows inserted and replaced, ``load_seconds`` (the Load's own
    time), and the execution's outcome (ExecutionSucceeded 1) and duration (seconds from the
    Extract's ``fetched_at`` to now)."""
    obs.set_vs_currency(metrics, out.get("vs_currency"))
    obs.put(metrics, obs.ROWS_INSERTED, out.get("rows_inserted"))
    obs.put(metrics, obs.ROWS_REPLACED, out.get("rows_replaced"))
    obs.put(metrics, obs.LOAD_SECONDS, round(load_seconds, 3))
    obs.put(metrics, obs.EXECUTION_SECONDS, obs.seconds_since(out.get("fetched_at")))
    obs.put(metrics, obs.EXECUTION_SUCCEEDED, 1)


def emit_failure_metrics(event: Mapping[str, Any]) -> None:
    """A failed execution's metrics (the record_failure action), from its event as given, so
    they go out even when the event or the recording is bad: ExecutionFailed 1 and the
    execution's duration (seconds from the failed state input's ``fetched_at``, else the
    execution's ``start_time``). ``VsCurrency`` is the state input's, else the default."""
    state_input = event.get("state_input")
    state_input = state_input if isinstance(state_input, Mapping) else {}
    execution = event.get("execution")
    execution = execution if isinstance(execution, Mapping) else {}
    started = state_input.get("fetched_at") or execution.get("start_time")
    obs.set_vs_currency(metrics, state_input.get("vs_currency"))
    obs.put(metrics, obs.EXECUTION_SECONDS, obs.seconds_since(started))
    obs.put(metrics, obs.EXECUTION_FAILED, 1)


# Each warehouse step and the index switch in an X-Ray subsegment (run() and
# record_failure_run() call them by these module names); unchanged when tracing is off.
ensure_objects = obs.traced(tracer, ensure_objects)
load_snapshot = obs.traced(tracer, load_snapshot)
switch_current = obs.traced(tracer, switch_current)
record_failure = obs.traced(tracer, record_failure)


@context_or_local
@tracer.capture_lambda_handler
@metrics.log_metrics(capture_cold_start_metric=True)
@logger.inject_lambda_context(correlation_id_path=CORRELATION_ID_PATH)
def handler(event: dict, context: Any) -> dict:
    """Lambda entry point: configuration comes from the environment at call time.

    ``event["action"]`` picks the work: absent or ``"load"`` loads a snapshot (:func:`run`),
    ``"record_failure"`` records a failed execution (:func:`record_failure_run`),
    ``"load_history"`` loads a backfill's market_chart bodies into CRYPTO_PRICE_HISTORY
    (:func:`functions.load.history.load_history_run`); any other value raises ValidationError.
    Logs carry the snapshot id as ``correlation_id``; metrics per :func:`emit_load_metrics`
    and :func:`emit_failure_metrics`.
    """
    logger.setLevel(os.environ.get("POWERTOOLS_LOG_LEVEL") or os.environ.get("LOG_LEVEL") or "INFO")
    logger.remove_keys(["snapshot_id"])
    obs.start_invocation(metrics)
    obs.annotate_snapshot(tracer, logger.get_correlation_id())
    env = dict(os.environ)
    action = keys.validate_object(event, "event").get("action")
    if action == ACTION_RECORD_FAILURE:
        try:
            return record_failure_run(event, config=lambda: SnowflakeConfig.from_env(env))
        finally:
            emit_failure_metrics(event)
    if action == ACTION_LOAD_HISTORY:
        return load_history_run(
            event, storage=storage_from_env(env), config=lambda: SnowflakeConfig.from_env(env)
        )
    if action not in (None, ACTION_LOAD):
        raise ValidationError(
            "action",
            f"{action!r:.80} must be {ACTION_LOAD!r} (default), {ACTION_RECORD_FAILURE!r}"
            f" or {ACTION_LOAD_HISTORY!r}",
        )
    started = time.perf_counter()
    out = run(
        event,
        storage=storage_from_env(env),
        config=lambda: SnowflakeConfig.from_env(env),
    )
    emit_load_metrics(out, time.perf_counter() - started)
    return out
