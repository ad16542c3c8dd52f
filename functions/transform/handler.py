"""Transform Lambda: raw pages in the lake -> processed (and rejected) CSV.gz in the lake.

Input: the Extract contract (``bucket``, ``snapshot_id``, ``raw_prefix``, ``manifest_key``,
``global_key``, ``fetched_at``, ``fetch_date``, ``vs_currency``, ``max_coins``, counts...).
Output: the input plus ``processed_key``, ``rejected_key`` (null when nothing was refused),
``row_count``, ``rejected_count``, ``duplicate_count`` and ``quality`` (see ``transform.py``).
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any, TypeVar

from functions.common import keys
from functions.common.errors import DataQualityError, ValidationError
from functions.common.log import get_logger
from functions.common.storage import Storage, get_json, storage_from_env
from functions.transform.csv_gz import rejected_to_csv_gz, to_csv_gz
from functions.transform.transform import empty_message, transform

logger = get_logger("transform")

GZIP_CONTENT_TYPE = "application/gzip"
_T = TypeVar("_T")
_CURRENCY_RE = re.compile(r"^[A-Za-z0-9_-]{1,16}$")


@dataclass(frozen=True)
class TransformRequest:
    """The validated part of the event the transform uses."""

    bucket: str
    snapshot_id: str
    raw_prefix: str
    manifest_key: str
    global_key: str | None
    fetched_at: str
    fetch_date: date
    vs_currency: str
    max_coins: int | None


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
    raw_prefix = keys.validate_key(event.get("raw_prefix"), "raw_prefix", keys.RAW)
    expected_prefix = keys.raw_prefix(snapshot_id, fetch_date)
    if raw_prefix != expected_prefix:
        raise ValidationError(
            "raw_prefix",
            f"{raw_prefix!r} is not the raw partition of snapshot {snapshot_id} on {fetch_date}"
            f" ({expected_prefix!r})",
        )
    manifest_key = keys.validate_key(event.get("manifest_key"), "manifest_key", raw_prefix)
    global_key = event.get("global_key")
    if global_key is not None:
        keys.validate_key(global_key, "global_key", raw_prefix)
    fetched_at = event.get("fetched_at")
    parsed = _parse(fetched_at, datetime.fromisoformat, "fetched_at", "an ISO-8601 timestamp")
    if parsed.tzinfo is None:
        raise ValidationError("fetched_at", f"{fetched_at!r} has no time zone (expected UTC)")
    vs_currency = event.get("vs_currency")
    if not isinstance(vs_currency, str) or not _CURRENCY_RE.match(vs_currency):
        raise ValidationError(
            "vs_currency", f"{vs_currency!r} must be 1-16 letters, digits, '_' or '-'"
        )
    max_coins = event.get("max_coins")
    if max_coins is not None and (
        isinstance(max_coins, bool) or not isinstance(max_coins, int) or max_coins < 1
    ):
        raise ValidationError("max_coins", f"{max_coins!r} must be an integer >= 1")
    return TransformRequest(
        bucket=bucket,
        snapshot_id=snapshot_id,
        raw_prefix=raw_prefix,
        manifest_key=manifest_key,
        global_key=global_key,
        fetched_at=parsed.isoformat(),
        fetch_date=fetch_date,
        vs_currency=vs_currency,
        max_coins=max_coins,
    )


def check_manifest(manifest: Any, request: TransformRequest) -> list[str]:
    """Check the manifest belongs to this snapshot; return its page keys in listed order."""
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
    page_keys: list[str] = []
    for i, entry in enumerate(pages):
        field = f"{where}: pages[{i}].key"
        key = entry.get("key") if isinstance(entry, Mapping) else None
        page_keys.append(keys.validate_key(key, field, request.raw_prefix))
    return page_keys


def run(event: Mapping[str, Any], *, storage: Storage) -> dict[str, Any]:
    """Validate, read the raw files, transform, write processed/rejected; return the contract."""
    request = parse_event(event, bucket=storage.bucket)
    logger.append_keys(snapshot_id=request.snapshot_id)
    timings: dict[str, float] = {}
    started = time.perf_counter()
    manifest = get_json(storage, request.manifest_key)
    page_keys = check_manifest(manifest, request)
    pages = [get_json(storage, key) for key in page_keys]
    global_body = get_json(storage, request.global_key) if request.global_key else None
    timings["read_s"] = time.perf_counter() - started

    started = time.perf_counter()
    result = transform(
        manifest,
        pages,
        global_body,
        snapshot_id=request.snapshot_id,
        fetched_at=request.fetched_at,
        fetch_date=request.fetch_date,
        vs_currency=request.vs_currency,
        max_coins=request.max_coins,
        allow_empty=True,
    )
    timings["transform_s"] = time.perf_counter() - started

    started = time.perf_counter()
    # Always written (header only when nothing was refused): a retried or re-run snapshot then
    # never leaves an earlier attempt's rejects behind, and the role needs no delete permission.
    rejected_key = keys.rejected_key(request.snapshot_id, request.fetch_date)
    storage.put_bytes(rejected_key, rejected_to_csv_gz(result.rejected), GZIP_CONTENT_TYPE)
    quality = result.quality
    if not result.row_count:
        logger.error("no valid rows", extra={"quality": quality, "rejected_key": rejected_key})
        raise DataQualityError(empty_message(request.snapshot_id, quality))
    processed_key = keys.processed_key(request.snapshot_id, request.fetch_date)
    storage.put_bytes(processed_key, to_csv_gz(result.processed), GZIP_CONTENT_TYPE)
    timings["write_s"] = time.perf_counter() - started

    failed = [c for c in quality["checks"] if not c["passed"]]
    if failed:
        logger.warning("quality checks failed", extra={"failed_checks": failed})
    logger.info(
        "transform done",
        extra={
            "quality": quality,
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
    }


def handler(event: dict, context: Any) -> dict:
    """Lambda entry point: configuration (LAKE_BUCKET / LAKE_LOCAL_DIR) is read at call time."""
    logger.setLevel(os.environ.get("POWERTOOLS_LOG_LEVEL") or os.environ.get("LOG_LEVEL") or "INFO")
    logger.remove_keys(["snapshot_id"])
    return run(event, storage=storage_from_env(dict(os.environ)))
