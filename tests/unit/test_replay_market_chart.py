"""``/coins/{id}/market_chart`` on the replay server: the synthetic histories and the recorded
bodies, over real HTTP."""

from __future__ import annotations

import itertools
import json
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import requests

from local_mode import synthetic
from local_mode.replay_server import HISTORY_RANGE_BODY, ReplayServer, SyntheticSource

AS_OF = datetime(2026, 11, 29, 14, 39, 54, tzinfo=UTC)
DAY_MS = 86_400_000


@pytest.fixture(scope="module")
def server():
    with ReplayServer(SyntheticSource(300, as_of=AS_OF)) as srv:
        yield srv


def chart(server: ReplayServer, coin: str, **params) -> requests.Response:
    query = {"vs_currency": "usd", "days": "30", "interval": "daily", **params}
    return requests.get(f"{server.base_url}/coins/{coin}/market_chart", params=query, timeout=10)


def market(vs: str = "usd", as_of: datetime = AS_OF) -> list[dict]:
    return synthetic.generate_markets(300, vs_currency=vs, as_of=as_of, drift=True)


def test_a_daily_history_as_coingecko_shapes_it(server):
    coin = market()[0]
    resp = chart(server, coin["id"], days="90")
    assert resp.status_code == 200
    body = resp.json()
    assert list(body) == ["prices", "market_caps", "total_volumes"]
    stamps = [p[0] for p in body["prices"]]
    # As recorded (days=90: 90 points at 00:00 UTC, the last one today's, then "now").
    assert len(stamps) == 91
    assert all(s % DAY_MS == 0 for s in stamps[:-1])
    assert all(b - a == DAY_MS for a, b in itertools.pairwise(stamps[:-1]))
    assert stamps[-1] == int(AS_OF.timestamp() * 1000)
    assert stamps[-2] == int(datetime(2026, 11, 29, tzinfo=UTC).timestamp() * 1000)
    assert stamps[0] == int(datetime(2026, 9, 1, tzinfo=UTC).timestamp() * 1000)
    for name in ("market_caps", "total_volumes"):
        assert [p[0] for p in body[name]] == stamps
    # It ends at the coin's current quotes.
    assert body["prices"][-1][1] == coin["current_price"]
    assert body["market_caps"][-1][1] == coin["market_cap"]
    assert body["total_volumes"][-1][1] == coin["total_volume"]
    assert all(p[1] > 0 for p in body["prices"])


