"""Transform benchmark: the handler against its I/O floor, and a fresh process's peak RSS.

    .venv/bin/python benchmarks/transform_bench.py [--coins 1000,20000,100000] [--repeat 3]

For each market size, on a folder lake holding the raw pages (250 a page, as the Extract writes
them), it prints:

* handler: ``functions.transform.handler.run`` end to end (manifest, pages with their SHA-256
  check, /global, transform, processed + rejected CSV.gz, the parse-back check, the writes);
* floor: the work no transform can avoid: read the same raw pages and parse them with orjson,
  then write the same rows and columns in the same format (every text quoted, numbers bare,
  NULL empty) with the csv module, gzip it at the handler's level and write it to the lake
  (no validation, no cleaning, no rejected file, no parse-back);
* their ratio (target <= 1.5 at 20k and 100k coins), best of ``--repeat`` each, interleaved
  so both see the same machine load;
* the peak RSS (``VmHWM``, see ``peak_rss_bytes``) of a fresh Python process that imports the
  handler and runs it once, imports included (targets: <= 250 MB at 20k, <= 450 MB at 100k;
  MB = 10^6 bytes), and the same for the floor.

The market is generated here (deterministic, seeded; labelled synthetic): heavy-tailed caps,
~45% null max_supply, some null 24h fields, ~15% roi objects, exponent-notation strings, ranks
shifting between pages (duplicate ids) and a few rows to reject.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import hashlib
import io
import json
import logging
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import orjson

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))

from functions.common import keys  # noqa: E402
from functions.common.schema import COLUMN_NAMES  # noqa: E402
from functions.common.storage import LocalStorage, put_json  # noqa: E402

SNAPSHOT = "bench-transform"
RUN = "bench-run"
DAY = date(2026, 11, 23)
FETCHED_AT = "2026-11-23T08:00:00+00:00"
BUCKET = "crypto-etl-bench"
RATIO_TARGET = 1.5
RSS_TARGET_MB = {20_000: 250, 100_000: 450}
FLOOR_KEY = "processed/floor/crypto_data.csv.gz"


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


def build_lake(root: str, coins: int, per_page: int) -> dict[str, Any]:
    """Write a synthetic market's raw pages, /global and manifest; return the Transform event."""
    pages = paginate(synthetic_market(coins), per_page)
    lake = LocalStorage(root, bucket=BUCKET)
    prefix = keys.raw_prefix(SNAPSHOT, DAY, RUN)
    entries = []
    for n, page in enumerate(pages, start=1):
        body = json.dumps(page).encode()
        lake.put_bytes(keys.page_key(prefix, n), body)
        entries.append(
            {
                "page": n,
                "key": keys.page_key(prefix, n),
                "count": len(page),
                "sha256": hashlib.sha256(body).hexdigest(),  # the handler verifies it
            }
        )
    caps = sum(r["market_cap"] for p in pages for r in p)
    global_body = {
        "data": {
            "active_cryptocurrencies": coins + coins // 100,
            "total_market_cap": {"usd": float(caps) * 1.02},
            "total_volume": {"usd": 1e15},
        }
    }
    put_json(lake, keys.global_key(prefix), global_body)
    manifest = {"snapshot_id": SNAPSHOT, "vs_currency": "usd", "max_coins": "all", "pages": entries}
    put_json(lake, keys.manifest_key(prefix), manifest)
    return {
        "snapshot_id": SNAPSHOT,
        "run_id": RUN,
        "fetched_at": FETCHED_AT,
        "fetch_date": DAY.isoformat(),
        "partition_date": DAY.isoformat(),
        "vs_currency": "usd",
        "bucket": BUCKET,
        "raw_prefix": prefix,
        "manifest_key": keys.manifest_key(prefix),
        "global_key": keys.global_key(prefix),
        "global_error": None,
        "max_coins": "all",
    }


# The processed columns taken straight from a raw coin (no cleaning): source field, or a
# constant of the run, or a part of roi; dominance is a bare division.
_SOURCE = {"coin_id": "id", "image_url": "image"}


def floor(lake: LocalStorage, event: dict[str, Any], level: int) -> int:
    """Read + orjson-parse the pages, write the same columns with csv + gzip at ``level``;
    return the rows."""
    manifest = orjson.loads(lake.get_bytes(event["manifest_key"]))
    total = orjson.loads(lake.get_bytes(event["global_key"]))["data"]["total_market_cap"]["usd"]
    const = {
        "snapshot_id": event["snapshot_id"],
        "fetched_at": event["fetched_at"],
        "fetch_date": event["fetch_date"],
        "vs_currency": event["vs_currency"],
        "dominance_basis": "global",
    }
    out = io.StringIO()
    # QUOTE_NONNUMERIC: every str quoted, numbers bare, None an empty field (Python 3.11).
    writer = csv.writer(out, lineterminator="\n", quoting=csv.QUOTE_NONNUMERIC)
    writer.writerow(COLUMN_NAMES)
    rows = 0
    for entry in manifest["pages"]:
        for coin in orjson.loads(lake.get_bytes(entry["key"])):
            roi = coin.get("roi") or {}
            cap = coin.get("market_cap")
            row = []
            for name in COLUMN_NAMES:
                if name in const:
                    row.append(const[name])
                elif name.startswith("roi_"):
                    row.append(roi.get(name[4:]))
                elif name in ("market_cap_dominance_pct", "volume_pct"):
                    row.append(cap / total * 100 if cap is not None else None)
                else:
                    row.append(coin.get(_SOURCE.get(name, name)))
            writer.writerow(row)
            rows += 1
    data = gzip.compress(out.getvalue().encode(), compresslevel=level, mtime=0)
    lake.put_bytes(FLOOR_KEY, data, "application/gzip")
    return rows


