"""One child of the backfill's Distributed Map (Extract action ``fetch_history``): real HTTP to
the replay server, a folder as the lake."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

import pytest
import requests

from functions.common import keys
from functions.common.errors import ValidationError
from functions.common.storage import LocalStorage
from functions.extract import backfill, history
from functions.extract import handler as extract
from functions.extract.config import ExtractConfig
from functions.extract.pacing import RateLimit
from local_mode import synthetic
from local_mode.replay_server import ReplayServer, Scripted, SyntheticSource

AS_OF = datetime(2026, 11, 29, 14, 39, 54, tzinfo=UTC)
BUCKET = "crypto-etl-test"
RESULT_KEYS = {
    "backfill_id",
    "ok",
    "failed",
    "api_calls",
    "retries",
    "rate_limited",
    "pacing_wait_seconds",
    "tail_wait_seconds",
}


@pytest.fixture
def server():
    source = SyntheticSource(200, as_of=AS_OF)
    # Built before the first request: building it in a handler thread holds the GIL for a
    # moment, and the pacing tests' 1 s windows have only a 20 ms margin for such jitter.
    source.chart_coins("usd")
    with ReplayServer(source) as srv:
        yield srv


@pytest.fixture
def storage(tmp_path: Path) -> LocalStorage:
    return LocalStorage(tmp_path / "lake", BUCKET)


def ids(n: int) -> list[str]:
    universe = synthetic.chart_universe(200, vs_currency="usd", as_of=AS_OF, drift=True)
    return [c["id"] for c in universe[:n]]


def batch_event(coins: list[str], **batch_input) -> dict:
    backfill_id = batch_input.pop("backfill_id", "bf-1")
    given = {
        "backfill_id": backfill_id,
        "bucket": BUCKET,
        "vs_currency": "usd",
        "days": 30,
        "history_prefix": keys.history_prefix(backfill_id),
        "child_rate_limit": None,
        "items_key": keys.history_items_key(backfill_id),  # other plan members are ignored
        **batch_input,
    }
    items = [{"coin_id": c, "rank": i} for i, c in enumerate(coins, start=1)]
    return {"action": "fetch_history", "batch": {"Items": items, "BatchInput": given}}


def config_for(server: ReplayServer, **env: str) -> ExtractConfig:
    return ExtractConfig.from_env(
        {
            "COINGECKO_BASE_URL": server.base_url,
            "COINGECKO_TIMEOUT_SECONDS": "5",
            "COINGECKO_BACKOFF_BASE_SECONDS": "0.001",
            "COINGECKO_MAX_RETRIES": "2",
            **env,
        }
    )


def fetch(server, storage, event, **env):
    return backfill.fetch_history(event, config=config_for(server, **env), storage=storage)


def test_a_batch_is_stored_exactly_as_received_and_a_404_coin_is_reported(server, storage):
    coins = ids(4)
    event = batch_event([coins[0], "no-such-coin", *coins[1:]], days=90)
    result = fetch(server, storage, event)
    assert set(result) == RESULT_KEYS
    assert [o["coin_id"] for o in result["ok"]] == coins
    assert result["failed"] == [
        {
            "coin_id": "no-such-coin",
            "error": result["failed"][0]["error"],
            "status": 404,
        }
    ]
    assert "HTTP 404" in result["failed"][0]["error"]
    assert "coin not found" in result["failed"][0]["error"]
    assert (result["api_calls"], result["retries"], result["rate_limited"]) == (5, 0, 0)
    for entry in result["ok"]:
        key = f"raw/history/backfill=bf-1/coins/{entry['coin_id']}.json"
        assert entry["key"] == key
        again = requests.get(
            f"{server.base_url}/coins/{entry['coin_id']}/market_chart",
            params={"vs_currency": "usd", "days": "90", "interval": "daily"},
            timeout=5,
        )
        assert storage.get_bytes(key) == again.content  # byte for byte
        assert entry["points"] == len(json.loads(again.content)["prices"]) == 91
    sent = server.requests_to(f"/coins/{coins[0]}/market_chart")[0]
    assert sent.query == {"vs_currency": "usd", "days": "90", "interval": "daily"}
    assert storage.list_keys("raw/history/") == sorted(o["key"] for o in result["ok"])


def test_a_transient_failure_is_retried_and_counted(server, storage):
    coin = ids(1)[0]
    server.script(f"/coins/{coin}/market_chart", Scripted.error(503))
    result = fetch(server, storage, batch_event([coin]))
    assert [o["coin_id"] for o in result["ok"]] == [coin]
    assert (result["api_calls"], result["retries"]) == (2, 1)


def test_retries_exhausted_fail_only_that_coin(server, storage):
    first, second = ids(2)
    server.script(f"/coins/{first}/market_chart", *[Scripted.error(500)] * 3)
    result = fetch(server, storage, batch_event([first, second]))
    assert [o["coin_id"] for o in result["ok"]] == [second]
    assert result["failed"][0]["coin_id"] == first
    assert result["failed"][0]["status"] == 500
    assert "gave up" in result["failed"][0]["error"]


def test_a_body_that_is_not_a_market_chart_fails_the_coin(tmp_path, storage):
    recorded = tmp_path / "rec"
    recorded.mkdir()
    (recorded / "market_chart_odd.json").write_text('{"prices": "none"}')
    with ReplayServer.from_directory(recorded) as server:
        result = fetch(server, storage, batch_event(["odd"]))
    assert result["ok"] == []
    assert result["failed"][0]["error"].startswith("not a market_chart body: no 'prices' array")
    assert storage.list_keys("raw/history/") == []


def test_the_child_paces_at_its_rate_with_no_429(server, storage):
    # The server enforces exactly the child's budget (2 calls in any 1 s, sliding window).
    server.rate_limit(2, 1.0)
    result = fetch(server, storage, batch_event(ids(5), child_rate_limit="2/1"))
    assert len(result["ok"]) == 5
    assert result["rate_limited"] == 0 and server.rate_limited == 0
    assert result["pacing_wait_seconds"] > 0 and result["tail_wait_seconds"] > 0


def test_a_map_of_children_stays_within_the_whole_budget(server, storage):
    # Budget 4/1 over at most 2 children: each child paced at 2/1. Four batches through two
    # slots, as the Distributed Map runs them, against a server enforcing the whole budget.
    budget = RateLimit(4, 1.0)
    concurrency, child = history.map_budget(budget, 2)
    assert (concurrency, str(child)) == (2, "2/1")
    server.rate_limit(budget.calls, budget.window_seconds)
    coins = ids(12)
    batches = [coins[i : i + 3] for i in range(0, 12, 3)]
    config = config_for(server)
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        results = list(
            pool.map(
                lambda batch: backfill.fetch_history(
                    batch_event(batch, child_rate_limit=str(child)), config=config, storage=storage
                ),
                batches,
            )
        )
    assert sum(len(r["ok"]) for r in results) == 12
    assert server.rate_limited == 0
    assert sum(r["rate_limited"] for r in results) == 0


def test_a_range_the_plan_does_not_allow_fails_every_coin_without_a_call(server, storage):
    coins = ids(3)
    server.clear_requests()
    result = fetch(server, storage, batch_event(coins, days=400))
    assert result["ok"] == [] and result["api_calls"] == 0
    assert [f["coin_id"] for f in result["failed"]] == coins
    assert all(
        f["error"].startswith("range not allowed: days=400 asks for more than the past 365 days")
        for f in result["failed"]
    )
    assert server.requests == []


def test_coingeckos_own_range_refusal_fails_the_coin_with_its_message(storage):
    # The API refuses a range the configuration allows (a server with a 30-day limit, while
    # the public plan is configured with 365): the coin fails with CoinGecko's own message.
    source = SyntheticSource(200, as_of=AS_OF)
    coin = ids(1)[0]
    with ReplayServer(source, history_limit_days=30) as server:
        result = fetch(server, storage, batch_event([coin], days=90))
    failure = result["failed"][0]
    assert failure["status"] == 401 and result["api_calls"] == 1 and result["retries"] == 0
    assert "exceeds the allowed time range" in failure["error"]


def test_the_pro_plan_fetches_the_whole_history(server, storage):
    coin = ids(1)[0]
    result = fetch(
        server,
        storage,
        batch_event([coin], days="max"),
        COINGECKO_API_PLAN="pro",
        COINGECKO_API_KEY="test-key",
    )
    assert result["failed"] == [] and result["ok"][0]["points"] > 400
    assert server.requests[-1].headers["x-cg-pro-api-key"] == "test-key"


def test_coins_left_when_the_time_runs_out_are_reported(server, storage):
    coins = ids(3)
    result = backfill.fetch_history(
        batch_event(coins),
        config=config_for(server),
        storage=storage,
        deadline=lambda: 1.0,  # less than a request timeout (5 s) plus the margin
    )
    assert result["ok"] == [] and result["api_calls"] == 0
    assert [f["coin_id"] for f in result["failed"]] == coins
    assert "ran out of time" in result["failed"][0]["error"]


def test_the_extract_run_dispatches_fetch_history(server, storage):
    coin = ids(1)[0]
    result = extract.run(batch_event([coin]), config=config_for(server), storage=storage)
    assert result["ok"][0]["coin_id"] == coin


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda e: e.pop("batch"), "batch"),
        (lambda e: e["batch"].update(Items=[]), "batch.Items"),
        (lambda e: e["batch"]["Items"][1].update(coin_id="Not An Id"), "batch.Items[1].coin_id"),
        (lambda e: e["batch"]["Items"][0].update(rank=0), "batch.Items[0].rank"),
        (lambda e: e["batch"].pop("BatchInput"), "batch.BatchInput"),
        (
            lambda e: e["batch"]["BatchInput"].update(bucket="other-bucket"),
            "batch.BatchInput.bucket",
        ),
        (
            lambda e: e["batch"]["BatchInput"].update(history_prefix="raw/history/backfill=x/"),
            "batch.BatchInput.history_prefix",
        ),
        (
            lambda e: e["batch"]["BatchInput"].update(child_rate_limit="fast"),
            "batch.BatchInput.child_rate_limit",
        ),
        (lambda e: e["batch"]["BatchInput"].update(days=0), "batch.BatchInput.days"),
        (lambda e: e["batch"]["BatchInput"].pop("vs_currency"), "batch.BatchInput.vs_currency"),
        (
            lambda e: e["batch"]["BatchInput"].update(backfill_id=".."),
            "batch.BatchInput.backfill_id",
        ),
    ],
)
def test_bad_fetch_events_are_refused_naming_the_field(server, storage, mutate, field):
    event = batch_event(ids(2))
    mutate(event)
    server.clear_requests()
    with pytest.raises(ValidationError) as caught:
        fetch(server, storage, event)
    assert caught.value.field == field
    assert server.requests == []
