"""Bulk load (PUT + COPY + one transaction) vs row-by-row INSERTs, through the local warehouse.

Usage: python benchmarks/load_bench.py [--rows 1000 10000] [--row-by-row 200]

Prints measured figures only: wall time of each load, per-step timings, rows per second.
The row-by-row path (``executemany`` of one INSERT per row into the same table) is timed on a
sample and its per-row cost reported (row-by-row inserts through the emulator are slow).
"""

from __future__ import annotations

import argparse
import csv
import gzip
import io
import random
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from functions.common.schema import COLUMN_NAMES, PROCESSED_COLUMNS, TIMESTAMP_FORMAT
from functions.load import sql
from functions.load.loader import ensure_objects, load_snapshot
from functions.load.sql import Names
from local_mode.warehouse import LocalWarehouse


def synthetic_rows(n: int, snapshot_id: str, seed: int = 1) -> list[list[object]]:
    rng = random.Random(seed)
    fetched = datetime(2024, 5, 1, 12, tzinfo=UTC)
    rows = []
    for i in range(n):
        values: dict[str, object] = {}
        for name, _, kind in PROCESSED_COLUMNS:
            if kind == "float":
                values[name] = rng.lognormvariate(10, 3)
            elif kind == "int":
                values[name] = i + 1
            elif kind == "timestamp":
                values[name] = fetched.strftime(TIMESTAMP_FORMAT)
            elif kind == "date":
                values[name] = fetched.date().isoformat()
            else:
                values[name] = f"{name}-{i}"
        values.update(snapshot_id=snapshot_id, coin_id=f"coin-{i}", vs_currency="usd")
        values.update(dominance_basis="global")
        rows.append([values[c] for c in COLUMN_NAMES])
    return rows


def write_file(path: Path, rows: list[list[object]]) -> Path:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(COLUMN_NAMES)
    writer.writerows([repr(v) if isinstance(v, float) else v for v in r] for r in rows)
    path.write_bytes(gzip.compress(buf.getvalue().encode()))
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--row-by-row", type=int, default=200, help="sample size (0: skip)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp, LocalWarehouse(Path(tmp) / "wh") as wh:
        conn = wh.connect()
        names = Names()
        t0 = time.perf_counter()
        ensure_objects(conn, names)
        print(f"ensure_objects (3 tables, 4 views): {time.perf_counter() - t0:.3f}s")
        for n in args.rows:
            path = write_file(Path(tmp) / f"bulk-{n}.csv.gz", synthetic_rows(n, f"bulk-{n}"))
            for attempt in ("first load", "reload (replace)"):
                t0 = time.perf_counter()
                res = load_snapshot(
                    conn, local_file=path, snapshot_id=f"bulk-{n}", row_count=n, names=names
                )
                took = time.perf_counter() - t0
                steps = ", ".join(f"{k} {v * 1000:.0f}ms" for k, v in res.timings.items())
                print(
                    f"bulk {n:>6} rows, {attempt:<16}: {took:.3f}s ({n / took:,.0f} rows/s;"
                    f" {len(res.timings)} statements) inserted={res.rows_inserted}"
                    f" replaced={res.rows_replaced}\n    {steps}"
                )
        if args.row_by_row:
            n = args.row_by_row
            rows = synthetic_rows(n, "row-by-row")
            cols = sql.DATA_COLUMN_NAMES
            placeholders = ", ".join(["%s"] * (len(cols) + 1))
            insert = (
                f"INSERT INTO {names.q(sql.CRYPTO_DATA)} ({', '.join(cols)}, LOADED_AT)"
                f" VALUES ({placeholders})"
            )
            now = datetime.now(UTC).strftime(TIMESTAMP_FORMAT)
            with conn.cursor() as cur:
                t0 = time.perf_counter()
                cur.executemany(insert, [(*r, now) for r in rows])
                took = time.perf_counter() - t0
            print(
                f"row-by-row {n} rows (executemany): {took:.3f}s = {took / n * 1000:.1f} ms/row"
                f" -> 10,000 rows would take ~{took / n * 10000:.0f}s"
            )
        conn.close()


if __name__ == "__main__":
    main()
