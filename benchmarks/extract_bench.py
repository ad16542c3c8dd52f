"""Extract benchmark: the handler against the local replay server, vs the rate-limit minimum.

    .venv/bin/python benchmarks/extract_bench.py [--coins 5000] [--per-page 250] [--repeat 3]

Prints measured figures: wall time of a whole extract (best of --repeat) of a synthetic market
(labelled synthetic) served over real HTTP on 127.0.0.1 into a folder lake, per-request time,
bytes stored; the same extract with a 429 (Retry-After: 0) on every page to show the retry
path's cost; the time a new interpreter takes to start and import the handler module; and, for
comparison, the minimum wall time CoinGecko's per-plan call budgets would impose on the same
number of calls (public ~5-15/min and varies, demo 30/min, pro 500/min): that floor, not local
overhead, is what bounds a real extract.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from functions.common.storage import LocalStorage
from functions.extract import handler as extract
from functions.extract.config import ExtractConfig
from local_mode.replay_server import ReplayServer, Scripted

PLAN_CALLS_PER_MINUTE = {"public (~10/min)": 10, "demo (30/min)": 30, "pro (500/min)": 500}


def one_extract(server: ReplayServer, coins: int, per_page: int, faults: bool) -> dict:
    if faults:
        for page in range(1, coins // per_page + 2):
            server.script("/coins/markets", Scripted.error(429, retry_after=0), page=page)
    config = ExtractConfig.from_env({"COINGECKO_BASE_URL": server.base_url})
    event = {
        "input": {"max_coins": coins, "per_page": per_page, "snapshot_id": "bench-extract"},
        "execution": {"name": "bench", "id": "bench", "start_time": "2026-11-23T00:00:00Z"},
    }
    with tempfile.TemporaryDirectory() as tmp:
        lake = LocalStorage(tmp)
        started = time.perf_counter()
        out = extract.run(event, config=config, storage=lake)
        wall = time.perf_counter() - started
        stored = sum((Path(tmp) / k).stat().st_size for k in lake.list_keys("raw/"))
    return {**out, "wall_s": wall, "bytes": stored}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--coins", type=int, default=5000)
    parser.add_argument("--per-page", type=int, default=250)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    extract.logger.setLevel("ERROR")

    cmd = [sys.executable, "-c", "import functions.extract.handler"]
    started = time.perf_counter()
    subprocess.run(cmd, check=True)
    import_s = time.perf_counter() - started

    print(f"extract benchmark: {args.coins} synthetic coins, per_page={args.per_page}")
    with ReplayServer.synthetic(coins=args.coins + args.per_page) as server:
        one_extract(server, args.coins, args.per_page, faults=False)  # warm the market cache
        for label, faults in (("clean", False), ("429 on every page", True)):
            runs = [
                one_extract(server, args.coins, args.per_page, faults) for _ in range(args.repeat)
            ]
            best = min(runs, key=lambda r: r["wall_s"])
            calls = best["api_calls"]
            print(
                f"  {label:18s} wall {best['wall_s'] * 1000:8.1f} ms  pages {best['pages']:3d}  "
                f"calls {calls:3d}  retries {best['retries']:3d}  "
                f"{best['wall_s'] / calls * 1000:6.2f} ms/request  "
                f"stored {best['bytes'] / 1e6:6.2f} MB"
            )
    print(f"  cold import of functions.extract.handler (new interpreter): {import_s:.2f} s")
    print(f"  rate-limit floor for {calls - best['retries']} calls (no retries):")
    for plan, per_minute in PLAN_CALLS_PER_MINUTE.items():
        floor = (calls - best["retries"] - 1) / per_minute * 60
        print(f"    {plan:18s} >= {floor:7.1f} s")


if __name__ == "__main__":
    main()
