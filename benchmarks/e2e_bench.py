"""End-to-end benchmark: the whole offline market through the state machine, paced, and its cost.

    .venv/bin/python benchmarks/e2e_bench.py [--coins 20000] [--rate-limit 30/6]
        [--extract-timeout 0]

Runs ``crypto-etl run --offline --coins N --max-coins all --rate-limit N/W`` in-process
(``local_mode.run_command.run_pipeline``: the real definition under moto, real HTTP to the
local replay server enforcing the same budget in fixed windows, the real handlers, the fakesnow
server), then prints:

* wall time, split per state and per Extract invocation of the deadline loop
  (``--extract-timeout S`` gives the extract Lambda an S-second timeout so the loop runs;
  0 keeps the deployed 900 s), next to the rate-limit floor ``floor((C - 1) / N) * W``;
* the **cost of one full-market snapshot on AWS**, from the measured durations, the functions'
  configured memory (``cdk_app.pipeline_functions.SPECS``) and list prices (the named, dated
  constants below): Lambda GB-seconds and requests, Step Functions state transitions, S3
  requests, Snowflake warehouse seconds. The rate-limited extract is billed while it waits,
  so the cost on AWS follows the real plan's window (``--rate-limit`` scaled here to keep the
  run short): the cost is printed for the measured run and for the real plan's budget.

Local durations stand in for Lambda's (same code, a different CPU): a figure, not a quote.
"""

from __future__ import annotations

import argparse
import io
import math
import os
import sys
import tempfile
import time
from pathlib import Path

# The functions' memory sizes come from the CDK app; importing it starts jsii, whose Node.js
# end-of-life banner is noise here (the Makefile silences it the same way).
os.environ.setdefault("JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION", "20")
from cdk_app.pipeline_functions import SPECS
from functions.extract.pacing import RateLimit, burst_floor
from local_mode.run_command import RunOptions, run_pipeline
from state_machine.local_runner import FUNCTION_TIMEOUTS

# List prices, us-east-1, as published on the vendors' pricing pages (the values in force in
# 2024-2025, the last time they were checked for this file; verify before budgeting).
PRICES_CHECKED = "2025"
# https://aws.amazon.com/lambda/pricing/ — Arm, first 7.5 billion GB-seconds a month.
LAMBDA_ARM_USD_PER_GB_SECOND = 0.0000133334
LAMBDA_USD_PER_REQUEST = 0.20 / 1_000_000
# https://aws.amazon.com/step-functions/pricing/ — Standard workflows.
SFN_USD_PER_TRANSITION = 0.025 / 1_000
# https://aws.amazon.com/s3/pricing/ — S3 Standard requests.
S3_USD_PER_PUT = 0.005 / 1_000
S3_USD_PER_GET = 0.0004 / 1_000
# https://www.snowflake.com/pricing/ — Standard edition on AWS US East, on demand; an X-Small
# warehouse uses 1 credit an hour, billed per second with a 60-second minimum per resume.
SNOWFLAKE_USD_PER_CREDIT = 2.00
SNOWFLAKE_XS_CREDITS_PER_HOUR = 1.0
SNOWFLAKE_MIN_SECONDS = 60.0

# The real plans' budgets the cost is also given for (CoinGecko's documented limits).
REAL_BUDGETS = {"public-like 5/60": RateLimit(5, 60.0), "demo 30/60": RateLimit(30, 60.0)}


def s3_requests(pages: int, invocations: int) -> tuple[int, int]:
    """(PUTs, GETs) of one snapshot: extract writes the index, /global, each page and the
    progress record after it, the manifest and the final progress; it reads the index and the
    progress record once per invocation. Transform reads the manifest, /global and the pages,
    writes processed + rejected. Load reads the processed file and the index, writes the index.
    """
    puts = 1 + 1 + 2 * pages + 2 + 2 + 1
    gets = 2 * invocations + (1 + 1 + pages) + 2
    return puts, gets


