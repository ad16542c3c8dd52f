"""Bulk load (PUT + COPY + one transaction) vs INSERTs, through the local warehouse (fakesnow).

Usage: python benchmarks/load_bench.py [--rows 1000 10000 100000] [--multi-row 1000]
                                       [--per-row 100]

Three paths into the same CRYPTO_DATA table, side by side:

* bulk: ``functions.load.loader.load_snapshot`` (the Load Lambda's path) at each ``--rows``,
  first load and reload (replace);
* ``executemany`` (one multi-row INSERT): what looks row-by-row but is not — the Snowflake
  connector rewrites an ``executemany`` of an INSERT ... VALUES into ONE multi-row INSERT
  (its ``cursor.executemany``); on a sample of ``--multi-row`` rows;
* one INSERT per row: a ``cursor.execute`` per row (autocommit), the true row-by-row
  baseline, on a sample of ``--per-row`` rows, extrapolated to each N.

Every path's SQL statements are counted by wrapping the connector's ``cursor.execute`` (the
statements the client sends; the emulator has no QUERY_HISTORY): bulk's count must be the same
at every N. Prints measured figures only (seconds, rows/s, ms/row, statements).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import gzip
import io
import random
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from snowflake.connector.cursor import SnowflakeCursorBase

from functions.common.log import get_logger
from functions.common.schema import COLUMN_NAMES, PROCESSED_COLUMNS, TIMESTAMP_FORMAT
from functions.load import sql
from functions.load.loader import ensure_objects, load_snapshot
from functions.load.sql import Names
from local_mode.warehouse import LocalWarehouse


def synthetic_rows(n: int, snapshot_id: str, seed: int = 1) -> list[list[object]]:
    """``n`` processed rows (COLUMN_NAMES order) of plausible values for ``snapshot_id``."""
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
    """The rows as a gzip'd processed CSV (header, floats at full precision)."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(COLUMN_NAMES)
    writer.writerows([repr(v) if isinstance(v, float) else v for v in r] for r in rows)
    path.write_bytes(gzip.compress(buf.getvalue().encode()))
    return path


@contextlib.contextmanager
def counting_statements() -> Iterator[Counter[str]]:
    """Count every ``cursor.execute`` the connector runs (by first SQL word) while inside.

    Wraps ``SnowflakeCursorBase.execute``, so ``executemany``'s own rewritten INSERT is counted
    too (it calls ``execute`` once for the whole batch).
    """
    counts: Counter[str] = Counter()
    original: Callable[..., Any] = SnowflakeCursorBase.execute

    def execute(self: Any, command: str, *args: Any, **kwargs: Any) -> Any:
        counts[command.split(None, 1)[0].upper() if command.strip() else "?"] += 1
        return original(self, command, *args, **kwargs)

    SnowflakeCursorBase.execute = execute  # type: ignore[method-assign]
    try:
        yield counts
    finally:
        SnowflakeCursorBase.execute = original  # type: ignore[method-assign]


def _insert_sql(names: Names) -> str:
    cols = sql.DATA_COLUMN_NAMES
    placeholders = ", ".join(["%s"] * (len(cols) + 1))
    return (
        f"INSERT INTO {names.q(sql.CRYPTO_DATA)} ({', '.join(cols)}, LOADED_AT)"
        f" VALUES ({placeholders})"
    )


