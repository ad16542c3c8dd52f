"""``crypto-etl``: run the pipeline on one machine, query the warehouse, show the latest snapshot.

This module is the argument parser and the one place errors become messages and exit codes.
Each command lives in its own module, which adds its sub-parser with ``register(subparsers)``
and sets ``func(args, out) -> exit code`` on it: ``run_command`` (``run``),
``warehouse_commands`` (``sql``, ``show``, ``runs``, ``rebuild``), ``looker_command``
(``looker``), ``dashboard`` (``dashboard``), ``aws_command`` (``aws run``) and
``backfill_command`` (``backfill``).

Exit codes: 0 success, 1 the execution failed (or nothing to show), 2 bad arguments, paths or
configuration, 130 interrupted.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

from functions.common.errors import CryptoEtlError

EXIT_CODES = """exit codes:
  0    success
  1    the execution failed (the failing state and error are printed), or nothing to show
  2    bad arguments, paths or configuration
  130  interrupted (Ctrl-C)
"""


def build_parser() -> argparse.ArgumentParser:
    """The ``crypto-etl`` parser with every command's sub-parser."""
    # Imported here, inside main()'s Ctrl-C guard: they pull in the Snowflake connector,
    # pandas and pyarrow (~1 s), and a Ctrl-C meanwhile must not print a traceback.
    from local_mode import (
        aws_command,
        backfill_command,
        dashboard,
        looker_command,
        run_command,
        warehouse_commands,
    )
    from local_mode.run_command import DEFAULT_LOCAL_DIR

    parser = argparse.ArgumentParser(
        prog="crypto-etl",
        description="CoinGecko -> S3 -> Snowflake pipeline, run locally.",
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--local-dir",
        type=Path,
        default=DEFAULT_LOCAL_DIR,
        help="where the local lake and warehouse live (default: .local, or CRYPTO_ETL_LOCAL_DIR)",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    run_command.register(sub)
    warehouse_commands.register(sub)
    looker_command.register(sub)
    dashboard.register(sub)
    aws_command.register(sub)
    backfill_command.register(sub)
    return parser


def main(argv: Sequence[str] | None = None, out: TextIO | None = None) -> int:
    """Parse ``argv``, run the command, and turn every expected failure into one line + a code."""
    try:
        return _main(argv, out or sys.stdout)
    except KeyboardInterrupt:  # also while the commands' modules are still being imported
        print("interrupted (local services stopped)", file=sys.stderr)
        return 130


def _main(argv: Sequence[str] | None, out: TextIO) -> int:
    from snowflake.connector.errors import Error as SnowflakeError

    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args, out))
    except CryptoEtlError as exc:
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    except SnowflakeError as exc:
        msg = getattr(exc, "raw_msg", None) or str(exc)
        print(f"error: the warehouse refused the statement: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
