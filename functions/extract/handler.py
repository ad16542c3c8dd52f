"""Extract Lambda: CoinGecko ``/coins/markets`` pages and ``/global`` -> the raw zone of the lake.

Event (from the state machine)::

    {"input": {"vs_currency": "usd", "max_coins": 1000, "per_page": 250, "snapshot_id": "..."},
     "execution": {"name": "...", "id": "arn:...", "start_time": "2024-01-01T00:00:00.000Z"}}

Every ``input`` member is optional (defaults above; ``snapshot_id`` defaults to the execution
name). ``max_coins`` is an integer or ``"all"``: page until the market ends (an empty page).
Unknown ``input`` members are ignored with a warning (the console's default input is
``{"Comment": ...}``). ``fetch_date`` is the UTC date of ``execution.start_time``; the lake
partition date is the snapshot's, fixed at its first run (``snapshots/<id>.json``), so re-running
a snapshot the next day still writes one lake copy. A ``start_time`` without a zone is UTC.

Writes, under ``raw/dt=<partition date>/snapshot=<id>/run=<run id>/`` (one run per execution,
so a retried task rewrites the same keys and a failed re-run never touches the loaded run):
``global.json`` (fetched first, exactly as received, when ``/global`` answered),
``markets/page-NNNN.json`` (each body exactly as received, stored as soon as it arrives),
``progress.json`` (after every page: the pages so far, the paging and pacing state, counters)
and, last, ``manifest.json`` (see :func:`build_manifest`): a manifest means the raw set is
complete.

**Deadline loop.** Before each page the extract checks the invocation's remaining time (the
Lambda context's, less one request timeout, the pacing wait and
``EXTRACT_DEADLINE_MARGIN_SECONDS``).
When it runs short, it saves ``progress.json`` and returns ``done: false`` with ``next_page``;
the state machine's Choice state invokes it again with the same execution, and that invocation
reads ``progress.json`` and goes on from ``next_page`` (pages already stored are not fetched
again; the rate limiter's recent calls carry over). Only the invocation that finishes writes the
manifest and returns ``done: true`` with the full contract. An invocation that could not fetch a
single page raises :class:`ExtractDeadlineError` (the loop would never end). A repeated
invocation after ``done`` returns the same contract without calling CoinGecko.

``/global`` is auxiliary: when it fails (an HTTP error, retries exhausted, a body without
``data``) the snapshot goes on without it; the manifest and the result record why
(``global_error``) and the transform falls back to the fetched basis. When it answers, its
``active_cryptocurrencies`` gives ``expected_pages`` for progress reporting.

Returns the Extract contract (README "Contracts between states").
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

from functions.common import keys
from functions.common import observability as obs
from functions.common.config import env_float
from functions.common.errors import ConfigError, CryptoEtlError, SourceError, ValidationError
from functions.common.log import context_or_local, get_logger
from functions.common.snapshot_index import claim_partition_date
from functions.common.storage import Storage, get_json, put_json, storage_from_env
from functions.extract import backfill
from functions.extract.client import ApiResponse, CoinGeckoClient
from functions.extract.config import ExtractConfig, check_timeout_fits
from functions.extract.pacing import SlidingWindowLimiter
from functions.extract.paging import (
    MAX_PAGES,
    FetchedPage,
    MarketsResult,
    PagingState,
    RawPage,
    fetch_markets,
)

logger = get_logger("extract")
metrics = obs.get_metrics("extract")
tracer = obs.get_tracer("extract")

DEFAULT_VS_CURRENCY = "usd"
DEFAULT_MAX_COINS = 1000
DEFAULT_PER_PAGE = 250
MAX_COINS_LIMIT = 100_000
ALL = "all"
# Seconds of Lambda time kept free (beyond one request timeout and the pacing wait) for saving
# the progress and the manifest; EXTRACT_DEADLINE_MARGIN_SECONDS overrides it.
DEADLINE_MARGIN_SECONDS = 10.0
JSON_CONTENT_TYPE = "application/json"
PROGRESS_VERSION = 1

_CURRENCY_RE = re.compile(r"[a-z0-9_-]{1,16}")
_KNOWN_INPUT = ("vs_currency", "max_coins", "per_page", "snapshot_id")
# Execution input limits (parse_event). The contract's input is four short members (~100 bytes
# of JSON); Step Functions itself accepts 256 KiB ("Quotas related to state machine executions",
# docs.aws.amazon.com/step-functions/latest/dg/service-quotas.html). Anything near that is a
# mistake or an attack, refused before it is logged, echoed in an error or sent to CoinGecko.
MAX_INPUT_BYTES = 8192  # compact UTF-8 JSON of the execution input
MAX_INPUT_MEMBERS = 16  # the four known members, "Comment" and room for a few annotations
MAX_INPUT_NAME_CHARS = 64  # an ignored member's name is logged: keep it short and printable
_COUNTERS = (
    "api_calls",
    "retries",
    "retry_wait_seconds",
    "rate_limited",
    "pacing_waits",
    "pacing_wait_seconds",
)


class ExtractDeadlineError(CryptoEtlError):
    """An invocation ran out of time before it could fetch a single page."""


@dataclass(frozen=True)
class ExtractRequest:
    """The validated event. ``max_coins`` None means the whole market (``"all"``)."""

    snapshot_id: str
    execution_id: str
    execution_name: str
    run_id: str
    start_time: datetime
    fetch_date: date
    vs_currency: str
    max_coins: int | None
    per_page: int
    ignored_input: tuple[str, ...] = ()

    @property
    def max_coins_label(self) -> int | str:
        """``max_coins`` as the contract carries it: the integer, or ``"all"``."""
        return ALL if self.max_coins is None else self.max_coins


def _int_field(source: Mapping[str, Any], name: str, default: int, low: int, high: int) -> int:
    value = source.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValidationError(f"input.{name}", f"{value!r} must be an integer")
    if not low <= value <= high:
        raise ValidationError(f"input.{name}", f"{value} must be in [{low}, {high}]")
    return value


def _max_coins(source: Mapping[str, Any]) -> int | None:
    """``input.max_coins``: an integer in [1, MAX_COINS_LIMIT] or ``"all"`` (None)."""
    value = source.get("max_coins")
    if isinstance(value, str):
        if value.strip().lower() == ALL:
            return None
        raise ValidationError(
            "input.max_coins", f'{value!r} must be an integer or "all" (the whole market)'
        )
    return _int_field(source, "max_coins", DEFAULT_MAX_COINS, 1, MAX_COINS_LIMIT)


def _str_field(source: Mapping[str, Any], name: str, where: str) -> str:
    value = source.get(name)
    if not isinstance(value, str) or not value.strip():
        raise ValidationError(f"{where}.{name}", f"{value!r} must be a non-empty string")
    return value.strip()


def parse_event(event: Any) -> ExtractRequest:
    """Check the event against the contract; raise ValidationError naming the first bad field.

    The execution input (``event["input"]``; null means ``{}``) must be a JSON object of at most
    ``MAX_INPUT_BYTES`` bytes (compact UTF-8 JSON) and ``MAX_INPUT_MEMBERS`` members, each name
    1-``MAX_INPUT_NAME_CHARS`` printable characters; these are checked first, so no error
    message echoes an oversized value. Then each known member's type and range.
    """
    event = keys.validate_object(event, "event")
    data = event.get("input")
    data = keys.validate_object({} if data is None else data, "input")
    try:
        size = len(json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode())
    except (TypeError, ValueError, RecursionError) as exc:
        # Not JSON (a Lambda event always is; a direct call may not be) or nested too deep.
        raise ValidationError("input", f"is not serializable JSON ({type(exc).__name__})") from exc
    if size > MAX_INPUT_BYTES:
        raise ValidationError(
            "input", f"is {size} bytes of JSON; the limit is {MAX_INPUT_BYTES} bytes"
        )
    if len(data) > MAX_INPUT_MEMBERS:
        raise ValidationError("input", f"has {len(data)} members; the limit is {MAX_INPUT_MEMBERS}")
    for member in data:
        if (
            not isinstance(member, str)
            or not 0 < len(member) <= MAX_INPUT_NAME_CHARS
            or not member.isprintable()
        ):
            shown = repr(member)[: MAX_INPUT_NAME_CHARS + 2]  # the name, cut to the limit
            raise ValidationError(
                "input",
                f"member name {shown} must be 1-{MAX_INPUT_NAME_CHARS} printable characters",
            )
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
        max_coins=_max_coins(data),
        per_page=_int_field(data, "per_page", DEFAULT_PER_PAGE, 1, 250),
        ignored_input=tuple(sorted(str(k) for k in data if k not in _KNOWN_INPUT)),
    )


def expected_pages(
    active_cryptocurrencies: int | None, max_coins: int | None, per_page: int
) -> int | None:
    """Pages a run should take, from ``/global``'s ``active_cryptocurrencies`` (None: unknown).

    ``ceil(min(active, max_coins) / per_page)``, plus the empty page that confirms the end when
    the whole market is asked for. An estimate for progress reporting only: the listing and
    ``/global``'s count differ a little, and a server may cap its page size.
    """
    if not isinstance(active_cryptocurrencies, int) or isinstance(active_cryptocurrencies, bool):
        return None
    if active_cryptocurrencies < 0:
        return None
    wanted = active_cryptocurrencies
    if max_coins is not None:
        wanted = min(wanted, max_coins)
    return math.ceil(wanted / per_page) + (1 if max_coins is None else 0)


def _expected_coins(active: object, request: ExtractRequest) -> int | None:
    """The coins paging should reach per ``/global`` (None when unknown)."""
    if not isinstance(active, int) or isinstance(active, bool) or active <= 0:
        return None
    return active if request.max_coins is None else min(active, request.max_coins)


def build_manifest(
    request: ExtractRequest,
    *,
    fetched_at: str,
    partition_date: date,
    base_url: str,
    pages: list[dict[str, Any]],
    result: MarketsResult,
    global_key: str | None,
    global_error: str | None,
    counters: Mapping[str, Any],
    invocations: int,
) -> dict[str, Any]:
    """The manifest: what was fetched, in which order, and how many rows of each page count.

    ``pages[].count`` is the number of rows the transform must use from that page (the body
    is stored whole, so the last page may hold more: see ``paging``); ``rows`` is the number
    of rows in the body and ``sha256`` its digest (the transform verifies it). ``pages`` holds
    every page of the run, whichever invocation fetched it. ``stop_reason``, ``end_confirmed``
    and ``paging_warning`` say why paging stopped and whether an empty page confirmed the end
    of the market; ``global_key`` is null and ``global_error`` says why when ``/global`` was
    unavailable. ``max_coins`` is an integer or ``"all"``.
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
        "max_coins": request.max_coins_label,
        "source_base_url": base_url,
        "pages": pages,
        "stop_reason": result.stop_reason,
        "end_confirmed": result.end_confirmed,
        "served_per_page": result.served_per_page,
        "paging_warning": result.warning,
        "global_key": global_key,
        "global_error": global_error,
        "coin_count": sum(p["count"] for p in pages),
        "invocations": invocations,
        **counters,
    }


