"""The warehouse side of the CLI: connections, ``sql``, ``show`` and table/JSON output."""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TextIO

from snowflake.connector.errors import Error as SnowflakeError


@contextmanager
def warehouse_connection(local_dir: Path, remote: bool = False) -> Iterator[Any]:
    """The local warehouse, or with ``remote`` the Snowflake configured by SNOWFLAKE_* vars."""
    if remote:
        from functions.load.config import SnowflakeConfig
        from functions.load.connection import connect

        conn = connect(SnowflakeConfig.from_env(os.environ))
        try:
            yield conn
        finally:
            conn.close()
        return
    from local_mode.warehouse import LocalWarehouse

    warehouse_dir = (local_dir / "warehouse").resolve()
    warehouse_dir.mkdir(parents=True, exist_ok=True)
    with LocalWarehouse(warehouse_dir) as wh:
        conn = wh.connect()
        try:
            yield conn
        finally:
            conn.close()


def query(
    local_dir: Path, sql: str, remote: bool = False
) -> tuple[list[str], list[tuple[Any, ...]]]:
    """Run one statement and return (column names, rows)."""
    with warehouse_connection(local_dir, remote) as conn:
        cur = conn.cursor()
        try:
            cur.execute(sql)
            columns = [d[0] for d in (cur.description or [])]
            rows = cur.fetchall() if cur.description else []
        finally:
            cur.close()
    return columns, [tuple(r) for r in rows]


def _fmt(value: Any) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, float):
        if abs(value) >= 1e6:
            return f"{value:,.0f}"
        return f"{value:.6g}"
    return str(value)


def print_table(columns: Sequence[str], rows: Sequence[Sequence[Any]], out: TextIO) -> None:
    cells = [[_fmt(v) for v in row] for row in rows]
    widths = [len(c) for c in columns]
    for row in cells:
        widths = [max(w, len(v)) for w, v in zip(widths, row, strict=True)]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)), file=out)
    print("  ".join("-" * w for w in widths), file=out)
    for row in cells:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)), file=out)
    print(f"({len(rows)} row{'s' if len(rows) != 1 else ''})", file=out)


def _json_default(value: Any) -> Any:
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return str(value)


SHOW_SQL = """
SELECT MARKET_CAP_RANK AS RANK, NAME, UPPER(SYMBOL) AS SYMBOL, CURRENT_PRICE AS PRICE,
       MARKET_CAP, MARKET_CAP_DOMINANCE_PCT AS DOMINANCE_PCT, VOLUME_PCT,
       PRICE_CHANGE_PERCENTAGE_24H AS CHANGE_24H_PCT
FROM CRYPTO_DATA
WHERE SNAPSHOT_ID = (SELECT SNAPSHOT_ID FROM CRYPTO_DATA ORDER BY FETCHED_AT DESC,
                     LOADED_AT DESC LIMIT 1)
ORDER BY MARKET_CAP DESC NULLS LAST
LIMIT {limit}
"""


def print_rows(
    columns: Sequence[str], rows: Sequence[Sequence[Any]], as_json: bool, out: TextIO
) -> None:
    if as_json:
        objs = [dict(zip(columns, row, strict=True)) for row in rows]
        print(json.dumps(objs, default=_json_default, indent=2), file=out)
    else:
        print_table(columns, rows, out)


NO_SNAPSHOT = "No snapshot loaded yet: run `crypto-etl run --offline` first."


def register(sub: Any) -> None:
    """Add ``sql`` and ``show`` to the CLI's sub-parsers."""
    from local_mode.run_command import int_range

    sql = sub.add_parser("sql", help="run a SQL statement against the warehouse")
    sql.add_argument("statement")
    sql.add_argument("--json", action="store_true", help="print a JSON array of objects")
    sql.add_argument(
        "--remote",
        action="store_true",
        help="query the Snowflake account configured by SNOWFLAKE_* variables, not the local one",
    )
    sql.set_defaults(func=sql_cli)

    show = sub.add_parser("show", help="the latest snapshot's top coins by market cap")
    show.add_argument("--limit", type=int_range(1, 10_000), default=10)
    show.add_argument("--json", action="store_true")
    show.add_argument("--remote", action="store_true", help="as for sql")
    show.set_defaults(func=show_cli)


def sql_cli(args: argparse.Namespace, out: TextIO) -> int:
    """``crypto-etl sql``: run the statement and print its rows."""
    columns, rows = query(args.local_dir, args.statement, args.remote)
    print_rows(columns, rows, args.json, out)
    return 0


def show_cli(args: argparse.Namespace, out: TextIO) -> int:
    """``crypto-etl show``: the latest snapshot's top coins (1 when there is none)."""
    try:
        columns, rows = query(args.local_dir, SHOW_SQL.format(limit=int(args.limit)), args.remote)
    except SnowflakeError as exc:
        if "does not exist" not in (getattr(exc, "raw_msg", None) or str(exc)):
            raise
        rows, columns = [], []
    if not rows and not args.json:
        print(NO_SNAPSHOT, file=out)
        return 1
    print_rows(columns, rows, args.json, out)
    return 0
