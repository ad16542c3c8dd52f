"""The history backfill's pure logic: its events, the plan's coin list, the budget split.

No network, no AWS: the lake is reached through the :class:`~functions.common.storage.Storage`
interface and the HTTP calls live in :mod:`functions.extract.backfill`.

**Events.** ``plan_backfill`` takes the execution input (:func:`parse_plan_event`): exactly one
of ``coin_ids`` (a list), ``top_n`` (an integer) or ``all`` (true), plus ``days`` (1-3650 or
``"max"``), ``vs_currency`` (default ``usd``), ``backfill_id`` (default: the execution name, or a
digest of the execution id when that name is not key-safe) and ``batch_size`` (coins per child
execution, default 10). ``fetch_history`` takes one batch of the Distributed Map
(:func:`parse_fetch_event`): ``{"batch": {"Items": [{"coin_id", "rank"}...], "BatchInput":
{...the plan's members...}}}``.

**The budget split** (:func:`map_budget`). A budget of N calls per W seconds shared by at most
``max_concurrency`` concurrent children gives ``c = min(max_concurrency, N)`` children, each
paced at ``floor(N / c)`` calls per W; c children together send at most ``c * floor(N / c) <= N``
calls in any W seconds. Each child spaces its calls evenly (W / k apart, k = floor(N / c)) and
returns only when its own pacing would let a next call go (:mod:`functions.extract.backfill`),
so the child that the Map starts next in its slot, with no memory of its predecessor, cannot
push the slot past k calls in any window either.

**The history limit.** CoinGecko: "Access to historical data via the Public API (Demo plan) is
restricted to the past 365 days only" (docs.coingecko.com/v3.0.1/reference/coins-id-market-chart,
read 2026-11); beyond it the API answers HTTP 401 with ``error_code`` 10012. The plan records the
limit of the configured plan (:data:`HISTORY_LIMIT_DAYS`) and a warning when ``days`` exceeds it;
the fetch then fails every coin with that message without calling the API (each coin is reported
with the reason; the backfill itself does not fail). A 10012 answered anyway (a plan the
configuration got wrong) fails that coin with CoinGecko's own message.
"""

from __future__ import annotations

import json
import math
import re
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any

from functions.common import keys
from functions.common.errors import ValidationError
from functions.common.snapshot_index import read_index
from functions.common.storage import Storage, get_json
from functions.extract.pacing import RateLimit

ACTION_PLAN = "plan_backfill"
ACTION_FETCH = "fetch_history"
ACTIONS = (ACTION_PLAN, ACTION_FETCH)

MAX_DAYS = 3650
MAX_ALL = "max"
DEFAULT_BATCH_SIZE = 10
MAX_BATCH_SIZE = 1000
DEFAULT_MAX_CONCURRENCY = 5  # BACKFILL_MAX_CONCURRENCY overrides it
MAX_CONCURRENCY_LIMIT = 1000
MAX_TOP_N = 100_000
MAX_COIN_IDS = 10_000
# Step Functions' own limit on an execution input and a state's data is 256 KiB
# (docs.aws.amazon.com/step-functions/latest/dg/service-quotas.html).
MAX_INPUT_BYTES = 256 * 1024
MAX_INPUT_MEMBERS = 16
MARKET_CHART_INTERVAL = "daily"
# Days of history each plan may ask for (None: no limit). Source: the module docstring.
HISTORY_LIMIT_DAYS: dict[str, int | None] = {"public": 365, "demo": 365, "pro": None}
SOURCE_COIN_IDS = "coin_ids"
SOURCE_MARKETS = "coins/markets"
LAKE_SOURCE_PREFIX = "lake:"
MAX_LAKE_CANDIDATES = 50  # snapshot indexes read, at most, looking for the latest snapshot

_KNOWN_INPUT = (
    "coin_ids",
    "top_n",
    "all",
    "days",
    "vs_currency",
    "backfill_id",
    "batch_size",
    "Comment",
)
_CURRENCY_RE = re.compile(r"[a-z0-9_-]{1,16}")
_PROCESSED_KEY_RE = re.compile(
    r"processed/dt=(\d{4}-\d{2}-\d{2})/snapshot=([^/]+)/run=([^/]+)/crypto_data\.csv\.gz"
)


# -- the budget ----------------------------------------------------------------------------------


