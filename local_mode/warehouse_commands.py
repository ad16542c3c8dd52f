"""The warehouse side of the CLI: ``sql``, ``show``, ``runs`` (and ``rebuild``, registered here
from :mod:`local_mode.rebuild`), connections, and table/JSON output.

``sql`` runs one read-only statement unless ``--write`` is given (:mod:`local_mode.sql_guard`);
with ``--remote --write`` it asks for confirmation on a terminal, or needs ``--yes``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, date, datetime, time
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from snowflake.connector.errors import Error as SnowflakeError

from functions.common.errors import ValidationError
from local_mode import sql_guard
from local_mode.rebuild import REBUILD_SUFFIX, REBUILT_MARK

if TYPE_CHECKING:
    from functions.load.config import SnowflakeConfig

DEFAULT_VS_CURRENCY = "usd"
# The Transform's rule for vs_currency (functions/transform/handler.py _CURRENCY_RE).
_CURRENCY_RE = re.compile(r"[A-Za-z0-9_\-]{1,16}")

NO_SNAPSHOT = "No snapshot loaded yet: run `crypto-etl run --offline` first."
NO_RUNS = "No load recorded in ETL_RUNS yet: run `crypto-etl run --offline` first."


# --- connections -------------------------------------------------------------------------------


@contextmanager
def warehouse_connection(
    local_dir: Path, remote: bool = False, config: SnowflakeConfig | None = None
) -> Iterator[Any]:
    """A connection to the local warehouse (``<local_dir>/warehouse``), or with ``remote`` to
    the Snowflake account of ``config`` (a ``SnowflakeConfig``; default: the SNOWFLAKE_* vars).

    Raises LocalWarehouseError when the local folder is not a writable directory or the server
    does not start, ConfigError for incomplete SNOWFLAKE_* settings, LoadError when the
    connection is refused.
    """
    if remote:
        from functions.load.config import SnowflakeConfig
        from functions.load.connection import connect

        conn = connect(config or SnowflakeConfig.from_env(os.environ))
        try:
            yield conn
        finally:
            conn.close()
        return
    from local_mode.warehouse import LocalWarehouse

    with LocalWarehouse(Path(local_dir) / "warehouse") as wh:
        conn = wh.connect()
        try:
            yield conn
        finally:
            conn.close()


def fetch(
    conn: Any, sql: str, params: Mapping[str, Any] | None = None
) -> tuple[list[str], list[tuple[Any, ...]]]:
    """Execute one statement on ``conn``: (column names as the server gives them, rows)."""
    cur = conn.cursor()
    try:
        cur.execute(sql, dict(params) if params is not None else None)
        columns = [d[0] for d in (cur.description or [])]
        rows = cur.fetchall() if cur.description else []
    finally:
        cur.close()
    return columns, [tuple(r) for r in rows]


def query(
    local_dir: Path, sql: str, remote: bool = False
) -> tuple[list[str], list[tuple[Any, ...]]]:
    """Run one statement (no read-only check: callers pass their own SQL) -> (columns, rows)."""
    with warehouse_connection(local_dir, remote) as conn:
        return fetch(conn, sql)


# --- output --------------------------------------------------------------------------------------


def _fmt(value: Any) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, datetime):
        if value.tzinfo is not None:
            value = value.astimezone(UTC)
        return value.strftime("%Y-%m-%d %H:%M:%S")
    if isinstance(value, float):
        if math.isfinite(value) and abs(value) >= 1e6:
            return f"{value:,.0f}"
        return f"{value:.6g}"
    return _visible(str(value))


def _visible(text: str) -> str:
    """``text`` with control characters shown as escapes: data from CoinGecko must neither
    break a table row (CR, LF) nor drive the user's terminal (ESC sequences)."""
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in text)


