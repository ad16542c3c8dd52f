"""Extract Lambda: CoinGecko ``/coins/markets`` pages and ``/global`` -> the raw zone of the lake.

Event (from the state machine)::

    {"input": {"vs_currency": "usd", "max_coins": 1000, "per_page": 250, "snapshot_id": "..."},
     "execution": {"name": "...", "id": "arn:...", "start_time": "2024-01-01T00:00:00.000Z"}}

Every ``input`` member is optional (defaults above; ``snapshot_id`` defaults to the execution
name). Unknown ``input`` members are ignored with a warning (the console's default input is
``{"Comment": ...}``). ``fetch_date`` is the UTC date of ``execution.start_time``; the lake
partition date is the snapshot's, fixed at its first run (``snapshots/<id>.json``), so re-running
a snapshot the next day still writes one lake copy. A ``start_time`` without a zone is UTC.

Writes, under ``raw/dt=<partition date>/snapshot=<id>/run=<run id>/`` (one run per execution,
so a retried task rewrites the same keys and a failed re-run never touches the loaded run):
``markets/page-NNNN.json`` (each body exactly as received, stored as soon as it arrives),
``global.json`` (exactly as received, when ``/global`` answered) and, last, ``manifest.json``
(see :func:`build_manifest`): a manifest means the run's raw set is complete.

``/global`` is auxiliary: when it fails (an HTTP error, retries exhausted, a body without
``data``) the snapshot goes on without it; the manifest and the result record why
(``global_error``) and the transform falls back to the fetched basis.

Returns the Extract contract (README "Contracts between states").
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

from functions.common import keys
from functions.common.errors import CryptoEtlError, SourceError, ValidationError
from functions.common.log import get_logger
from functions.common.snapshot_index import claim_partition_date
from functions.common.storage import Storage, put_json, storage_from_env
from functions.extract.client import ApiResponse, CoinGeckoClient
from functions.extract.config import ExtractConfig, check_timeout_fits
from functions.extract.paging import FetchedPage, MarketsResult, RawPage, fetch_markets

logger = get_logger("extract")

DEFAULT_VS_CURRENCY = "usd"
DEFAULT_MAX_COINS = 1000
DEFAULT_PER_PAGE = 250
MAX_COINS_LIMIT = 100_000
# Seconds of Lambda time kept free (beyond one request timeout) for /global and the manifest.
DEADLINE_MARGIN_SECONDS = 10.0
JSON_CONTENT_TYPE = "application/json"

_CURRENCY_RE = re.compile(r"[a-z0-9_-]{1,16}")
_KNOWN_INPUT = ("vs_currency", "max_coins", "per_page", "snapshot_id")


class ExtractDeadlineError(CryptoEtlError):
    """The Lambda ran out of time before paging finished (the result names the next page)."""


@dataclass(frozen=True)
class ExtractRequest:
    """The validated event."""

    snapshot_id: str
    execution_id: str
    execution_name: str
    run_id: str
    start_time: datetime
    fetch_date: date
    vs_currency: str
    max_coins: int
    per_page: int
    ignored_input: tuple[str, ...] = ()


def _int_field(source: Mapping[str, Any], name: str, default: int, low: int, high: int) -> int:
    value = source.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValidationError(f"input.{name}", f"{value!r} must be an integer")
    if not low <= value <= high:
        raise ValidationError(f"input.{name}", f"{value} must be in [{low}, {high}]")
    return value


def _str_field(source: Mapping[str, Any], name: str, where: str) -> str:
    value = source.get(name)
    if not isinstance(value, str) or not value.strip():
        raise ValidationError(f"{where}.{name}", f"{value!r} must be a non-empty string")
    return value.strip()


def parse_event(event: Any) -> ExtractRequest:
    """Check the event against the contract; raise ValidationError naming the first bad field."""
    event = keys.validate_object(event, "event")
    data = event.get("input")
    data = keys.validate_object({} if data is None else data, "input")
    execution = event.get("execution")
    if not isinstance(execution, Mapping):
        raise ValidationError(
            "execution", f"must be an object with name, id, start_time; got {execution!r}"
        )
    # The raw name, not a stripped copy: "snap-1\n" must be refused, not quietly repaired. It
    # must be a safe snapshot id only when it is used as one (below); as a run id, a name that
    # is not key-safe becomes a digest (keys.run_id).
    name = execution.get("name")
    if not isinstance(name, str) or not name or name != name.strip() or not name.isprintable():
        raise ValidationError(
            "execution.name", f"{name!r} must be a non-empty name without spaces around it"
        )
    execution_id = _str_field(execution, "id", "execution")
    raw_start = _str_field(execution, "start_time", "execution")
    try:
        start_time = datetime.fromisoformat(raw_start)
    except ValueError as exc:
        raise ValidationError(
            "execution.start_time", f"{raw_start!r} is not an ISO-8601 timestamp"
        ) from exc
    start_time = (
        start_time.replace(tzinfo=UTC) if start_time.tzinfo is None else start_time.astimezone(UTC)
    )

    if data.get("snapshot_id") is not None:
        snapshot_id = keys.validate_snapshot_id(data["snapshot_id"], field="input.snapshot_id")
    else:
        snapshot_id = keys.validate_snapshot_id(name, field="execution.name")

    vs_currency = data.get("vs_currency", DEFAULT_VS_CURRENCY)
    if not isinstance(vs_currency, str) or not _CURRENCY_RE.fullmatch(vs_currency.lower()):
        raise ValidationError(
            "input.vs_currency", f"{vs_currency!r} must be 1-16 letters, digits, '_' or '-'"
        )
    return ExtractRequest(
        snapshot_id=snapshot_id,
        execution_id=execution_id,
        execution_name=name,
        run_id=keys.run_id(name, execution_id),
        start_time=start_time,
        fetch_date=start_time.date(),
        vs_currency=vs_currency.lower(),
        max_coins=_int_field(data, "max_coins", DEFAULT_MAX_COINS, 1, MAX_COINS_LIMIT),
        per_page=_int_field(data, "per_page", DEFAULT_PER_PAGE, 1, 250),
        ignored_input=tuple(sorted(str(k) for k in data if k not in _KNOWN_INPUT)),
    )


def build_manifest(
    request: ExtractRequest,
    *,
    fetched_at: str,
    partition_date: date,
    base_url: str,
    prefix: str,
    result: MarketsResult,
    global_key: str | None,
    global_error: str | None,
    api_calls: int,
    retries: int,
) -> dict[str, Any]:
    """The manifest: what was fetched, in which order, and how many rows of each page count.

    ``pages[].count`` is the number of rows the transform must use from that page (the body
    is stored whole, so the last page may hold more: see ``paging``); ``rows`` is the number
    of rows in the body and ``sha256`` its digest (the transform verifies it). ``stop_reason``,
    ``end_confirmed`` and ``paging_warning`` say why paging stopped and whether an empty page
    confirmed the end of the market; ``global_key`` is null and ``global_error`` says why when
    ``/global`` was unavailable.
    """
    return {
        "snapshot_id": request.snapshot_id,
        "execution_id": request.execution_id,
        "run_id": request.run_id,
        "fetched_at": fetched_at,
        "fetch_date": request.fetch_date.isoformat(),
        "partition_date": partition_date.isoformat(),
        "vs_currency": request.vs_currency,
        "per_page": request.per_page,
        "max_coins": request.max_coins,
        "source_base_url": base_url,
        "pages": [
            {
                "page": p.page,
                "key": keys.page_key(prefix, p.page),
                "count": p.count,
                "rows": p.rows,
                "sha256": p.sha256,
            }
            for p in result.pages
        ],
        "stop_reason": result.stop_reason,
        "end_confirmed": result.end_confirmed,
        "served_per_page": result.served_per_page,
        "paging_warning": result.warning,
        "global_key": global_key,
        "global_error": global_error,
        "coin_count": result.coin_count,
        "api_calls": api_calls,
        "retries": retries,
    }


def _utc_now() -> datetime:
    return datetime.now(UTC)


def _fetch_global(
    client: CoinGeckoClient, storage: Storage, prefix: str
) -> tuple[str | None, str | None]:
    """Store ``/global`` and return ``(key, None)``, or ``(None, why)`` when it failed.

    ``/global`` only supplies the dominance denominators: its failure must not lose the pages
    already fetched, so any SourceError (a 4xx, retries exhausted, a body without ``data``)
    degrades the snapshot to the fetched basis instead of failing it.
    """
    try:
        resp: ApiResponse = client.global_data()
    except SourceError as exc:
        why = f"{type(exc).__name__}: {exc}"
        logger.warning(
            "/global unavailable: dominance falls back to the fetched basis",
            extra={"global_error": why, "status": exc.status},
        )
        return None, why
    key = keys.global_key(prefix)
    storage.put_bytes(key, resp.body, JSON_CONTENT_TYPE)
    logger.info("fetched /global", extra={"key": key, "bytes": len(resp.body)})
    return key, None


def run(
    event: Mapping[str, Any],
    *,
    config: ExtractConfig,
    storage: Storage,
    client: CoinGeckoClient | None = None,
    deadline: Callable[[], float] | None = None,
    now: Callable[[], datetime] = _utc_now,
) -> dict[str, Any]:
    """Validate the event, fetch pages and /global into the lake, write the manifest.

    ``client`` defaults to one built from ``config`` (and closed here); ``deadline`` returns the
    seconds left in this invocation (the Lambda context's remaining time).
    """
    request = parse_event(event)
    logger.append_keys(snapshot_id=request.snapshot_id)
    if request.ignored_input:
        logger.warning("ignoring unknown input members", extra={"ignored": request.ignored_input})
    fetched_at = now().astimezone(UTC).isoformat()
    partition_date = claim_partition_date(
        storage,
        request.snapshot_id,
        today=request.fetch_date,
        execution_id=request.execution_id,
        now_iso=fetched_at,
    )
    prefix = keys.raw_prefix(request.snapshot_id, partition_date, request.run_id)
    reserve = config.timeout_seconds + DEADLINE_MARGIN_SECONDS
    own_client = client is None
    if client is None:
        client = CoinGeckoClient.from_config(
            config, deadline=deadline, deadline_reserve=reserve, logger=logger
        )
    logger.info(
        "extract starting",
        extra={
            "source": config.describe(),
            "vs_currency": request.vs_currency,
            "max_coins": request.max_coins,
            "per_page": request.per_page,
            "raw_prefix": prefix,
        },
    )
    kept = 0

    def fetch(page: int) -> RawPage:
        resp = client.markets_page(request.vs_currency, page, request.per_page)
        return RawPage(body=resp.body, rows=len(resp.data))

    def store(page: FetchedPage) -> None:
        nonlocal kept
        key = keys.page_key(prefix, page.page)
        storage.put_bytes(key, page.body, JSON_CONTENT_TYPE)
        kept += page.count
        logger.info(
            f"page {page.page}: {page.rows} coins ({page.count} kept, {kept} so far)",
            extra={
                "page": page.page,
                "rows": page.rows,
                "kept": page.count,
                "coins_so_far": kept,
                "key": key,
                "api_calls": client.api_calls,
                "retries": client.retries,
            },
        )

    try:
        result = fetch_markets(
            fetch,
            per_page=request.per_page,
            max_coins=request.max_coins,
            deadline=deadline,
            reserve_seconds=reserve,
            on_page=store,
        )
        if not result.complete:
            raise ExtractDeadlineError(
                f"snapshot {request.snapshot_id}: stopped before page {result.next_page} with "
                f"{result.coin_count} coins fetched: less than {reserve:.0f}s of the invocation "
                "left (raise the function timeout or lower max_coins)"
            )
        if result.warning:
            logger.warning(f"paging: {result.warning}", extra={"stop_reason": result.stop_reason})
        global_key, global_error = _fetch_global(client, storage, prefix)
    finally:
        if own_client:
            client.close()

    manifest_key = keys.manifest_key(prefix)
    manifest = build_manifest(
        request,
        fetched_at=fetched_at,
        partition_date=partition_date,
        base_url=client.base_url,
        prefix=prefix,
        result=result,
        global_key=global_key,
        global_error=global_error,
        api_calls=client.api_calls,
        retries=client.retries,
    )
    put_json(storage, manifest_key, manifest)
    contract = {
        "snapshot_id": request.snapshot_id,
        "execution_id": request.execution_id,
        "run_id": request.run_id,
        "fetched_at": fetched_at,
        "fetch_date": request.fetch_date.isoformat(),
        "partition_date": partition_date.isoformat(),
        "vs_currency": request.vs_currency,
        "bucket": storage.bucket,
        "raw_prefix": prefix,
        "manifest_key": manifest_key,
        "global_key": global_key,
        "global_error": global_error,
        "pages": len(result.pages),
        "coin_count": result.coin_count,
        "stop_reason": result.stop_reason,
        "end_confirmed": result.end_confirmed,
        "paging_warning": result.warning,
        "api_calls": client.api_calls,
        "retries": client.retries,
        "max_coins": request.max_coins,
        "per_page": request.per_page,
    }
    logger.info(
        "extract done",
        extra={
            "pages": contract["pages"],
            "coin_count": contract["coin_count"],
            "stop_reason": result.stop_reason,
            "end_confirmed": result.end_confirmed,
            "global_error": global_error,
            "api_calls": client.api_calls,
            "retries": client.retries,
            "retry_wait_seconds": round(client.waited_seconds, 3),
            "manifest_key": manifest_key,
        },
    )
    return contract


def handler(event: dict, context: Any) -> dict:
    """Lambda entry point: configuration and storage come from the environment at call time."""
    logger.setLevel(os.environ.get("POWERTOOLS_LOG_LEVEL") or os.environ.get("LOG_LEVEL") or "INFO")
    logger.remove_keys(["snapshot_id"])
    env = dict(os.environ)
    config = ExtractConfig.from_env(env)
    remaining = getattr(context, "get_remaining_time_in_millis", None)
    deadline = (lambda: remaining() / 1000.0) if callable(remaining) else None
    if deadline is not None:
        # Refuse at once (ConfigError) rather than fail later with ExtractDeadlineError.
        check_timeout_fits(
            config.timeout_seconds,
            deadline(),
            DEADLINE_MARGIN_SECONDS,
            "the time left in this invocation",
        )
    return run(event, config=config, storage=storage_from_env(env), deadline=deadline)
