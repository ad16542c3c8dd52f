"""Client-side rate limiting ("pacing"): never more than N calls in any W-second interval.

Pure logic: the clock and the sleep are injected, nothing here touches the network or AWS.

**Sliding window.** :class:`SlidingWindowLimiter` keeps the send times of the last N calls (every
call counts: retries, ``/global``, a call answered with 429). Up to N calls may go at once; call
number N+1 waits until the oldest of the last N calls is W seconds (plus a margin, below) old.
C calls therefore take ``floor((C - 1) / N) * W`` seconds plus the requests' own time (the
burst-aware floor): as fast as a burst-and-retry client against a server counting fixed windows,
without the 429 such a client takes once per window, and never over the limit of a server that
counts sliding windows either.

**Jitter margin.** A call's time is taken just before it is sent; the server counts it when it
arrives. If call k arrives later after sending than call k+N does (a new connection, a slower
route), call k+N sent exactly W after call k could land inside the server's window that call k
opened. So each wait is lengthened by :func:`jitter_margin`: 2 % of W, at most 0.5 s (20 ms at
W = 1 s, 0.5 s at W = 60 s); it costs at most 2 % of the floor, per window waited.

**Wall-clock times.** The times are Unix times (``time.time``), not a monotonic clock: the state
(:meth:`SlidingWindowLimiter.state`) travels to the next Lambda invocation, another process and
maybe another host. A restored time later than "now" (clock skew between hosts) is treated as now.

**Adaptive.** A 429 that still arrives means the server counts differently than configured.
:meth:`SlidingWindowLimiter.on_rate_limited` raises the ``level`` for the rest of the run (it is
part of the state): level 1 spaces calls evenly, W/N apart, instead of bursting; each further
level halves the calls per window (N/2, N/4, ... at least 1), still evenly spaced. The
``Retry-After`` of the 429 is honoured by the client's retry loop, and the limiter lets no call go
before it either.

Per-plan budgets (:data:`PLAN_RATE_LIMITS`), each the lower end of what CoinGecko states:

======  =======  ============================================================================
plan    budget   source (read 2026-11)
======  =======  ============================================================================
public  5/60     https://docs.coingecko.com/docs/errors-and-rate-limits: keyless use: IP-based,
                 shared with every user of the IP; CoinGecko's earlier "Common Errors & Rate
                 Limit" page gave 5-15 calls/min for the public API: the low end.
demo    30/60    30 calls/min, as coingecko.com/en/api/pricing listed the Demo plan (per the
                 apis.io CoinGecko rate-limit profile); the errors page above now says 100/min:
                 the lower figure is kept until measured otherwise.
pro     250/60   the errors page: "Paid plans: rate limit depends on your plan"; the smallest
                 paid plan (Basic) allows 250 calls/min, Analyst and above 500 (apis.io profile,
                 citing the pricing page).
======  =======  ============================================================================

A higher plan sets its own budget with ``COINGECKO_RATE_LIMIT`` (e.g. ``500/60``).
"""

from __future__ import annotations

import math
import re
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from functions.common.errors import ConfigError, ValidationError

# Bounds of a budget: a typo such as 30/600000 must not make the extract wait for days.
MAX_CALLS = 1_000_000
MAX_WINDOW_SECONDS = 86_400.0
# The jitter margin: a fraction of the window, capped (see the module docstring).
JITTER_MARGIN_FRACTION = 0.02
JITTER_MARGIN_MAX_SECONDS = 0.5
STATE_VERSION = 1
# acquire() re-checks after sleeping (a sleep may end early); past this many sleeps it sends.
_MAX_SLEEPS_PER_ACQUIRE = 3
_LIMIT_RE = re.compile(r"(\d+)\s*/\s*(\d+(?:\.\d*)?|\.\d+)")
_OFF = ("off", "none")