def print_table(columns: Sequence[str], rows: Sequence[Sequence[Any]], out: TextIO) -> None:
    """Aligned columns, a rule, the rows (NULL for None; timestamps in UTC) and ``(N rows)``."""
    cells = [[_fmt(v) for v in row] for row in rows]
    widths = [len(c) for c in columns]
    for row in cells:
        widths = [max(w, len(v)) for w, v in zip(widths, row, strict=True)]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip(), file=out)
    print("  ".join("-" * w for w in widths), file=out)
    for row in cells:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip(), file=out)
    print(f"({len(rows)} row{'s' if len(rows) != 1 else ''})", file=out)


def json_value(value: Any) -> str:
    """One value as JSON text.

    None -> null; bool; int; float as a number, NaN and ±infinity as null (JSON has no such
    numbers); Decimal as a number with its exact digits (non-finite -> null); date, time and
    datetime as ISO-8601 strings; bytes as lower-case hex strings; anything else as its str().
    """
    if value is None or isinstance(value, bool):
        return json.dumps(value)
    if isinstance(value, int):
        return str(int(value))
    if isinstance(value, float):
        return float.__repr__(value) if math.isfinite(value) else "null"
    if isinstance(value, Decimal):
        return str(value) if value.is_finite() else "null"
    if isinstance(value, datetime | date | time):
        return json.dumps(value.isoformat())
    if isinstance(value, bytes | bytearray | memoryview):
        return json.dumps(bytes(value).hex())
    return json.dumps(value if isinstance(value, str) else str(value))


