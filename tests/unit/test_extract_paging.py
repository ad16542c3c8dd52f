"""Paging: where it stops (short page, empty page, max_coins, deadline), pure and over real HTTP."""

from __future__ import annotations

import json
import random

import pytest

from functions.common.errors import ValidationError
from functions.extract.client import CoinGeckoClient
from functions.extract.paging import FetchedPage, RawPage, fetch_markets, markets_query
from local_mode.replay_server import ReplayServer


class FakeMarket:
    """An in-memory market of ``size`` coins served with CoinGecko's paging."""

    def __init__(self, size: int, per_page: int) -> None:
        self.size = size
        self.per_page = per_page
        self.calls: list[int] = []

    def __call__(self, page: int) -> RawPage:
        self.calls.append(page)
        start = (page - 1) * self.per_page
        rows = [{"id": f"coin-{i}"} for i in range(start, min(start + self.per_page, self.size))]
        return RawPage(json.dumps(rows).encode(), len(rows))


@pytest.mark.parametrize(
    ("size", "per_page", "max_coins", "calls", "counts", "reason"),
    [
        (520, 250, 1000, [1, 2, 3], [250, 250, 20], "short_page"),
        (500, 250, 1000, [1, 2, 3], [250, 250, 0], "empty_page"),
        (0, 250, 1000, [1], [0], "empty_page"),
        (5000, 250, 600, [1, 2, 3], [250, 250, 100], "max_coins"),
        (5000, 250, 500, [1, 2], [250, 250], "max_coins"),
        (5000, 100, 1, [1], [1], "max_coins"),
        (7, 1, 1000, list(range(1, 9)), [1] * 7 + [0], "empty_page"),
    ],
)
def test_where_paging_stops(size, per_page, max_coins, calls, counts, reason):
    market = FakeMarket(size, per_page)
    result = fetch_markets(market, per_page=per_page, max_coins=max_coins)
    assert market.calls == calls
    assert [p.page for p in result.pages] == calls
    assert [p.count for p in result.pages] == counts
    assert result.stop_reason == reason
    assert result.coin_count == min(size, max_coins)
    assert result.complete and result.next_page is None


def test_bodies_stay_whole_and_only_the_count_is_trimmed():
    market = FakeMarket(5000, 250)
    result = fetch_markets(market, per_page=250, max_coins=600)
    last = result.pages[-1]
    assert (last.rows, last.count) == (250, 100)
    assert len(json.loads(last.body)) == 250


def test_on_page_sees_each_page_as_it_arrives():
    market = FakeMarket(600, 250)
    seen: list[tuple[int, int]] = []

    def on_page(page: FetchedPage) -> None:
        seen.append((page.page, len(market.calls)))

    fetch_markets(market, per_page=250, max_coins=1000, on_page=on_page)
    assert seen == [(1, 1), (2, 2), (3, 3)]


def test_start_page_resumes_after_full_pages():
    market = FakeMarket(5000, 250)
    result = fetch_markets(market, per_page=250, max_coins=600, start_page=3)
    assert market.calls == [3]
    assert result.coins_before == 500
    assert [p.count for p in result.pages] == [100]


def test_deadline_stops_early_and_names_the_next_page():
    market = FakeMarket(5000, 250)
    remaining = iter([100.0, 100.0, 5.0])
    result = fetch_markets(
        market, per_page=250, max_coins=5000, deadline=lambda: next(remaining), reserve_seconds=30
    )
    assert market.calls == [1, 2]
    assert result.stop_reason == "deadline"
    assert result.next_page == 3
    assert not result.complete
    assert result.coin_count == 500
    resumed = fetch_markets(market, per_page=250, max_coins=600, start_page=result.next_page)
    assert [p.page for p in resumed.pages] == [3]
    assert resumed.coin_count == 100


def test_deadline_already_near_fetches_nothing():
    market = FakeMarket(5000, 250)
    result = fetch_markets(
        market, per_page=250, max_coins=600, deadline=lambda: 1.0, reserve_seconds=2.0
    )
    assert (market.calls, result.pages, result.next_page) == ([], [], 1)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"per_page": 0, "max_coins": 10}, "per_page"),
        ({"per_page": 251, "max_coins": 10}, "per_page"),
        ({"per_page": "250", "max_coins": 10}, "per_page"),
        ({"per_page": True, "max_coins": 10}, "per_page"),
        ({"per_page": 250, "max_coins": 0}, "max_coins"),
        ({"per_page": 250, "max_coins": 2.5}, "max_coins"),
        ({"per_page": 250, "max_coins": 10, "start_page": 0}, "start_page"),
        ({"per_page": 250, "max_coins": 500, "start_page": 3}, "start_page"),
    ],
)
def test_invalid_paging_parameters(kwargs, field):
    market = FakeMarket(10, 250)
    with pytest.raises(ValidationError) as info:
        fetch_markets(market, **kwargs)
    assert info.value.field == field
    assert market.calls == []


def test_markets_query():
    assert markets_query("eur", 3, 100) == {
        "vs_currency": "eur",
        "order": "market_cap_desc",
        "per_page": "100",
        "page": "3",
        "sparkline": "false",
    }


# -- the same rules over real HTTP against the replay server ---------------------------------


def _http_fetch(server: ReplayServer, per_page: int):
    client = CoinGeckoClient(server.base_url, timeout=5, rng=random.Random(0), sleep=lambda s: None)

    def fetch(page: int) -> RawPage:
        resp = client.markets_page("usd", page, per_page)
        return RawPage(resp.body, len(resp.data))

    return fetch


@pytest.mark.parametrize(
    ("coins", "max_coins", "pages", "counts", "reason"),
    [
        (520, 1000, [1, 2, 3], [250, 250, 20], "short_page"),
        (500, 1000, [1, 2, 3], [250, 250, 0], "empty_page"),
        (1000, 600, [1, 2, 3], [250, 250, 100], "max_coins"),
    ],
)
def test_paging_over_http(coins, max_coins, pages, counts, reason):
    with ReplayServer.synthetic(coins=coins, seed=5) as server:
        result = fetch_markets(_http_fetch(server, 250), per_page=250, max_coins=max_coins)
        requested = [r.page for r in server.requests_to("/coins/markets")]
    assert requested == pages  # and nothing more: no page 4 for max_coins=600
    assert [p.count for p in result.pages] == counts
    assert result.stop_reason == reason
    kept = [c for p in result.pages for c in json.loads(p.body)[: p.count]]
    assert [c["market_cap_rank"] for c in kept[:3]] == [1, 2, 3]
    assert len({c["id"] for c in kept}) == min(coins, max_coins)