def _fmt_counts(counts: Counter[str]) -> str:
    return f"{sum(counts.values())} ({', '.join(f'{k} {v}' for k, v in sorted(counts.items()))})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[1000, 10000, 100000])
    parser.add_argument(
        "--multi-row", type=int, default=1000, help="executemany sample size (0: skip)"
    )
    parser.add_argument(
        "--per-row", type=int, default=100, help="one-INSERT-per-row sample size (0: skip)"
    )
    args = parser.parse_args()
    get_logger("load").setLevel("WARNING")  # the loader's JSON lines would bury the figures

    bulk: dict[int, tuple[float, float, int]] = {}  # n -> (first s, reload s, statements)
    with tempfile.TemporaryDirectory() as tmp, LocalWarehouse(Path(tmp) / "wh") as wh:
        conn = wh.connect()
        names = Names()
        t0 = time.perf_counter()
        ensure_objects(conn, names)
        print(f"ensure_objects (3 tables, {len(sql.VIEWS)} views): {time.perf_counter() - t0:.3f}s")
        print("\nbulk (PUT + COPY + one transaction), the Load Lambda's path:")
        for n in args.rows:
            path = write_file(Path(tmp) / f"bulk-{n}.csv.gz", synthetic_rows(n, f"bulk-{n}"))
            took: list[float] = []
            statements: list[int] = []
            for attempt in ("first load", "reload (replace)"):
                with counting_statements() as counts:
                    t0 = time.perf_counter()
                    res = load_snapshot(
                        conn, local_file=path, snapshot_id=f"bulk-{n}", row_count=n, names=names
                    )
                    took.append(time.perf_counter() - t0)
                statements.append(sum(counts.values()))
                steps = ", ".join(f"{k} {v * 1000:.0f}ms" for k, v in res.timings.items())
                print(
                    f"  {n:>7,} rows, {attempt:<16}: {took[-1]:7.3f}s ({n / took[-1]:>9,.0f}"
                    f" rows/s) inserted={res.rows_inserted} replaced={res.rows_replaced};"
                    f" statements {_fmt_counts(counts)}\n      {steps}"
                )
            bulk[n] = (took[0], took[1], statements[0])

        multi: tuple[int, float, int] | None = None
        if args.multi_row:
            n = args.multi_row
            params = [(*r, "2024-05-01 12:00:00.000000+00:00") for r in synthetic_rows(n, "multi")]
            with conn.cursor() as cur, counting_statements() as counts:
                t0 = time.perf_counter()
                cur.executemany(_insert_sql(names), params)
                multi = (n, time.perf_counter() - t0, sum(counts.values()))
            print(
                f"\nexecutemany (one multi-row INSERT), {n:,} rows: {multi[1]:.3f}s"
                f" ({n / multi[1]:,.0f} rows/s); statements {_fmt_counts(counts)}"
            )

        per_row: tuple[int, float, int] | None = None
        if args.per_row:
            n = args.per_row
            params = [(*r, "2024-05-01 12:00:00.000000+00:00") for r in synthetic_rows(n, "row")]
            insert = _insert_sql(names)
            with conn.cursor() as cur, counting_statements() as counts:
                t0 = time.perf_counter()
                for p in params:
                    cur.execute(insert, p)
                per_row = (n, time.perf_counter() - t0, sum(counts.values()))
            print(
                f"\none INSERT per row (cursor.execute each, autocommit), {n:,} rows:"
                f" {per_row[1]:.3f}s = {per_row[1] / n * 1000:.1f} ms/row;"
                f" statements {_fmt_counts(counts)}"
            )
        conn.close()

    print("\nside by side (bulk measured; executemany and per-row extrapolated from their sample)")
    head = (
        f"{'rows':>8} | {'bulk s':>8} {'reload s':>8} {'stmts':>5} | {'multi-row s':>11}"
        f" {'stmts':>5} | {'per-row s':>9} {'stmts':>7} | {'per-row / bulk':>14}"
    )
    print(head)
    print("-" * len(head))
    for n, (first, reload, stmts) in bulk.items():
        m = f"{multi[1] / multi[0] * n:>11.1f} {1:>5}" if multi else f"{'-':>11} {'-':>5}"
        if per_row:
            est = per_row[1] / per_row[0] * n
            p = f"{est:>9.0f} {n:>7,} | {est / first:>13.0f}x"
        else:
            p = f"{'-':>9} {'-':>7} | {'-':>14}"
        print(f"{n:>8,} | {first:>8.3f} {reload:>8.3f} {stmts:>5} | {m} | {p}")
    counts_by_n = {n: s for n, (_, _, s) in bulk.items()}
    constant = len(set(counts_by_n.values())) == 1
    listing = ", ".join(f"{n:,}: {s}" for n, s in counts_by_n.items())
    print(
        f"\nbulk statements per load by N ({listing}) -> constant in N:"
        f" {'yes' if constant else 'NO'} (target: constant)"
    )
    if multi:
        print(
            f"executemany sent {multi[2]} statement(s) for {multi[0]:,} rows: the connector"
            " rewrites it into one multi-row INSERT, so it is not a row-by-row baseline"
        )


if __name__ == "__main__":
    main()
