"""The sliding-window limiter and RateLimit parsing, with an injected fake clock and sleep."""

from __future__ import annotations

import json
import random

import pytest

from functions.common.errors import ConfigError, ValidationError
from functions.extract.pacing import (
    PLAN_RATE_LIMITS,
    RateLimit,
    SlidingWindowLimiter,
    burst_floor,
    jitter_margin,
)

T0 = 1_800_000_000.0  # a Unix time


class FakeTime:
    """A clock and a sleep that advances it (recording each sleep)."""

    def __init__(self, now: float = T0) -> None:
        self.now = now
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def limiter(limit: RateLimit, t: FakeTime, **kwargs) -> SlidingWindowLimiter:
    return SlidingWindowLimiter(limit, clock=t.clock, sleep=t.sleep, **kwargs)


def max_in_any_window(times: list[float], window: float) -> int:
    """The most calls in any half-open interval [t, t + window)."""
    times = sorted(times)
    best, lo = 0, 0
    for hi, t in enumerate(times):
        while times[lo] <= t - window:
            lo += 1
        best = max(best, hi - lo + 1)
    return best


# -- RateLimit ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("30/60", RateLimit(30, 60.0)),
        (" 10 / 10 ", RateLimit(10, 10.0)),
        ("3/1.5", RateLimit(3, 1.5)),
        ("1/.5", RateLimit(1, 0.5)),
        ("off", None),
        ("OFF", None),
        ("none", None),
    ],
)
def test_rate_limit_parse_good_values(text, expected):
    assert RateLimit.parse(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "",
        "30",
        "30/",
        "/60",
        "0/60",
        "30/0",
        "30/-5",
        "x/60",
        "30/sixty",
        "30/1e9",
        "-1/60",
        "3/100000",
    ],
)
def test_rate_limit_parse_bad_values_name_the_variable(text):
    with pytest.raises(ConfigError) as info:
        RateLimit.parse(text)
    assert info.value.name == "COINGECKO_RATE_LIMIT"
    assert "COINGECKO_RATE_LIMIT" in str(info.value)


def test_rate_limit_parse_names_the_given_field():
    with pytest.raises(ConfigError, match="--rate-limit"):
        RateLimit.parse("fast", field="--rate-limit")


def test_rate_limit_str_round_trips():
    for limit in (RateLimit(30, 60.0), RateLimit(3, 1.5), *PLAN_RATE_LIMITS.values()):
        assert RateLimit.parse(str(limit)) == limit
    assert str(RateLimit(30, 60)) == "30/60"


@pytest.mark.parametrize(
    ("calls", "window"), [(0, 60.0), (True, 60.0), (5, 0.0), (5, float("nan"))]
)
def test_rate_limit_refuses_impossible_budgets(calls, window):
    with pytest.raises(ValueError):
        RateLimit(calls, window)


def test_plan_defaults_are_the_conservative_ends():
    assert {plan: str(limit) for plan, limit in PLAN_RATE_LIMITS.items()} == {
        "public": "5/60",
        "demo": "30/60",
        "pro": "250/60",
    }


def test_burst_floor():
    limit = RateLimit(10, 10.0)
    assert [burst_floor(c, limit) for c in (0, 1, 10, 11, 20, 21, 82)] == [0, 0, 0, 10, 10, 20, 80]


def test_jitter_margin_is_two_percent_capped_at_half_a_second():
    assert jitter_margin(RateLimit(3, 1.0)) == pytest.approx(0.02)
    assert jitter_margin(RateLimit(10, 10.0)) == pytest.approx(0.2)
    assert jitter_margin(RateLimit(30, 60.0)) == 0.5


# -- the sliding window ------------------------------------------------------------------------


def test_a_burst_of_n_then_exact_waits():
    t = FakeTime()
    lim = limiter(RateLimit(3, 10.0), t, margin=0.0)
    sent = []
    for _ in range(7):
        lim.acquire()
        sent.append(t.now - T0)
    assert sent == [0, 0, 0, 10, 10, 10, 20]
    assert t.sleeps == [10.0, 10.0]
    assert (lim.waits, lim.waited_seconds) == (2, 20.0)


def test_waits_count_from_the_oldest_of_the_last_n_calls():
    t = FakeTime()
    lim = limiter(RateLimit(2, 10.0), t, margin=0.0)
    lim.acquire()
    t.now += 4  # request time
    lim.acquire()
    t.now += 1
    assert lim.delay() == pytest.approx(5.0)  # call 1 was at 0: the next may go at 10
    assert lim.acquire() == pytest.approx(5.0)
    assert lim.delay() == pytest.approx(4.0)  # call 2 was at 4: the next at 14


def test_the_margin_lengthens_each_window_wait():
    t = FakeTime()
    lim = limiter(RateLimit(2, 10.0), t)
    for _ in range(3):
        lim.acquire()
    assert t.sleeps == [pytest.approx(10.2)]


