"""History backfill benchmark: 200 coins x 365 days offline under a rate limit, and its cost.

    .venv/bin/python benchmarks/backfill_bench.py [--coins 200] [--days 365]
        [--rate-limit 40/4] [--market 17500]

Runs ``crypto-etl backfill --offline --top-n N --days D --rate-limit N/W`` in-process
(``local_mode.backfill_command.run_backfill``: the backfill definition under the local runner,
the Distributed Map's batches as child executions, real HTTP to the local replay server enforcing
the same budget in fixed windows, the real handlers, the fakesnow server), then prints:

* wall time per state next to the rate-limit floor of the calls made,
  ``floor((C - 1) / N) * W`` (the budget is scaled, e.g. 40 per 4 s, so the run takes a minute
  or two instead of the real plans' hours);
* rows loaded against the expectation (one per coin and UTC date: ``days`` dates per coin, as
  CoinGecko's daily series ends with today's partial point on today's date), the 429s (0 when
  the map keeps to the budget);
* the **cost of a full-market 365-day backfill on AWS** (``--market`` coins) for each real plan's
  budget, from list prices (imported from benchmarks/e2e_bench.py) and the measured per-coin
  work: Lambda GB-seconds (the extract children are billed while they wait on the budget) and
  requests, Step Functions state transitions (the parent's, plus each Distributed Map child
  execution's), S3 requests, Snowflake warehouse seconds for the load.

Local durations stand in for Lambda's (same code, a different CPU): a figure, not a quote.
"""

from __future__ import annotations

import argparse
import io
import math
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # e2e_bench, run as a script

from e2e_bench import (
    LAMBDA_ARM_USD_PER_GB_SECOND,
    LAMBDA_USD_PER_REQUEST,
    PRICES_CHECKED,
    S3_USD_PER_GET,
    S3_USD_PER_PUT,
    SFN_USD_PER_TRANSITION,
    SNOWFLAKE_MIN_SECONDS,
    SNOWFLAKE_USD_PER_CREDIT,
    SNOWFLAKE_XS_CREDITS_PER_HOUR,
    SPECS,
)

from functions.extract.pacing import RateLimit, burst_floor
from local_mode.backfill_command import BackfillOptions, run_backfill

# The real plans' budgets (CoinGecko's documented limits; functions/extract/pacing.py).
REAL_BUDGETS = {
    "public 5/60": RateLimit(5, 60.0),
    "demo 30/60": RateLimit(30, 60.0),
    "pro 250/60": RateLimit(250, 60.0),
}
MAX_CONCURRENCY = 5  # BACKFILL_MAX_CONCURRENCY's default (functions/extract/backfill.py)
BATCH_SIZE = 10  # coins per child execution (the plan's default)
# Step Functions transitions of the parent: Plan, Fetch, LoadHistory, Succeeded (+ the start).
PARENT_TRANSITIONS = 5
# Each Standard child execution of the Map: its one Task state, counted with its start as 2
# (an upper count: https://aws.amazon.com/step-functions/pricing/ bills state transitions, and a
# Distributed Map's Standard child workflows are billed as Standard executions).
CHILD_TRANSITIONS = 2


