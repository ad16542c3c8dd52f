"""The backfill plan (Extract action ``plan_backfill``) and the budget split.

Real HTTP against the replay server, a folder as the lake; the budget split also by simulation
(a fake clock per Map slot, children chained as the Distributed Map chains them).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from functions.common import keys
from functions.common.context import LocalLambdaContext
from functions.common.errors import ValidationError
from functions.common.storage import LocalStorage, put_json
from functions.extract import backfill, history
from functions.extract import handler as extract
from functions.extract.config import ExtractConfig
from functions.extract.pacing import RateLimit
from local_mode import synthetic
from local_mode.replay_server import ReplayServer

PLAN_KEYS = {
    "backfill_id",
    "bucket",
    "vs_currency",
    "days",
    "coin_count",
    "items_key",
    "history_prefix",
    "results_prefix",
    "batch_size",
    "max_concurrency",
    "child_rate_limit",
    "rate_limit",
    "source",
    "plan_warnings",
    "history_limit_days",
    "plan_api_calls",
}
MARKET = 300


def plan_event(**inputs) -> dict:
    return {
        "action": "plan_backfill",
        "input": inputs,
        "execution": {
            "name": "bf-0001",
            "id": "arn:aws:states:us-east-1:123456789012:execution:crypto-etl-backfill:bf-0001",
            "start_time": "2026-11-29T10:00:00Z",
        },
    }


@pytest.fixture(scope="module")
def server():
    with ReplayServer.synthetic(MARKET) as srv:
        yield srv


@pytest.fixture
def storage(tmp_path: Path) -> LocalStorage:
    return LocalStorage(tmp_path / "lake", "crypto-etl-test")


def config_for(server: ReplayServer, **env: str) -> ExtractConfig:
    return ExtractConfig.from_env(
        {"COINGECKO_BASE_URL": server.base_url, "COINGECKO_TIMEOUT_SECONDS": "5", **env}
    )


def plan(server, storage, **inputs):
    return backfill.plan_backfill(plan_event(**inputs), config=config_for(server), storage=storage)


def market_ids(n: int, vs: str = "usd") -> list[str]:
    return [c["id"] for c in synthetic.generate_markets(MARKET, vs_currency=vs)[:n]]


def write_snapshot(
    storage: LocalStorage,
    snapshot_id: str,
    ids: list[str],
    *,
    day: str = "2026-11-28",
    fetched_at: str = "2026-11-28T06:00:00+00:00",
    vs_currency: str = "usd",
    max_coins: int | str = 1000,
    end_confirmed: bool = False,
    per_page: int = 100,
) -> None:
    """A loaded snapshot as the pipeline leaves it: processed file, index, manifest, pages."""
    run = f"run-{snapshot_id}"
    prefix = f"raw/dt={day}/snapshot={snapshot_id}/run={run}/"
    pages = []
    for n, start in enumerate(range(0, len(ids), per_page), start=1):
        key = keys.page_key(prefix, n)
        rows = [{"id": coin, "symbol": coin[:3]} for coin in ids[start : start + per_page]]
        storage.put_bytes(key, json.dumps(rows).encode())
        pages.append({"page": n, "key": key, "count": len(rows), "rows": len(rows)})
    manifest_key = keys.manifest_key(prefix)
    put_json(
        storage,
        manifest_key,
        {
            "snapshot_id": snapshot_id,
            "fetched_at": fetched_at,
            "vs_currency": vs_currency,
            "max_coins": max_coins,
            "end_confirmed": end_confirmed,
            "pages": pages,
        },
    )
    storage.put_bytes(
        f"processed/dt={day}/snapshot={snapshot_id}/run={run}/crypto_data.csv.gz", b""
    )
    put_json(
        storage,
        keys.snapshot_index_key(snapshot_id),
        {
            "snapshot_id": snapshot_id,
            "partition_date": day,
            "current": {"run_id": run, "manifest_key": manifest_key, "rows": len(ids)},
        },
    )


def items_of(storage: LocalStorage, result: dict) -> list[dict]:
    return json.loads(storage.get_bytes(result["items_key"]))


# -- the budget split ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("limit", "max_concurrency", "expected"),
    [
        (RateLimit(5, 60), 5, (5, "1/60")),  # public
        (RateLimit(30, 60), 5, (5, "6/60")),  # demo
        (RateLimit(250, 60), 5, (5, "50/60")),  # pro
        (RateLimit(2, 60), 5, (2, "1/60")),  # fewer calls than slots
        (RateLimit(7, 10), 3, (3, "2/10")),  # floor: 3 x 2 = 6 <= 7
        (None, 4, (4, None)),  # unpaced
    ],
)
def test_map_budget_examples(limit, max_concurrency, expected):
    concurrency, child = history.map_budget(limit, max_concurrency)
    assert (concurrency, str(child) if child else None) == expected


def test_map_budget_never_exceeds_the_budget():
    for calls in range(1, 120):
        for max_concurrency in range(1, 40):
            concurrency, child = history.map_budget(RateLimit(calls, 60), max_concurrency)
            assert 1 <= concurrency <= min(calls, max_concurrency)
            assert child.calls >= 1 and child.window_seconds == 60
            assert concurrency * child.calls <= calls


def test_map_budget_refuses_no_concurrency():
    with pytest.raises(ValueError, match="max_concurrency"):
        history.map_budget(RateLimit(5, 60), 0)


def _most_in_any_window(times: list[float], window: float) -> int:
    """The most calls in any window of ``window`` seconds (a call exactly ``window`` after
    another counts with it: the server may see the earlier call arrive a little late)."""
    times = sorted(times)
    most, start = 0, 0
    for end, t in enumerate(times):
        while times[start] < t - window:
            start += 1
        most = max(most, end - start + 1)
    return most


def _simulate_map(
    budget: RateLimit, max_concurrency: int, batches: list[int], *, tail_wait: bool
) -> list[float]:
    """Every call time of a Map: c slots, each running children one after another (a child
    starts the moment the previous one ends), each child a fresh limiter of the child budget."""
    concurrency, child = history.map_budget(budget, max_concurrency)
    rng = random.Random(7)
    slots = [0.0] * concurrency
    calls: list[float] = []
    for size in batches:
        slot = min(range(concurrency), key=slots.__getitem__)  # the first slot to free up
        now = [slots[slot]]

        def sleep(seconds: float, now=now) -> None:
            now[0] += seconds

        limiter = backfill.child_limiter(child, sleep=sleep, clock=lambda now=now: now[0])
        for _ in range(size):
            limiter.acquire()
            calls.append(now[0])
            now[0] += rng.uniform(0.05, 0.6)  # the request itself
        if tail_wait:
            now[0] = max(now[0], backfill.slot_free_at(limiter))
        slots[slot] = now[0]
    return calls


@pytest.mark.parametrize(
    ("budget", "max_concurrency"),
    [(RateLimit(5, 60), 5), (RateLimit(30, 60), 5), (RateLimit(7, 10), 3)],
)
def test_children_chained_in_their_slots_never_exceed_the_budget(budget, max_concurrency):
    batches = [random.Random(i).randint(1, 12) for i in range(40)]
    calls = _simulate_map(budget, max_concurrency, batches, tail_wait=True)
    assert len(calls) == sum(batches)
    # Even with every call arriving up to 90 % of the jitter margin late (a window that much
    # longer), the Map stays within the budget.
    margin = min(0.02 * budget.window_seconds, 0.5)
    assert _most_in_any_window(calls, budget.window_seconds + 0.9 * margin) <= budget.calls


def test_without_the_tail_wait_a_chained_child_would_exceed_the_budget():
    # Why a child waits once more after its last call: the next child in the slot starts
    # with an empty limiter, so without that wait two calls of one slot can fall within W / k.
    budget = RateLimit(5, 60)
    calls = _simulate_map(budget, 5, [1] * 20, tail_wait=False)
    assert _most_in_any_window(calls, budget.window_seconds) > budget.calls


def test_fit_batch_size():
    limit = RateLimit(1, 60)
    assert history.fit_batch_size(20, limit, 900, 160) == 12  # floor(740 / 60)
    assert history.fit_batch_size(10, limit, 900, 160) == 10
    assert history.fit_batch_size(10, limit, None, 160) == 10
    assert history.fit_batch_size(10, None, 900, 160) == 10
    assert history.fit_batch_size(10, limit, 100, 160) == 1


# -- resolving the coins ---------------------------------------------------------------------------


def test_coin_ids_are_planned_as_given(server, storage):
    server.clear_requests()
    result = plan(server, storage, coin_ids=["bitcoin", "ethereum", "bitcoin"], days=30)
    assert set(result) == PLAN_KEYS
    assert result["source"] == "coin_ids"
    assert result["backfill_id"] == "bf-0001"
    assert result["items_key"] == "raw/history/backfill=bf-0001/items.json"
    assert result["history_prefix"] == "raw/history/backfill=bf-0001/"
    assert result["results_prefix"] == "raw/history/backfill=bf-0001/results/"
    assert result["bucket"] == "crypto-etl-test"
    assert (result["days"], result["vs_currency"], result["coin_count"]) == (30, "usd", 2)
    assert items_of(storage, result) == [
        {"coin_id": "bitcoin", "rank": 1},
        {"coin_id": "ethereum", "rank": 2},
    ]
    assert any("duplicate" in w for w in result["plan_warnings"])
    assert result["plan_api_calls"] == 0 and server.requests == []


def test_top_n_without_a_snapshot_comes_from_coins_markets(server, storage):
    server.clear_requests()
    result = plan(server, storage, top_n=260, days=365, backfill_id="top260")
    assert result["source"] == "coins/markets"
    assert [i["coin_id"] for i in items_of(storage, result)] == market_ids(260)
    assert [i["rank"] for i in items_of(storage, result)] == list(range(1, 261))
    pages = [r.query["page"] for r in server.requests_to("/coins/markets")]
    assert pages == ["1", "2"] and result["plan_api_calls"] == 2
    assert any("no loaded snapshot" in w for w in result["plan_warnings"])


def test_top_n_from_the_latest_snapshot_in_the_lake(server, storage):
    ids = market_ids(250)
    older = list(reversed(ids))
    write_snapshot(storage, "old", older, day="2026-11-27", fetched_at="2026-11-27T06:00:00+00:00")
    write_snapshot(storage, "new", ids)
    write_snapshot(
        storage, "in-eur", older, fetched_at="2026-11-28T07:00:00+00:00", vs_currency="eur"
    )
    server.clear_requests()
    result = plan(server, storage, top_n=120, days=90)
    assert result["source"] == "lake:new"
    assert [i["coin_id"] for i in items_of(storage, result)] == ids[:120]
    assert server.requests == [] and result["plan_api_calls"] == 0


def test_a_snapshot_with_fewer_coins_than_top_n_falls_back_to_the_api(server, storage):
    write_snapshot(storage, "small", market_ids(50))
    result = plan(server, storage, top_n=100, days=90)
    assert result["source"] == "coins/markets"
    assert any("lake:small holds 50 coins" in w for w in result["plan_warnings"])
    assert [i["coin_id"] for i in items_of(storage, result)] == market_ids(100)


def test_all_reads_a_whole_market_snapshot(server, storage):
    ids = market_ids(MARKET)
    write_snapshot(storage, "whole", ids, max_coins="all", end_confirmed=True)
    result = plan(server, storage, all=True, days=30)
    assert result["source"] == "lake:whole" and result["coin_count"] == MARKET


def test_all_without_a_whole_market_snapshot_pages_to_the_end(server, storage):
    write_snapshot(storage, "top100", market_ids(100), max_coins=100)
    server.clear_requests()
    result = plan(server, storage, all=True, days=30)
    assert result["source"] == "coins/markets"
    assert [i["coin_id"] for i in items_of(storage, result)] == market_ids(MARKET)
    assert [r.query["page"] for r in server.requests_to("/coins/markets")] == ["1", "2", "3"]


def test_the_plan_splits_the_configured_budget(server, storage):
    config = config_for(server, COINGECKO_RATE_LIMIT="30/60")
    result = backfill.plan_backfill(
        plan_event(coin_ids=["a"], days=1), config=config, storage=storage, max_concurrency=5
    )
    assert (result["rate_limit"], result["max_concurrency"], result["child_rate_limit"]) == (
        "30/60",
        5,
        "6/60",
    )
    unpaced = plan(server, storage, coin_ids=["a"], days=1)
    assert (unpaced["rate_limit"], unpaced["child_rate_limit"]) == (None, None)


def test_a_batch_too_long_for_the_function_is_made_smaller(server, storage):
    config = config_for(server, COINGECKO_RATE_LIMIT="5/60")
    result = backfill.plan_backfill(
        plan_event(coin_ids=["a"], days=1, batch_size=20),
        config=config,
        storage=storage,
        deadline=lambda: 900.0,
    )
    # 1 call per 60 s per child; 900 s less 5 + 120 (retry waits) + 10 leaves 765 s: 12 coins
    assert result["batch_size"] == 12
    assert any("batch_size lowered from 20 to 12" in w for w in result["plan_warnings"])


def test_a_range_beyond_the_plan_is_recorded(server, storage):
    result = plan(server, storage, coin_ids=["bitcoin"], days=400)
    assert result["history_limit_days"] == 365
    assert any("range not allowed: days=400" in w for w in result["plan_warnings"])
    pro = backfill.plan_backfill(
        plan_event(coin_ids=["bitcoin"], days="max"),
        config=config_for(server, COINGECKO_API_PLAN="pro", COINGECKO_API_KEY="k"),
        storage=storage,
    )
    assert pro["history_limit_days"] is None and pro["days"] == "max"
    assert not any("range" in w for w in pro["plan_warnings"])


def test_the_lambda_handler_dispatches_on_action(server, storage, monkeypatch):
    monkeypatch.setenv("LAKE_LOCAL_DIR", str(storage.root))
    monkeypatch.setenv("LAKE_BUCKET", "crypto-etl-test")
    monkeypatch.setenv("COINGECKO_BASE_URL", server.base_url)
    monkeypatch.setenv("BACKFILL_MAX_CONCURRENCY", "3")
    monkeypatch.setenv("COINGECKO_RATE_LIMIT", "9/1")
    result = extract.handler(plan_event(coin_ids=["bitcoin"], days=7), LocalLambdaContext())
    assert result["max_concurrency"] == 3 and result["child_rate_limit"] == "3/1"
    assert storage.exists("raw/history/backfill=bf-0001/items.json")


# -- bad events ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("inputs", "field"),
    [
        ({"days": 30}, "input"),
        ({"top_n": 5, "all": True, "days": 30}, "input"),
        ({"top_n": "10", "days": 30}, "input.top_n"),
        ({"top_n": 0, "days": 30}, "input.top_n"),
        ({"all": "yes", "days": 30}, "input.all"),
        ({"coin_ids": [], "days": 30}, "input.coin_ids"),
        ({"coin_ids": "bitcoin", "days": 30}, "input.coin_ids"),
        ({"coin_ids": ["bitcoin", "Bit Coin"], "days": 30}, "input.coin_ids[1]"),
        ({"coin_ids": ["../etc"], "days": 30}, "input.coin_ids[0]"),
        ({"top_n": 5}, "input.days"),
        ({"top_n": 5, "days": 0}, "input.days"),
        ({"top_n": 5, "days": 3651}, "input.days"),
        ({"top_n": 5, "days": "ten"}, "input.days"),
        ({"top_n": 5, "days": 30, "vs_currency": "u s d"}, "input.vs_currency"),
        ({"top_n": 5, "days": 30, "backfill_id": "../x"}, "input.backfill_id"),
        ({"top_n": 5, "days": 30, "batch_size": 0}, "input.batch_size"),
    ],
)
def test_bad_plan_events_are_refused_naming_the_field(server, storage, inputs, field):
    with pytest.raises(ValidationError) as caught:
        plan(server, storage, **inputs)
    assert caught.value.field == field
    assert not storage.list_keys("raw/history/")


def test_an_unknown_action_is_refused(server, storage):
    with pytest.raises(ValidationError) as caught:
        extract.run({"action": "backfill"}, config=config_for(server), storage=storage)
    assert caught.value.field == "action"


def test_a_missing_execution_is_refused(server, storage):
    event = plan_event(top_n=5, days=3)
    del event["execution"]
    with pytest.raises(ValidationError) as caught:
        backfill.plan_backfill(event, config=config_for(server), storage=storage)
    assert caught.value.field == "execution"


def test_after_calling_the_api_the_plan_leaves_the_children_a_whole_window(server, storage):
    # The plan's own /coins/markets calls count against the budget: it returns only when they
    # are a window (plus the jitter margin) old, so the Map's first children may burst at once.
    slept: list[float] = []
    result = backfill.plan_backfill(
        plan_event(top_n=10, days=5),
        config=config_for(server, COINGECKO_RATE_LIMIT="10/2"),
        storage=storage,
        sleep=slept.append,
    )
    assert result["plan_api_calls"] == 1 and len(slept) == 1
    assert 1.5 < slept[0] <= 2.0 + 0.04  # W = 2 s (less the request's own time) + 2 % of W


@pytest.mark.parametrize("bad", ["Bitcoin", "../x", "a/b", "", "a..b", "-x", "x" * 129, 7])
def test_history_keys_refuse_unsafe_coin_ids(bad):
    with pytest.raises(ValidationError) as caught:
        keys.history_coin_key("bf-1", bad)
    assert caught.value.field == "coin_id"


def test_history_keys():
    assert (
        keys.history_coin_key("bf-1", "usd-coin") == "raw/history/backfill=bf-1/coins/usd-coin.json"
    )
    assert keys.history_items_key("bf-1") == "raw/history/backfill=bf-1/items.json"
    assert keys.history_results_prefix("bf-1") == "raw/history/backfill=bf-1/results/"
    with pytest.raises(ValidationError):
        keys.history_prefix("../x")
