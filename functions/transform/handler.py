"""Transform Lambda: raw pages in the lake -> processed (and rejected) CSV.gz in the lake.

Input: the Extract contract (``bucket``, ``snapshot_id``, ``run_id``, ``partition_date``,
``raw_prefix``, ``manifest_key``, ``global_key`` (null when ``/global`` was unavailable, with
``global_error`` saying why), ``fetched_at``, ``fetch_date``, ``vs_currency``, ``max_coins``,
counts...). Every page is checked against the manifest's SHA-256 before it is used, and the
processed file is parsed back (row count, field count) before it is written.
``max_coins`` is an integer >= 1, null, or ``"all"`` (the whole market: no cap).
Output: the input plus ``processed_key``, ``rejected_key`` (always written; header only when
nothing was refused), ``row_count``, ``rejected_count``, ``duplicate_count``, ``quality``
(see ``transform.py``) and ``coverage`` (see ``coverage.py``), all under the run's own ``run=``
prefix.

Environment: ``LAKE_BUCKET`` / ``LAKE_LOCAL_DIR`` (the lake), ``COVERAGE_MIN_PCT`` (a percentage,
0 to 100, default 90: below it the coverage against ``/global`` is a logged warning, not a
failure; any other value raises ConfigError), ``QUALITY_GATE`` (``on``, the default, or ``off``)
and ``QUALITY_MIN_ROW_FRACTION`` (0 to 1, default 0.5; 0 turns the row-count check off; any
other value of either raises ConfigError naming it), ``POWERTOOLS_LOG_LEVEL`` / ``LOG_LEVEL``.

Quality gate (``gate.py``): before the processed file is written, the processed rows must have
unique coin ids, no negative quantity, no per-coin share above 100 %, the required columns
non-null, and at least ``QUALITY_MIN_ROW_FRACTION`` x the rows of the previous snapshot in the
same currency and ``max_coins`` (found in the lake: ``previous.py``; none found: the check
passes and says why). A failure raises DataQualityError naming every failed check (rows,
threshold, sample coin ids), after the rejected file is written and before the processed file
is: Load is never reached, the state machine's Catch publishes the alert. The gate's checks
join ``quality.checks`` (``"gate": true``) and ``quality.gate`` says how it ran.

Memory: pages are read, checked and parsed one at a time while the transform builds its table
(the page dicts of one chunk of rows are alive at a time), and the processed file is encoded and
gzip'd in chunks, so a 100k-coin market fits a 512 MB Lambda.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any, TypeVar

import orjson

from functions.common import keys
from functions.common import observability as obs
from functions.common.errors import DataQualityError, ValidationError
from functions.common.log import context_or_local, get_logger
from functions.common.storage import Storage, get_json, storage_from_env
from functions.transform.coverage import coins_fetched, coverage, min_pct_from_env
from functions.transform.csv_gz import rejected_to_csv_gz, to_csv_gz, verify_csv_gz
from functions.transform.gate import GateConfig, gate_config_from_env, gate_message, run_gate
from functions.transform.previous import PreviousLookup, find_previous
from functions.transform.transform import MAX_COINS_ALL, empty_message, transform

logger = get_logger("transform")
metrics = obs.get_metrics("transform")
tracer = obs.get_tracer("transform")

GZIP_CONTENT_TYPE = "application/gzip"
_T = TypeVar("_T")
_CURRENCY_RE = re.compile(r"[A-Za-z0-9_-]{1,16}")
_SHA256_RE = re.compile(r"[0-9a-f]{64}")
# A byte map under which an integer literal of 19+ digits (one orjson may read as a float: it
# holds 64-bit integers only; Python's json keeps any integer) shows as " " + 19 "0"s: digits
# become "0", the bytes that can precede a fraction's or exponent's digits keep a non-space.
_NUMBER_SHAPE = bytes(
    ord("0") if 48 <= b <= 57 else b if b in b".eE+" else ord(" ") for b in range(256)
)
_LONG_INTEGER = b" " + b"0" * 19


@dataclass(frozen=True)
class TransformRequest:
    """The validated part of the event the transform uses."""

    bucket: str
    snapshot_id: str
    run_id: str
    partition_date: date
    raw_prefix: str
    manifest_key: str
    global_key: str | None
    global_error: str | None
    fetched_at: str
    fetch_date: date
    vs_currency: str
    max_coins: int | None
    whole_market: bool = False  # max_coins was "all"


def _parse(value: Any, parser: Callable[[str], _T], field: str, what: str) -> _T:
    if not isinstance(value, str):
        raise ValidationError(field, f"{value!r} must be {what} string")
    try:
        return parser(value)
    except ValueError as exc:
        raise ValidationError(field, f"{value!r} is not {what}") from exc


def parse_event(event: Any, *, bucket: str) -> TransformRequest:
    """Check the Extract contract; raise ValidationError naming the first bad field."""
    event = keys.validate_object(event, "event")
    keys.validate_bucket(event.get("bucket"), expected=bucket)
    snapshot_id = keys.validate_snapshot_id(event.get("snapshot_id"))
    fetch_date = _parse(
        event.get("fetch_date"), date.fromisoformat, "fetch_date", "a YYYY-MM-DD date"
    )
    partition_date = _parse(
        event.get("partition_date"), date.fromisoformat, "partition_date", "a YYYY-MM-DD date"
    )
    run_id = keys.validate_run_id(event.get("run_id"))
    raw_prefix = keys.validate_key(event.get("raw_prefix"), "raw_prefix", keys.RAW)
    expected_prefix = keys.raw_prefix(snapshot_id, partition_date, run_id)
    if raw_prefix != expected_prefix:
        raise ValidationError(
            "raw_prefix",
            f"{raw_prefix!r} is not the raw prefix of run {run_id} of snapshot {snapshot_id}"
            f" ({expected_prefix!r})",
        )
    manifest_key = keys.validate_key(event.get("manifest_key"), "manifest_key", raw_prefix)
    global_key = event.get("global_key")
    if global_key is not None:
        keys.validate_key(global_key, "global_key", raw_prefix)
    global_error = event.get("global_error")
    if global_error is not None and not isinstance(global_error, str):
        raise ValidationError("global_error", f"{global_error!r} must be a string or null")
    fetched_at = event.get("fetched_at")
    parsed = _parse(fetched_at, datetime.fromisoformat, "fetched_at", "an ISO-8601 timestamp")
    if parsed.tzinfo is None:
        raise ValidationError("fetched_at", f"{fetched_at!r} has no time zone (expected UTC)")
    vs_currency = event.get("vs_currency")
    if not isinstance(vs_currency, str) or not _CURRENCY_RE.fullmatch(vs_currency):
        raise ValidationError(
            "vs_currency", f"{vs_currency!r} must be 1-16 letters, digits, '_' or '-'"
        )
    max_coins = event.get("max_coins")
    whole_market = max_coins == MAX_COINS_ALL
    if whole_market:
        max_coins = None
    elif max_coins is not None and (
        isinstance(max_coins, bool) or not isinstance(max_coins, int) or max_coins < 1
    ):
        raise ValidationError(
            "max_coins", f"{max_coins!r} must be an integer >= 1 or {MAX_COINS_ALL!r}"
        )
    return TransformRequest(
        bucket=bucket,
        snapshot_id=snapshot_id,
        run_id=run_id,
        partition_date=partition_date,
        raw_prefix=raw_prefix,
        manifest_key=manifest_key,
        global_key=global_key,
        global_error=global_error,
        fetched_at=parsed.isoformat(),
        fetch_date=fetch_date,
        vs_currency=vs_currency,
        max_coins=max_coins,
        whole_market=whole_market,
    )


def check_manifest(manifest: Any, request: TransformRequest) -> list[tuple[str, str]]:
    """Check the manifest belongs to this run; return ``(page key, sha256)`` in listed order."""
    where = request.manifest_key
    manifest = keys.validate_object(manifest, where)
    if manifest.get("snapshot_id") != request.snapshot_id:
        raise ValidationError(
            f"{where}: snapshot_id",
            f"{manifest.get('snapshot_id')!r} is not the event's {request.snapshot_id!r}",
        )
    currency = manifest.get("vs_currency")
    if currency is not None and str(currency).lower() != request.vs_currency.lower():
        raise ValidationError(
            f"{where}: vs_currency", f"{currency!r} is not the event's {request.vs_currency!r}"
        )
    pages = manifest.get("pages")
    if not isinstance(pages, list):
        raise ValidationError(f"{where}: pages", f"must be a list, not {type(pages).__name__}")
    page_keys: list[tuple[str, str]] = []
    for i, entry in enumerate(pages):
        key = entry.get("key") if isinstance(entry, Mapping) else None
        key = keys.validate_key(key, f"{where}: pages[{i}].key", request.raw_prefix)
        digest = entry.get("sha256")
        if not isinstance(digest, str) or not _SHA256_RE.fullmatch(digest):
            raise ValidationError(
                f"{where}: pages[{i}].sha256", f"{digest!r} must be 64 lower-case hex digits"
            )
        page_keys.append((key, digest))
    return page_keys


def parse_page(body: bytes) -> Any:
    """A page's JSON, exactly as Python's ``json.loads`` reads it, ~2-4x faster.

    orjson reads strict JSON into the same values; what it refuses (``NaN``/``Infinity``
    literals, numbers beyond a double's range, lone surrogates, a BOM, UTF-16/32) and integer
    literals of 19 digits or more (read as floats beyond 64 bits) are left to ``json``, whose
    readings the transform's rules are written for. Raises ValueError / UnicodeDecodeError.
    """
    if _LONG_INTEGER in (b" " + body).translate(_NUMBER_SHAPE):
        return json.loads(body)
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        return json.loads(body)


def read_page(storage: Storage, key: str, sha256: str) -> Any:
    """The page's parsed JSON, after checking its bytes against the manifest's SHA-256.

    Raises ValidationError naming the page when the digest differs (the page was changed or
    replaced after the Extract wrote the manifest) or the body is not JSON.
    """
    body = storage.get_bytes(key)
    actual = hashlib.sha256(body).hexdigest()
    if actual != sha256:
        raise ValidationError(
            key,
            f"SHA-256 {actual} does not match the manifest's {sha256} ({len(body)} bytes):"
            " the page changed after the Extract wrote the manifest; re-run the snapshot",
        )
    try:
        return parse_page(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValidationError(key, f"is not valid JSON ({exc})") from exc


class LazyPages(Sequence[Any]):
    """The run's pages in manifest order, each read, checked and parsed when the transform asks
    for it (and not kept): the parsed pages are never all alive at once."""

    def __init__(self, storage: Storage, page_keys: list[tuple[str, str]]) -> None:
        self._storage = storage
        self._keys = page_keys
        self.read_s = 0.0  # seconds spent reading and parsing (for the timings log)

    def __len__(self) -> int:
        return len(self._keys)

    def __getitem__(self, index: Any) -> Any:
        if not isinstance(index, int):
            raise TypeError("LazyPages is indexed by page position only")
        started = time.perf_counter()
        key, digest = self._keys[index]
        try:
            return read_page(self._storage, key, digest)
        finally:
            self.read_s += time.perf_counter() - started


def describe_failed_checks(failed: list[Mapping[str, Any]]) -> str:
    """``name (detail; coins: a, b, …)`` for each failed check, ``"; "``-joined."""
    parts = []
    for check in failed:
        coins = check.get("coins") or []
        more = (check.get("coin_count") or len(coins)) - len(coins)
        named = f"; coins: {', '.join(map(str, coins))}" if coins else ""
        named += f" and {more} more" if coins and more > 0 else ""
        parts.append(f"{check.get('name')} ({check.get('detail')}{named})")
    return "; ".join(parts)


def apply_gate(
    request: TransformRequest,
    processed: Any,
    quality: dict[str, Any],
    *,
    storage: Storage,
    config: GateConfig,
) -> None:
    """Run the quality gate on ``processed``; add its checks to ``quality`` (in place).

    Raises DataQualityError naming every failed check; reads the lake (``previous.py``) only
    when the row-count check is on.
    """
    if not config.enabled:
        quality["gate"] = {"enabled": False}
        return
    lookup = PreviousLookup(note="row-count check disabled")
    if config.min_row_fraction > 0:
        lookup = find_previous(
            storage,
            run_id=request.run_id,
            fetched_at=datetime.fromisoformat(request.fetched_at),
            vs_currency=request.vs_currency,
            max_coins=MAX_COINS_ALL if request.whole_market else request.max_coins,
        )
    gate = run_gate(
        processed,
        dominance_basis=str(quality.get("dominance_basis")),
        min_row_fraction=config.min_row_fraction,
        previous=lookup.previous,
        previous_note=lookup.note,
    )
    quality["checks"] = [*quality["checks"], *gate.checks]
    quality["failed_checks"] = [c["name"] for c in quality["checks"] if not c["passed"]]
    quality["passed"] = not quality["failed_checks"]
    quality["gate"] = {
        "enabled": True,
        "passed": gate.passed,
        "failed_checks": [c["name"] for c in gate.failed],
        "min_row_fraction": config.min_row_fraction,
        **lookup.as_dict(),
    }
    if not gate.passed:
        message = gate_message(request.snapshot_id, gate)
        logger.error(
            message,
            extra={"failed_checks": gate.failed, "gate": quality["gate"], **lookup.stats()},
        )
        raise DataQualityError(message)
    logger.info("quality gate passed", extra={"gate": quality["gate"], **lookup.stats()})


def run(
    event: Mapping[str, Any],
    *,
    storage: Storage,
    min_pct: float | None = None,
    gate: GateConfig | None = None,
) -> dict[str, Any]:
    """Validate, read the raw files, transform, gate, write processed/rejected; return the
    contract.

    ``min_pct`` is the coverage threshold (%); None reads ``COVERAGE_MIN_PCT``. ``gate`` is the
    quality gate's configuration; None reads ``QUALITY_GATE`` / ``QUALITY_MIN_ROW_FRACTION``.
    Either raises ConfigError naming a malformed variable, before anything is read.
    """
    if min_pct is None:
        min_pct = min_pct_from_env(os.environ)
    if gate is None:
        gate = gate_config_from_env(os.environ)
    request = parse_event(event, bucket=storage.bucket)
    logger.append_keys(snapshot_id=request.snapshot_id)
    timings: dict[str, float] = {}
    started = time.perf_counter()
    manifest = get_json(storage, request.manifest_key)
    page_keys = check_manifest(manifest, request)
    global_body = get_json(storage, request.global_key) if request.global_key else None
    global_error = request.global_error
    if global_body is None and not global_error:
        global_error = manifest.get("global_error") or "the Extract stored no /global body"
    read_s = time.perf_counter() - started

    started = time.perf_counter()
    # Pages are read (SHA-256 checked, parsed) as the transform takes them, in page order.
    pages = LazyPages(storage, page_keys)
    result = transform(
        manifest,
        pages,
        global_body,
        snapshot_id=request.snapshot_id,
        fetched_at=request.fetched_at,
        fetch_date=request.fetch_date,
        vs_currency=request.vs_currency,
        max_coins=MAX_COINS_ALL if request.whole_market else request.max_coins,
        allow_empty=True,
        global_error=global_error if global_body is None else None,
    )
    timings["read_s"] = read_s + pages.read_s
    timings["transform_s"] = time.perf_counter() - started - pages.read_s

    started = time.perf_counter()
    # Always written (header only when nothing was refused): a retried or re-run snapshot then
    # never leaves an earlier attempt's rejects behind, and the role needs no delete permission.
    rejected_key = keys.rejected_key(request.snapshot_id, request.partition_date, request.run_id)
    storage.put_bytes(rejected_key, rejected_to_csv_gz(result.rejected), GZIP_CONTENT_TYPE)
    quality = result.quality
    if not result.row_count:
        logger.error("no valid rows", extra={"quality": quality, "rejected_key": rejected_key})
        raise DataQualityError(empty_message(request.snapshot_id, quality))
    # Before the processed file exists: a failing gate leaves nothing for Load to take.
    gate_started = time.perf_counter()
    apply_gate(request, result.processed, quality, storage=storage, config=gate)
    timings["gate_s"] = time.perf_counter() - gate_started
    processed_key = keys.processed_key(request.snapshot_id, request.partition_date, request.run_id)
    data = to_csv_gz(result.processed)
    # Parse the file back before it is staged: a writer bug fails here naming the row, not in
    # the warehouse's COPY with an opaque error.
    verify_csv_gz(data, result.row_count)
    storage.put_bytes(processed_key, data, GZIP_CONTENT_TYPE)
    del data
    timings["write_s"] = time.perf_counter() - started - timings["gate_s"]

    covered = coverage(
        coins=coins_fetched(
            result.processed["coin_id"].tolist(), result.rejected["coin_id"].tolist()
        ),
        market_cap_fetched=float(result.processed["market_cap"].sum(skipna=True)),
        global_body=global_body,
        vs_currency=request.vs_currency,
        min_pct=min_pct,
        whole_market=request.whole_market,
    )
    if covered["warning"]:
        logger.warning(f"coverage: {covered['warning']}", extra={"coverage": covered})
    failed = [c for c in quality["checks"] if not c["passed"]]
    if failed:
        logger.warning(
            f"quality checks failed: {describe_failed_checks(failed)}",
            extra={"failed_checks": failed},
        )
    logger.info(
        "transform done",
        extra={
            "quality": quality,
            "coverage": covered,
            "processed_key": processed_key,
            "rejected_key": rejected_key,
            "timings": {k: round(v, 4) for k, v in timings.items()},
        },
    )
    return {
        **event,
        "processed_key": processed_key,
        "rejected_key": rejected_key,
        "row_count": result.row_count,
        "rejected_count": result.rejected_count,
        "duplicate_count": result.duplicate_count,
        "quality": quality,
        "coverage": covered,
    }


CORRELATION_ID_PATH = "snapshot_id"


def emit_metrics(out: Mapping[str, Any]) -> None:
    """The Transform's metrics from its result ``out`` (the contract): rows in (the coins the
    manifest kept), out, rejected and by reason (the ``TOP_REJECT_REASONS`` largest), duplicates,
    coverage against ``/global`` (%, only when ``/global`` answered) and the quality checks that
    failed. A run the quality gate stops raises before this: it shows as ExecutionFailed."""
    quality = out.get("quality") or {}
    cover = out.get("coverage") or {}
    obs.set_vs_currency(metrics, out.get("vs_currency"))
    obs.put(metrics, obs.ROWS_IN, quality.get("rows_in"))
    obs.put(metrics, obs.ROWS_OUT, out.get("row_count"))
    obs.put(metrics, obs.ROWS_REJECTED, out.get("rejected_count"))
    obs.put(metrics, obs.DUPLICATES, out.get("duplicate_count"))
    obs.put(metrics, obs.COIN_COVERAGE_PCT, cover.get("coin_pct"))
    obs.put(metrics, obs.MARKET_CAP_COVERAGE_PCT, cover.get("market_cap_pct"))
    obs.put(metrics, obs.QUALITY_CHECKS_FAILED, len(quality.get("failed_checks") or []))
    obs.emit_by_reason(metrics, quality.get("rejected_by_reason") or {})


# The transform itself in an X-Ray subsegment (run() calls it by this module name); unchanged
# when tracing is off. The lake reads and writes are botocore subsegments.
transform = obs.traced(tracer, transform)


@context_or_local
@tracer.capture_lambda_handler
@metrics.log_metrics(capture_cold_start_metric=True)
@logger.inject_lambda_context(correlation_id_path=CORRELATION_ID_PATH)
def handler(event: dict, context: Any) -> dict:
    """Lambda entry point: configuration (LAKE_BUCKET / LAKE_LOCAL_DIR) is read at call time.

    Logs carry the snapshot id as ``correlation_id``; metrics per :func:`emit_metrics`.
    """
    logger.setLevel(os.environ.get("POWERTOOLS_LOG_LEVEL") or os.environ.get("LOG_LEVEL") or "INFO")
    logger.remove_keys(["snapshot_id"])
    obs.start_invocation(metrics)
    obs.annotate_snapshot(tracer, logger.get_correlation_id())
    min_pct = min_pct_from_env(os.environ)
    gate = gate_config_from_env(os.environ)
    out = run(event, storage=storage_from_env(dict(os.environ)), min_pct=min_pct, gate=gate)
    emit_metrics(out)
    return out
