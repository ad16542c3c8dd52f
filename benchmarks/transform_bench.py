"""Transform benchmark: a synthetic 20k-coin market through the transform, against its I/O floor.

    .venv/bin/python benchmarks/transform_bench.py [--coins 20000] [--per-page 250] [--repeat 5]

Prints, for the pure transform, the CSV.gz encoding, and the handler end to end on a folder lake:
wall time (best of --repeat), rows/s and peak Python memory (tracemalloc, measured in a separate
pass so it does not slow the timed runs), plus the process's peak RSS. The I/O floor is the work
no transform can avoid: parsing the page JSON and gzip'ing the output CSV text.

The market is generated here (deterministic, seeded; labelled synthetic): heavy-tailed caps,
~45% null max_supply, some null 24h fields, ~15% roi objects, exponent-notation strings, ranks
shifting between pages (duplicate ids) and a few rows to reject.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import resource
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from datetime import date
from typing import Any

import numpy as np

from functions.common import keys
from functions.common.storage import LocalStorage, put_json
from functions.transform.csv_gz import csv_bytes, gzip_bytes, to_csv_gz
from functions.transform.handler import run as handler_run
from functions.transform.transform import transform

SNAPSHOT = "bench-transform"
RUN = "bench-run"
DAY = date(2026, 11, 23)
FETCHED_AT = "2026-11-23T08:00:00+00:00"


def synthetic_market(coins: int, seed: int = 7) -> list[dict[str, Any]]:
    """A CoinGecko-shaped /coins/markets list, sorted by market cap (rank 1 first)."""
    rng = np.random.default_rng(seed)
    caps = np.sort(rng.pareto(1.1, coins) * 1e6 + 1e4)[::-1]
    prices = rng.lognormal(0, 3, coins)
    volumes = caps * rng.uniform(0.001, 0.5, coins)
    change = rng.normal(0, 5, coins)
    max_null = rng.random(coins) < 0.45
    h24_null = rng.random(coins) < 0.03
    roi = rng.random(coins) < 0.15
    exp_str = rng.random(coins) < 0.02
    rows: list[dict[str, Any]] = []
    for i in range(coins):
        price = float(prices[i])
        supply = float(caps[i] / price)
        rows.append(
            {
                "id": f"coin-{i:06d}",
                "symbol": f"c{i % 5000}",  # symbols collide; ids do not
                "name": f"Coin {i}",
                "image": f"https://assets.example/coins/images/{i}/large/coin.png",
                "current_price": f"{price:.6e}" if exp_str[i] else price,
                "market_cap": int(caps[i]),
                "market_cap_rank": i + 1,
                "fully_diluted_valuation": None if max_null[i] else int(caps[i] * 1.3),
                "total_volume": float(volumes[i]),
                "high_24h": None if h24_null[i] else price * 1.05,
                "low_24h": None if h24_null[i] else price * 0.95,
                "price_change_24h": None if h24_null[i] else price * change[i] / 100,
                "price_change_percentage_24h": None if h24_null[i] else float(change[i]),
                "market_cap_change_24h": float(caps[i] * change[i] / 100),
                "market_cap_change_percentage_24h": float(change[i]),
                "circulating_supply": supply,
                "total_supply": supply * 1.2,
                "max_supply": None if max_null[i] else supply * 1.3,
                "ath": price * 3,
                "ath_change_percentage": -66.6,
                "ath_date": "2021-11-10T14:24:11.849Z",
                "atl": price / 10,
                "atl_change_percentage": 900.0,
                "atl_date": "2015-10-20T00:00:00.000Z",
                "roi": (
                    {
                        "times": float(change[i]),
                        "currency": "usd",
                        "percentage": float(change[i] * 100),
                    }
                    if roi[i]
                    else None
                ),
                "last_updated": f"2026-11-23T07:{i % 60:02d}:{i * 7 % 60:02d}.{i % 1000:03d}Z",
            }
        )
    for i in range(0, coins, 997):  # a few rows to reject
        rows[i]["total_volume"] = -1.0
    return rows


def paginate(rows: list[dict[str, Any]], per_page: int) -> list[list[dict[str, Any]]]:
    """Pages of ``per_page``; each page repeats the previous page's last coin (a rank shift)."""
    pages = [rows[i : i + per_page] for i in range(0, len(rows), per_page)]
    for n in range(1, len(pages)):
        pages[n] = [pages[n - 1][-1], *pages[n][:-1]] if len(pages[n]) > 1 else pages[n]
    return pages


def best_of(repeat: int, fn: Callable[[], Any]) -> tuple[float, Any]:
    best, result = float("inf"), None
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result