def peak_rss_bytes() -> int:
    """This process's peak RSS: ``VmHWM`` (Linux), else ``ru_maxrss``.

    ``ru_maxrss`` survives ``exec`` on Linux, so a child started by a big parent would report
    the parent's RSS at the fork; ``VmHWM`` belongs to the process's own address space.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def child(kind: str, root: str, level: str) -> None:
    """Run once in this fresh process and print {seconds, import_s, peak_rss_mb} as JSON."""
    started = time.perf_counter()
    if kind == "handler":
        from functions.transform.handler import run as handler_run
    imported = time.perf_counter()
    logging.getLogger("transform").setLevel(logging.ERROR)
    lake = LocalStorage(root, bucket=BUCKET)
    event = json.loads((Path(root) / "event.json").read_text())
    if kind == "handler":
        handler_run(event, storage=lake, min_pct=90.0)
    else:
        floor(lake, event, int(level))
    done = time.perf_counter()
    figures = {
        "seconds": done - imported,
        "import_s": imported - started,
        "peak_rss_mb": peak_rss_bytes() / 1e6,
    }
    print(json.dumps(figures))


def fresh(kind: str, root: str, level: int) -> dict[str, float]:
    """``child(kind, root, level)`` in a new interpreter (its own imports and peak RSS)."""
    proc = subprocess.run(
        [sys.executable, __file__, "--child", kind, root, str(level)],
        check=True,
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    return json.loads(proc.stdout.strip().splitlines()[-1])


def measure(coins: int, per_page: int, repeat: int) -> dict[str, Any]:
    from functions.transform.csv_gz import COMPRESS_LEVEL as level
    from functions.transform.handler import run as handler_run

    with tempfile.TemporaryDirectory(prefix="transform-bench-") as root:
        event = build_lake(root, coins, per_page)
        (Path(root) / "event.json").write_text(json.dumps(event))
        lake = LocalStorage(root, bucket=BUCKET)
        raw_mb = sum(p.stat().st_size for p in Path(root).rglob("*.json")) / 1e6
        logging.getLogger("transform").setLevel(logging.ERROR)  # keep the output readable
        handler_s = floor_s = float("inf")
        out: dict[str, Any] = {}
        for _ in range(repeat):  # interleaved: both see the same load on the machine
            t, out = best_of(1, lambda: handler_run(event, storage=lake, min_pct=90.0))
            handler_s = min(handler_s, t)
            t, _ = best_of(1, lambda: floor(lake, event, level))
            floor_s = min(floor_s, t)
        gz_mb = len(lake.get_bytes(out["processed_key"])) / 1e6
        return {
            "coins": coins,
            "rows": out["row_count"],
            "raw_mb": raw_mb,
            "gz_mb": gz_mb,
            "handler_s": handler_s,
            "floor_s": floor_s,
            "handler_fresh": fresh("handler", root, level),
            "floor_fresh": fresh("floor", root, level),
        }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--coins", default="1000,20000,100000", help="comma-separated sizes")
    parser.add_argument("--per-page", type=int, default=250)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument(
        "--child", nargs=3, metavar=("KIND", "LAKE", "LEVEL"), help=argparse.SUPPRESS
    )
    args = parser.parse_args(argv)
    if args.child:
        child(*args.child)
        return

    sizes = [int(n) for n in args.coins.split(",")]
    print(f"transform handler vs its I/O floor, best of {args.repeat} (synthetic market)")
    header = (
        f"{'coins':>7} {'rows':>7} {'raw MB':>7} {'gz MB':>6} {'handler s':>9} {'floor s':>8}"
        f" {'ratio':>6} {'target':>6}  {'RSS MB':>7} {'target':>7} {'floor RSS':>9}"
        f" {'import s':>8}"
    )
    print(header)
    for coins in sizes:
        m = measure(coins, args.per_page, args.repeat)
        ratio = m["handler_s"] / m["floor_s"]
        ratio_target = f"<={RATIO_TARGET}" if coins in RSS_TARGET_MB else "-"
        rss = m["handler_fresh"]["peak_rss_mb"]
        rss_target = f"<={RSS_TARGET_MB[coins]}" if coins in RSS_TARGET_MB else "-"
        print(
            f"{coins:>7} {m['rows']:>7} {m['raw_mb']:>7.1f} {m['gz_mb']:>6.2f}"
            f" {m['handler_s']:>9.3f} {m['floor_s']:>8.3f} {ratio:>6.2f} {ratio_target:>6}"
            f"  {rss:>7.0f} {rss_target:>7} {m['floor_fresh']['peak_rss_mb']:>9.0f}"
            f" {m['handler_fresh']['import_s']:>8.2f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