def full_market_cost(
    coins: int, budget: RateLimit, work_per_coin_s: float, load_per_coin_s: float
) -> dict[str, float]:
    """USD of one ``coins``-coin backfill under ``budget``, by service.

    The map's calls (one /market_chart per coin, plus the plan's /coins/markets pages) take the
    budget's burst floor; every child runs (and is billed) during it, at most MAX_CONCURRENCY
    (fewer when the budget has fewer calls per window), plus the measured work per coin. The
    load scales linearly with the coins (its measured seconds per coin).
    """
    plan_calls = math.ceil(coins / 250)
    calls = coins + plan_calls
    concurrency = min(MAX_CONCURRENCY, budget.calls)
    fetch_s = burst_floor(calls, budget) + work_per_coin_s * coins / concurrency
    batches = math.ceil(coins / BATCH_SIZE)
    extract_gb_s = (concurrency * fetch_s) * SPECS["extract"].memory_mb / 1024
    load_s = load_per_coin_s * coins
    load_gb_s = load_s * SPECS["load"].memory_mb / 1024
    transitions = PARENT_TRANSITIONS + CHILD_TRANSITIONS * batches
    puts = 1 + coins + 3  # items.json, one body per coin, the map's manifest + result files
    gets = 1 + batches + coins + 3  # ItemReader, the lake's bucket checks, bodies, results
    return {
        "hours": fetch_s / 3600,
        "lambda_compute": (extract_gb_s + load_gb_s) * LAMBDA_ARM_USD_PER_GB_SECOND,
        "lambda_requests": (1 + batches + 1) * LAMBDA_USD_PER_REQUEST,
        "step_functions": transitions * SFN_USD_PER_TRANSITION,
        "s3_requests": puts * S3_USD_PER_PUT + gets * S3_USD_PER_GET,
        "snowflake": max(SNOWFLAKE_MIN_SECONDS, load_s)
        / 3600
        * SNOWFLAKE_XS_CREDITS_PER_HOUR
        * SNOWFLAKE_USD_PER_CREDIT,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--coins", type=int, default=200)
    ap.add_argument("--days", type=int, default=365)
    ap.add_argument("--rate-limit", default="40/4", help="N/W, the server's and the map's")
    ap.add_argument("--market", type=int, default=17_500, help="coins in a full-market run")
    args = ap.parse_args()
    limit = RateLimit.parse(args.rate_limit, field="--rate-limit")
    assert limit is not None
    with tempfile.TemporaryDirectory(prefix="backfill-bench-") as tmp:
        started = time.perf_counter()
        report = run_backfill(
            BackfillOptions(
                days=args.days,
                local_dir=Path(tmp),
                top_n=args.coins,
                offline=True,
                rate_limit=args.rate_limit,
            ),
            io.StringIO(),
        )
        wall = time.perf_counter() - started
    if report.status != "SUCCEEDED":
        print(f"backfill {report.status}: {report.error}: {report.error_message}", file=sys.stderr)
        return 1
    counts = report.counts()
    calls = counts["api_calls"]
    floor = burst_floor(calls, limit)
    fetch = report.state_durations.get("Fetch", 0.0)
    load = report.state_durations.get("LoadHistory", 0.0)
    rows = report.load.get("rows") or 0
    expected = args.coins * args.days
    p = report.plan
    print(
        f"backfill: {args.coins} coins x {args.days} days, offline, rate limit {limit}"
        f" (server: fixed windows); {len(report.batches)} batches of {p.get('batch_size')},"
        f" {p.get('max_concurrency')} at once, each at {p.get('child_rate_limit')}"
    )
    print(f"  wall (run_backfill, incl. services) {wall:8.1f} s")
    for state, seconds in report.state_durations.items():
        print(f"  {state:<12} {seconds:8.1f} s")
    print(
        f"  plan + fetch vs floor: {report.state_durations.get('Plan', 0) + fetch:.1f} s vs"
        f" {floor:.1f} s ({calls} calls) ="
        f" {(report.state_durations.get('Plan', 0) + fetch) / floor if floor else math.nan:.2f}x;"
        f" 429s {counts['rate_limited']}, retries {counts['retries']}"
    )
    print(
        f"  rows loaded {rows:,} (expected {expected:,} = {args.coins} x {args.days} dates;"
        f" {rows - expected:+,}); coins failed {len(report.failed_coins())}"
    )
    # The work beyond the budget's waits, per coin (seconds), and the load's per coin.
    work_per_coin = max(0.0, fetch - burst_floor(calls, limit)) / max(1, args.coins)
    load_per_coin = load / max(1, args.coins)
    print(
        f"\ncost of a full-market {args.days}-day backfill, {args.market:,} coins"
        f" (list prices {PRICES_CHECKED}, USD; measured work {work_per_coin * 1000:.0f} ms/coin"
        f" beyond the waits, load {load_per_coin * 1000:.0f} ms/coin):"
    )
    parts = ("lambda_compute", "lambda_requests", "step_functions", "s3_requests", "snowflake")
    print(f"  {'budget':<14}{'hours':>8}" + "".join(f"{k:>16}" for k in parts) + f"{'total':>10}")
    for name, budget in REAL_BUDGETS.items():
        c = full_market_cost(args.market, budget, work_per_coin, load_per_coin)
        cells = "".join(f"{c[k]:16.4f}" for k in parts)
        print(f"  {name:<14}{c['hours']:8.1f}{cells}{sum(c[k] for k in parts):10.4f}")
    print(
        f"\n(extract {SPECS['extract'].memory_mb} MB children billed while they wait, at most"
        f" {MAX_CONCURRENCY} at once; load {SPECS['load'].memory_mb} MB; {CHILD_TRANSITIONS}"
        f" transitions per child execution of {BATCH_SIZE} coins; Snowflake X-Small, 60 s"
        " minimum; SNS, CloudWatch Logs and S3 storage not counted. The public plan allows"
        " 365 days of history at most: a longer range needs a paid plan.)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
