"""Metric names, units and dimensions the functions emit, and the thin Powertools wiring.

One module of names: the Lambdas emit these metrics (CloudWatch Embedded Metric Format, EMF,
through Powertools ``Metrics``) and the CDK dashboard draws them, so neither spells a name of
its own. Pure: no CDK import, no AWS call.

Every application metric has the dimensions ``Pipeline`` (``PIPELINE_NAME``, default
``crypto-etl``) and ``VsCurrency`` (the quote currency); ``RowsRejectedByReason`` adds
``Reason`` (one EMF object per reason, the ``TOP_REJECT_REASONS`` largest). Powertools'
``ColdStart`` keeps its own dimensions ``function_name`` and ``service``. The namespace is
``POWERTOOLS_METRICS_NAMESPACE`` or ``CryptoEtl``.

Where the EMF objects go (:func:`emit_emf`): to a capture installed with :func:`capture_emf`
(``crypto-etl run`` and the tests); else, on Lambda (``AWS_LAMBDA_FUNCTION_NAME`` set), to
stdout, where CloudWatch Logs turns them into metrics (Powertools' own behaviour); else nowhere,
so a handler called outside Lambda never writes JSON into another program's stdout.
``POWERTOOLS_METRICS_DISABLED=true`` turns them off everywhere.

Tracing (:func:`get_tracer`) is Powertools ``Tracer`` where Powertools would enable it (on
Lambda, ``POWERTOOLS_TRACE_DISABLED`` not true, not SAM local or Chalice); elsewhere a no-op
stand-in, so local runs and tests never import the X-Ray SDK (~0.2-0.4 s per process).
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

from aws_lambda_powertools import Metrics
from aws_lambda_powertools.metrics.functions import is_metrics_disabled
from aws_lambda_powertools.metrics.provider.cloudwatch_emf.cloudwatch import (
    AmazonCloudWatchEMFProvider,
)
from aws_lambda_powertools.shared.functions import resolve_truthy_env_var_choice

NAMESPACE_ENV = "POWERTOOLS_METRICS_NAMESPACE"
NAMESPACE_DEFAULT = "CryptoEtl"
PIPELINE_ENV = "PIPELINE_NAME"
PIPELINE_DEFAULT = "crypto-etl"
VS_CURRENCY_DEFAULT = "usd"  # the Extract's default; used when a failure names no currency

DIM_PIPELINE = "Pipeline"
DIM_VS_CURRENCY = "VsCurrency"
DIM_REASON = "Reason"
DIMENSIONS: tuple[str, ...] = (DIM_PIPELINE, DIM_VS_CURRENCY)
TOP_REJECT_REASONS = 5

COUNT, SECONDS, PERCENT = "Count", "Seconds", "Percent"

# Extract (emitted once per execution, by the invocation that finishes: the run's totals).
EXTRACT_PAGES = "ExtractPages"
EXTRACT_COINS = "ExtractCoins"
API_CALLS = "ApiCalls"
API_RETRIES = "ApiRetries"
RATE_LIMITED_429S = "RateLimited429s"
RATE_LIMIT_WAIT_SECONDS = "RateLimitWaitSeconds"
GLOBAL_AVAILABLE = "GlobalAvailable"
EXTRACT_INVOCATIONS = "ExtractInvocations"
# Transform
ROWS_IN = "RowsIn"
ROWS_OUT = "RowsOut"
ROWS_REJECTED = "RowsRejected"
ROWS_REJECTED_BY_REASON = "RowsRejectedByReason"
DUPLICATES = "Duplicates"
COIN_COVERAGE_PCT = "CoinCoveragePct"
MARKET_CAP_COVERAGE_PCT = "MarketCapCoveragePct"
QUALITY_CHECKS_FAILED = "QualityChecksFailed"
# Load
ROWS_INSERTED = "RowsInserted"
ROWS_REPLACED = "RowsReplaced"
LOAD_SECONDS = "LoadSeconds"
# Execution (the Load on success, its record_failure action on failure)
EXECUTION_SECONDS = "ExecutionSeconds"
EXECUTION_SUCCEEDED = "ExecutionSucceeded"
EXECUTION_FAILED = "ExecutionFailed"
# Powertools' own (capture_cold_start_metric=True), dimensions function_name and service.
COLD_START = "ColdStart"

UNITS: dict[str, str] = {
    EXTRACT_PAGES: COUNT,
    EXTRACT_COINS: COUNT,
    API_CALLS: COUNT,
    API_RETRIES: COUNT,
    RATE_LIMITED_429S: COUNT,
    RATE_LIMIT_WAIT_SECONDS: SECONDS,
    GLOBAL_AVAILABLE: COUNT,
    EXTRACT_INVOCATIONS: COUNT,
    ROWS_IN: COUNT,
    ROWS_OUT: COUNT,
    ROWS_REJECTED: COUNT,
    ROWS_REJECTED_BY_REASON: COUNT,
    DUPLICATES: COUNT,
    COIN_COVERAGE_PCT: PERCENT,
    MARKET_CAP_COVERAGE_PCT: PERCENT,
    QUALITY_CHECKS_FAILED: COUNT,
    ROWS_INSERTED: COUNT,
    ROWS_REPLACED: COUNT,
    LOAD_SECONDS: SECONDS,
    EXECUTION_SECONDS: SECONDS,
    EXECUTION_SUCCEEDED: COUNT,
    EXECUTION_FAILED: COUNT,
    COLD_START: COUNT,
}
EMITTED_METRICS: tuple[str, ...] = tuple(UNITS)
COLD_START_DIMENSIONS: tuple[str, ...] = ("function_name", "service")


def metric_dimensions(name: str) -> tuple[str, ...]:
    """The dimension names ``name`` is emitted with (KeyError for a name not emitted)."""
    if name not in UNITS:
        raise KeyError(f"{name!r} is not a metric the functions emit")
    if name == COLD_START:
        return COLD_START_DIMENSIONS
    if name == ROWS_REJECTED_BY_REASON:
        return (*DIMENSIONS, DIM_REASON)
    return DIMENSIONS


def namespace(env: Mapping[str, str] = os.environ) -> str:
    """``POWERTOOLS_METRICS_NAMESPACE`` (blank = unset) or ``CryptoEtl``."""
    return (env.get(NAMESPACE_ENV) or "").strip() or NAMESPACE_DEFAULT


def pipeline_name(env: Mapping[str, str] = os.environ) -> str:
    """``PIPELINE_NAME`` (the stack's name; blank = unset) or ``crypto-etl``."""
    return (env.get(PIPELINE_ENV) or "").strip() or PIPELINE_DEFAULT


# -- where EMF objects go ------------------------------------------------------------------------

_sinks: list[Callable[[dict[str, Any]], None]] = []
_sinks_lock = threading.Lock()


def emit_emf(blob: dict[str, Any]) -> None:
    """Send one EMF object to the innermost capture, else (on Lambda) to stdout, else nowhere."""
    if is_metrics_disabled():
        return
    with _sinks_lock:
        sink = _sinks[-1] if _sinks else None
    if sink is not None:
        sink(blob)
    elif os.environ.get("AWS_LAMBDA_FUNCTION_NAME"):
        print(json.dumps(blob, separators=(",", ":")), flush=True)


@contextmanager
def capture_emf(
    on_emf: Callable[[dict[str, Any]], None] | None = None,
) -> Iterator[list[dict[str, Any]]]:
    """Collect the EMF objects emitted in this process (any thread) while inside; yields the list.

    ``on_emf`` is also called with each (e.g. to print it). Captures nest: the innermost wins.
    """
    lines: list[dict[str, Any]] = []

    def sink(blob: dict[str, Any]) -> None:
        lines.append(blob)
        if on_emf is not None:
            on_emf(blob)

    with _sinks_lock:
        _sinks.append(sink)
    try:
        yield lines
    finally:
        with _sinks_lock:
            _sinks.remove(sink)


def emf_values(blob: Mapping[str, Any]) -> list[tuple[str, float, dict[str, str]]]:
    """``(metric name, value, dimensions)`` for each metric of one EMF object (a list value,
    Powertools' form for a metric added twice, gives one tuple per element)."""
    aws = blob.get("_aws") or {}
    out: list[tuple[str, float, dict[str, str]]] = []
    for directive in aws.get("CloudWatchMetrics") or []:
        dim_names = {d for dims in directive.get("Dimensions") or [] for d in dims}
        dims = {d: str(blob.get(d)) for d in sorted(dim_names)}
        for metric in directive.get("Metrics") or []:
            value = blob.get(metric["Name"])
            for v in value if isinstance(value, list) else [value]:
                out.append((metric["Name"], float(v), dims))
    return out


def emf_totals(blobs: list[dict[str, Any]]) -> dict[str, float]:
    """Each metric's sum over ``blobs`` (all dimensions together), in first-seen order."""
    totals: dict[str, float] = {}
    for blob in blobs:
        for name, value, _dims in emf_values(blob):
            totals[name] = totals.get(name, 0.0) + value
    return totals


# -- Powertools Metrics ---------------------------------------------------------------------------


class _Provider(AmazonCloudWatchEMFProvider):
    """Powertools' EMF provider, writing through :func:`emit_emf`, without the ``service``
    dimension on application metrics (the dashboard's dimension sets are ``DIMENSIONS``) and
    without the "no metrics" warning (an Extract invocation that does not finish emits none)."""

    def __init__(self, service: str) -> None:
        super().__init__(namespace=NAMESPACE_DEFAULT, service=service)
        self.cold_start_service = self.service  # POWERTOOLS_SERVICE_NAME, else ``service``
        self.service = None

    def flush_metrics(self, raise_on_empty_metrics: bool = False) -> None:
        if not self.metric_set:
            if raise_on_empty_metrics:
                super().flush_metrics(raise_on_empty_metrics=True)
            self.clear_metrics()
            return
        blob = self.serialize_metric_set()
        self.clear_metrics()
        emit_emf(dict(blob))

    def add_cold_start_metric(self, context: Any) -> None:
        name = self.function_name or getattr(context, "function_name", None) or "unknown"
        one = AmazonCloudWatchEMFProvider(namespace=self.namespace)
        one.add_metric(name=COLD_START, unit=COUNT, value=1)
        one.add_dimension(name="function_name", value=str(name))
        if self.cold_start_service:
            one.add_dimension(name="service", value=str(self.cold_start_service))
        emit_emf(dict(one.serialize_metric_set()))


def get_metrics(service: str) -> Metrics:
    """A Powertools ``Metrics`` for one function (its own metric set, not the shared one)."""
    return Metrics(provider=_Provider(service))


def start_invocation(metrics: Metrics, env: Mapping[str, str] = os.environ) -> None:
    """Read the namespace and pipeline name now (the environment of this invocation) and set
    ``Pipeline`` as the default dimension."""
    provider = metrics.provider
    provider.namespace = namespace(env)
    provider.default_dimensions.clear()
    provider.dimension_set.clear()
    provider.set_default_dimensions(**{DIM_PIPELINE: pipeline_name(env)})


def put(metrics: Metrics, name: str, value: float | None) -> None:
    """Add ``name`` with its unit from ``UNITS``; a figure not known (None, not a number) adds
    nothing. KeyError for a name not in ``UNITS``."""
    unit = UNITS[name]
    if isinstance(value, bool) or not isinstance(value, int | float) or value != value:
        return
    metrics.add_metric(name=name, unit=unit, value=float(value))


def set_vs_currency(metrics: Metrics, vs_currency: object) -> None:
    """The ``VsCurrency`` dimension: the currency if it is a short code, else the default."""
    text = str(vs_currency).strip().lower() if isinstance(vs_currency, str) else ""
    ok = 0 < len(text) <= 16 and all(c.isalnum() or c in "_-" for c in text) and text.isascii()
    metrics.add_dimension(name=DIM_VS_CURRENCY, value=text if ok else VS_CURRENCY_DEFAULT)


def emit_by_reason(metrics: Metrics, by_reason: Mapping[str, Any]) -> None:
    """``RowsRejectedByReason`` for the ``TOP_REJECT_REASONS`` largest reasons, one EMF object
    each (its ``Reason`` dimension differs), with the function's current dimensions."""
    provider = metrics.provider
    counts = [(str(k), int(v)) for k, v in by_reason.items() if isinstance(v, int) and v > 0]
    counts.sort(key=lambda kv: (-kv[1], kv[0]))
    for reason, count in counts[:TOP_REJECT_REASONS]:
        one = AmazonCloudWatchEMFProvider(namespace=provider.namespace)
        for dim in DIMENSIONS:
            if dim in provider.dimension_set:
                one.add_dimension(name=dim, value=provider.dimension_set[dim])
        one.add_dimension(name=DIM_REASON, value=reason[:250])
        one.add_metric(name=ROWS_REJECTED_BY_REASON, unit=COUNT, value=count)
        emit_emf(dict(one.serialize_metric_set()))


def seconds_since(iso_time: object, now: datetime | None = None) -> float | None:
    """Seconds from an ISO-8601 time (UTC when it names no zone) to ``now``; None if unreadable
    or in the future."""
    if not isinstance(iso_time, str):
        return None
    try:
        start = datetime.fromisoformat(iso_time)
    except ValueError:
        return None
    start = start.replace(tzinfo=UTC) if start.tzinfo is None else start
    elapsed = ((now or datetime.now(UTC)) - start).total_seconds()
    return round(elapsed, 3) if elapsed >= 0 else None


# -- tracing --------------------------------------------------------------------------------------


def tracing_enabled(env: Mapping[str, str] = os.environ) -> bool:
    """Powertools' rule (``Tracer._is_tracer_disabled``): on Lambda (``LAMBDA_TASK_ROOT``), not
    under SAM local or Chalice, and ``POWERTOOLS_TRACE_DISABLED`` not true."""
    if resolve_truthy_env_var_choice(env=env.get("POWERTOOLS_TRACE_DISABLED", "false")):
        return False
    if env.get("AWS_SAM_LOCAL") or env.get("AWS_CHALICE_CLI_MODE"):
        return False
    return bool(env.get("LAMBDA_TASK_ROOT"))


class NullTracer:
    """The part of Powertools ``Tracer`` the handlers use, doing nothing (tracing disabled)."""

    disabled = True

    def capture_lambda_handler(self, lambda_handler: Any = None, **_: Any) -> Any:
        return lambda_handler if lambda_handler is not None else (lambda f: f)

    def capture_method(self, method: Any = None, **_: Any) -> Any:
        return method if method is not None else (lambda f: f)

    def put_annotation(self, key: str, value: Any) -> None:
        return None

    def put_metadata(self, key: str, value: Any, namespace: str | None = None) -> None:
        return None


# Powertools patches these when the Tracer is built (they must be imported by then to be traced:
# requests for CoinGecko, botocore for S3 and Secrets Manager).
PATCH_MODULES: tuple[str, ...] = ("requests", "botocore")


def get_tracer(service: str, env: Mapping[str, str] = os.environ) -> Any:
    """Powertools ``Tracer`` (patching ``PATCH_MODULES``) when tracing is on, else NullTracer."""
    if not tracing_enabled(env):
        return NullTracer()
    from aws_lambda_powertools import Tracer

    return Tracer(service=service, patch_modules=PATCH_MODULES)


def traced(tracer: Any, function: Callable[..., Any]) -> Callable[..., Any]:
    """``function`` in an X-Ray subsegment ``## <name>`` (its result not recorded: page bodies
    and frames are large); ``function`` itself when tracing is off."""
    if getattr(tracer, "disabled", True):
        return function
    return tracer.capture_method(function, capture_response=False)


def annotate_snapshot(tracer: Any, snapshot_id: object) -> None:
    """Annotate the handler's segment with ``snapshot_id`` (a short string only)."""
    if isinstance(snapshot_id, str) and 0 < len(snapshot_id) <= 250:
        tracer.put_annotation(key="snapshot_id", value=snapshot_id)
