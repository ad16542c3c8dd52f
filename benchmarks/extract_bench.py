"""Extract benchmark: a full market under a fixed-window rate limit, paced vs burst-and-retry.

    .venv/bin/python benchmarks/extract_bench.py [--coins 20000] [--per-page 250] [--scale 1.0]
        [--profiles public,demo]

The replay server (real HTTP on 127.0.0.1, synthetic market of ``--coins`` coins) enforces N
calls per W seconds in FIXED windows, as API gateways count (a window opens at the first request
and answers 429 + Retry-After until it ends). For each budget the same extract runs twice through
``functions.extract.handler.run`` with input ``{"max_coins": "all", "per_page": 250}`` into a
folder lake:

(a) paced: ``COINGECKO_RATE_LIMIT=N/W``, the server's budget;
(b) baseline: pacing off, bursting and retrying on 429 (it may run out of its retry budget:
    the outcome says so).

Budgets (``--profiles``): ``public``: 10 calls / 10 s (a public-plan-like 10/min, time scaled
by 1/6); ``demo``: 30 calls / 60 s (Demo's 30/min). ``--scale`` multiplies both windows (0.1:
a quicker run). Every duration is scaled alike, the retry budget too (120 s at the real
plan's window), so a scaled run ends as the unscaled one would.

Printed side by side per run: wall time; the burst-aware floor ``floor((C - 1) / N) * W`` for
the minimum C calls; their ratio; API calls (every request the server saw) vs that minimum
(pages + 1 for /global + 1 empty page confirming the end); 429s the server sent ("provoked");
outcome. Targets (issue 13): paced wall <= 1.10 x floor, 0 provoked 429s, calls <= minimum + 1.
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from dataclasses import dataclass
from typing import Any

from functions.common.errors import CryptoEtlError, ValidationError
from functions.common.storage import LocalStorage
from functions.extract import handler as extract
from functions.extract.config import ExtractConfig
from functions.extract.pacing import RateLimit, burst_floor
from local_mode.replay_server import ReplayServer

RETRY_BUDGET_SECONDS = 120.0  # COINGECKO_MAX_RETRY_WAIT_SECONDS' default, at real-plan time
WALL_TARGET = 1.10  # x the burst-aware floor (issue 13)


@dataclass(frozen=True)
class Profile:
    """A server budget: ``calls`` per ``window`` s in the benchmark (at --scale 1), standing
    for a real plan whose window is ``real_window`` s (scales the retry budget)."""

    name: str
    calls: int
    window: float
    real_window: float


PROFILES = {
    "public": Profile("public-like", 10, 10.0, 60.0),
    "demo": Profile("demo-like", 30, 60.0, 60.0),
}


def one_extract(
    server: ReplayServer, limit: RateLimit, paced: bool, retry_budget: float, max_coins: Any
) -> dict[str, Any]:
    """One extract through the handler; returns wall seconds, the server's counts, outcome."""
    server.rate_limit(limit.calls, limit.window_seconds, mode="fixed")  # a fresh window
    server.clear_requests()
    env = {
        "COINGECKO_BASE_URL": server.base_url,
        "COINGECKO_RATE_LIMIT": str(limit) if paced else "off",
        "COINGECKO_MAX_RETRY_WAIT_SECONDS": f"{retry_budget:g}",
    }
    config = ExtractConfig.from_env(env)
    event = {
        "input": {"max_coins": max_coins, "per_page": 250, "snapshot_id": "bench-extract"},
        "execution": {"name": "bench", "id": "bench", "start_time": "2026-11-23T00:00:00Z"},
    }
    outcome = "ok"
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        try:
            out = extract.run(event, config=config, storage=LocalStorage(tmp))
        except ValidationError:
            raise
        except CryptoEtlError as exc:
            outcome = f"FAILED {type(exc).__name__}: {_short(str(exc))}"
        wall = time.perf_counter() - started
    if out and out.get("done") is False:
        outcome = f"incomplete (next_page {out.get('next_page')})"
    return {
        "wall_s": wall,
        "calls": len(server.requests),
        "provoked": server.rate_limited,
        "pages_served": len(server.served_pages()),
        "coins": out.get("coin_count"),
        "outcome": outcome,
    }


