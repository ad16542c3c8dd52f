"""``crypto-etl``: run the pipeline on one machine, query the warehouse, show the latest snapshot.

The commands live beside this module: ``run_command`` (``run``) and ``warehouse_commands``
(``sql``, ``show``); this module is the argument parser and the dispatch.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

from snowflake.connector.errors import Error as SnowflakeError

from functions.common.errors import CryptoEtlError
from local_mode.run_command import (
    DEFAULT_LOCAL_DIR,
    DEFAULT_OFFLINE_COINS,
    RunOptions,
    print_summary,
    run_pipeline,
)
from local_mode.warehouse_commands import SHOW_SQL, print_rows, query


def _int_range(low: int, high: int) -> Any:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from exc
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{value} is not in {low}-{high}")
        return value

    return parse


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="crypto-etl",
        description="CoinGecko -> S3 -> Snowflake pipeline, run locally.",
    )
    parser.add_argument(
        "--local-dir",
        type=Path,
        default=DEFAULT_LOCAL_DIR,
        help="where the local lake and warehouse live (default: .local)",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the pipeline once, end to end")
    src = run.add_mutually_exclusive_group()
    src.add_argument(
        "--offline",
        action="store_true",
        help="serve a deterministic synthetic market from a local replay server",
    )
    src.add_argument(
        "--replay",
        type=Path,
        metavar="DIR",
        help="serve recorded bodies DIR/markets-page-0001.json … (+ optional global.json)",
    )
    run.add_argument(
        "--coins",
        type=_int_range(1, 100_000),
        default=DEFAULT_OFFLINE_COINS,
        help="with --offline: coins in the synthetic market (default 1000)",
    )
    run.add_argument("--snapshot-id", help="snapshot id (default: local-<UTC timestamp>)")
    run.add_argument(
        "--max-coins",
        type=_int_range(1, 100_000),
        help="stop after this many coins (default 1000; offline: --coins)",
    )
    run.add_argument("--vs-currency", help="quote currency (default usd)")
    run.add_argument(
        "--per-page",
        type=_int_range(1, 250),
        help="page size, 1-250 (default 250; --replay: the recording's page size)",
    )
    run.add_argument("-v", "--verbose", action="store_true", help="show the handlers' JSON logs")

    sql = sub.add_parser("sql", help="run a SQL statement against the warehouse")
    sql.add_argument("statement")
    sql.add_argument("--json", action="store_true", help="print a JSON array of objects")
    sql.add_argument(
        "--remote",
        action="store_true",
        help="query the Snowflake account configured by SNOWFLAKE_* variables, not the local one",
    )

    show = sub.add_parser("show", help="the latest snapshot's top coins by market cap")
    show.add_argument("--limit", type=_int_range(1, 10_000), default=10)
    show.add_argument("--json", action="store_true")
    show.add_argument("--remote", action="store_true", help="as for sql")
    return parser


def main(argv: Sequence[str] | None = None, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    args = build_parser().parse_args(argv)
    try:
        if args.command == "run":
            opts = RunOptions(
                local_dir=args.local_dir,
                offline=args.offline,
                coins=args.coins,
                replay_dir=args.replay,
                snapshot_id=args.snapshot_id,
                max_coins=args.max_coins,
                vs_currency=args.vs_currency,
                per_page=args.per_page,
                verbose=args.verbose,
            )
            report = run_pipeline(opts, out)
            print_summary(report, out)
            return 0 if report.status == "SUCCEEDED" else 1
        if args.command == "sql":
            columns, rows = query(args.local_dir, args.statement, args.remote)
            print_rows(columns, rows, args.json, out)
            return 0
        if args.command == "show":
            columns, rows = query(
                args.local_dir, SHOW_SQL.format(limit=int(args.limit)), args.remote
            )
            if not rows and not args.json:
                print("No snapshot loaded yet: run `crypto-etl run --offline` first.", file=out)
                return 1
            print_rows(columns, rows, args.json, out)
            return 0
    except CryptoEtlError as exc:
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    except SnowflakeError as exc:
        msg = getattr(exc, "raw_msg", None) or str(exc)
        if args.command == "show" and "does not exist" in msg:
            print("No snapshot loaded yet: run `crypto-etl run --offline` first.", file=out)
            return 1
        print(f"error: the warehouse refused the statement: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted (local services stopped)", file=sys.stderr)
        return 130
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