@dataclass(frozen=True)
class RateLimit:
    """A budget of ``calls`` (N >= 1) per ``window_seconds`` (W > 0 seconds); ``str``: "N/W".

    Raises ValueError for a budget outside ``1 <= N <= MAX_CALLS``, ``0 < W <= MAX_WINDOW_SECONDS``.
    """

    calls: int
    window_seconds: float

    def __post_init__(self) -> None:
        calls, window = self.calls, self.window_seconds
        if isinstance(calls, bool) or not isinstance(calls, int) or not 1 <= calls <= MAX_CALLS:
            raise ValueError(f"calls {calls!r} must be an integer in [1, {MAX_CALLS}]")
        if (
            isinstance(window, bool)
            or not isinstance(window, int | float)
            or not math.isfinite(window)
            or not 0 < window <= MAX_WINDOW_SECONDS
        ):
            raise ValueError(f"window {window!r} must be in (0, {MAX_WINDOW_SECONDS:g}] seconds")
        object.__setattr__(self, "window_seconds", float(window))

    @classmethod
    def parse(cls, text: str, field: str = "COINGECKO_RATE_LIMIT") -> RateLimit | None:
        """``"30/60"`` -> ``RateLimit(30, 60.0)``; ``"off"`` or ``"none"`` (any case) -> None.

        Raises ConfigError naming ``field`` for anything else (empty, ``"30"``, ``"0/60"``,
        ``"30/0"``, ``"30/-5"``, ``"x/60"``, a window over a day).
        """
        value = text.strip().lower() if isinstance(text, str) else ""
        if value in _OFF:
            return None
        match = _LIMIT_RE.fullmatch(value)
        if not match:
            raise ConfigError(
                field,
                f"{text!r} must be N/SECONDS (e.g. 30/60: at most 30 calls in any 60 s) or 'off'",
            )
        try:
            return cls(int(match.group(1)), float(match.group(2)))
        except ValueError as exc:
            raise ConfigError(field, f"{text!r}: {exc}") from exc

    def __str__(self) -> str:
        return f"{self.calls}/{self.window_seconds:g}"

    @property
    def per_minute(self) -> float:
        """The budget in calls per minute (for logs)."""
        return self.calls * 60.0 / self.window_seconds


# Sources: see the module docstring's table.
PLAN_RATE_LIMITS: dict[str, RateLimit] = {
    "public": RateLimit(5, 60.0),
    "demo": RateLimit(30, 60.0),
    "pro": RateLimit(250, 60.0),
}


def jitter_margin(limit: RateLimit) -> float:
    """Seconds added to every window wait: ``min(0.02 * W, 0.5)`` (see the module docstring)."""
    return min(JITTER_MARGIN_FRACTION * limit.window_seconds, JITTER_MARGIN_MAX_SECONDS)