def cost(
    seconds: dict[str, float], invocations: int, transitions: int, pages: int
) -> dict[str, float]:
    """USD per snapshot, by service, for these state durations (seconds)."""
    gb_seconds = sum(seconds.get(n.capitalize(), 0.0) * SPECS[n].memory_mb / 1024 for n in SPECS)
    requests = invocations + 2
    puts, gets = s3_requests(pages, invocations)
    load = max(SNOWFLAKE_MIN_SECONDS, seconds.get("Load", 0.0))
    return {
        "lambda_compute": gb_seconds * LAMBDA_ARM_USD_PER_GB_SECOND,
        "lambda_requests": requests * LAMBDA_USD_PER_REQUEST,
        "step_functions": transitions * SFN_USD_PER_TRANSITION,
        "s3_requests": puts * S3_USD_PER_PUT + gets * S3_USD_PER_GET,
        "snowflake": load / 3600 * SNOWFLAKE_XS_CREDITS_PER_HOUR * SNOWFLAKE_USD_PER_CREDIT,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--coins", type=int, default=20_000)
    ap.add_argument("--per-page", type=int, default=250)
    ap.add_argument("--rate-limit", default="30/6", help="N/W, the server's and the client's")
    ap.add_argument(
        "--extract-timeout", type=float, default=0.0, help="seconds; 0 = the deployed 900"
    )
    args = ap.parse_args()
    limit = RateLimit.parse(args.rate_limit, field="--rate-limit")
    assert limit is not None
    timeouts = dict(FUNCTION_TIMEOUTS)
    extra_env: dict[str, str] = {}
    if args.extract_timeout:
        timeouts["extract"] = args.extract_timeout
        extra_env = {"COINGECKO_TIMEOUT_SECONDS": "2", "EXTRACT_DEADLINE_MARGIN_SECONDS": "1"}
    with tempfile.TemporaryDirectory(prefix="e2e-bench-") as tmp:
        started = time.perf_counter()
        report = run_pipeline(
            RunOptions(
                local_dir=Path(tmp),
                offline=True,
                coins=args.coins,
                max_coins="all",
                per_page=args.per_page,
                snapshot_id="e2e-bench",
                rate_limit=args.rate_limit,
                function_timeouts=timeouts,
                extra_env=extra_env,
            ),
            io.StringIO(),
        )
        wall = time.perf_counter() - started
    o = report.output or {}
    if report.status != "SUCCEEDED":
        print(f"run {report.status}: {report.error}: {report.error_message}", file=sys.stderr)
        return 1
    calls = o["api_calls"]
    pages = o["pages"]
    floor = burst_floor(calls, limit)
    print(f"e2e: {args.coins} coins, --max-coins all, rate limit {limit} (server: fixed windows)")
    print(f"  wall (run_pipeline, incl. services) {wall:8.1f} s")
    for state, seconds in report.state_durations.items():
        print(f"  {state:<10} {seconds:8.1f} s")
    for i, seconds in enumerate(report.extract_invocation_seconds, 1):
        print(f"    extract invocation {i}: {seconds:6.1f} s")
    print(
        f"  extract vs floor: {report.state_durations.get('Extract', 0):.1f} s vs"
        f" {floor:.1f} s ({calls} calls, {pages} pages) ="
        f" {report.state_durations.get('Extract', 0) / floor if floor else float('nan'):.2f}x;"
        f" 429s {o.get('rate_limited')}, rows loaded {o.get('row_count')}"
    )
    print(f"  state transitions {report.state_transitions}")
    invocations = len(report.extract_invocation_seconds) or 1
    measured = cost(report.state_durations, invocations, report.state_transitions, pages)
    print(f"\ncost of one full-market snapshot (list prices {PRICES_CHECKED}, USD):")
    print(f"  {'budget':<22}" + "".join(f"{k:>16}" for k in measured) + f"{'total':>12}")

    def row(name: str, parts: dict[str, float]) -> None:
        cells = "".join(f"{v:16.6f}" for v in parts.values())
        print(f"  {name:<22}{cells}{sum(parts.values()):12.6f}")

    row(f"measured ({limit})", measured)
    for name, real in REAL_BUDGETS.items():
        # The extract takes the real budget's floor (it waits, billed) plus the measured work.
        work = max(0.0, report.state_durations.get("Extract", 0.0) - floor)
        extract = burst_floor(calls, real) + work
        seconds = {**report.state_durations, "Extract": extract}
        real_invocations = max(1, math.ceil(extract / (FUNCTION_TIMEOUTS["extract"] - 40)))
        row(name, cost(seconds, real_invocations, report.state_transitions, pages))
    print(
        "\n(Lambda compute at each function's configured memory: "
        + ", ".join(f"{n} {SPECS[n].memory_mb} MB" for n in SPECS)
        + "; Snowflake X-Small, 60 s minimum; SNS and CloudWatch Logs not counted.)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