def peak_python_mb(fn: Callable[[], Any]) -> float:
    tracemalloc.start()
    try:
        fn()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return peak / 2**20


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--coins", type=int, default=20_000)
    parser.add_argument("--per-page", type=int, default=250)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args(argv)

    pages = paginate(synthetic_market(args.coins), args.per_page)
    bodies = [json.dumps(p).encode() for p in pages]
    manifest = {
        "snapshot_id": SNAPSHOT,
        "vs_currency": "usd",
        "max_coins": args.coins * 2,
        "pages": [
            {"page": n, "key": f"p{n}", "count": len(p)} for n, p in enumerate(pages, start=1)
        ],
    }
    global_body = {
        "data": {
            "total_market_cap": {"usd": float(sum(r["market_cap"] for r in pages[0])) * 3},
            "total_volume": {"usd": 1e15},
        }
    }
    rows_in = sum(len(p) for p in pages)
    raw_mb = sum(len(b) for b in bodies) / 2**20

    def parse() -> list[Any]:
        return [json.loads(b) for b in bodies]

    parsed = parse()

    def run_transform() -> Any:
        return transform(
            manifest,
            parsed,
            global_body,
            snapshot_id=SNAPSHOT,
            fetched_at=FETCHED_AT,
            fetch_date=DAY,
            vs_currency="usd",
        )

    t_parse, _ = best_of(args.repeat, parse)
    t_transform, result = best_of(args.repeat, run_transform)
    t_csv, text = best_of(args.repeat, lambda: csv_bytes(result.processed))
    t_gzip, _ = best_of(args.repeat, lambda: gzip_bytes(text))
    t_write, data = best_of(args.repeat, lambda: to_csv_gz(result.processed))

    with tempfile.TemporaryDirectory(prefix="transform-bench-") as tmp:
        lake = LocalStorage(tmp, bucket="crypto-etl-bench")
        prefix = keys.raw_prefix(SNAPSHOT, DAY, RUN)
        entries = []
        for n, body in enumerate(bodies, start=1):
            lake.put_bytes(keys.page_key(prefix, n), body)
            entries.append(
                {
                    "page": n,
                    "key": keys.page_key(prefix, n),
                    "count": len(pages[n - 1]),
                    "sha256": hashlib.sha256(body).hexdigest(),  # the handler verifies it
                }
            )
        put_json(lake, keys.global_key(prefix), global_body)
        put_json(lake, keys.manifest_key(prefix), {**manifest, "pages": entries})
        event = {
            "snapshot_id": SNAPSHOT,
            "run_id": RUN,
            "fetched_at": FETCHED_AT,
            "fetch_date": DAY.isoformat(),
            "partition_date": DAY.isoformat(),
            "vs_currency": "usd",
            "bucket": lake.bucket,
            "raw_prefix": prefix,
            "manifest_key": keys.manifest_key(prefix),
            "global_key": keys.global_key(prefix),
            "global_error": None,
            "max_coins": args.coins * 2,
        }
        logging.getLogger("transform").setLevel(logging.WARNING)  # keep the output readable
        t_handler, _ = best_of(args.repeat, lambda: handler_run(event, storage=lake))
        mem_handler = peak_python_mb(lambda: handler_run(event, storage=lake))

    mem_transform = peak_python_mb(run_transform)
    mem_floor = peak_python_mb(
        lambda: gzip_bytes(b"".join(json.dumps(p).encode() for p in parse()))
    )
    floor = t_parse + t_gzip
    q = result.quality
    print(f"synthetic market: {args.coins} coins, {len(pages)} pages of {args.per_page}")
    print(f"  rows in {rows_in}, out {q['rows_out']}, rejected {q['rejected']},", end=" ")
    gz_mb = len(data) / 2**20
    print(f"duplicates {q['duplicates']}; raw JSON {raw_mb:.1f} MiB, CSV.gz {gz_mb:.2f} MiB")
    print(f"best of {args.repeat}:")
    rows = [
        ("parse JSON (json.loads, all pages)", t_parse, None),
        ("transform (pure, pandas)", t_transform, mem_transform),
        ("encode CSV text", t_csv, None),
        ("gzip CSV text", t_gzip, None),
        ("encode CSV + gzip (to_csv_gz)", t_write, None),
        ("I/O floor = parse JSON + gzip", floor, mem_floor),
        ("parse + transform + to_csv_gz", t_parse + t_transform + t_write, None),
        ("handler end to end (folder lake)", t_handler, mem_handler),
    ]
    for label, seconds, mem in rows:
        extra = f"  peak py mem {mem:7.1f} MiB" if mem is not None else ""
        print(f"  {label:<38} {seconds * 1000:8.1f} ms  {rows_in / seconds:>11,.0f} rows/s{extra}")
    ratio = (t_parse + t_transform + t_write) / floor
    print(f"  transform path / I/O floor: {ratio:.2f}x")
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"  process peak RSS: {rss:.0f} MiB")


if __name__ == "__main__":
    main()