def burst_floor(calls: int, limit: RateLimit) -> float:
    """The least wall time, in seconds, ``calls`` calls can take under ``limit`` without a 429:
    ``floor((calls - 1) / N) * W`` (0 for one call or none)."""
    return max(0, (calls - 1) // limit.calls) * limit.window_seconds


class SlidingWindowLimiter:
    """Paces calls to ``limit`` (see the module docstring); one instance per client.

    ``clock`` returns Unix time in seconds, ``sleep`` sleeps seconds (both injectable); ``state``
    is a previous invocation's :meth:`state` (ValidationError when malformed); ``margin`` overrides
    :func:`jitter_margin` (seconds). Counters: ``waits`` (acquires that slept) and
    ``waited_seconds`` (total slept by :meth:`acquire`).
    """

    def __init__(
        self,
        limit: RateLimit,
        *,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
        state: Mapping[str, Any] | None = None,
        margin: float | None = None,
    ) -> None:
        if not isinstance(limit, RateLimit):
            raise TypeError(f"limit must be a RateLimit, not {type(limit).__name__}")
        self.limit = limit
        self.margin = jitter_margin(limit) if margin is None else max(0.0, float(margin))
        self._clock = clock
        self._sleep = sleep
        self._calls: deque[float] = deque(maxlen=limit.calls)
        self.level = 0
        self._not_before = 0.0
        self.waits = 0
        self.waited_seconds = 0.0
        if state is not None:
            self._restore(state)

    # -- the rule ------------------------------------------------------------------------------

    @property
    def calls_per_window(self) -> int:
        """The calls allowed per window at the current level: N, then N/2, N/4, ... >= 1."""
        if self.level <= 1:
            return self.limit.calls
        return max(1, self.limit.calls >> (self.level - 1))

    @property
    def spacing(self) -> float:
        """Seconds between consecutive calls: 0 (bursts allowed) at level 0, else W / calls."""
        return 0.0 if self.level == 0 else self.limit.window_seconds / self.calls_per_window

    def next_call_time(self) -> float:
        """The Unix time from which the next call may go."""
        when = self._not_before
        allowed = self.calls_per_window
        if len(self._calls) >= allowed:
            when = max(when, self._calls[-allowed] + self.limit.window_seconds + self.margin)
        if self._calls and self.level > 0:
            when = max(when, self._calls[-1] + self.spacing)
        return when

    def delay(self) -> float:
        """Seconds until the next call may go (0.0 if it may go now)."""
        return max(0.0, self.next_call_time() - self._clock())

    def acquire(self) -> float:
        """Sleep until the next call may go, then record it as sent now; returns seconds slept."""
        slept = 0.0
        for _ in range(_MAX_SLEEPS_PER_ACQUIRE):
            wait = self.delay()
            if wait <= 0:
                break
            self._sleep(wait)
            slept += wait
        self._calls.append(self._clock())
        if slept > 0:
            self.waits += 1
            self.waited_seconds += slept
        return slept

    def on_rate_limited(self, retry_after: float | None) -> None:
        """A 429 arrived: one level more conservative, and no call before ``retry_after``
        seconds (None: the server gave no usable ``Retry-After``) from now."""
        # Past the level where one call per window remains, more levels change nothing.
        self.level = min(self.level + 1, self.limit.calls.bit_length() + 1)
        if retry_after is not None and math.isfinite(retry_after) and retry_after > 0:
            self._not_before = max(self._not_before, self._clock() + retry_after)

    # -- carried across invocations ------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        """JSON-safe and small: ``{"version": 1, "limit": "N/W", "calls": [<= N Unix times],
        "level": int, "not_before": Unix time or None}`` (times rounded up to the millisecond,
        so a restored limiter is never less careful)."""
        return {
            "version": STATE_VERSION,
            "limit": str(self.limit),
            "calls": [_ceil_ms(t) for t in self._calls],
            "level": self.level,
            "not_before": _ceil_ms(self._not_before) if self._not_before > 0 else None,
        }

    def _restore(self, state: Mapping[str, Any]) -> None:
        """Continue from ``state``; a different ``limit`` keeps the call times, resets the level."""
        field = "pacing state"
        if not isinstance(state, Mapping):
            raise ValidationError(field, f"must be an object, not {type(state).__name__}")
        if state.get("version") != STATE_VERSION:
            raise ValidationError(field, f"version {state.get('version')!r} is not {STATE_VERSION}")
        calls = state.get("calls")
        if not isinstance(calls, list) or not all(_is_time(t) for t in calls):
            raise ValidationError(f"{field}.calls", "must be a list of Unix times")
        level = state.get("level")
        if isinstance(level, bool) or not isinstance(level, int) or level < 0:
            raise ValidationError(f"{field}.level", f"{level!r} must be an integer >= 0")
        not_before = state.get("not_before")
        if not_before is not None and not _is_time(not_before):
            raise ValidationError(f"{field}.not_before", f"{not_before!r} must be a Unix time")
        now = self._clock()
        # A call cannot have been sent in the future: a later time is another host's clock skew.
        for sent in sorted(float(t) for t in calls):
            self._calls.append(min(sent, now))
        same_limit = state.get("limit") == str(self.limit)
        self.level = min(level, self.limit.calls.bit_length() + 1) if same_limit else 0
        self._not_before = float(not_before) if not_before is not None else 0.0


def _is_time(value: object) -> bool:
    return (
        not isinstance(value, bool)
        and isinstance(value, int | float)
        and math.isfinite(value)
        and value >= 0
    )


def _ceil_ms(seconds: float) -> float:
    return math.ceil(seconds * 1000.0) / 1000.0