def test_never_more_than_n_calls_in_any_window_over_a_long_random_sequence():
    rng = random.Random(7)
    for limit in (RateLimit(1, 1.0), RateLimit(3, 2.5), RateLimit(10, 10.0), RateLimit(30, 60.0)):
        t = FakeTime()
        lim = limiter(limit, t)
        sent: list[float] = []
        for _ in range(500):
            t.now += rng.choice([0.0, 0.0, rng.uniform(0, limit.window_seconds / 2)])
            lim.acquire()
            sent.append(t.now)
            if rng.random() < 0.05:  # a 429 now and then: still never over the limit
                lim.on_rate_limited(rng.choice([None, 1.0]))
        assert max_in_any_window(sent, limit.window_seconds) <= limit.calls, str(limit)
        assert lim.waits > 0


def test_state_round_trip_continues_the_window_across_invocations():
    t = FakeTime()
    first = limiter(RateLimit(3, 10.0), t, margin=0.0)
    for _ in range(3):
        first.acquire()
    t.now += 2.5
    state = json.loads(json.dumps(first.state()))  # as the state machine carries it
    assert len(state["calls"]) == 3 and state["limit"] == "3/10"
    second = limiter(RateLimit(3, 10.0), t, margin=0.0, state=state)
    assert second.delay() == pytest.approx(7.5)
    assert second.acquire() == pytest.approx(7.5)
    assert t.now - T0 == pytest.approx(10.0)


def test_state_keeps_at_most_n_times():
    t = FakeTime()
    lim = limiter(RateLimit(4, 1.0), t)
    for _ in range(50):
        lim.acquire()
    assert len(lim.state()["calls"]) == 4
    assert len(json.dumps(lim.state())) < 200


def test_restored_times_from_the_future_are_treated_as_now():
    t = FakeTime()
    state = {"version": 1, "limit": "1/10", "calls": [T0 + 3600], "level": 0, "not_before": None}
    lim = limiter(RateLimit(1, 10.0), t, margin=0.0, state=state)
    assert lim.delay() == pytest.approx(10.0)


def test_a_changed_budget_keeps_the_times_but_resets_the_level():
    t = FakeTime()
    old = limiter(RateLimit(2, 10.0), t, margin=0.0)
    old.acquire()
    old.on_rate_limited(None)
    new = limiter(RateLimit(1, 10.0), t, margin=0.0, state=old.state())
    assert new.level == 0
    assert new.delay() == pytest.approx(10.0)


@pytest.mark.parametrize(
    "state",
    [
        [],
        {"version": 2, "limit": "1/1", "calls": [], "level": 0, "not_before": None},
        {"version": 1, "limit": "1/1", "calls": ["soon"], "level": 0, "not_before": None},
        {"version": 1, "limit": "1/1", "calls": [], "level": -1, "not_before": None},
        {"version": 1, "limit": "1/1", "calls": [], "level": 0, "not_before": "x"},
    ],
)
def test_a_malformed_state_is_a_validation_error(state):
    with pytest.raises(ValidationError, match="pacing state"):
        SlidingWindowLimiter(RateLimit(1, 1.0), state=state)


# -- adaptive ----------------------------------------------------------------------------------


def test_a_first_429_turns_bursts_into_even_spacing():
    t = FakeTime()
    lim = limiter(RateLimit(4, 8.0), t, margin=0.0)
    lim.acquire()
    lim.on_rate_limited(None)
    assert (lim.level, lim.calls_per_window, lim.spacing) == (1, 4, 2.0)
    for _ in range(4):
        lim.acquire()
    assert t.sleeps == [2.0, 2.0, 2.0, 2.0]


def test_further_429s_lower_the_rate_down_to_one_call_per_window():
    lim = SlidingWindowLimiter(RateLimit(8, 8.0))
    seen = []
    for _ in range(7):
        lim.on_rate_limited(None)
        seen.append((lim.calls_per_window, lim.spacing))
    assert seen[:4] == [(8, 1.0), (4, 2.0), (2, 4.0), (1, 8.0)]
    assert seen[-1] == (1, 8.0)


def test_no_call_goes_before_retry_after():
    t = FakeTime()
    lim = limiter(RateLimit(10, 10.0), t, margin=0.0)
    lim.acquire()
    lim.on_rate_limited(7.0)
    assert lim.delay() == pytest.approx(7.0)  # longer than the 1 s spacing
    t.now += 7.0  # the client's retry loop slept Retry-After
    assert lim.delay() == 0.0


def test_the_adaptive_level_is_carried_in_the_state():
    t = FakeTime()
    first = limiter(RateLimit(6, 6.0), t, margin=0.0)
    first.acquire()
    first.on_rate_limited(2.0)
    first.on_rate_limited(None)
    second = limiter(RateLimit(6, 6.0), t, margin=0.0, state=first.state())
    assert (second.level, second.calls_per_window, second.spacing) == (2, 3, 2.0)
    assert second.delay() == pytest.approx(2.0)