def _utc_now() -> datetime:
    return datetime.now(UTC)


def _fetch_global(
    client: CoinGeckoClient, storage: Storage, prefix: str
) -> tuple[str | None, str | None, int | None]:
    """Store ``/global``; return ``(key, None, active_cryptocurrencies)``, or
    ``(None, why, None)`` when it failed.

    ``/global`` only supplies the dominance denominators and the expected size of the market:
    its failure must not fail the snapshot, so any SourceError (a 4xx, retries exhausted, a
    body without ``data``) degrades the snapshot to the fetched basis instead.
    """
    try:
        resp: ApiResponse = client.global_data()
    except SourceError as exc:
        why = f"{type(exc).__name__}: {exc}"
        logger.warning(
            "/global unavailable: dominance falls back to the fetched basis",
            extra={"global_error": why, "status": exc.status},
        )
        return None, why, None
    key = keys.global_key(prefix)
    storage.put_bytes(key, resp.body, JSON_CONTENT_TYPE)
    active = resp.data["data"].get("active_cryptocurrencies")
    active = active if isinstance(active, int) and not isinstance(active, bool) else None
    logger.info(
        "fetched /global",
        extra={"key": key, "bytes": len(resp.body), "active_cryptocurrencies": active},
    )
    return key, None, active


def _read_progress(storage: Storage, key: str, request: ExtractRequest) -> dict[str, Any] | None:
    """The run's saved progress (None on its first invocation); ValidationError if it belongs
    to another request (the same run with different paging input cannot be resumed)."""
    if not storage.exists(key):
        return None
    progress = get_json(storage, key)
    if not isinstance(progress, dict) or progress.get("version") != PROGRESS_VERSION:
        raise ValidationError(key, f"is not a version-{PROGRESS_VERSION} extract progress record")
    for name, value in (
        ("snapshot_id", request.snapshot_id),
        ("vs_currency", request.vs_currency),
        ("per_page", request.per_page),
        ("max_coins", request.max_coins_label),
    ):
        if progress.get(name) != value:
            raise ValidationError(
                key,
                f"{name} is {progress.get(name)!r} in the saved progress but {value!r} in this "
                "invocation: a run cannot change its paging input between invocations",
            )
    return progress


