"""The offline market moves with the snapshot's time (deterministically), so history charts of a
demo show movement; without ``drift`` it stays the fixed market the other tests rely on."""

from __future__ import annotations

from datetime import timedelta

import pytest

from local_mode.synthetic import DEFAULT_AS_OF, generate_markets

LATER = DEFAULT_AS_OF + timedelta(days=2, hours=6)


def test_the_drifting_market_is_deterministic_and_moves():
    day0 = generate_markets(1000, drift=True, as_of=DEFAULT_AS_OF)
    later = generate_markets(1000, drift=True, as_of=LATER)
    assert later == generate_markets(1000, drift=True, as_of=LATER)
    assert len(later) == 1000
    caps0 = {c["id"]: c["market_cap"] for c in day0}
    moved = [c for c in later if c["id"] in caps0 and c["market_cap"] != caps0[c["id"]]]
    assert len(moved) > 900
    assert {c["id"] for c in day0} != {c["id"] for c in later}  # some enter, some leave


def test_a_drifted_market_is_a_valid_listing():
    later = generate_markets(300, drift=True, as_of=LATER, vs_currency="eur")
    caps = [c["market_cap"] for c in later if c["market_cap"]]
    assert caps == sorted(caps, reverse=True)
    ranked = [c["market_cap_rank"] for c in later if c["market_cap_rank"] is not None]
    assert ranked == list(range(1, len(ranked) + 1))
    for coin in later:
        pct = coin["price_change_percentage_24h"]
        if pct is not None:
            before = coin["current_price"] - coin["price_change_24h"]
            assert coin["current_price"] / before - 1 == pytest.approx(pct / 100, rel=1e-3)


def test_without_drift_the_market_ignores_the_time():
    fixed = generate_markets(200)
    later = generate_markets(200, as_of=LATER)
    strip = ("ath_date", "atl_date", "last_updated")
    assert [{k: v for k, v in c.items() if k not in strip} for c in later] == [
        {k: v for k, v in c.items() if k not in strip} for c in fixed
    ]


def test_years_after_the_base_date_the_market_keeps_its_shape():
    """A moving window of steps, not a walk from 2024: years later no coin has run away."""
    from datetime import UTC, datetime

    base = generate_markets(1000)
    far = generate_markets(1000, drift=True, as_of=datetime(2026, 11, 29, 6, tzinfo=UTC))
    total_base = sum(c["market_cap"] for c in base)
    total_far = sum(c["market_cap"] for c in far)
    assert 0.5 < total_far / total_base < 2
    assert far[0]["market_cap"] / total_far < 0.7


def test_drifted_coins_stay_inside_their_all_time_range():
    from datetime import UTC, datetime

    far = generate_markets(1000, drift=True, as_of=datetime(2026, 11, 29, 6, tzinfo=UTC))
    for c in far:
        if c["ath"] is not None:
            assert c["atl"] <= c["current_price"] <= c["ath"], c["id"]
        if c["high_24h"] is not None:
            assert c["low_24h"] <= c["current_price"] <= c["high_24h"], c["id"]
            assert c["high_24h"] <= c["ath"] and c["low_24h"] >= c["atl"], c["id"]