@pytest.mark.parametrize("days", [1, 7, 365])
def test_days_is_honoured(server, days):
    coin = market()[5]["id"]
    prices = chart(server, coin, days=str(days)).json()["prices"]
    assert len(prices) == days + 1
    assert len({p[0] // DAY_MS for p in prices}) == days  # the UTC dates: today's is partial


def test_the_history_is_deterministic(server):
    coin = market()[3]["id"]
    assert chart(server, coin).content == chart(server, coin).content
    with ReplayServer(SyntheticSource(300, as_of=AS_OF)) as other:
        assert chart(other, coin).content == chart(server, coin).content


def test_the_history_agrees_with_the_drifted_snapshots_of_its_days(server):
    # A history served at AS_OF passes through the prices the drifting market showed on the
    # earlier days (the same random walk), within the rounding of the snapshot prices.
    coin = market()[10]
    prices = dict(map(tuple, chart(server, coin["id"], days="10").json()["prices"]))
    for back in (3, 7):
        day = datetime(2026, 11, 29, tzinfo=UTC) - timedelta(days=back)
        then = {c["id"]: c for c in market(as_of=day)}[coin["id"]]
        assert prices[int(day.timestamp() * 1000)] == pytest.approx(then["current_price"], rel=1e-5)


def test_other_currencies_are_quoted_consistently(server):
    coin = market()[0]["id"]
    usd = chart(server, coin, vs_currency="usd").json()["prices"]
    eur = chart(server, coin, vs_currency="EUR").json()["prices"]
    assert [p[0] for p in eur] == [p[0] for p in usd]
    for (_, in_usd), (_, in_eur) in zip(usd, eur, strict=True):
        assert in_eur == pytest.approx(in_usd * synthetic.FX_RATES["eur"], rel=1e-4)
    assert chart(server, coin, vs_currency="xyz").status_code == 400


def test_an_unknown_coin_is_404_as_coingecko_answers(server):
    resp = chart(server, "no-such-coin")
    assert resp.status_code == 404
    assert resp.json() == {"error": "coin not found"}


def test_a_coin_that_left_the_ranking_still_has_a_history(server):
    listed = {c["id"] for c in market()}
    universe = synthetic.chart_universe(300, vs_currency="usd", as_of=AS_OF, drift=True)
    gone = next(c["id"] for c in universe if c["id"] not in listed)
    assert chart(server, gone).status_code == 200


def test_parameters_are_checked_like_coingecko(server):
    coin = market()[0]["id"]
    missing = requests.get(f"{server.base_url}/coins/{coin}/market_chart", timeout=5)
    assert (missing.status_code, missing.json()) == (
        422,
        {"error": "Missing parameter vs_currency"},
    )
    assert chart(server, coin, days="0").status_code == 400
    assert chart(server, coin, days="ten").status_code == 400


def test_more_than_365_days_needs_a_pro_key(server):
    coin = market()[0]["id"]
    for days in ("366", "max"):
        refused = chart(server, coin, days=days)
        assert refused.status_code == 401
        assert refused.json() == HISTORY_RANGE_BODY
        assert refused.json()["error"]["status"]["error_code"] == 10012
    assert chart(server, coin, days="365").status_code == 200
    pro = requests.get(
        f"{server.base_url}/coins/{coin}/market_chart",
        params={"vs_currency": "usd", "days": "max"},
        headers={"x-cg-pro-api-key": "k"},
        timeout=10,
    )
    assert pro.status_code == 200
    first_day = pro.json()["prices"][0][0] // DAY_MS
    base_day = int(synthetic.DEFAULT_AS_OF.timestamp()) // 86_400
    assert first_day == base_day + synthetic.listed_day(synthetic.DEFAULT_SEED, coin)


def test_no_history_limit_when_lifted():
    coin = synthetic.generate_markets(20)[0]["id"]
    with ReplayServer(SyntheticSource(20), history_limit_days=None) as srv:
        resp = chart(srv, coin, days="800")
    assert resp.status_code == 200 and len(resp.json()["prices"]) == 801


def test_the_rate_limit_counts_market_chart_requests():
    coin = synthetic.generate_markets(20)[0]["id"]
    with ReplayServer(SyntheticSource(20)) as srv:
        srv.rate_limit(1, 30.0)
        assert chart(srv, coin).status_code == 200
        limited = chart(srv, coin)
        assert limited.status_code == 429 and srv.rate_limited == 1


def test_recorded_market_charts_are_served_byte_for_byte(tmp_path: Path, shared_coingecko_dir):
    recorded = shared_coingecko_dir / "market_chart_julianfssen_coingecko_ruby_1.json"
    shutil.copyfile(recorded, tmp_path / "market_chart_bitcoin.json")
    (tmp_path / "market_chart_usd-coin.json").write_text(
        json.dumps({"status": {"error_code": 429, "error_message": "rate limited"}})
    )
    with ReplayServer.from_directory(tmp_path) as srv:
        for days in ("90", "7"):  # served as recorded whatever the query
            resp = chart(srv, "bitcoin", days=days)
            assert resp.status_code == 200 and resp.content == recorded.read_bytes()
        assert chart(srv, "usd-coin").status_code == 429  # an error object, with its status
        unknown = chart(srv, "ethereum")
        assert (unknown.status_code, unknown.json()) == (404, {"error": "coin not found"})
        assert srv.source.charts.keys() == {"bitcoin", "usd-coin"}
        assert srv.unserved_pages() == []


def test_the_fixed_market_ends_its_history_now():
    coin = synthetic.generate_markets(20)[0]
    before = datetime.now(UTC)
    with ReplayServer(SyntheticSource(20)) as srv:
        prices = chart(srv, coin["id"], days="3").json()["prices"]
    assert prices[-1][1] == coin["current_price"]
    assert prices[-1][0] >= int(before.timestamp() * 1000)