def _counters(previous: Mapping[str, Any], client: CoinGeckoClient) -> dict[str, Any]:
    """The run's counters so far: the earlier invocations' plus this client's."""
    now = {
        "api_calls": client.api_calls,
        "retries": client.retries,
        "retry_wait_seconds": client.waited_seconds,
        "rate_limited": client.rate_limited,
        "pacing_waits": client.pacing_waits,
        "pacing_wait_seconds": client.pacing_wait_seconds,
    }
    out: dict[str, Any] = {}
    for name in _COUNTERS:
        total = (previous.get(name) or 0) + now[name]
        out[name] = round(total, 3) if isinstance(total, float) else total
    return out


def run(
    event: Mapping[str, Any],
    *,
    config: ExtractConfig,
    storage: Storage,
    client: CoinGeckoClient | None = None,
    deadline: Callable[[], float] | None = None,
    now: Callable[[], datetime] = _utc_now,
    margin_seconds: float = DEADLINE_MARGIN_SECONDS,
) -> dict[str, Any]:
    """Validate the event, fetch /global and pages into the lake; write the manifest when done.

    ``client`` defaults to one built from ``config`` (and closed here), its rate limiter
    restored from the saved progress; ``deadline`` returns the seconds left in this invocation
    (the Lambda context's remaining time). Returns the Extract contract with ``done: true``, or
    a small ``done: false`` record naming ``next_page`` when the deadline stopped paging.
    Raises ValidationError (bad event, or progress of a different request), SourceError
    (CoinGecko failed past its retries), ExtractDeadlineError (no page fitted in the time).

    An event with an ``action`` (the history backfill's ``plan_backfill``/``fetch_history``)
    goes to :func:`functions.extract.backfill.run_action` instead.
    """
    if isinstance(event, Mapping) and event.get("action") is not None:
        return backfill.run_action(
            event,
            config=config,
            storage=storage,
            client=client,
            deadline=deadline,
            margin_seconds=margin_seconds,
        )
    request = parse_event(event)
    logger.append_keys(snapshot_id=request.snapshot_id)
    if request.ignored_input:
        logger.warning("ignoring unknown input members", extra={"ignored": request.ignored_input})
    first_seen = now().astimezone(UTC).isoformat()
    partition_date = claim_partition_date(
        storage,
        request.snapshot_id,
        today=request.fetch_date,
        execution_id=request.execution_id,
        now_iso=first_seen,
    )
    prefix = keys.raw_prefix(request.snapshot_id, partition_date, request.run_id)
    progress_key = keys.progress_key(prefix)
    manifest_key = keys.manifest_key(prefix)
    progress = _read_progress(storage, progress_key, request)
    if progress is not None and progress.get("done") and isinstance(progress.get("contract"), dict):
        logger.info("extract already done for this run", extra={"manifest_key": manifest_key})
        return progress["contract"]
    progress = progress or {
        "version": PROGRESS_VERSION,
        "snapshot_id": request.snapshot_id,
        "execution_id": request.execution_id,
        "run_id": request.run_id,
        "vs_currency": request.vs_currency,
        "per_page": request.per_page,
        "max_coins": request.max_coins_label,
        "fetched_at": first_seen,
        "invocations": 0,
        "pages": [],
        "paging": PagingState().to_dict(),
        "global_done": False,
        "done": False,
        **dict.fromkeys(_COUNTERS, 0),
    }
    previous_counts = {name: progress.get(name, 0) for name in _COUNTERS}
    invocation = int(progress["invocations"]) + 1
    progress["invocations"] = invocation
    resume = PagingState.from_dict(progress["paging"], f"{progress_key}: paging")

    reserve = config.timeout_seconds + margin_seconds
    if deadline is not None and deadline() < reserve:
        raise ExtractDeadlineError(
            f"snapshot {request.snapshot_id}: invocation {invocation} stopped before page "
            f"{resume.next_page}: less than {reserve:g}s of the invocation were left at its "
            "start (raise the extract function's timeout, or lower COINGECKO_TIMEOUT_SECONDS)"
        )
    own_client = client is None
    if client is None:
        limiter = None
        if config.rate_limit is not None:
            limiter = SlidingWindowLimiter(config.rate_limit, state=progress.get("pacing"))
        client = CoinGeckoClient.from_config(
            config, deadline=deadline, deadline_reserve=reserve, logger=logger, limiter=limiter
        )
    logger.info(
        "extract starting" if invocation == 1 else f"extract resuming (invocation {invocation})",
        extra={
            "source": config.describe(),
            "vs_currency": request.vs_currency,
            "max_coins": request.max_coins_label,
            "per_page": request.per_page,
            "raw_prefix": prefix,
            "invocation": invocation,
            "next_page": resume.next_page,
        },
    )
    pages: list[dict[str, Any]] = list(progress["pages"])

    def save(state: PagingState) -> None:
        progress["pages"] = pages
        progress["paging"] = state.to_dict()
        progress.update(_counters(previous_counts, client))
        limiter = getattr(client, "limiter", None)
        if limiter is not None:
            progress["pacing"] = limiter.state()
        put_json(storage, progress_key, progress)

    def fetch(page: int) -> RawPage:
        resp = client.markets_page(request.vs_currency, page, request.per_page)
        return RawPage(body=resp.body, rows=len(resp.data))

    def store(page: FetchedPage, state: PagingState) -> None:
        key = keys.page_key(prefix, page.page)
        storage.put_bytes(key, page.body, JSON_CONTENT_TYPE)
        pages.append(
            {
                "page": page.page,
                "key": key,
                "count": page.count,
                "rows": page.rows,
                "sha256": page.sha256,
            }
        )
        save(state)
        counts = _counters(previous_counts, client)
        logger.info(
            f"page {page.page}: {page.rows} coins ({page.count} kept, {state.coins_kept} so far)",
            extra={
                "page": page.page,
                "rows": page.rows,
                "kept": page.count,
                "coins_so_far": state.coins_kept,
                "pages_so_far": len(pages),
                "expected_pages": progress.get("expected_pages"),
                "key": key,
                **counts,
            },
        )

    def page_deadline() -> float:
        assert deadline is not None
        return deadline() - client.pacing_delay()

    try:
        if not progress["global_done"]:
            global_key, global_error, active = _fetch_global(client, storage, prefix)
            progress.update(
                global_done=True,
                global_key=global_key,
                global_error=global_error,
                active_cryptocurrencies=active,
                expected_pages=expected_pages(active, request.max_coins, request.per_page),
            )
            save(resume)
        result = fetch_markets(
            fetch,
            per_page=request.per_page,
            max_coins=request.max_coins,
            deadline=page_deadline if deadline is not None else None,
            reserve_seconds=reserve,
            on_page=store,
            max_pages=MAX_PAGES,
            resume=resume,
            expected_coins=_expected_coins(progress.get("active_cryptocurrencies"), request),
        )
        counters = _counters(previous_counts, client)
        base_url = client.base_url
    finally:
        if own_client:
            client.close()

    common = {
        "snapshot_id": request.snapshot_id,
        "execution_id": request.execution_id,
        "run_id": request.run_id,
        "bucket": storage.bucket,
        "raw_prefix": prefix,
        "progress_key": progress_key,
        "invocations": invocation,
        "pages": len(pages),
        "coin_count": result.state.coins_kept,
        "expected_pages": progress.get("expected_pages"),
        "active_cryptocurrencies": progress.get("active_cryptocurrencies"),
        "rate_limit": str(config.rate_limit) if config.rate_limit is not None else None,
        **counters,
    }
    if not result.complete:
        save(result.state)
        if not result.pages:
            raise ExtractDeadlineError(
                f"snapshot {request.snapshot_id}: invocation {invocation} stopped before page "
                f"{result.next_page} ({result.state.coins_kept} coins so far): less than "
                f"{reserve:g}s of the invocation were left after the rate-limit wait (raise the "
                "extract function's timeout, or lower COINGECKO_TIMEOUT_SECONDS)"
            )
        logger.info(
            f"deadline: stopping before page {result.next_page}; the next invocation resumes",
            extra={"next_page": result.next_page, **common},
        )
        return {**common, "done": False, "next_page": result.next_page}
    if result.warning:
        logger.warning(f"paging: {result.warning}", extra={"stop_reason": result.stop_reason})

    global_key = progress.get("global_key")
    global_error = progress.get("global_error")
    manifest = build_manifest(
        request,
        fetched_at=progress["fetched_at"],
        partition_date=partition_date,
        base_url=base_url,
        pages=pages,
        result=result,
        global_key=global_key,
        global_error=global_error,
        counters=counters,
        invocations=invocation,
    )
    put_json(storage, manifest_key, manifest)
    contract = {
        **common,
        "done": True,
        "next_page": None,
        "fetched_at": progress["fetched_at"],
        "fetch_date": request.fetch_date.isoformat(),
        "partition_date": partition_date.isoformat(),
        "vs_currency": request.vs_currency,
        "manifest_key": manifest_key,
        "global_key": global_key,
        "global_error": global_error,
        "stop_reason": result.stop_reason,
        "end_confirmed": result.end_confirmed,
        "paging_warning": result.warning,
        "max_coins": request.max_coins_label,
        "per_page": request.per_page,
    }
    progress.update(done=True, contract=contract)
    save(result.state)
    logger.info(
        "extract done",
        extra={
            "pages": contract["pages"],
            "coin_count": contract["coin_count"],
            "stop_reason": result.stop_reason,
            "end_confirmed": result.end_confirmed,
            "global_error": global_error,
            "invocations": invocation,
            "manifest_key": manifest_key,
            **counters,
        },
    )
    return contract