def map_budget(limit: RateLimit | None, max_concurrency: int) -> tuple[int, RateLimit | None]:
    """``(concurrency, child limit)`` for a Map under ``limit`` (None: unpaced).

    ``concurrency = min(max_concurrency, N)``; each child gets ``floor(N / concurrency)`` calls
    per the same W seconds, so the children together never exceed N per W. Unpaced: every
    slot is used and children are not paced. Raises ValueError for ``max_concurrency < 1``.
    """
    if isinstance(max_concurrency, bool) or not isinstance(max_concurrency, int):
        raise ValueError(f"max_concurrency {max_concurrency!r} must be an integer")
    if max_concurrency < 1:
        raise ValueError(f"max_concurrency {max_concurrency} must be >= 1")
    if limit is None:
        return max_concurrency, None
    concurrency = min(max_concurrency, limit.calls)
    return concurrency, RateLimit(limit.calls // concurrency, limit.window_seconds)


def child_spacing(limit: RateLimit | None) -> float:
    """Seconds between two calls of one child paced at ``limit`` (0 unpaced): W / k."""
    return 0.0 if limit is None else limit.window_seconds / limit.calls


def fit_batch_size(
    requested: int, limit: RateLimit | None, available_seconds: float | None, reserve: float
) -> int:
    """The largest batch (<= ``requested``) one child can fetch at ``limit`` in
    ``available_seconds`` less ``reserve`` (a request timeout, the retry-wait budget and a
    margin, in seconds): ``floor(usable / spacing)`` coins, since a child also waits one spacing
    after its last call. At least 1; ``requested`` when unpaced or the time is unknown."""
    spacing = child_spacing(limit)
    if spacing <= 0 or available_seconds is None:
        return requested
    usable = available_seconds - reserve
    return max(1, min(requested, math.floor(usable / spacing)))


def history_limit_days(plan: str) -> int | None:
    """Days of history ``plan`` (public, demo, pro) may ask for; None when unlimited."""
    return HISTORY_LIMIT_DAYS.get(plan)


def range_refusal(days: int | str, limit_days: int | None, plan: str) -> str | None:
    """Why ``days`` is beyond what ``plan`` allows (a message), or None when it is allowed."""
    if limit_days is None:
        return None
    if days == MAX_ALL or (isinstance(days, int) and days > limit_days):
        return (
            f"range not allowed: days={days} asks for more than the past {limit_days} days of"
            f" history the CoinGecko {plan} plan allows (CoinGecko: the Public API and the Demo"
            f" plan are restricted to the past {limit_days} days); ask for days <= {limit_days}"
            " or use a pro key (COINGECKO_API_PLAN=pro)"
        )
    return None


# -- market_chart ----------------------------------------------------------------------------------


def market_chart_path(coin_id: str) -> str:
    """``/coins/{id}/market_chart`` (``coin_id`` validated: it is a path segment)."""
    return f"/coins/{keys.validate_coin_id(coin_id)}/market_chart"


def market_chart_query(vs_currency: str, days: int | str) -> dict[str, str]:
    """The query CoinGecko's ``/coins/{id}/market_chart`` takes for a daily series."""
    return {"vs_currency": vs_currency, "days": str(days), "interval": MARKET_CHART_INTERVAL}


def market_chart_points(data: Any) -> int:
    """The number of price points of a parsed ``market_chart`` body.

    Raises ValueError when the body is not ``{"prices": [...], "market_caps": [...],
    "total_volumes": [...]}`` with ``[ms, value]`` pairs (what the load turns into rows).
    """
    if not isinstance(data, dict):
        raise ValueError(f"a {type(data).__name__}, not a market_chart object")
    for name in ("prices", "market_caps", "total_volumes"):
        series = data.get(name)
        if not isinstance(series, list):
            raise ValueError(f"no {name!r} array (members: {sorted(data)[:6]})")
        if any(not isinstance(p, list) or len(p) != 2 for p in series[:3]):
            raise ValueError(f"{name!r} does not hold [timestamp, value] pairs")
    return len(data["prices"])


# -- events --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PlanRequest:
    """A validated ``plan_backfill`` event. ``mode`` is ``coin_ids``, ``top_n`` or ``all``."""

    backfill_id: str
    execution_id: str
    execution_name: str
    mode: str
    coin_ids: tuple[str, ...]
    top_n: int | None
    days: int | str
    vs_currency: str
    batch_size: int
    warnings: tuple[str, ...] = ()


def _check_input_size(data: Mapping[str, Any]) -> None:
    try:
        size = len(json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode())
    except (TypeError, ValueError, RecursionError) as exc:
        raise ValidationError("input", f"is not serializable JSON ({type(exc).__name__})") from exc
    if size > MAX_INPUT_BYTES:
        raise ValidationError("input", f"is {size} bytes of JSON; the limit is {MAX_INPUT_BYTES}")
    if len(data) > MAX_INPUT_MEMBERS:
        raise ValidationError("input", f"has {len(data)} members; the limit is {MAX_INPUT_MEMBERS}")


def _int_in(value: Any, field: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValidationError(field, f"{value!r:.80} must be an integer")
    if not low <= value <= high:
        raise ValidationError(field, f"{value} must be in [{low}, {high}]")
    return value


def parse_days(value: Any, field: str = "input.days") -> int | str:
    """``days``: an integer 1-3650 or ``"max"`` (any case); ValidationError naming ``field``."""
    if isinstance(value, str) and value.strip().lower() == MAX_ALL:
        return MAX_ALL
    if value is None:
        raise ValidationError(field, f"is required: an integer 1-{MAX_DAYS} or 'max'")
    if isinstance(value, str):
        raise ValidationError(field, f"{value!r:.80} must be an integer 1-{MAX_DAYS} or 'max'")
    return _int_in(value, field, 1, MAX_DAYS)


def parse_vs_currency(value: Any, field: str = "input.vs_currency") -> str:
    """``vs_currency`` lower-cased: 1-16 of ``a-z 0-9 _ -`` (the extract's rule)."""
    if not isinstance(value, str) or not _CURRENCY_RE.fullmatch(value.lower()):
        raise ValidationError(field, f"{value!r:.80} must be 1-16 letters, digits, '_' or '-'")
    return value.lower()


def _execution(event: Mapping[str, Any]) -> tuple[str, str]:
    execution = event.get("execution")
    if not isinstance(execution, Mapping):
        raise ValidationError(
            "execution", f"must be an object with name, id; got {execution!r:.80}"
        )
    name, exec_id = execution.get("name"), execution.get("id")
    if not isinstance(name, str) or not name or name != name.strip() or not name.isprintable():
        raise ValidationError("execution.name", f"{name!r:.80} must be a non-empty name")
    if not isinstance(exec_id, str) or not exec_id.strip():
        raise ValidationError("execution.id", f"{exec_id!r:.80} must be a non-empty string")
    return name, exec_id


def parse_plan_event(event: Any) -> PlanRequest:
    """Check a ``plan_backfill`` event (see the module docstring); raise ValidationError naming
    the first bad field. Unknown input members are ignored with a warning; duplicate coin ids
    are dropped (first kept) with a warning."""
    event = keys.validate_object(event, "event")
    data = event.get("input")
    data = keys.validate_object({} if data is None else data, "input")
    _check_input_size(data)
    name, exec_id = _execution(event)
    warnings: list[str] = []
    ignored = sorted(str(k) for k in data if k not in _KNOWN_INPUT)
    if ignored:
        warnings.append(f"ignored unknown input members: {', '.join(ignored)[:200]}")
    # identity, not equality: top_n 0 is given (and refused), "all": false is not given
    given = [
        m for m in ("coin_ids", "top_n", "all") if data.get(m) is not None and data[m] is not False
    ]
    if len(given) != 1:
        raise ValidationError(
            "input",
            "must have exactly one of coin_ids (a list of ids), top_n (an integer) or all (true);"
            f" got {', '.join(given) or 'none'}",
        )
    mode = given[0]
    coin_ids: list[str] = []
    top_n = None
    if mode == "coin_ids":
        raw = data["coin_ids"]
        if not isinstance(raw, list) or not raw:
            raise ValidationError("input.coin_ids", f"{raw!r:.80} must be a non-empty list of ids")
        if len(raw) > MAX_COIN_IDS:
            raise ValidationError(
                "input.coin_ids", f"has {len(raw)} ids; the limit is {MAX_COIN_IDS}"
            )
        for i, value in enumerate(raw):
            coin = keys.validate_coin_id(value, f"input.coin_ids[{i}]")
            if coin not in coin_ids:
                coin_ids.append(coin)
        if len(coin_ids) < len(raw):
            warnings.append(f"dropped {len(raw) - len(coin_ids)} duplicate coin ids")
    elif mode == "top_n":
        top_n = _int_in(data["top_n"], "input.top_n", 1, MAX_TOP_N)
    elif data["all"] is not True:
        raise ValidationError("input.all", f"{data['all']!r:.80} must be true")
    if data.get("backfill_id") is not None:
        backfill_id = keys.validate_backfill_id(data["backfill_id"], "input.backfill_id")
    else:
        backfill_id = keys.run_id(name, exec_id)  # the name, or a digest when not key-safe
    batch_size = data.get("batch_size")
    return PlanRequest(
        backfill_id=backfill_id,
        execution_id=exec_id,
        execution_name=name,
        mode=mode,
        coin_ids=tuple(coin_ids),
        top_n=top_n,
        days=parse_days(data.get("days")),
        vs_currency=parse_vs_currency(data.get("vs_currency", "usd")),
        batch_size=DEFAULT_BATCH_SIZE
        if batch_size is None
        else _int_in(batch_size, "input.batch_size", 1, MAX_BATCH_SIZE),
        warnings=tuple(warnings),
    )


@dataclass(frozen=True)
class FetchRequest:
    """A validated ``fetch_history`` batch: its coins and what the plan told the child."""

    backfill_id: str
    bucket: str
    vs_currency: str
    days: int | str
    history_prefix: str
    child_rate_limit: RateLimit | None
    items: tuple[tuple[str, int | None], ...]  # (coin id, rank)


def parse_fetch_event(event: Any, expected_bucket: str | None = None) -> FetchRequest:
    """Check a ``fetch_history`` event; raise ValidationError naming the first bad field.

    ``batch.BatchInput`` needs ``backfill_id``, ``bucket`` (this lake's), ``vs_currency``,
    ``days``, ``history_prefix`` (the backfill's) and ``child_rate_limit`` ("N/W" or null);
    other members (the rest of the plan) are ignored. ``batch.Items`` is a non-empty list of
    ``{"coin_id", "rank"}``.
    """
    event = keys.validate_object(event, "event")
    batch = keys.validate_object(event.get("batch"), "batch")
    given = keys.validate_object(batch.get("BatchInput"), "batch.BatchInput")
    where = "batch.BatchInput"
    backfill_id = keys.validate_backfill_id(given.get("backfill_id"), f"{where}.backfill_id")
    bucket = keys.validate_bucket(given.get("bucket"), expected_bucket, f"{where}.bucket")
    prefix = given.get("history_prefix")
    if prefix != keys.history_prefix(backfill_id):
        raise ValidationError(
            f"{where}.history_prefix",
            f"{prefix!r:.120} must be {keys.history_prefix(backfill_id)!r} (the backfill's)",
        )
    raw_limit = given.get("child_rate_limit")
    limit = None
    if raw_limit is not None:
        if not isinstance(raw_limit, str):
            raise ValidationError(f"{where}.child_rate_limit", f"{raw_limit!r:.80} must be N/W")
        try:
            limit = RateLimit.parse(raw_limit, f"{where}.child_rate_limit")
        except Exception as exc:  # ConfigError: an event field here, so a ValidationError
            raise ValidationError(f"{where}.child_rate_limit", str(exc)) from exc
    items = batch.get("Items")
    if not isinstance(items, list) or not items:
        raise ValidationError("batch.Items", f"{items!r:.80} must be a non-empty list")
    if len(items) > MAX_BATCH_SIZE:
        raise ValidationError(
            "batch.Items", f"has {len(items)} items; the limit is {MAX_BATCH_SIZE}"
        )
    parsed: list[tuple[str, int | None]] = []
    for i, item in enumerate(items):
        item = keys.validate_object(item, f"batch.Items[{i}]")
        coin = keys.validate_coin_id(item.get("coin_id"), f"batch.Items[{i}].coin_id")
        rank = item.get("rank")
        if rank is not None:
            rank = _int_in(rank, f"batch.Items[{i}].rank", 1, 10_000_000)
        parsed.append((coin, rank))
    return FetchRequest(
        backfill_id=backfill_id,
        bucket=bucket,
        vs_currency=parse_vs_currency(given.get("vs_currency"), f"{where}.vs_currency"),
        days=parse_days(given.get("days"), f"{where}.days"),
        history_prefix=prefix,
        child_rate_limit=limit,
        items=tuple(parsed),
    )


# -- the coin list from the lake -------------------------------------------------------------------


@dataclass
class LakeCoins:
    """The latest loaded snapshot in one currency, read from the lake (see
    :func:`latest_snapshot_coins`): its id, ``fetched_at``, ``max_coins``, whether paging
    reached the end of the market, and its coin ids in market-cap order (deduplicated)."""

    snapshot_id: str
    fetched_at: str
    max_coins: Any
    end_confirmed: bool
    coin_ids: list[str] = field(default_factory=list)
    skipped_ids: int = 0


def _snapshot_days(processed_keys: Sequence[str]) -> dict[str, date]:
    days: dict[str, date] = {}
    for key in processed_keys:
        m = _PROCESSED_KEY_RE.fullmatch(key)
        if m is None:
            continue
        try:
            day = date.fromisoformat(m.group(1))
            snapshot_id = keys.validate_snapshot_id(m.group(2))
        except (ValueError, ValidationError):
            continue
        days[snapshot_id] = max(day, days.get(snapshot_id, day))
    return days


def latest_snapshot_coins(
    storage: Storage, vs_currency: str, max_candidates: int = MAX_LAKE_CANDIDATES
) -> LakeCoins | None:
    """The coin ids of the latest loaded snapshot quoted in ``vs_currency``, or None.

    As the Transform's previous-snapshot lookup (``functions/transform/previous.py``): one
    listing of ``processed/`` orders snapshots by partition date; newest day first, each
    snapshot's index ``snapshots/<id>.json`` names its loaded (``current``) run, whose raw
    manifest gives the currency, ``fetched_at`` and the pages with the rows to keep; the
    latest ``fetched_at`` of the first day with a match wins, after at most ``max_candidates``
    indexes. Its pages are then read in order (``count`` rows of each) and the ids kept in
    order, first occurrence only (ranks shift while paging). An unreadable index, manifest or
    page skips that snapshot. Raises StorageError when the lake cannot be listed or read.
    """
    days = _snapshot_days(storage.list_keys(keys.PROCESSED))
    by_day: dict[date, list[str]] = defaultdict(list)
    for snapshot_id, day in days.items():
        by_day[day].append(snapshot_id)
    read = 0
    for day in sorted(by_day, reverse=True):
        best: tuple[datetime, str, Mapping[str, Any]] | None = None
        for snapshot_id in sorted(by_day[day], reverse=True):
            if read >= max_candidates:
                break
            read += 1
            try:
                index = read_index(storage, snapshot_id)
                current = index.get("current") if index else None
                if not isinstance(current, Mapping):
                    continue
                key = keys.validate_key(current.get("manifest_key"), "manifest_key", keys.RAW)
                manifest = keys.validate_object(get_json(storage, key), key)
                fetched = datetime.fromisoformat(str(manifest.get("fetched_at")))
            except (ValidationError, ValueError):
                continue
            if str(manifest.get("vs_currency", "")).lower() != vs_currency:
                continue
            fetched = fetched if fetched.tzinfo else fetched.replace(tzinfo=UTC)
            if best is None or fetched > best[0]:
                best = (fetched, snapshot_id, manifest)
        if best is not None:
            coins = _manifest_coins(storage, best[2])
            if coins is not None:
                found = LakeCoins(
                    snapshot_id=best[1],
                    fetched_at=best[0].isoformat(),
                    max_coins=best[2].get("max_coins"),
                    end_confirmed=best[2].get("end_confirmed") is True,
                )
                found.coin_ids, found.skipped_ids = coins
                return found
        if read >= max_candidates:
            break
    return None


def _manifest_coins(storage: Storage, manifest: Mapping[str, Any]) -> tuple[list[str], int] | None:
    """``(coin ids in order, ids skipped as unsafe)`` from a manifest's pages; None when a page
    cannot be read."""
    pages = manifest.get("pages")
    if not isinstance(pages, list):
        return None
    ids: list[str] = []
    seen: set[str] = set()
    skipped = 0
    for page in sorted(
        (p for p in pages if isinstance(p, Mapping)), key=lambda p: p.get("page") or 0
    ):
        try:
            key = keys.validate_key(page.get("key"), "page key", keys.RAW)
            rows = get_json(storage, key)
        except ValidationError:
            return None
        count = page.get("count")
        if not isinstance(rows, list):
            return None
        if isinstance(count, int) and not isinstance(count, bool):
            rows = rows[: max(count, 0)]
        for row in rows:
            coin = row.get("id") if isinstance(row, Mapping) else None
            try:
                coin = keys.validate_coin_id(coin)
            except ValidationError:
                skipped += 1
                continue
            if coin not in seen:
                seen.add(coin)
                ids.append(coin)
    return ids, skipped


def ids_from_markets(rows: Any) -> tuple[list[str], int]:
    """``(valid coin ids in order, rows skipped)`` from one parsed ``/coins/markets`` page."""
    ids: list[str] = []
    skipped = 0
    for row in rows if isinstance(rows, list) else []:
        try:
            ids.append(keys.validate_coin_id(row.get("id") if isinstance(row, Mapping) else None))
        except ValidationError:
            skipped += 1
    return ids, skipped


def plan_items(coin_ids: Sequence[str]) -> list[dict[str, Any]]:
    """The items file: ``[{"coin_id", "rank"}]``, rank the 1-based position in the plan."""
    return [{"coin_id": coin, "rank": i} for i, coin in enumerate(coin_ids, start=1)]
