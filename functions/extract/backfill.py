"""The Extract Lambda's history actions: ``plan_backfill`` and ``fetch_history``.

The history backfill's state machine (``state_machine/backfill.asl.json``) invokes the Extract
function with an ``action`` (dispatched by :func:`functions.extract.handler.run`):

``{"action": "plan_backfill", "input": <execution input>, "execution": {"name", "id",
"start_time"}}``
    Resolves the coin list (:func:`plan_backfill`), writes it to
    ``raw/history/backfill=<id>/items.json`` (a JSON array of ``{"coin_id", "rank"}``) and
    returns the plan: ``backfill_id, bucket, vs_currency, days, coin_count, items_key,
    history_prefix, results_prefix, batch_size, max_concurrency, child_rate_limit, rate_limit,
    source ("lake:<snapshot id>" | "coins/markets" | "coin_ids"), plan_warnings,
    history_limit_days, plan_api_calls``.

``{"action": "fetch_history", "batch": {"Items": [{"coin_id", "rank"}...], "BatchInput":
{...the plan...}}}``
    One child of the Distributed Map (:func:`fetch_history`): GETs
    ``/coins/{id}/market_chart?vs_currency=..&days=D&interval=daily`` per coin, paced at the
    plan's ``child_rate_limit``, stores each body exactly as received at
    ``raw/history/backfill=<id>/coins/<coin id>.json`` and returns ``{"backfill_id", "ok":
    [{"coin_id", "key", "points"}], "failed": [{"coin_id", "error", "status"}], "api_calls",
    "retries", "rate_limited", "pacing_wait_seconds", "tail_wait_seconds"}``.

A coin that fails (HTTP 404 for an unknown or delisted id, a range the plan does not allow,
retries exhausted, a body that is not a market chart, the invocation's time running out) is
listed in ``failed`` and the batch still succeeds; only an unexpected error (the lake cannot be
written, a bad event) fails the child, which the Map's ``ToleratedFailurePercentage`` counts.
Pacing and the budget split: :mod:`functions.extract.history`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from typing import Any

from functions.common import keys
from functions.common.config import env_int
from functions.common.errors import SourceError, ValidationError
from functions.common.log import get_logger
from functions.common.storage import Storage
from functions.extract import history
from functions.extract.client import CoinGeckoClient
from functions.extract.config import ExtractConfig
from functions.extract.pacing import RateLimit, SlidingWindowLimiter, jitter_margin
from functions.extract.paging import MAX_PAGES, MAX_PER_PAGE

logger = get_logger("extract")

JSON_CONTENT_TYPE = "application/json"
MAX_ERROR_CHARS = 500


def run_action(
    event: Mapping[str, Any],
    *,
    config: ExtractConfig,
    storage: Storage,
    client: CoinGeckoClient | None = None,
    deadline: Callable[[], float] | None = None,
    margin_seconds: float = 10.0,
    env: Mapping[str, str] | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> dict[str, Any]:
    """Run ``event["action"]`` (``plan_backfill`` or ``fetch_history``); ValidationError for
    any other action. ``deadline`` returns the seconds left in the invocation."""
    action = event.get("action")
    if action == history.ACTION_PLAN:
        return plan_backfill(
            event,
            config=config,
            storage=storage,
            client=client,
            deadline=deadline,
            margin_seconds=margin_seconds,
            max_concurrency=_max_concurrency(env),
            sleep=sleep,
        )
    if action == history.ACTION_FETCH:
        return fetch_history(
            event,
            config=config,
            storage=storage,
            client=client,
            deadline=deadline,
            margin_seconds=margin_seconds,
            sleep=sleep,
        )
    raise ValidationError(
        "action",
        f"{action!r:.80} must be one of {', '.join(history.ACTIONS)} (or absent: a snapshot)",
    )


def _max_concurrency(env: Mapping[str, str] | None) -> int:
    """``BACKFILL_MAX_CONCURRENCY`` (1-1000, default 5): the most children the Map may run."""
    import os

    env = dict(os.environ) if env is None else env
    return env_int(
        dict(env),
        "BACKFILL_MAX_CONCURRENCY",
        history.DEFAULT_MAX_CONCURRENCY,
        minimum=1,
        maximum=history.MAX_CONCURRENCY_LIMIT,
    )


# -- plan ------------------------------------------------------------------------------------------


def plan_backfill(
    event: Mapping[str, Any],
    *,
    config: ExtractConfig,
    storage: Storage,
    client: CoinGeckoClient | None = None,
    deadline: Callable[[], float] | None = None,
    margin_seconds: float = 10.0,
    max_concurrency: int = history.DEFAULT_MAX_CONCURRENCY,
    sleep: Callable[[float], None] = time.sleep,
) -> dict[str, Any]:
    """Resolve the coins, write ``items.json``, return the plan (module docstring).

    ``top_n``/``all``: the latest loaded snapshot in the lake in that currency when it holds
    enough coins (``top_n`` of them; for ``all``, a whole-market run whose end was confirmed),
    else ``/coins/markets`` pages of 250 until ``top_n`` coins or an empty page. After calling
    the API the plan waits until its calls are a window old, so the Map's children start with
    the whole budget. Raises ValidationError (bad event), SourceError (CoinGecko failed, or the
    market listed no coin), ExtractDeadlineError-like SourceUnavailableError (out of time).
    """
    request = history.parse_plan_event(event)
    logger.append_keys(backfill_id=request.backfill_id)
    warnings = list(request.warnings)
    limit_days = history.history_limit_days(config.plan)
    refusal = history.range_refusal(request.days, limit_days, config.plan)
    if refusal:
        warnings.append(f"{refusal}: every coin will fail with this reason")
    concurrency, child = history.map_budget(config.rate_limit, max_concurrency)
    api_calls = 0
    if request.mode == "coin_ids":
        coin_ids, source = list(request.coin_ids), history.SOURCE_COIN_IDS
    else:
        coin_ids, source = _from_lake(storage, request, warnings)
        if coin_ids is None:
            coin_ids, api_calls = _from_markets(
                config, request, warnings, client, deadline, margin_seconds, sleep
            )
            source = history.SOURCE_MARKETS
    if not coin_ids:
        raise SourceError(
            f"backfill {request.backfill_id}: the plan found no coins ({source}) in"
            f" {request.vs_currency}"
        )
    available = deadline() if deadline is not None else None
    reserve = config.timeout_seconds + config.max_retry_wait_seconds + margin_seconds
    batch_size = history.fit_batch_size(request.batch_size, child, available, reserve)
    if batch_size < request.batch_size:
        warnings.append(
            f"batch_size lowered from {request.batch_size} to {batch_size}: a child paced at"
            f" {child} must finish its batch within the function's {available:.0f}s (less"
            f" {reserve:g}s for a request timeout, retry waits and the margin)"
        )
    items_key = keys.history_items_key(request.backfill_id)
    items = history.plan_items(coin_ids)
    storage.put_bytes(
        items_key, json.dumps(items, separators=(",", ":")).encode(), JSON_CONTENT_TYPE
    )
    plan = {
        "backfill_id": request.backfill_id,
        "bucket": storage.bucket,
        "vs_currency": request.vs_currency,
        "days": request.days,
        "coin_count": len(items),
        "items_key": items_key,
        "history_prefix": keys.history_prefix(request.backfill_id),
        "results_prefix": keys.history_results_prefix(request.backfill_id),
        "batch_size": batch_size,
        "max_concurrency": concurrency,
        "child_rate_limit": str(child) if child is not None else None,
        "rate_limit": str(config.rate_limit) if config.rate_limit is not None else None,
        "source": source,
        "plan_warnings": warnings,
        "history_limit_days": limit_days,
        "plan_api_calls": api_calls,
    }
    logger.info(
        f"backfill plan: {len(items)} coins from {source}, {concurrency} children at"
        f" {plan['child_rate_limit'] or 'no pacing'}",
        extra={k: v for k, v in plan.items() if k != "plan_warnings"} | {"warnings": warnings},
    )
    return plan


def _from_lake(
    storage: Storage, request: history.PlanRequest, warnings: list[str]
) -> tuple[list[str] | None, str]:
    """The coins from the latest snapshot in the lake, or ``(None, "")`` with a warning why not."""
    lake = history.latest_snapshot_coins(storage, request.vs_currency)
    if lake is None:
        warnings.append(
            f"no loaded snapshot in {request.vs_currency} in the lake: coins from /coins/markets"
        )
        return None, ""
    source = f"{history.LAKE_SOURCE_PREFIX}{lake.snapshot_id}"
    if lake.skipped_ids:
        warnings.append(f"{source}: skipped {lake.skipped_ids} rows without a usable coin id")
    if request.mode == "all":
        if lake.max_coins == "all" and lake.end_confirmed:
            return lake.coin_ids, source
        warnings.append(
            f"{source} is not a whole-market snapshot (max_coins {lake.max_coins!r}, end"
            f" confirmed: {lake.end_confirmed}): coins from /coins/markets"
        )
        return None, ""
    assert request.top_n is not None
    if len(lake.coin_ids) >= request.top_n:
        return lake.coin_ids[: request.top_n], source
    warnings.append(
        f"{source} holds {len(lake.coin_ids)} coins, fewer than top_n {request.top_n}: coins"
        " from /coins/markets"
    )
    return None, ""


def _from_markets(
    config: ExtractConfig,
    request: history.PlanRequest,
    warnings: list[str],
    client: CoinGeckoClient | None,
    deadline: Callable[[], float] | None,
    margin_seconds: float,
    sleep: Callable[[float], None],
) -> tuple[list[str], int]:
    """``(coin ids in market-cap order, API calls)`` from ``/coins/markets`` pages of 250."""
    reserve = config.timeout_seconds + margin_seconds
    own = client is None
    if client is None:
        client = CoinGeckoClient.from_config(
            config, deadline=deadline, deadline_reserve=reserve, logger=logger, sleep=sleep
        )
    wanted = request.top_n  # None: the whole market
    ids: list[str] = []
    seen: set[str] = set()
    skipped = 0
    try:
        for page in range(1, MAX_PAGES + 1):
            if deadline is not None and deadline() - client.pacing_delay() < reserve:
                raise SourceError(
                    f"backfill {request.backfill_id}: the plan ran out of time listing"
                    f" /coins/markets after {page - 1} pages ({len(ids)} coins); load a"
                    " whole-market snapshot first (crypto-etl run --max-coins all) so the plan"
                    " reads the coins from the lake"
                )
            resp = client.markets_page(request.vs_currency, page, MAX_PER_PAGE)
            page_ids, bad = history.ids_from_markets(resp.data)
            skipped += bad
            if not resp.data:
                break
            for coin in page_ids:
                if coin not in seen:
                    seen.add(coin)
                    ids.append(coin)
            if wanted is not None and len(ids) >= wanted:
                break
        else:
            warnings.append(f"/coins/markets: stopped after {MAX_PAGES} pages")
        calls = client.api_calls
        _wait_out_window(client.limiter, deadline, margin_seconds, sleep)
    finally:
        if own:
            client.close()
    if skipped:
        warnings.append(f"/coins/markets: skipped {skipped} rows without a usable coin id")
    return (ids[:wanted] if wanted is not None else ids), calls


def _wait_out_window(
    limiter: SlidingWindowLimiter | None,
    deadline: Callable[[], float] | None,
    margin_seconds: float,
    sleep: Callable[[float], None],
) -> float:
    """Sleep until the plan's calls are a whole window old (the children then have the whole
    budget); seconds slept. Skipped when the deadline would not allow it."""
    if limiter is None:
        return 0.0
    calls = limiter.state()["calls"]
    if not calls:
        return 0.0
    limit = limiter.limit
    wait = max(calls) + limit.window_seconds + jitter_margin(limit) - time.time()
    if wait <= 0 or (deadline is not None and deadline() - wait < margin_seconds):
        return 0.0
    sleep(wait)
    return wait


# -- fetch -----------------------------------------------------------------------------------------


def child_limiter(
    limit: RateLimit | None,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.time,
) -> SlidingWindowLimiter | None:
    """A child's limiter (None unpaced): calls evenly spaced, W / k apart (the limiter's level
    1, see ``pacing``), never in a burst, so the Map's next child in the slot can start as soon
    as this one's :meth:`~SlidingWindowLimiter.delay` has passed."""
    if limit is None:
        return None
    state = {"version": 1, "limit": str(limit), "calls": [], "level": 1, "not_before": None}
    return SlidingWindowLimiter(limit, state=state, sleep=sleep, clock=clock)