def check_window_fits(config: ExtractConfig, available_seconds: float, margin: float) -> None:
    """Raise ConfigError when one rate-limit window does not fit in an invocation's time for
    pages (``available_seconds`` less one request timeout and ``margin``): an invocation that
    starts with the window spent could then never send a request, and the deadline loop would
    not advance. Lambda's 900 s against a 60 s window is far from it."""
    if config.rate_limit is None:
        return
    usable = available_seconds - config.timeout_seconds - margin
    window = config.rate_limit.window_seconds
    if usable < window:
        raise ConfigError(
            "COINGECKO_RATE_LIMIT",
            f"its {window:g}s window is longer than the {max(usable, 0):g}s an extract"
            f" invocation has for pages ({available_seconds:g}s left, less the"
            f" {config.timeout_seconds:g}s request timeout and the {margin:g}s margin): raise"
            " the extract function's timeout or use a shorter window",
        )


# The snapshot id as run() settles it: input.snapshot_id, else the execution name.
CORRELATION_ID_PATH = "input.snapshot_id || execution.name"


def emit_metrics(out: Mapping[str, Any]) -> None:
    """The Extract's metrics from its result ``out`` (the contract).

    Only the invocation that finishes (``done: true``) emits, with the run's totals over every
    invocation of the deadline loop (the contract's counters are cumulative): pages, coins, API
    calls, retries, 429s received, seconds of client-side rate-limit pacing
    (``pacing_wait_seconds``), ``/global`` available (0/1) and the invocations. An invocation
    that stops at its deadline emits none, so a sum over time counts each execution once; an
    execution whose Extract fails emits no Extract figures (ExecutionFailed counts it).
    """
    if out.get("done") is not True:
        return
    obs.set_vs_currency(metrics, out.get("vs_currency"))
    obs.put(metrics, obs.EXTRACT_PAGES, out.get("pages"))
    obs.put(metrics, obs.EXTRACT_COINS, out.get("coin_count"))
    obs.put(metrics, obs.API_CALLS, out.get("api_calls"))
    obs.put(metrics, obs.API_RETRIES, out.get("retries"))
    obs.put(metrics, obs.RATE_LIMITED_429S, out.get("rate_limited"))
    obs.put(metrics, obs.RATE_LIMIT_WAIT_SECONDS, out.get("pacing_wait_seconds"))
    obs.put(metrics, obs.GLOBAL_AVAILABLE, 0 if out.get("global_key") is None else 1)
    obs.put(metrics, obs.EXTRACT_INVOCATIONS, out.get("invocations"))


