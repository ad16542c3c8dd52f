"""Paging: where it stops (empty page, max_coins, deadline, repeated page, page limit) and what it
reports, pure and over real HTTP."""

from __future__ import annotations

import json
import random

import pytest

from functions.common.errors import ValidationError
from functions.extract.client import CoinGeckoClient
from functions.extract.paging import (
    MAX_PAGES,
    FetchedPage,
    PagingState,
    RawPage,
    fetch_markets,
    markets_query,
)
from local_mode import synthetic
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
        # a short page is not the end: the empty page after it confirms it
        (520, 250, 1000, [1, 2, 3, 4], [250, 250, 20, 0], "empty_page"),
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
    assert result.end_confirmed
    assert (result.served_per_page, result.warning) == (None, None)


def test_bodies_stay_whole_and_only_the_count_is_trimmed():
    market = FakeMarket(5000, 250)
    result = fetch_markets(market, per_page=250, max_coins=600)
    last = result.pages[-1]
    assert (last.rows, last.count) == (250, 100)
    assert len(json.loads(last.body)) == 250


def test_on_page_sees_each_page_as_it_arrives():
    market = FakeMarket(600, 250)
    seen: list[tuple[int, int]] = []

    def on_page(page: FetchedPage, _state: object) -> None:
        seen.append((page.page, len(market.calls)))

    fetch_markets(market, per_page=250, max_coins=1000, on_page=on_page)
    assert seen == [(1, 1), (2, 2), (3, 3), (4, 4)]


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
    assert not result.complete and not result.end_confirmed
    assert result.coin_count == 500
    assert "resume at page 3" in result.warning and "500 coins on pages 1-2" in result.warning
    resumed = fetch_markets(market, per_page=250, max_coins=600, start_page=result.next_page)
    assert [p.page for p in resumed.pages] == [3]
    assert resumed.coin_count == 100


class CappingMarket(FakeMarket):
    """A server that serves at most ``cap`` rows per page, whatever ``per_page`` says."""

    def __init__(self, size: int, per_page: int, cap: int) -> None:
        super().__init__(size, per_page)
        self.cap = cap

    def __call__(self, page: int) -> RawPage:
        self.calls.append(page)
        start = (page - 1) * self.cap
        rows = [{"id": f"coin-{i}"} for i in range(start, min(start + self.cap, self.size))]
        return RawPage(json.dumps(rows).encode(), len(rows))


def _in_slices(market, pages_per_call: int, **kwargs):
    """Page with a deadline that allows ``pages_per_call`` requests per call, resuming from each
    call's saved state (through JSON, as the lake keeps it) until paging completes."""
    state, pages, calls = None, [], 0
    while True:
        calls += 1
        budget = iter([100.0] * pages_per_call + [0.0])
        result = fetch_markets(
            market, deadline=lambda b=budget: next(b), reserve_seconds=1.0, resume=state, **kwargs
        )
        pages += result.pages
        if result.complete:
            return result, pages, calls
        state = PagingState.from_dict(json.loads(json.dumps(result.state.to_dict())))


@pytest.mark.parametrize("max_coins", [None, 1000, 2100])
def test_resuming_from_saved_state_equals_one_pass(max_coins):
    one = fetch_markets(FakeMarket(2345, 250), per_page=250, max_coins=max_coins)
    last, pages, calls = _in_slices(FakeMarket(2345, 250), 1, per_page=250, max_coins=max_coins)
    assert calls == len(one.pages) >= 4
    assert [(p.page, p.count, p.sha256) for p in pages] == [
        (p.page, p.count, p.sha256) for p in one.pages
    ]
    assert (last.stop_reason, last.end_confirmed) == (one.stop_reason, one.end_confirmed)
    assert last.state.coins_kept == one.coin_count == min(2345, max_coins or 2345)


def test_resuming_keeps_the_exact_count_on_a_capped_server():
    # 50 rows served for 250 asked: starting at page N by arithmetic would assume 250 per page.
    one = fetch_markets(CappingMarket(420, 250, 50), per_page=250, max_coins=300)
    last, pages, _ = _in_slices(CappingMarket(420, 250, 50), 2, per_page=250, max_coins=300)
    assert [p.count for p in pages] == [p.count for p in one.pages] == [50] * 6
    assert last.served_per_page == one.served_per_page == 50
    assert last.warning == one.warning