def rows_to_json(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A JSON array with one object per row, keyed by the column names as the server gives
    them (``SELECT COUNT(*) AS N`` -> ``"N"``, ``AS "Mixed"`` -> ``"Mixed"``), in column order.

    Raises ValidationError when two columns have the same name (one value would be lost).
    """
    repeated = sorted(c for c, n in Counter(columns).items() if n > 1)
    if repeated:
        raise ValidationError(
            "--json",
            f"the result has several columns named {', '.join(repeated)}; a JSON object keeps"
            " one value per name: give them distinct aliases (AS …)",
        )
    if not rows:
        return "[]"
    keys = [json.dumps(str(c)) for c in columns]
    objects = []
    for row in rows:
        members = ",\n".join(f"    {k}: {json_value(v)}" for k, v in zip(keys, row, strict=True))
        objects.append("  {\n" + members + "\n  }" if members else "  {}")
    return "[\n" + ",\n".join(objects) + "\n]"


def print_rows(
    columns: Sequence[str], rows: Sequence[Sequence[Any]], as_json: bool, out: TextIO
) -> None:
    """The rows as a table, or with ``as_json`` as :func:`rows_to_json`."""
    if as_json:
        print(rows_to_json(columns, rows), file=out)
    else:
        print_table(columns, rows, out)


# --- sql -----------------------------------------------------------------------------------------


def confirm_remote_write(
    verdict: sql_guard.Verdict,
    account: str,
    *,
    yes: bool,
    stdin: TextIO,
    prompt: TextIO,
) -> None:
    """Return when a statement that is not read-only may run on the Snowflake ``account``.

    ``yes`` (``--yes``) confirms it. Otherwise ``stdin`` must be a terminal, where the user
    types the account name (any case) or ``yes``. Raises ValidationError (nothing run) when
    stdin is not a terminal, or for any other answer (an empty one at end of input too).
    """
    if yes:
        return
    if not stdin.isatty():
        raise ValidationError(
            "--yes",
            f"{verdict.statement} on the Snowflake account {account} must be confirmed, and"
            " stdin is not a terminal: add --yes (nothing was run)",
        )
    print(
        f"About to run {verdict.statement} ({verdict.reason}) on the Snowflake account"
        f" {account}.\nType the account name or 'yes' to go on: ",
        end="",
        file=prompt,
        flush=True,
    )
    answer = stdin.readline().strip()
    if answer.lower() not in (account.lower(), "yes"):
        raise ValidationError(
            "confirmation",
            f"{answer!r} is neither the account name {account!r} nor 'yes' (nothing was run)",
        )


def sql_cli(args: argparse.Namespace, out: TextIO) -> int:
    """``crypto-etl sql``: check the statement, then run it and print its rows.

    Refused with ValidationError (exit 2, nothing run): an empty text, several statements, a
    statement that is not read-only without ``--write``, and with ``--remote --write`` an
    unconfirmed one (see :func:`confirm_remote_write`).
    """
    verdict = sql_guard.check(args.statement, write=args.write)
    config = None
    if args.remote:
        from functions.load.config import SnowflakeConfig

        config = SnowflakeConfig.from_env(os.environ)
        if not verdict.read_only:
            confirm_remote_write(
                verdict, config.account, yes=args.yes, stdin=sys.stdin, prompt=sys.stderr
            )
    with warehouse_connection(args.local_dir, args.remote, config) as conn:
        columns, rows = fetch(conn, args.statement)
    print_rows(columns, rows, args.json, out)
    return 0


# --- show ----------------------------------------------------------------------------------------

_SNAPSHOT_INFO = """
SELECT SNAPSHOT_ID, VS_CURRENCY, MIN(FETCHED_AT), MAX(FETCHED_AT), COUNT(*)
FROM CRYPTO_DATA
WHERE {where}
GROUP BY SNAPSHOT_ID, VS_CURRENCY
ORDER BY MAX(FETCHED_AT) DESC NULLS LAST, MAX(LOADED_AT) DESC, SNAPSHOT_ID DESC
LIMIT 1
"""

_TOP_COINS = """
SELECT MARKET_CAP_RANK, NAME, UPPER(SYMBOL), CURRENT_PRICE, MARKET_CAP,
       MARKET_CAP_DOMINANCE_PCT, VOLUME_PCT, PRICE_CHANGE_PERCENTAGE_24H
FROM CRYPTO_DATA
WHERE SNAPSHOT_ID = %(snapshot)s
ORDER BY MARKET_CAP DESC NULLS LAST, MARKET_CAP_RANK NULLS LAST, COIN_ID
LIMIT {limit}
"""


def show_headers(vs_currency: str, *, as_json: bool = False) -> list[str]:
    """``show``'s column names, with units: the quote currency's code (upper case) for prices
    and market caps, ``%`` (``_PCT`` in JSON keys) for shares and changes."""
    cur = vs_currency.upper()
    pct = "_PCT" if as_json else "_%"
    return [
        "RANK", "NAME", "SYMBOL", f"PRICE_{cur}", f"MARKET_CAP_{cur}",
        f"DOMINANCE{pct}", f"VOLUME{pct}", f"CHANGE_24H{pct}",
    ]  # fmt: skip


def _utc(value: Any) -> str:
    if isinstance(value, datetime):
        if value.tzinfo is not None:
            value = value.astimezone(UTC)
        return value.strftime("%Y-%m-%d %H:%M:%S UTC")
    return "unknown" if value is None else str(value)


def _nothing(why: str, as_json: bool, out: TextIO) -> int:
    """Nothing to show: say why (on stderr with ``--json``, where stdout gets ``[]``); 1."""
    if as_json:
        print(why, file=sys.stderr)
        print("[]", file=out)
    else:
        print(why, file=out)
    return 1


def _table_missing(exc: SnowflakeError) -> bool:
    return "does not exist" in (getattr(exc, "raw_msg", None) or str(exc))


def show_cli(args: argparse.Namespace, out: TextIO) -> int:
    """``crypto-etl show``: the top coins by market cap of one snapshot, and which one it is.

    The snapshot is ``--snapshot`` or else the latest (greatest FETCHED_AT, then LOADED_AT) of
    ``--vs-currency`` (default usd). Prints a line naming the snapshot, its currency, its
    FETCHED_AT and size, then the table (``--json``: only a JSON array whose objects also hold
    SNAPSHOT_ID, VS_CURRENCY and FETCHED_AT). Returns 1, saying why, when there is nothing to
    show.
    """
    currency = args.vs_currency.lower() if args.vs_currency else None
    if args.snapshot:
        where, params = "SNAPSHOT_ID = %(snapshot)s", {"snapshot": args.snapshot}
    else:
        currency = currency or DEFAULT_VS_CURRENCY
        where, params = "LOWER(VS_CURRENCY) = %(currency)s", {"currency": currency}
    with warehouse_connection(args.local_dir, args.remote) as conn:
        try:
            info = fetch(conn, _SNAPSHOT_INFO.format(where=where), params)[1]
        except SnowflakeError as exc:
            if not _table_missing(exc):
                raise
            return _nothing(NO_SNAPSHOT, args.json, out)
        if not info:
            loaded = [r[0] for r in fetch(conn, "SELECT DISTINCT VS_CURRENCY FROM CRYPTO_DATA")[1]]
            if args.snapshot:
                why = f"Snapshot {args.snapshot!r} is not in CRYPTO_DATA (see `crypto-etl runs`)."
            elif loaded:
                why = (
                    f"No snapshot with vs_currency {currency!r} is loaded (loaded:"
                    f" {', '.join(sorted(str(c) for c in loaded))}); use --vs-currency."
                )
            else:
                why = NO_SNAPSHOT
            return _nothing(why, args.json, out)
        ((snapshot, snap_currency, first, last, coins),) = info
        if currency and str(snap_currency).lower() != currency:
            why = f"Snapshot {snapshot!r} is quoted in {snap_currency!r}, not {currency!r}."
            return _nothing(why, args.json, out)
        rows = fetch(conn, _TOP_COINS.format(limit=int(args.limit)), {"snapshot": snapshot})[1]
    if args.json:
        extra = ["SNAPSHOT_ID", "VS_CURRENCY", "FETCHED_AT"]
        columns = extra + show_headers(str(snap_currency), as_json=True)
        print_rows(columns, [(snapshot, snap_currency, first, *r) for r in rows], True, out)
        return 0
    when = _utc(first) if first == last else f"{_utc(first)} … {_utc(last)}"
    print(
        f"Snapshot {snapshot} · vs_currency {snap_currency} · fetched at {when} ·"
        f" top {len(rows)} of {coins} coins by market cap",
        file=out,
    )
    print_table(show_headers(str(snap_currency)), rows, out)
    return 0


# --- runs ----------------------------------------------------------------------------------------

_RUNS = """
SELECT LOADED_AT, STATUS, SNAPSHOT_ID, VS_CURRENCY, COIN_COUNT, ROWS_LOADED, ROWS_INSERTED,
       ROWS_REPLACED, REJECTED_COUNT, FETCHED_AT, EXECUTION_ID, QUALITY{coverage}{failure}
FROM ETL_RUNS
ORDER BY LOADED_AT DESC, SNAPSHOT_ID DESC
LIMIT {limit}
"""
# The coverage columns (added by issue 13's load; a warehouse not loaded since lacks them).
_RUNS_COVERAGE = ", COIN_COVERAGE_PCT, MARKET_CAP_COVERAGE_PCT, COVERAGE_WARNING"
# A FAILED row's state and error (added by issue 14's load, likewise).
_RUNS_FAILURE = ", FAILED_STATE, ERROR_NAME, ERROR_MESSAGE"
MAX_EXECUTION_SECONDS = 3600  # the state machine's TimeoutSeconds
NOTE_ERROR_CHARS = 160  # a failed row's error message in NOTE (tables; --json has it whole)
RUNS_HEADERS = [
    "LOADED_AT", "STATUS", "SNAPSHOT_ID", "VS_CURRENCY", "COINS", "ROWS", "INSERTED",
    "REPLACED", "REJECTED", "COIN_COV_PCT", "MCAP_COV_PCT", "DURATION_S", "EXECUTION", "NOTE",
]  # fmt: skip


def _execution_name(execution_id: Any) -> Any:
    """The name part of an execution ARN (``arn:…:execution:<machine>:<name>``), without the
    ``#rebuild`` suffix of a rebuild's row."""
    if not isinstance(execution_id, str):
        return execution_id
    execution_id = execution_id.removesuffix(REBUILD_SUFFIX)
    if execution_id.startswith("arn:"):
        return execution_id.rsplit(":", 1)[-1]
    return execution_id


def _rebuilt(quality: Any) -> bool:
    if not isinstance(quality, str) or REBUILT_MARK not in quality:
        return False
    try:
        return isinstance(json.loads(quality), dict) and REBUILT_MARK in json.loads(quality)
    except ValueError:
        return False


def failure_note(state: Any, error: Any, message: Any, limit: int | None = None) -> str:
    """NOTE of a FAILED row: ``failed at <state>: <error>: <message>`` (message cut to
    ``limit`` characters, ending ``…``, when given)."""
    text = f"failed at {state or '?'}: {error or '?'}"
    if isinstance(message, str) and message:
        if limit is not None and len(message) > limit:
            message = message[: limit - 1] + "…"
        text += f": {message}"
    return text


def runs_rows(
    rows: Sequence[Sequence[Any]], note_limit: int | None = None
) -> list[tuple[Any, ...]]:
    """ETL_RUNS rows as selected by ``_RUNS`` -> the ``RUNS_HEADERS`` columns.

    DURATION_S is LOADED_AT - FETCHED_AT in seconds (from the Extract's fetch to the Load's
    commit stamp: the execution's duration up to the commit; for a FAILED row, up to when the
    failure was recorded, None when nothing was fetched); None for a row written by
    ``crypto-etl rebuild`` (NOTE says so), whose LOADED_AT is the rebuild's. COIN_COV_PCT and
    MCAP_COV_PCT are the coverage of /global's coins and market cap (%); a coverage warning
    goes to NOTE. A FAILED row's NOTE names the failed state, the error and its message (cut to
    ``note_limit`` characters when given).
    """
    result = []
    for row in rows:
        loaded, status, snap, cur, coins, n, ins, rep, rej, fetched, execution, quality = row[:12]
        coin_pct, mcap_pct, warning = (*row[12:15], None, None, None)[:3]
        failed_state, error, message = (*row[15:18], None, None, None)[:3]
        rebuilt = _rebuilt(quality)
        duration = None
        note = "rebuilt from the lake" if rebuilt else (f"! {warning}" if warning else "")
        if status == "FAILED":
            note = failure_note(failed_state, error, message, note_limit)
        if not rebuilt and isinstance(loaded, datetime) and isinstance(fetched, datetime):
            duration = round((loaded - fetched).total_seconds(), 1)
            # An execution ends within the state machine's 3600 s: a fetch time outside that
            # was simulated (crypto-etl run --offline --as-of), not measured.
            if not 0 <= duration <= MAX_EXECUTION_SECONDS:
                duration = None
                if status != "FAILED":
                    note = "simulated fetch time (--as-of)"
        result.append(
            (loaded, status, snap, cur, coins, n, ins, rep, rej, coin_pct, mcap_pct, duration,
             _execution_name(execution), note)
        )  # fmt: skip
    return result


def runs_cli(args: argparse.Namespace, out: TextIO) -> int:
    """``crypto-etl runs``: the latest ``--limit`` ETL_RUNS rows (loads and failed executions),
    newest first (1 if none)."""
    # An ETL_RUNS from an older version lacks the later columns: ask for fewer.
    variants = [(_RUNS_COVERAGE, _RUNS_FAILURE), (_RUNS_COVERAGE, ""), ("", "")]
    with warehouse_connection(args.local_dir, args.remote) as conn:
        limit = int(args.limit)
        rows: list[tuple[Any, ...]] = []
        for i, (coverage, failure) in enumerate(variants):
            statement = _RUNS.format(limit=limit, coverage=coverage, failure=failure)
            try:
                rows = fetch(conn, statement)[1]
                break
            except SnowflakeError as exc:
                if _table_missing(exc):
                    break
                text = str(exc).upper()
                optional = ("COVERAGE", "FAILED_STATE", "ERROR_NAME", "ERROR_MESSAGE")
                if i == len(variants) - 1 or not any(c in text for c in optional):
                    raise
    if not rows:
        return _nothing(NO_RUNS, args.json, out)
    print_rows(
        RUNS_HEADERS, runs_rows(rows, None if args.json else NOTE_ERROR_CHARS), args.json, out
    )
    return 0


# --- registration --------------------------------------------------------------------------------


def vs_currency_arg(text: str) -> str:
    """argparse ``type`` for ``--vs-currency``: 1-16 letters, digits, ``_`` or ``-``."""
    if not _CURRENCY_RE.fullmatch(text):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a currency code (1-16 letters, digits, '_' or '-')"
        )
    return text.lower()