def _short(text: str, limit: int = 110) -> str:
    text = " ".join(text.split())
    gave_up = text.find("gave up:")
    if gave_up > 0:  # the reason, not the URL
        text = text[gave_up:]
    return text if len(text) <= limit else text[: limit - 1] + "…"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--coins", type=int, default=20_000)
    parser.add_argument("--per-page", type=int, default=250, help=argparse.SUPPRESS)
    parser.add_argument("--scale", type=float, default=1.0, help="multiplies every window")
    parser.add_argument("--profiles", default="public,demo", help="comma-separated: public,demo")
    args = parser.parse_args()
    extract.logger.setLevel("ERROR")
    profiles = [PROFILES[name.strip()] for name in args.profiles.split(",") if name.strip()]

    with ReplayServer.synthetic(coins=args.coins) as server:
        server.source.market("usd")  # generate the market before timing anything
        server.source.global_data()
        max_coins: Any = "all"
        try:
            extract.parse_event({"input": {"max_coins": "all"}, **_EXECUTION})
        except ValidationError:
            max_coins = args.coins  # until the handler accepts "all"
        pages = math.ceil(args.coins / 250)
        minimum = pages + 1 + (1 if max_coins == "all" else 0)
        print(
            f"extract benchmark: {args.coins} synthetic coins, per_page 250, max_coins"
            f" {max_coins!r}; server: fixed-window rate limit; minimum calls {minimum}"
            f" ({pages} pages + /global{' + 1 empty page' if max_coins == 'all' else ''})"
        )
        header = (
            f"  {'budget':22s} {'run':9s} {'wall s':>8s} {'floor s':>8s} {'ratio':>6s}"
            f" {'calls':>5s} {'min':>4s} {'429s':>5s}  outcome"
        )
        print(header)
        verdicts = []
        for profile in profiles:
            limit = RateLimit(profile.calls, profile.window * args.scale)
            budget = RETRY_BUDGET_SECONDS * limit.window_seconds / profile.real_window
            floor = burst_floor(minimum, limit)
            label = f"{profile.name} {limit}"
            for run_name, paced in (("paced", True), ("baseline", False)):
                r = one_extract(server, limit, paced, budget, max_coins)
                ratio = r["wall_s"] / floor if floor else float("nan")
                outcome = r["outcome"]
                if outcome != "ok":
                    outcome += f" ({r['pages_served']} of {minimum - 1} pages)"
                print(
                    f"  {label:22s} {run_name:9s} {r['wall_s']:8.1f} {floor:8.1f} {ratio:6.2f}"
                    f" {r['calls']:5d} {minimum:4d} {r['provoked']:5d}  {outcome}"
                )
                if paced:
                    verdicts.append(
                        (
                            label,
                            ratio <= WALL_TARGET,
                            r["provoked"] == 0,
                            r["calls"] <= minimum + 1,
                            r["outcome"] == "ok",
                        )
                    )
            print(f"  {'':22s} (retry budget {budget:g}s = 120 s at the plan's real window)")
    print(f"targets for the paced runs: wall <= {WALL_TARGET:.2f} x floor, 0 provoked 429s,")
    print("  calls <= minimum + 1, outcome ok")
    for label, wall_ok, no_429, calls_ok, ok in verdicts:
        marks = ", ".join(
            f"{name} {'met' if met else 'MISSED'}"
            for name, met in (("wall", wall_ok), ("429s", no_429), ("calls", calls_ok), ("ok", ok))
        )
        print(f"  {label:22s} {marks}")


_EXECUTION = {"execution": {"name": "probe", "id": "probe", "start_time": "2026-11-23T00:00:00Z"}}


if __name__ == "__main__":
    main()