def test_a_repeated_page_is_recognised_across_a_resume():
    body = json.dumps([{"id": "same"}]).encode()
    first = fetch_markets(
        lambda page: RawPage(body, 1),
        per_page=1,
        max_coins=None,
        deadline=iter([9.0, 0.0]).__next__,
        reserve_seconds=1.0,
    )
    assert (first.stop_reason, first.state.next_page) == ("deadline", 2)
    again = fetch_markets(
        lambda page: RawPage(body, 1), per_page=1, max_coins=None, resume=first.state
    )
    assert again.stop_reason == "repeated_page" and again.pages == []


def test_the_page_limit_counts_every_call_of_the_run():
    market = FakeMarket(10**6, 10)
    first = fetch_markets(
        market, per_page=10, max_coins=None, deadline=iter([9.0] * 3 + [0.0]).__next__,
        reserve_seconds=1.0, max_pages=5,
    )  # fmt: skip
    rest = fetch_markets(market, per_page=10, max_coins=None, resume=first.state, max_pages=5)
    assert market.calls == [1, 2, 3, 4, 5]
    assert rest.stop_reason == "page_limit"


@pytest.mark.parametrize(
    ("state", "field"),
    [
        ({"next_page": 0, "coins_kept": 0, "pages_fetched": 0}, "paging.next_page"),
        ({"next_page": 2, "coins_kept": -1, "pages_fetched": 1}, "paging.coins_kept"),
        ({"next_page": 2, "coins_kept": 1, "pages_fetched": True}, "paging.pages_fetched"),
        ({"next_page": 2, "coins_kept": 1, "pages_fetched": 1, "previous_sha256": "x"},
         "paging.previous_sha256"),
    ],
)  # fmt: skip
def test_a_bad_saved_state_is_refused_naming_the_member(state, field):
    with pytest.raises(ValidationError) as info:
        PagingState.from_dict(state)
    assert info.value.field == field


def test_deadline_already_near_fetches_nothing():
    market = FakeMarket(5000, 250)
    result = fetch_markets(
        market, per_page=250, max_coins=600, deadline=lambda: 1.0, reserve_seconds=2.0
    )
    assert (market.calls, result.pages, result.next_page) == ([], [], 1)
    assert "before fetching any page" in result.warning


class CappedMarket:
    """A market served ``cap`` rows per page whatever per_page asks (pages of 3, 3, 2 ...)."""

    def __init__(self, size: int, cap: int) -> None:
        self.coins = [{"id": f"coin-{i}"} for i in range(size)]
        self.cap = cap
        self.calls: list[int] = []

    def __call__(self, page: int) -> RawPage:
        self.calls.append(page)
        rows = self.coins[(page - 1) * self.cap : page * self.cap]
        return RawPage(json.dumps(rows).encode(), len(rows))


def test_a_capped_page_size_does_not_end_paging():
    market = CappedMarket(8, cap=3)
    result = fetch_markets(market, per_page=5, max_coins=1000)
    assert market.calls == [1, 2, 3, 4]
    assert [p.count for p in result.pages] == [3, 3, 2, 0]
    assert result.coin_count == 8
    assert (result.stop_reason, result.end_confirmed) == ("empty_page", True)
    assert result.served_per_page == 3
    assert result.warning == "the server served 3 rows per page although 5 were asked"


def test_a_capped_page_size_with_max_coins():
    market = CappedMarket(8, cap=3)
    result = fetch_markets(market, per_page=5, max_coins=7)
    assert market.calls == [1, 2, 3]
    assert [p.count for p in result.pages] == [3, 3, 1]
    assert (result.stop_reason, result.end_confirmed, result.served_per_page) == (
        "max_coins",
        True,
        3,
    )


@pytest.mark.parametrize("rows", [5, 3])  # a full page, or a short one, served for every page
def test_a_server_ignoring_page_stops_at_the_repeat(rows):
    body = json.dumps([{"id": f"coin-{i}"} for i in range(rows)]).encode()
    calls: list[int] = []
    kept: list[int] = []

    def fetch(page: int) -> RawPage:
        calls.append(page)
        return RawPage(body, rows)

    result = fetch_markets(
        fetch, per_page=5, max_coins=1000, on_page=lambda p, _s: kept.append(p.page)
    )
    assert calls == [1, 2]
    assert kept == [p.page for p in result.pages] == [1]  # the repeat is neither kept nor counted
    assert result.coin_count == rows
    assert (result.stop_reason, result.end_confirmed) == ("repeated_page", False)
    assert result.served_per_page is None
    assert "page 2 repeated page 1 byte for byte" in result.warning
    assert "not confirmed" in result.warning