def snapshot_arg(text: str) -> str:
    """argparse ``type`` for ``--snapshot``: a valid snapshot id."""
    from functions.common.keys import validate_snapshot_id

    try:
        return validate_snapshot_id(text, "--snapshot")
    except ValidationError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def register(sub: Any) -> None:
    """Add ``sql``, ``show``, ``runs`` and ``rebuild`` to the CLI's sub-parsers."""
    from local_mode import rebuild
    from local_mode.run_command import int_range

    remote_help = "use the Snowflake account configured by SNOWFLAKE_* variables, not the local one"
    sql = sub.add_parser(
        "sql",
        help="run one SQL statement against the warehouse (read-only unless --write)",
        description="Run one SQL statement. Read-only by default: SELECT, WITH … SELECT, SHOW,"
        " DESCRIBE, LIST, EXPLAIN and VALUES run; anything else (or anything the SQL parser"
        " cannot classify) needs --write. An empty text or several statements are refused.",
    )
    sql.add_argument("statement")
    sql.add_argument("--json", action="store_true", help="print a JSON array of objects")
    sql.add_argument("--remote", action="store_true", help=remote_help)
    sql.add_argument(
        "--write",
        action="store_true",
        help="allow a statement that is not read-only (with --remote: confirm it)",
    )
    sql.add_argument(
        "--yes",
        action="store_true",
        help="with --remote --write: do not ask (required when stdin is not a terminal)",
    )
    sql.set_defaults(func=sql_cli)

    show = sub.add_parser(
        "show",
        help="one snapshot's top coins by market cap (default: the latest, in usd)",
    )
    show.add_argument(
        "--limit", type=int_range(1, 10_000), default=10, help="coins to show (default 10)"
    )
    show.add_argument("--snapshot", type=snapshot_arg, help="this snapshot id (default: latest)")
    show.add_argument(
        "--vs-currency",
        type=vs_currency_arg,
        help="the latest snapshot quoted in this currency (default usd)",
    )
    show.add_argument("--json", action="store_true", help="print a JSON array of objects")
    show.add_argument("--remote", action="store_true", help=remote_help)
    show.set_defaults(func=show_cli)

    runs = sub.add_parser(
        "runs",
        help="recent loads and failed executions recorded in ETL_RUNS, newest first",
    )
    runs.add_argument(
        "--limit", type=int_range(1, 10_000), default=20, help="rows to list (default 20)"
    )
    runs.add_argument("--json", action="store_true", help="print a JSON array of objects")
    runs.add_argument("--remote", action="store_true", help=remote_help)
    runs.set_defaults(func=runs_cli)

    rebuild.register(sub)