# X-Ray subsegments around the CoinGecko work (run() calls these by their module names; the
# patched requests adds one subsegment per HTTP call). Unchanged when tracing is off.
fetch_markets = obs.traced(tracer, fetch_markets)
_fetch_global = obs.traced(tracer, _fetch_global)


@context_or_local
@tracer.capture_lambda_handler
@metrics.log_metrics(capture_cold_start_metric=True)
@logger.inject_lambda_context(correlation_id_path=CORRELATION_ID_PATH)
def handler(event: dict, context: Any) -> dict:
    """Lambda entry point: configuration and storage come from the environment at call time.

    Logs carry the snapshot id as ``correlation_id``; metrics per :func:`emit_metrics`.
    """
    logger.setLevel(os.environ.get("POWERTOOLS_LOG_LEVEL") or os.environ.get("LOG_LEVEL") or "INFO")
    logger.remove_keys(["snapshot_id"])
    obs.start_invocation(metrics)
    obs.annotate_snapshot(tracer, logger.get_correlation_id())
    env = dict(os.environ)
    config = ExtractConfig.from_env(env)
    margin = env_float(env, "EXTRACT_DEADLINE_MARGIN_SECONDS", DEADLINE_MARGIN_SECONDS, minimum=0.0)
    remaining = getattr(context, "get_remaining_time_in_millis", None)
    deadline = (lambda: remaining() / 1000.0) if callable(remaining) else None
    if deadline is not None:
        # Refuse at once (ConfigError) rather than fail later with ExtractDeadlineError.
        check_timeout_fits(
            config.timeout_seconds, deadline(), margin, "the time left in this invocation"
        )
        check_window_fits(config, deadline(), margin)
    out = run(
        event,
        config=config,
        storage=storage_from_env(env),
        deadline=deadline,
        margin_seconds=margin,
    )
    emit_metrics(out)
    return out