def test_a_market_that_never_ends_stops_at_the_page_limit():
    market = FakeMarket(10**9, 1)

    def fetch(page: int) -> RawPage:
        assert len(market.calls) <= MAX_PAGES, "paging did not stop at the page limit"
        return market(page)

    result = fetch_markets(fetch, per_page=1, max_coins=10**9)
    assert len(market.calls) == len(result.pages) == MAX_PAGES
    assert (result.stop_reason, result.end_confirmed, result.next_page) == (
        "page_limit",
        False,
        None,
    )
    assert f"page limit ({MAX_PAGES} pages)" in result.warning


def test_the_page_limit_counts_pages_of_this_call():
    market = FakeMarket(10**6, 10)
    result = fetch_markets(market, per_page=10, max_coins=10**6, start_page=5, max_pages=3)
    assert market.calls == [5, 6, 7]
    assert result.stop_reason == "page_limit"
    assert "30 coins on pages 5-7" in result.warning


@pytest.mark.parametrize("max_pages", [0, -1, 2.0, True])
def test_invalid_max_pages(max_pages):
    market = FakeMarket(10, 5)
    with pytest.raises(ValidationError) as info:
        fetch_markets(market, per_page=5, max_coins=10, max_pages=max_pages)
    assert info.value.field == "max_pages"
    assert market.calls == []


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
        (520, 1000, [1, 2, 3, 4], [250, 250, 20, 0], "empty_page"),
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


def test_a_capped_page_size_over_http(tmp_path):
    """Recorded pages of 3, 3 and 2 coins, served as recorded although per_page=5 is asked."""
    coins = synthetic.generate_markets(8, seed=11)
    for n, rows in enumerate((coins[0:3], coins[3:6], coins[6:8]), start=1):
        (tmp_path / f"markets-page-{n:04d}.json").write_text(json.dumps(rows))
    with ReplayServer.from_directory(tmp_path) as server:
        result = fetch_markets(_http_fetch(server, 5), per_page=5, max_coins=1000)
        requested = server.requests_to("/coins/markets")
    assert [r.page for r in requested] == [1, 2, 3, 4]
    assert {r.query["per_page"] for r in requested} == {"5"}
    assert result.coin_count == 8
    kept = [c["id"] for p in result.pages for c in json.loads(p.body)[: p.count]]
    assert kept == [c["id"] for c in coins]
    assert (result.stop_reason, result.end_confirmed) == ("empty_page", True)
    assert result.served_per_page == 3
    assert "3 rows per page although 5 were asked" in result.warning


def test_an_empty_page_far_before_the_expected_end_is_asked_for_again():
    market = FakeMarket(1000, 250)
    glitch = {2}  # page 2 answers [] once

    def fetch(page: int) -> RawPage:
        if page in glitch:
            glitch.discard(page)
            market.calls.append(page)
            return RawPage(b"[]", 0)
        return market(page)

    result = fetch_markets(fetch, per_page=250, max_coins=None, expected_coins=1000)
    assert market.calls == [1, 2, 2, 3, 4, 5]
    assert (result.stop_reason, result.end_confirmed, result.coin_count) == (
        "empty_page",
        True,
        1000,
    )


def test_a_persistent_hole_is_an_unconfirmed_early_end_not_the_end_of_the_market():
    market = FakeMarket(1000, 250)

    def fetch(page: int) -> RawPage:
        if page == 2:
            market.calls.append(page)
            return RawPage(b"[]", 0)
        return market(page)

    result = fetch_markets(fetch, per_page=250, max_coins=None, expected_coins=1000)
    assert market.calls == [1, 2, 2]
    assert (result.stop_reason, result.end_confirmed, result.coin_count) == (
        "early_end",
        False,
        250,
    )
    assert "page 2 was empty twice" in result.warning and "about 1000 coins" in result.warning
    # Without /global's figure, or near the expected end, an empty page is the end at once.
    calls_before = len(market.calls)
    assert fetch_markets(fetch, per_page=250, max_coins=None).stop_reason == "empty_page"
    assert len(market.calls) - calls_before == 2


def test_a_transient_empty_page_past_half_the_market_is_asked_for_again_too():
    # 1750 of ~3000 coins kept when page 8 answers [] once: without a second look the market
    # would end there, 42 % short, "confirmed".
    market = FakeMarket(3000, 250)
    glitch = {8}

    def fetch(page: int) -> RawPage:
        if page in glitch:
            glitch.discard(page)
            market.calls.append(page)
            return RawPage(b"[]", 0)
        return market(page)

    result = fetch_markets(fetch, per_page=250, max_coins=None, expected_coins=3028)
    assert (result.stop_reason, result.end_confirmed, result.coin_count) == (
        "empty_page",
        True,
        3000,
    )
    assert market.calls.count(8) == 2