def slot_free_at(limiter: SlidingWindowLimiter) -> float:
    """The Unix time from which the Map may start the next child in this child's slot.

    The next child starts with a fresh limiter and sends its calls j = 0, 1, ... at
    ``T + j * W / k``; with this child's last calls ``c[-i]`` (i = 1..k), no window of
    ``W`` (plus the jitter margin) may hold more than k calls of the slot, so
    ``T >= c[-i] + W + margin - (k - i) * W / k`` for each i. That is also at least one
    spacing (plus the margin) after this child's last call.
    """
    limit = limiter.limit
    calls = sorted(limiter.state()["calls"])[-limit.calls :]
    spacing = history.child_spacing(limit)
    return max(
        (
            sent + limit.window_seconds + limiter.margin - (limit.calls - i) * spacing
            for i, sent in enumerate(reversed(calls), start=1)
        ),
        default=0.0,
    )


def _failure(coin_id: str, error: str, status: int | None = None) -> dict[str, Any]:
    text = " ".join(error.split())
    if len(text) > MAX_ERROR_CHARS:
        text = text[: MAX_ERROR_CHARS - 1] + "…"
    return {"coin_id": coin_id, "error": text, "status": status}


def fetch_history(
    event: Mapping[str, Any],
    *,
    config: ExtractConfig,
    storage: Storage,
    client: CoinGeckoClient | None = None,
    deadline: Callable[[], float] | None = None,
    margin_seconds: float = 10.0,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.time,
) -> dict[str, Any]:
    """Fetch one batch's market charts into the lake (module docstring).

    Each call waits for the child's limiter (``child_rate_limit``: calls W / k apart); after
    the last call the child waits until :func:`slot_free_at`, so the next child in its Map
    slot may start at once. ``clock`` (Unix seconds) and ``sleep`` are the limiter's.
    A ``client`` given by a test is used as is (its own limiter, if any).
    Raises ValidationError for a bad event and StorageError when a body cannot be stored;
    every per-coin problem is reported in ``failed`` instead.
    """
    request = history.parse_fetch_event(event, expected_bucket=storage.bucket)
    logger.append_keys(backfill_id=request.backfill_id)
    result: dict[str, Any] = {
        "backfill_id": request.backfill_id,
        "ok": [],
        "failed": [],
        "api_calls": 0,
        "retries": 0,
        "rate_limited": 0,
        "pacing_wait_seconds": 0.0,
        "tail_wait_seconds": 0.0,
    }
    refusal = history.range_refusal(
        request.days, history.history_limit_days(config.plan), config.plan
    )
    if refusal:
        result["failed"] = [_failure(coin, refusal) for coin, _ in request.items]
        logger.warning(refusal, extra={"coins": len(request.items)})
        return result
    reserve = config.timeout_seconds + margin_seconds
    own = client is None
    if client is None:
        client = CoinGeckoClient.from_config(
            config,
            deadline=deadline,
            deadline_reserve=reserve,
            logger=logger,
            sleep=sleep,
            limiter=child_limiter(request.child_rate_limit, sleep, clock),
        )
    try:
        for index, (coin, _rank) in enumerate(request.items):
            if deadline is not None and deadline() - client.pacing_delay() < reserve:
                for late, _ in request.items[index:]:
                    result["failed"].append(
                        _failure(
                            late,
                            "not fetched: the invocation ran out of time before this coin"
                            f" ({len(request.items)} coins in the batch at"
                            f" {request.child_rate_limit}); lower batch_size",
                        )
                    )
                break
            try:
                resp = client.market_chart(coin, request.vs_currency, request.days)
                points = history.market_chart_points(resp.data)
            except SourceError as exc:
                result["failed"].append(_failure(coin, str(exc), exc.status))
                continue
            except ValueError as exc:
                result["failed"].append(_failure(coin, f"not a market_chart body: {exc}"))
                continue
            key = keys.history_coin_key(request.backfill_id, coin)
            storage.put_bytes(key, resp.body, JSON_CONTENT_TYPE)
            result["ok"].append({"coin_id": coin, "key": key, "points": points})
        limiter = client.limiter
        if limiter is not None and client.api_calls:
            wait = slot_free_at(limiter) - clock()
            if wait > 0 and (deadline is None or deadline() - wait >= margin_seconds):
                sleep(wait)
                result["tail_wait_seconds"] = round(wait, 3)
        result.update(
            api_calls=client.api_calls,
            retries=client.retries,
            rate_limited=client.rate_limited,
            pacing_wait_seconds=round(client.pacing_wait_seconds, 3),
        )
    finally:
        if own:
            client.close()
    logger.info(
        f"history batch: {len(result['ok'])} coins stored, {len(result['failed'])} failed",
        extra={
            "failed": [f["coin_id"] for f in result["failed"]][:50],
            **{k: result[k] for k in ("api_calls", "retries", "rate_limited")},
        },
    )
    return result
