"""Every SQL statement the load runs, built as text + bind parameters (pure: no connector).

Identifiers (database, schema, object names) are validated and written unquoted, so Snowflake
upper-cases them; values are never formatted into SQL: they are ``%(name)s`` placeholders that
the connector binds (its default ``pyformat`` style).

The subset used here works both on Snowflake and through the fakesnow emulator server:
``CREATE TABLE/VIEW ... IF NOT EXISTS / OR REPLACE`` with ``COPY GRANTS`` and ``COMMENT``,
``CREATE TEMPORARY TABLE/STAGE`` (outside transactions), ``PUT`` with ``SOURCE_COMPRESSION``,
``COPY INTO`` a table from a named stage (CSV, ``FORCE``, ``ON_ERROR = ABORT_STATEMENT``),
``BEGIN``/``COMMIT``/``ROLLBACK``, ``DELETE``/``INSERT ... SELECT`` with bound values, ``MERGE``
with conditional ``WHEN MATCHED`` clauses (autocommit only), window functions, ``IS NOT
DISTINCT FROM``, ``CONVERT_TIMEZONE``. Not used because the emulator lacks them or differs:
``MAX_BY``/``MIN_BY`` (see the views), ``DROP STAGE``, ``TO_CHAR`` with a format,
``TO_TIMESTAMP_TZ(NULL)`` (use ``CAST``), ``COPY`` of a header-only file or with
``FILES=/PATTERN=/ON_ERROR=CONTINUE``, ``GET_DDL``, ``QUERY_HISTORY``. Without ``FORCE`` the
emulator skips a file name it loaded before into a table of the same name (its load history is
keyed by names), so a retried load would copy nothing. The COPY's ``TIMESTAMP_FORMAT`` and
``DATE_FORMAT`` are real-Snowflake options the emulator lacks: the local warehouse
(``local_mode/warehouse.py``) accepts these values (and ``AUTO``) and refuses any other.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from functions.common.errors import ValidationError
from functions.common.schema import PROCESSED_COLUMNS, TIMESTAMP_FORMAT
from functions.load.config import DEFAULT_DATABASE, DEFAULT_SCHEMA, validate_identifier

CRYPTO_DATA = "CRYPTO_DATA"
ASSET_DIM = "CRYPTO_ASSET_DIM"
ETL_RUNS = "ETL_RUNS"
DATE_DIM = "DATE_DIM"
LATEST_SNAPSHOT = "LATEST_SNAPSHOT"
DAILY_ROLLUP = "DAILY_ROLLUP"
TOP_MOVERS = "TOP_MOVERS"
SNAPSHOT_FILTER = "SNAPSHOT_FILTER"
MARKET_SNAPSHOTS = "MARKET_SNAPSHOTS"
COIN_HISTORY = "COIN_HISTORY"
PRICE_HISTORY = "CRYPTO_PRICE_HISTORY"
COIN_PRICE_SERIES = "COIN_PRICE_SERIES"
TABLES = (CRYPTO_DATA, ASSET_DIM, ETL_RUNS, PRICE_HISTORY)
# Reporting views in creation order (TOP_MOVERS reads LATEST_SNAPSHOT); columns: VIEW_COLUMNS.
VIEWS = (
    DATE_DIM,
    SNAPSHOT_FILTER,
    LATEST_SNAPSHOT,
    MARKET_SNAPSHOTS,
    COIN_HISTORY,
    DAILY_ROLLUP,
    TOP_MOVERS,
    COIN_PRICE_SERIES,
)

# TOP_MOVERS ranks 24h price moves among the top coins by market cap, per direction.
TOP_MOVERS_UNIVERSE = 250
TOP_MOVERS_PER_SIDE = 20

# The processed file's columns, in file order, as Snowflake (upper-case) columns.
DATA_COLUMNS: tuple[tuple[str, str], ...] = tuple((n.upper(), t) for n, t, _ in PROCESSED_COLUMNS)
DATA_COLUMN_NAMES: tuple[str, ...] = tuple(n for n, _ in DATA_COLUMNS)
_TYPES = dict(DATA_COLUMNS)
_NOT_NULL = {"SNAPSHOT_ID", "COIN_ID"}

ETL_RUN_COLUMNS: tuple[tuple[str, str], ...] = (
    ("SNAPSHOT_ID", "VARCHAR(80) NOT NULL"),
    ("EXECUTION_ID", "VARCHAR(2048)"),
    ("STATUS", "VARCHAR(16) NOT NULL"),
    ("FETCHED_AT", "TIMESTAMP_TZ"),
    ("FETCH_DATE", "DATE"),
    ("LOAD_STARTED_AT", "TIMESTAMP_TZ"),
    ("LOADED_AT", "TIMESTAMP_TZ NOT NULL"),
    ("VS_CURRENCY", "VARCHAR(16)"),
    ("COIN_COUNT", "INTEGER"),
    ("ROWS_LOADED", "INTEGER"),
    ("ROWS_INSERTED", "INTEGER"),
    ("ROWS_REPLACED", "INTEGER"),
    ("REJECTED_COUNT", "INTEGER"),
    ("DUPLICATE_COUNT", "INTEGER"),
    ("API_CALLS", "INTEGER"),
    ("RETRIES", "INTEGER"),
    ("PAGES", "INTEGER"),
    ("PROCESSED_KEY", "VARCHAR(1024)"),
    ("REJECTED_KEY", "VARCHAR(1024)"),
    ("DOMINANCE_BASIS", "VARCHAR(16)"),
    ("QUALITY", "VARCHAR"),
    # Coverage against CoinGecko /global (the Transform output's ``coverage``); added after
    # the first release, so ``ensure_objects`` adds them to an older ETL_RUNS (all nullable).
    ("COINS_FETCHED", "INTEGER"),
    ("ACTIVE_CRYPTOCURRENCIES", "INTEGER"),
    ("COIN_COVERAGE_PCT", "FLOAT"),
    ("MARKET_CAP_FETCHED", "FLOAT"),
    ("TOTAL_MARKET_CAP", "FLOAT"),
    ("MARKET_CAP_COVERAGE_PCT", "FLOAT"),
    ("COVERAGE_WARNING", "VARCHAR"),
    # A FAILED row (one per failed execution, written through the state machine's Catch path):
    # the state that failed, its error name and message (bounded: ERROR_MESSAGE_MAX_CHARS).
    # Added after the coverage columns, so ``ensure_objects`` adds them too; NULL on SUCCEEDED.
    ("FAILED_STATE", "VARCHAR(64)"),
    ("ERROR_NAME", "VARCHAR(256)"),
    ("ERROR_MESSAGE", "VARCHAR(2000)"),
)
STATUS_SUCCEEDED = "SUCCEEDED"  # a committed load (one row per load of a snapshot)
STATUS_FAILED = "FAILED"  # a failed execution, recorded by the load's "record_failure" action
ERROR_NAME_MAX_CHARS = 256
ERROR_MESSAGE_MAX_CHARS = 2000
# The coverage columns of ETL_RUNS (the Transform output's ``coverage``).
COVERAGE_COLUMNS: tuple[str, ...] = (
    "COINS_FETCHED",
    "ACTIVE_CRYPTOCURRENCIES",
    "COIN_COVERAGE_PCT",
    "MARKET_CAP_FETCHED",
    "TOTAL_MARKET_CAP",
    "MARKET_CAP_COVERAGE_PCT",
    "COVERAGE_WARNING",
)
FAILURE_COLUMNS: tuple[str, ...] = ("FAILED_STATE", "ERROR_NAME", "ERROR_MESSAGE")

# CRYPTO_PRICE_HISTORY: one row per coin, UTC date and quote currency from CoinGecko
# /coins/{id}/market_chart?interval=daily (the backfill); key (COIN_ID, DATE, VS_CURRENCY).
# PRICE, MARKET_CAP and TOTAL_VOLUME (24h volume) are in VS_CURRENCY, NULL where CoinGecko gave
# null. Columns added by a later version go at the end and into ADDED_COLUMNS (nullable).
HISTORY_SOURCE = "market_chart"
HISTORY_COLUMNS: tuple[tuple[str, str], ...] = (
    ("COIN_ID", f"{_TYPES['COIN_ID']} NOT NULL"),
    ("DATE", "DATE NOT NULL"),
    ("VS_CURRENCY", f"{_TYPES['VS_CURRENCY']} NOT NULL"),
    ("PRICE", "FLOAT"),
    ("MARKET_CAP", "FLOAT"),
    ("TOTAL_VOLUME", "FLOAT"),
    ("SOURCE", "VARCHAR(32) NOT NULL"),
    ("LOADED_AT", "TIMESTAMP_TZ NOT NULL"),
)
HISTORY_KEY: tuple[str, ...] = ("COIN_ID", "DATE", "VS_CURRENCY")
HISTORY_VALUES: tuple[str, ...] = ("PRICE", "MARKET_CAP", "TOTAL_VOLUME")
# The staged file's columns, in file order (SOURCE and LOADED_AT are set by the INSERT).
HISTORY_FILE_COLUMNS: tuple[str, ...] = (*HISTORY_KEY, *HISTORY_VALUES)

# Columns a table may lack because an older version created it, and that the load adds itself
# (ALTER TABLE ... ADD COLUMN IF NOT EXISTS): nullable, so existing rows read NULL. A missing
# column outside this list is an error for an operator.
ADDED_COLUMNS: dict[str, tuple[str, ...]] = {
    ETL_RUNS: (*COVERAGE_COLUMNS, *FAILURE_COLUMNS),
    PRICE_HISTORY: (),
}
# Each upgradable table's column definitions (where add_column finds a column's type).
_COLUMN_TYPES: dict[str, dict[str, str]] = {
    ETL_RUNS: dict(ETL_RUN_COLUMNS),
    PRICE_HISTORY: dict(HISTORY_COLUMNS),
}
# Timestamps/dates are bound as ISO text and cast (CAST also passes NULL through on fakesnow,
# where TO_TIMESTAMP_TZ(NULL) fails).
_RUN_CASTS = {
    "FETCHED_AT": "CAST({} AS TIMESTAMP_TZ)",
    "LOAD_STARTED_AT": "CAST({} AS TIMESTAMP_TZ)",
    "LOADED_AT": "CAST({} AS TIMESTAMP_TZ)",
    "FETCH_DATE": "CAST({} AS DATE)",
}

_SAFE_PATH_RE = re.compile(r"^/[A-Za-z0-9_./+\-]+$")

# strftime directive -> Snowflake format element (docs.snowflake.com/en/sql-reference/
# date-time-input-output, "Supported formats"; FF6 = 6 fractional digits).
_SNOWFLAKE_ELEMENTS = {
    "%Y": "YYYY",
    "%m": "MM",
    "%d": "DD",
    "%H": "HH24",
    "%M": "MI",
    "%S": "SS",
    "%f": "FF6",
}
_UTC_SUFFIX = "+00:00"  # the processed file writes UTC as a literal offset


def snowflake_datetime_format(strftime_format: str) -> str:
    """The Snowflake format string that reads text written with ``strftime_format``.

    Supports the directives in ``_SNOWFLAKE_ELEMENTS``, the separators ``- : . /`` and space,
    and a trailing literal ``+00:00`` (read as ``TZH:TZM``). Raises ValueError for anything else,
    so a change of ``functions.common.schema.TIMESTAMP_FORMAT`` cannot silently unpin the COPY.
    """
    body, tz = strftime_format, ""
    if body.endswith(_UTC_SUFFIX):
        body, tz = body[: -len(_UTC_SUFFIX)], "TZH:TZM"
    out, i = [], 0
    while i < len(body):
        if body[i] == "%":
            directive = body[i : i + 2]
            if directive not in _SNOWFLAKE_ELEMENTS:
                raise ValueError(
                    f"no Snowflake format element for {directive!r} in {strftime_format!r}"
                )
            out.append(_SNOWFLAKE_ELEMENTS[directive])
            i += 2
        elif body[i] in "-:./ ":
            out.append(body[i])
            i += 1
        else:
            raise ValueError(f"unsupported literal {body[i]!r} in {strftime_format!r}")
    return "".join(out) + tz


# How the processed file writes timestamps and dates (functions.common.schema), pinned in the
# COPY so an account- or user-level TIMESTAMP_INPUT_FORMAT / DATE_INPUT_FORMAT cannot change
# how they are read.
COPY_TIMESTAMP_FORMAT = snowflake_datetime_format(TIMESTAMP_FORMAT)
COPY_DATE_FORMAT = snowflake_datetime_format("%Y-%m-%d")


@dataclass(frozen=True)
class Statement:
    """One SQL statement, its bind parameters and a label naming the load step."""

    label: str
    sql: str
    params: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class Names:
    """Fully qualified names of the warehouse objects in one database/schema."""

    database: str = DEFAULT_DATABASE
    schema: str = DEFAULT_SCHEMA

    def __post_init__(self) -> None:
        object.__setattr__(self, "database", validate_identifier(self.database, "database"))
        object.__setattr__(self, "schema", validate_identifier(self.schema, "schema"))

    def q(self, name: str) -> str:
        """``DATABASE.SCHEMA.NAME`` for a validated object name."""
        return f"{self.database}.{self.schema}.{validate_identifier(name, 'object name')}"


def _cols(names: tuple[str, ...] | list[str], prefix: str = "") -> str:
    return ", ".join(f"{prefix}{n}" for n in names)


# --- DDL -------------------------------------------------------------------------------------


def create_crypto_data(n: Names) -> Statement:
    cols = ",\n    ".join(
        f"{c} {t}{' NOT NULL' if c in _NOT_NULL else ''}" for c, t in DATA_COLUMNS
    )
    return Statement(
        f"create {CRYPTO_DATA}",
        f"CREATE TABLE IF NOT EXISTS {n.q(CRYPTO_DATA)} (\n    {cols},\n"
        "    LOADED_AT TIMESTAMP_TZ NOT NULL,\n"
        "    CONSTRAINT CRYPTO_DATA_PK PRIMARY KEY (SNAPSHOT_ID, COIN_ID)\n)"
        " COMMENT = 'One row per coin per CoinGecko /coins/markets snapshot (crypto-etl)'",
    )


def create_asset_dim(n: Names) -> Statement:
    return Statement(
        f"create {ASSET_DIM}",
        f"CREATE TABLE IF NOT EXISTS {n.q(ASSET_DIM)} (\n"
        f"    COIN_ID {_TYPES['COIN_ID']} NOT NULL,\n"
        f"    SYMBOL {_TYPES['SYMBOL']},\n"
        f"    NAME {_TYPES['NAME']},\n"
        f"    IMAGE_URL {_TYPES['IMAGE_URL']},\n"
        "    FIRST_SEEN_AT TIMESTAMP_TZ,\n"
        "    LAST_SEEN_AT TIMESTAMP_TZ,\n"
        f"    FIRST_SNAPSHOT_ID {_TYPES['SNAPSHOT_ID']},\n"
        f"    LAST_SNAPSHOT_ID {_TYPES['SNAPSHOT_ID']},\n"
        "    LAST_MARKET_CAP_RANK INTEGER,\n"
        "    CONSTRAINT CRYPTO_ASSET_DIM_PK PRIMARY KEY (COIN_ID)\n)"
        " COMMENT = 'One row per CoinGecko coin id: latest names, symbol, image; first/last seen'",
    )


def create_etl_runs(n: Names) -> Statement:
    cols = ",\n    ".join(f"{c} {t}" for c, t in ETL_RUN_COLUMNS)
    return Statement(
        f"create {ETL_RUNS}",
        f"CREATE TABLE IF NOT EXISTS {n.q(ETL_RUNS)} (\n    {cols}\n)"
        " COMMENT = 'One row per successful load of a snapshot (per execution), and one per"
        " failed execution (STATUS FAILED)'",
    )


def table_columns(n: Names, table: str) -> Statement:
    """The columns a table has now (to detect a table created by an older version)."""
    return Statement(
        f"inspect {table}",
        f"SELECT COLUMN_NAME FROM {n.database}.INFORMATION_SCHEMA.COLUMNS"
        " WHERE TABLE_SCHEMA = %(schema)s AND TABLE_NAME = %(table)s",
        {"schema": n.schema, "table": validate_identifier(table, "table")},
    )


def expected_columns(table: str) -> tuple[str, ...]:
    """The columns this version of the load writes into ``table``."""
    if table == CRYPTO_DATA:
        return (*DATA_COLUMN_NAMES, "LOADED_AT")
    if table == ETL_RUNS:
        return tuple(c for c, _ in ETL_RUN_COLUMNS)
    if table == PRICE_HISTORY:
        return tuple(c for c, _ in HISTORY_COLUMNS)
    if table == ASSET_DIM:
        return (
            "COIN_ID", "SYMBOL", "NAME", "IMAGE_URL", "FIRST_SEEN_AT", "LAST_SEEN_AT",
            "FIRST_SNAPSHOT_ID", "LAST_SNAPSHOT_ID", "LAST_MARKET_CAP_RANK",
        )  # fmt: skip
    raise ValueError(table)


def add_column(n: Names, table: str, column: str) -> Statement:
    """Add one of ``ADDED_COLUMNS[table]`` to a table an older version created.

    ``ADD COLUMN IF NOT EXISTS`` (Snowflake: docs.snowflake.com/en/sql-reference/sql/alter-table;
    the emulator accepts it too), so two loads upgrading at once both succeed. DDL commits
    implicitly on Snowflake: run it outside the load's transaction. Raises ValueError for a
    column that is not in ``ADDED_COLUMNS[table]``.
    """
    if column not in ADDED_COLUMNS.get(table, ()):
        raise ValueError(f"{table}.{column} is not a column the load may add")
    column_type = _COLUMN_TYPES[table][column]
    return Statement(
        f"add column {table}.{column}",
        f"ALTER TABLE {n.q(table)} ADD COLUMN IF NOT EXISTS {column} {column_type}",
    )


def schema_exists(n: Names) -> Statement:
    """One row: how many schemas named ``n.schema`` the database shows this role (0 or 1).

    Fails with "does not exist or not authorized" (errno 2003) when the database does not exist
    or this role cannot use it.
    """
    return Statement(
        "check schema",
        f"SELECT COUNT(*) FROM {n.database}.INFORMATION_SCHEMA.SCHEMATA"
        " WHERE SCHEMA_NAME = %(schema)s",
        {"schema": n.schema},
    )


def create_schema(n: Names) -> Statement:
    """The target schema (the database itself must exist: creating one needs an admin)."""
    return Statement("create schema", f"CREATE SCHEMA IF NOT EXISTS {n.database}.{n.schema}")


def use_schema(n: Names) -> Statement:
    """Make the target schema current, where the session's temporary staging objects go."""
    return Statement("use schema", f"USE SCHEMA {n.database}.{n.schema}")


def create_price_history(n: Names) -> Statement:
    """CRYPTO_PRICE_HISTORY (``HISTORY_COLUMNS``), key (COIN_ID, DATE, VS_CURRENCY)."""
    cols = ",\n    ".join(f"{c} {t}" for c, t in HISTORY_COLUMNS)
    return Statement(
        f"create {PRICE_HISTORY}",
        f"CREATE TABLE IF NOT EXISTS {n.q(PRICE_HISTORY)} (\n    {cols},\n"
        f"    CONSTRAINT {PRICE_HISTORY}_PK PRIMARY KEY ({_cols(HISTORY_KEY)})\n)"
        " COMMENT = 'One row per coin, UTC date and quote currency from CoinGecko"
        " /coins/{id}/market_chart daily history (crypto-etl backfill)'",
    )


def create_tables(n: Names) -> list[Statement]:
    """Idempotent DDL for the tables, in ``TABLES`` order."""
    return [create_crypto_data(n), create_asset_dim(n), create_etl_runs(n), create_price_history(n)]


# --- Views (reporting; also written out as looker/views.sql) ----------------------------------
#
# Every view carries VS_CURRENCY. A snapshot is one (SNAPSHOT_ID, VS_CURRENCY) group of
# CRYPTO_DATA; "latest" is per VS_CURRENCY: the greatest FETCHED_AT, then LOADED_AT, then
# SNAPSHOT_ID (so a EUR run never replaces the latest USD snapshot). Orderings spell out
# NULLS LAST because Snowflake sorts NULLs first in DESC and DuckDB (the emulator) last.
# Not used because the two engines disagree: MAX_BY/MIN_BY (DuckDB skips a NULL value at the
# maximum, Snowflake returns it) and TO_CHAR with a format (the emulator drops the format).


def _view(n: Names, name: str, comment: str, body: str) -> Statement:
    if "'" in comment:
        raise ValueError(f"the comment of view {name} must not hold a quote: {comment!r}")
    return Statement(
        f"create view {name}",
        f"CREATE OR REPLACE VIEW {n.q(name)} COPY GRANTS\n"
        f"    COMMENT = '{comment}'\nAS\n{body.strip()}",
    )


def _snapshots(data: str) -> str:
    """Subquery: one row per (SNAPSHOT_ID, VS_CURRENCY) with FETCHED_AT, FETCH_DATE, IS_LATEST."""
    return f"""(
    SELECT
        SNAPSHOT_ID,
        VS_CURRENCY,
        MAX(FETCHED_AT) AS FETCHED_AT,
        MAX(FETCH_DATE) AS FETCH_DATE,
        {_is_latest("        ")} AS IS_LATEST
    FROM {data}
    GROUP BY SNAPSHOT_ID, VS_CURRENCY
)"""


def _is_latest(indent: str) -> str:
    """Inside a GROUP BY SNAPSHOT_ID, VS_CURRENCY: true for the latest snapshot of its currency."""
    return (
        "ROW_NUMBER() OVER (\n"
        f"{indent}    PARTITION BY VS_CURRENCY\n"
        f"{indent}    ORDER BY MAX(FETCHED_AT) DESC NULLS LAST, MAX(LOADED_AT) DESC NULLS LAST,"
        " SNAPSHOT_ID DESC\n"
        f"{indent}) = 1"
    )


def _two_digits(expr: str) -> str:
    return f"LPAD(CAST({expr} AS VARCHAR), 2, '0')"


def _utc_minute_text(ts: str) -> str:
    """``YYYY-MM-DD HH24:MI UTC`` of a TIMESTAMP_TZ, from date parts (no session formats)."""
    utc = f"CONVERT_TIMEZONE('UTC', {ts})"
    parts = [
        f"LPAD(CAST(YEAR({utc}) AS VARCHAR), 4, '0') || '-'",
        f"{_two_digits(f'MONTH({utc})')} || '-'",
        f"{_two_digits(f'DAY({utc})')} || ' '",
        f"{_two_digits(f'HOUR({utc})')} || ':'",
        f"{_two_digits(f'MINUTE({utc})')} || ' UTC'",
    ]
    return "\n        || ".join(parts)


# Shares of the /global totals are stored per coin; the totals come back as
# sum(value) / sum(share) * 100 over the rows that have both, on the 'global' basis only.
def _global_total(value: str, share: str) -> str:
    on_global = f"DOMINANCE_BASIS = 'global' AND {value} IS NOT NULL AND {share} IS NOT NULL"
    return (
        f"SUM(CASE WHEN {on_global} THEN {value} END)\n"
        f"        / NULLIF(SUM(CASE WHEN {on_global} THEN {share} END), 0) * 100"
    )


# The columns of each view, in order (LATEST_SNAPSHOT: every CRYPTO_DATA column).
VIEW_COLUMNS: dict[str, tuple[str, ...]] = {
    DATE_DIM: (
        "DATE_KEY", "VS_CURRENCY", "CALENDAR_YEAR", "CALENDAR_QUARTER", "MONTH_NUMBER",
        "MONTH_NAME", "MONTH_START", "ISO_WEEK", "WEEK_START", "DAY_OF_MONTH", "DAY_OF_YEAR",
        "ISO_DAY_OF_WEEK", "DAY_NAME", "IS_WEEKEND",
    ),
    SNAPSHOT_FILTER: (
        "SNAPSHOT_ID", "VS_CURRENCY", "FETCH_DATE", "FETCHED_AT", "SNAPSHOT_LABEL", "IS_LATEST",
    ),
    LATEST_SNAPSHOT: (*DATA_COLUMN_NAMES, "LOADED_AT"),
    MARKET_SNAPSHOTS: (
        "SNAPSHOT_ID", "VS_CURRENCY", "FETCHED_AT", "FETCH_DATE", "COIN_COUNT",
        "LOADED_MARKET_CAP", "LOADED_VOLUME", "GLOBAL_MARKET_CAP", "GLOBAL_VOLUME",
        "DOMINANCE_BASIS", "BTC_DOMINANCE_PCT", "ETH_DOMINANCE_PCT", "GAINERS_24H",
        "LOSERS_24H", "IS_LATEST",
    ),
    COIN_HISTORY: (
        "SNAPSHOT_ID", "VS_CURRENCY", "FETCHED_AT", "FETCH_DATE", "COIN_ID", "SYMBOL", "NAME",
        "MARKET_CAP_RANK", "CURRENT_PRICE", "MARKET_CAP", "MARKET_CAP_DOMINANCE_PCT",
        "TOTAL_VOLUME", "VOLUME_PCT", "PRICE_CHANGE_PERCENTAGE_24H",
    ),
    DAILY_ROLLUP: (
        "FETCH_DATE", "VS_CURRENCY", "COIN_ID", "SYMBOL", "NAME", "SNAPSHOTS",
        "FIRST_FETCHED_AT", "LAST_FETCHED_AT", "OPEN_PRICE", "HIGH_PRICE", "LOW_PRICE",
        "CLOSE_PRICE", "DAY_CHANGE_PCT", "AVG_MARKET_CAP", "CLOSE_MARKET_CAP",
        "CLOSE_MARKET_CAP_RANK", "AVG_TOTAL_VOLUME", "AVG_DOMINANCE_PCT", "CLOSE_DOMINANCE_PCT",
        "AVG_VOLUME_PCT",
    ),
    TOP_MOVERS: (
        "SNAPSHOT_ID", "FETCHED_AT", "VS_CURRENCY", "COIN_ID", "SYMBOL", "NAME", "IMAGE_URL",
        "MARKET_CAP_RANK", "CURRENT_PRICE", "MARKET_CAP", "TOTAL_VOLUME", "PRICE_CHANGE_24H",
        "PRICE_CHANGE_PERCENTAGE_24H", "DIRECTION", "MOVE_RANK",
    ),
    COIN_PRICE_SERIES: (
        "COIN_ID", "DATE", "VS_CURRENCY", "PRICE", "MARKET_CAP", "TOTAL_VOLUME", "SOURCE",
    ),
}  # fmt: skip
SERIES_SOURCE_SNAPSHOT = "snapshot"  # COIN_PRICE_SERIES.SOURCE of a day from the snapshots


def create_views(n: Names) -> list[Statement]:
    """``CREATE OR REPLACE VIEW ... COPY GRANTS`` for every view in ``VIEWS``, in that order.

    Columns per view: ``VIEW_COLUMNS``. Money columns are in the row's VS_CURRENCY; ``*_PCT``
    columns are percentages (0-100); FETCHED_AT is TIMESTAMP_TZ, FETCH_DATE a DATE.
    """
    data = n.q(CRYPTO_DATA)
    date_dim = _view(
        n,
        DATE_DIM,
        "Calendar attributes of every FETCH_DATE present in CRYPTO_DATA, per currency",
        f"""
SELECT DISTINCT
    FETCH_DATE AS DATE_KEY,
    VS_CURRENCY,
    YEAR(FETCH_DATE) AS CALENDAR_YEAR,
    QUARTER(FETCH_DATE) AS CALENDAR_QUARTER,
    MONTH(FETCH_DATE) AS MONTH_NUMBER,
    MONTHNAME(FETCH_DATE) AS MONTH_NAME,
    CAST(DATE_TRUNC('MONTH', FETCH_DATE) AS DATE) AS MONTH_START,
    WEEKISO(FETCH_DATE) AS ISO_WEEK,
    CAST(DATE_TRUNC('WEEK', FETCH_DATE) AS DATE) AS WEEK_START,
    DAY(FETCH_DATE) AS DAY_OF_MONTH,
    DAYOFYEAR(FETCH_DATE) AS DAY_OF_YEAR,
    DAYOFWEEKISO(FETCH_DATE) AS ISO_DAY_OF_WEEK,
    DAYNAME(FETCH_DATE) AS DAY_NAME,
    DAYOFWEEKISO(FETCH_DATE) >= 6 AS IS_WEEKEND
FROM {data}
WHERE FETCH_DATE IS NOT NULL
""",
    )
    snapshot_filter = _view(
        n,
        SNAPSHOT_FILTER,
        "One row per snapshot and currency with a readable label: the snapshot and fetch-date"
        " control of the report",
        f"""
SELECT
    S.SNAPSHOT_ID,
    S.VS_CURRENCY,
    S.FETCH_DATE,
    S.FETCHED_AT,
    COALESCE(
        {_utc_minute_text("S.FETCHED_AT")},
        'time unknown'
    ) || ' · ' || COALESCE(S.VS_CURRENCY, '?') || ' · ' || S.SNAPSHOT_ID AS SNAPSHOT_LABEL,
    S.IS_LATEST
FROM {_snapshots(data)} AS S
""",
    )
    latest = _view(
        n,
        LATEST_SNAPSHOT,
        "Every coin of the latest snapshot of each currency (by FETCHED_AT, LOADED_AT,"
        " SNAPSHOT_ID)",
        f"""
SELECT D.*
FROM {data} AS D
JOIN {_snapshots(data)} AS S
    ON S.SNAPSHOT_ID = D.SNAPSHOT_ID AND S.VS_CURRENCY IS NOT DISTINCT FROM D.VS_CURRENCY
WHERE S.IS_LATEST
""",
    )
    market = _view(
        n,
        MARKET_SNAPSHOTS,
        "One row per snapshot and currency: coins, market cap and volume (loaded sums and the"
        " /global totals), BTC/ETH dominance, 24h gainers and losers",
        f"""
SELECT
    SNAPSHOT_ID,
    VS_CURRENCY,
    MAX(FETCHED_AT) AS FETCHED_AT,
    MAX(FETCH_DATE) AS FETCH_DATE,
    COUNT(*) AS COIN_COUNT,
    SUM(MARKET_CAP) AS LOADED_MARKET_CAP,
    SUM(TOTAL_VOLUME) AS LOADED_VOLUME,
    {_global_total("MARKET_CAP", "MARKET_CAP_DOMINANCE_PCT")} AS GLOBAL_MARKET_CAP,
    {_global_total("TOTAL_VOLUME", "VOLUME_PCT")} AS GLOBAL_VOLUME,
    CASE
        WHEN MIN(DOMINANCE_BASIS) = MAX(DOMINANCE_BASIS) THEN MIN(DOMINANCE_BASIS)
        WHEN COUNT(DOMINANCE_BASIS) > 0 THEN 'mixed'
    END AS DOMINANCE_BASIS,
    MAX(CASE WHEN COIN_ID = 'bitcoin' THEN MARKET_CAP_DOMINANCE_PCT END) AS BTC_DOMINANCE_PCT,
    MAX(CASE WHEN COIN_ID = 'ethereum' THEN MARKET_CAP_DOMINANCE_PCT END) AS ETH_DOMINANCE_PCT,
    COUNT(CASE WHEN PRICE_CHANGE_PERCENTAGE_24H > 0 THEN 1 END) AS GAINERS_24H,
    COUNT(CASE WHEN PRICE_CHANGE_PERCENTAGE_24H < 0 THEN 1 END) AS LOSERS_24H,
    {_is_latest("    ")} AS IS_LATEST
FROM {data}
GROUP BY SNAPSHOT_ID, VS_CURRENCY
""",
    )
    history = _view(
        n,
        COIN_HISTORY,
        "One row per coin per snapshot: price, market cap, rank, dominance and volume share",
        f"""
SELECT
    SNAPSHOT_ID,
    VS_CURRENCY,
    FETCHED_AT,
    FETCH_DATE,
    COIN_ID,
    SYMBOL,
    NAME,
    MARKET_CAP_RANK,
    CURRENT_PRICE,
    MARKET_CAP,
    MARKET_CAP_DOMINANCE_PCT,
    TOTAL_VOLUME,
    VOLUME_PCT,
    PRICE_CHANGE_PERCENTAGE_24H
FROM {data}
""",
    )
    # Open/close are the day's first/last snapshot of the coin, NULL when that row's value is.
    day = "PARTITION BY FETCH_DATE, VS_CURRENCY, COIN_ID"

    def at_open(col: str) -> str:
        return f"MAX(CASE WHEN OPEN_ROW = 1 THEN {col} END)"

    def at_close(col: str) -> str:
        return f"MAX(CASE WHEN CLOSE_ROW = 1 THEN {col} END)"

    daily = _view(
        n,
        DAILY_ROLLUP,
        "Per day, currency and coin: open/high/low/close price and averages over the snapshots",
        f"""
SELECT
    FETCH_DATE,
    VS_CURRENCY,
    COIN_ID,
    {at_close("SYMBOL")} AS SYMBOL,
    {at_close("NAME")} AS NAME,
    COUNT(*) AS SNAPSHOTS,
    MIN(FETCHED_AT) AS FIRST_FETCHED_AT,
    MAX(FETCHED_AT) AS LAST_FETCHED_AT,
    {at_open("CURRENT_PRICE")} AS OPEN_PRICE,
    MAX(CURRENT_PRICE) AS HIGH_PRICE,
    MIN(CURRENT_PRICE) AS LOW_PRICE,
    {at_close("CURRENT_PRICE")} AS CLOSE_PRICE,
    ({at_close("CURRENT_PRICE")} - {at_open("CURRENT_PRICE")})
        / NULLIF({at_open("CURRENT_PRICE")}, 0) * 100 AS DAY_CHANGE_PCT,
    AVG(MARKET_CAP) AS AVG_MARKET_CAP,
    {at_close("MARKET_CAP")} AS CLOSE_MARKET_CAP,
    {at_close("MARKET_CAP_RANK")} AS CLOSE_MARKET_CAP_RANK,
    AVG(TOTAL_VOLUME) AS AVG_TOTAL_VOLUME,
    AVG(MARKET_CAP_DOMINANCE_PCT) AS AVG_DOMINANCE_PCT,
    {at_close("MARKET_CAP_DOMINANCE_PCT")} AS CLOSE_DOMINANCE_PCT,
    AVG(VOLUME_PCT) AS AVG_VOLUME_PCT
FROM (
    SELECT
        FETCH_DATE, VS_CURRENCY, COIN_ID, SYMBOL, NAME, FETCHED_AT, CURRENT_PRICE, MARKET_CAP,
        MARKET_CAP_RANK, TOTAL_VOLUME, MARKET_CAP_DOMINANCE_PCT, VOLUME_PCT,
        ROW_NUMBER() OVER (
            {day}
            ORDER BY FETCHED_AT ASC NULLS LAST, LOADED_AT ASC NULLS LAST, SNAPSHOT_ID ASC
        ) AS OPEN_ROW,
        ROW_NUMBER() OVER (
            {day}
            ORDER BY FETCHED_AT DESC NULLS LAST, LOADED_AT DESC NULLS LAST, SNAPSHOT_ID DESC
        ) AS CLOSE_ROW
    FROM {data}
) AS R
GROUP BY FETCH_DATE, VS_CURRENCY, COIN_ID
""",
    )
    direction = "CASE WHEN PRICE_CHANGE_PERCENTAGE_24H > 0 THEN 'GAINER' ELSE 'LOSER' END"
    movers = _view(
        n,
        TOP_MOVERS,
        f"Latest snapshot of each currency: the {TOP_MOVERS_PER_SIDE} biggest 24h gainers and"
        f" losers among the top {TOP_MOVERS_UNIVERSE} coins by market cap rank",
        f"""
SELECT M.*
FROM (
    SELECT
        SNAPSHOT_ID,
        FETCHED_AT,
        VS_CURRENCY,
        COIN_ID,
        SYMBOL,
        NAME,
        IMAGE_URL,
        MARKET_CAP_RANK,
        CURRENT_PRICE,
        MARKET_CAP,
        TOTAL_VOLUME,
        PRICE_CHANGE_24H,
        PRICE_CHANGE_PERCENTAGE_24H,
        {direction} AS DIRECTION,
        ROW_NUMBER() OVER (
            PARTITION BY VS_CURRENCY, {direction}
            ORDER BY ABS(PRICE_CHANGE_PERCENTAGE_24H) DESC, MARKET_CAP_RANK, COIN_ID
        ) AS MOVE_RANK
    FROM {n.q(LATEST_SNAPSHOT)}
    WHERE PRICE_CHANGE_PERCENTAGE_24H IS NOT NULL
      AND PRICE_CHANGE_PERCENTAGE_24H <> 0
      AND MARKET_CAP_RANK <= {TOP_MOVERS_UNIVERSE}
) AS M
WHERE M.MOVE_RANK <= {TOP_MOVERS_PER_SIDE}
""",
    )
    price_history = n.q(PRICE_HISTORY)
    # The snapshots' side is the day's close row, ordered exactly as DAILY_ROLLUP's CLOSE_ROW
    # (so PRICE and MARKET_CAP equal its CLOSE_PRICE and CLOSE_MARKET_CAP): the same "last
    # point of the day" rule as the history's daily series.
    series = _view(
        n,
        COIN_PRICE_SERIES,
        "One series per coin and currency: one row per UTC date, from CoinGecko market_chart"
        " history (SOURCE market_chart) and, on dates without history, the close of the day"
        " snapshots (SOURCE snapshot)",
        f"""
SELECT COIN_ID, DATE, VS_CURRENCY, PRICE, MARKET_CAP, TOTAL_VOLUME, SOURCE
FROM {price_history}
UNION ALL
SELECT
    C.COIN_ID,
    C.FETCH_DATE AS DATE,
    C.VS_CURRENCY,
    C.CURRENT_PRICE AS PRICE,
    C.MARKET_CAP,
    C.TOTAL_VOLUME,
    '{SERIES_SOURCE_SNAPSHOT}' AS SOURCE
FROM (
    SELECT
        FETCH_DATE, VS_CURRENCY, COIN_ID, CURRENT_PRICE, MARKET_CAP, TOTAL_VOLUME,
        ROW_NUMBER() OVER (
            {day}
            ORDER BY FETCHED_AT DESC NULLS LAST, LOADED_AT DESC NULLS LAST, SNAPSHOT_ID DESC
        ) AS CLOSE_ROW
    FROM {data}
    WHERE FETCH_DATE IS NOT NULL AND VS_CURRENCY IS NOT NULL
) AS C
WHERE C.CLOSE_ROW = 1
  AND NOT EXISTS (
    SELECT 1 FROM {price_history} AS H
    WHERE H.COIN_ID = C.COIN_ID AND H.DATE = C.FETCH_DATE AND H.VS_CURRENCY = C.VS_CURRENCY
)
""",
    )
    built = {
        COIN_PRICE_SERIES: series,
        DATE_DIM: date_dim,
        SNAPSHOT_FILTER: snapshot_filter,
        LATEST_SNAPSHOT: latest,
        MARKET_SNAPSHOTS: market,
        COIN_HISTORY: history,
        DAILY_ROLLUP: daily,
        TOP_MOVERS: movers,
    }
    return [built[v] for v in VIEWS]


def views_script(database: str = DEFAULT_DATABASE, schema: str = DEFAULT_SCHEMA) -> str:
    """The reporting views as one SQL script (the content of ``looker/views.sql``)."""
    n = Names(database, schema)
    header = (
        "-- crypto-etl reporting views for Looker Studio (generated by\n"
        "-- functions.load.sql.views_script; the Load Lambda creates them on every run).\n"
        f"-- Database {n.database}, schema {n.schema}: run with a role that owns the schema, e.g.\n"
        "--   snowsql -f looker/views.sql\n"
        "-- Regenerate: python -m functions.load.sql > looker/views.sql\n"
    )
    body = "\n\n".join(f"{s.sql};" for s in create_views(n))
    return f"{header}\n{body}\n"


# --- Staging: temporary table, temporary stage, PUT, COPY --------------------------------------


def create_staging_table(table: str) -> Statement:
    """A session-scoped table shaped exactly like the processed file (COPY maps by position)."""
    cols = ", ".join(f"{c} {t}" for c, t in DATA_COLUMNS)
    return Statement(
        "create staging table",
        f"CREATE TEMPORARY TABLE {validate_identifier(table, 'staging table')} ({cols})",
    )


def create_stage(stage: str) -> Statement:
    return Statement(
        "create stage", f"CREATE TEMPORARY STAGE {validate_identifier(stage, 'stage')}"
    )


def put_file(local_file: Path, stage: str) -> Statement:
    """Upload the (already gzip'd) processed file to the stage as is."""
    path = Path(local_file).resolve().as_posix()
    if not _SAFE_PATH_RE.fullmatch(path):
        raise ValidationError(
            "local_file", f"{path!r} must be an absolute path of letters, digits and _ . / + -"
        )
    return Statement(
        "put file",
        f"PUT 'file://{path}' @{validate_identifier(stage, 'stage')}"
        " AUTO_COMPRESS = FALSE SOURCE_COMPRESSION = GZIP OVERWRITE = TRUE",
    )


def copy_into_staging(table: str, stage: str) -> Statement:
    """CSV with a header row, NULL = empty field, text quoted or not, the file's timestamp and
    date formats pinned; FORCE so a retry reloads a staged file."""
    return Statement(
        "copy into staging",
        f"COPY INTO {validate_identifier(table, 'staging table')}"
        f" FROM @{validate_identifier(stage, 'stage')}"
        " FILE_FORMAT = (TYPE = CSV SKIP_HEADER = 1 FIELD_OPTIONALLY_ENCLOSED_BY = '\"'"
        " NULL_IF = ('') EMPTY_FIELD_AS_NULL = TRUE COMPRESSION = GZIP"
        # pandas writes a backslash unquoted and unescaped; Snowflake's default escape for
        # unenclosed fields is '\\', which would swallow the next delimiter.
        " ESCAPE_UNENCLOSED_FIELD = NONE"
        f" TIMESTAMP_FORMAT = '{COPY_TIMESTAMP_FORMAT}' DATE_FORMAT = '{COPY_DATE_FORMAT}')"
        " ON_ERROR = ABORT_STATEMENT FORCE = TRUE",
    )


def staging_profile(table: str) -> Statement:
    """Row count, distinct/non-null coin ids, snapshot id range and dominance basis range."""
    return Statement(
        "check staging",
        "SELECT COUNT(*), COUNT(DISTINCT COIN_ID), COUNT(COIN_ID), COUNT(SNAPSHOT_ID),"
        " MIN(SNAPSHOT_ID), MAX(SNAPSHOT_ID), MIN(DOMINANCE_BASIS), MAX(DOMINANCE_BASIS)"
        f" FROM {validate_identifier(table, 'staging table')}",
    )


def drop_staging_table(table: str) -> Statement:
    return Statement(
        "drop staging table",
        f"DROP TABLE IF EXISTS {validate_identifier(table, 'staging table')}",
    )


# --- The transaction -------------------------------------------------------------------------

BEGIN = Statement("begin", "BEGIN")
COMMIT = Statement("commit", "COMMIT")
ROLLBACK = Statement("rollback", "ROLLBACK")


def count_existing(n: Names, staging: str, snapshot_id: str) -> Statement:
    """(rows of the snapshot already loaded, staged coin ids not yet loaded for it)."""
    data = n.q(CRYPTO_DATA)
    stg = validate_identifier(staging, "staging table")
    return Statement(
        "count existing rows",
        f"SELECT (SELECT COUNT(*) FROM {data} WHERE SNAPSHOT_ID = %(snapshot_id)s),"
        f" (SELECT COUNT(*) FROM {stg} AS S LEFT JOIN {data} AS D"
        " ON D.SNAPSHOT_ID = %(snapshot_id)s AND D.COIN_ID = S.COIN_ID WHERE D.COIN_ID IS NULL)",
        {"snapshot_id": snapshot_id},
    )


def find_run(n: Names, snapshot_id: str, loaded_at: str) -> Statement:
    """One row: how many ETL_RUNS rows this load attempt wrote (0 or 1).

    ``loaded_at`` (ISO-8601 text, microseconds) is stamped once per attempt, so it tells this
    attempt's committed row from any earlier load of the snapshot.
    """
    return Statement(
        "check commit",
        f"SELECT COUNT(*) FROM {n.q(ETL_RUNS)} WHERE SNAPSHOT_ID = %(snapshot_id)s"
        " AND LOADED_AT = CAST(%(loaded_at)s AS TIMESTAMP_TZ)",
        {"snapshot_id": snapshot_id, "loaded_at": loaded_at},
    )


def delete_snapshot(n: Names, snapshot_id: str) -> Statement:
    return Statement(
        "delete snapshot",
        f"DELETE FROM {n.q(CRYPTO_DATA)} WHERE SNAPSHOT_ID = %(snapshot_id)s",
        {"snapshot_id": snapshot_id},
    )


def insert_snapshot(n: Names, staging: str, loaded_at: str) -> Statement:
    """Copy the staged rows into CRYPTO_DATA with one LOADED_AT (ISO-8601 text) for all."""
    cols = _cols(DATA_COLUMN_NAMES)
    return Statement(
        "insert snapshot",
        f"INSERT INTO {n.q(CRYPTO_DATA)} ({cols}, LOADED_AT)"
        f" SELECT {cols}, CAST(%(loaded_at)s AS TIMESTAMP_TZ)"
        f" FROM {validate_identifier(staging, 'staging table')}",
        {"loaded_at": loaded_at},
    )


def delete_run(n: Names, snapshot_id: str, execution_id: str) -> Statement:
    """A retried Load task of the same execution replaces its own run-log row (a SUCCEEDED
    one: a load never touches the FAILED rows)."""
    return Statement(
        "delete run log row",
        f"DELETE FROM {n.q(ETL_RUNS)}"
        " WHERE SNAPSHOT_ID = %(snapshot_id)s AND EXECUTION_ID = %(execution_id)s"
        " AND STATUS = %(status)s",
        {"snapshot_id": snapshot_id, "execution_id": execution_id, "status": STATUS_SUCCEEDED},
    )


def delete_failure(n: Names, execution_id: str) -> Statement:
    """A retried "Record failure" task replaces the execution's FAILED row (one per execution)."""
    return Statement(
        "delete failure row",
        f"DELETE FROM {n.q(ETL_RUNS)}"
        " WHERE EXECUTION_ID = %(execution_id)s AND STATUS = %(status)s",
        {"execution_id": execution_id, "status": STATUS_FAILED},
    )


def insert_run(n: Names, values: Mapping[str, Any]) -> Statement:
    """One ETL_RUNS row; ``values`` maps lower-case column names to Python values (a column
    left out is NULL)."""
    names = [c for c, _ in ETL_RUN_COLUMNS]
    unknown = set(values) - {c.lower() for c in names}
    if unknown:
        raise ValueError(f"unknown ETL_RUNS columns: {sorted(unknown)}")
    placeholders = [_RUN_CASTS.get(c, "{}").format(f"%({c.lower()})s") for c in names]
    return Statement(
        "insert run log row",
        f"INSERT INTO {n.q(ETL_RUNS)} ({_cols(names)}) VALUES ({', '.join(placeholders)})",
        {c.lower(): values.get(c.lower()) for c in names},
    )


# --- After the commit (autocommit) -------------------------------------------------------------


def merge_asset_dim(n: Names, staging: str) -> Statement:
    """Upsert one row per staged coin; replaying any snapshot converges to the same state.

    A newer (or the same) snapshot refreshes names, symbol, image, last seen and rank; an older
    one can only move FIRST_SEEN_AT back.
    """
    stg = validate_identifier(staging, "staging table")
    return Statement(
        f"merge {ASSET_DIM}",
        f"""MERGE INTO {n.q(ASSET_DIM)} AS D
USING (
    SELECT COIN_ID, SYMBOL, NAME, IMAGE_URL, FETCHED_AT, SNAPSHOT_ID, MARKET_CAP_RANK
    FROM {stg}
) AS S
ON D.COIN_ID = S.COIN_ID
WHEN MATCHED AND S.FETCHED_AT >= D.LAST_SEEN_AT THEN UPDATE SET
    SYMBOL = S.SYMBOL,
    NAME = S.NAME,
    IMAGE_URL = S.IMAGE_URL,
    LAST_SEEN_AT = S.FETCHED_AT,
    LAST_SNAPSHOT_ID = S.SNAPSHOT_ID,
    LAST_MARKET_CAP_RANK = S.MARKET_CAP_RANK
WHEN MATCHED AND S.FETCHED_AT < D.FIRST_SEEN_AT THEN UPDATE SET
    FIRST_SEEN_AT = S.FETCHED_AT,
    FIRST_SNAPSHOT_ID = S.SNAPSHOT_ID
WHEN NOT MATCHED THEN INSERT (
    COIN_ID, SYMBOL, NAME, IMAGE_URL, FIRST_SEEN_AT, LAST_SEEN_AT,
    FIRST_SNAPSHOT_ID, LAST_SNAPSHOT_ID, LAST_MARKET_CAP_RANK
) VALUES (
    S.COIN_ID, S.SYMBOL, S.NAME, S.IMAGE_URL, S.FETCHED_AT, S.FETCHED_AT,
    S.SNAPSHOT_ID, S.SNAPSHOT_ID, S.MARKET_CAP_RANK
)""",
    )


# --- CRYPTO_PRICE_HISTORY (the backfill's load) ------------------------------------------------
#
# The same emulator-safe pattern as CRYPTO_DATA: a TEMPORARY staging table, PUT, COPY (outside
# any transaction), then one transaction of constant statements whatever the row count. A key
# whose staged values equal the stored ones is left alone (its LOADED_AT too), so re-running a
# range changes nothing; a key with other values is replaced (DELETE + INSERT); a new key is
# inserted.

_HISTORY_TYPES = dict(HISTORY_COLUMNS)


def create_history_staging_table(table: str) -> Statement:
    """A session-scoped table shaped like the history file (``HISTORY_FILE_COLUMNS``)."""
    cols = ", ".join(
        f"{c} {_HISTORY_TYPES[c].removesuffix(' NOT NULL')}" for c in HISTORY_FILE_COLUMNS
    )
    return Statement(
        "create history staging table",
        f"CREATE TEMPORARY TABLE {validate_identifier(table, 'staging table')} ({cols})",
    )


def copy_history_into_staging(table: str, stage: str) -> Statement:
    """CSV with a header row, NULL = empty field, text quoted, dates pinned; FORCE (retries)."""
    return Statement(
        "copy history into staging",
        f"COPY INTO {validate_identifier(table, 'staging table')}"
        f" FROM @{validate_identifier(stage, 'stage')}"
        " FILE_FORMAT = (TYPE = CSV SKIP_HEADER = 1 FIELD_OPTIONALLY_ENCLOSED_BY = '\"'"
        " NULL_IF = ('') EMPTY_FIELD_AS_NULL = TRUE COMPRESSION = GZIP"
        f" ESCAPE_UNENCLOSED_FIELD = NONE DATE_FORMAT = '{COPY_DATE_FORMAT}')"
        " ON_ERROR = ABORT_STATEMENT FORCE = TRUE",
    )


def history_staging_profile(table: str) -> Statement:
    """(rows, distinct keys, rows with the whole key, distinct coins) of the staging table."""
    stg = validate_identifier(table, "staging table")
    key = _cols(HISTORY_KEY)
    whole = " AND ".join(f"{c} IS NOT NULL" for c in HISTORY_KEY)
    return Statement(
        "check history staging",
        f"SELECT (SELECT COUNT(*) FROM {stg}),"
        f" (SELECT COUNT(*) FROM (SELECT DISTINCT {key} FROM {stg}) AS K),"
        f" (SELECT COUNT(*) FROM {stg} WHERE {whole}),"
        f" (SELECT COUNT(DISTINCT COIN_ID) FROM {stg})",
    )


def _history_match(h: str, s: str) -> str:
    return " AND ".join(f"{h}.{c} = {s}.{c}" for c in HISTORY_KEY)


def _history_differs(h: str, s: str) -> str:
    """True when a stored row's values (or source) are not the staged ones (NULL-safe)."""
    values = [f"{h}.{c} IS DISTINCT FROM {s}.{c}" for c in HISTORY_VALUES]
    return "(" + " OR ".join([*values, f"{h}.SOURCE <> %(source)s"]) + ")"


def count_history_changes(n: Names, staging: str) -> Statement:
    """(staged keys not stored yet, staged keys stored with other values) - inside the
    transaction, before the DELETE."""
    hist, stg = n.q(PRICE_HISTORY), validate_identifier(staging, "staging table")
    return Statement(
        "count history changes",
        f"SELECT (SELECT COUNT(*) FROM {stg} AS S WHERE NOT EXISTS"
        f" (SELECT 1 FROM {hist} AS H WHERE {_history_match('H', 'S')})),"
        f" (SELECT COUNT(*) FROM {stg} AS S JOIN {hist} AS H ON {_history_match('H', 'S')}"
        f" WHERE {_history_differs('H', 'S')})",
        {"source": HISTORY_SOURCE},
    )


def delete_changed_history(n: Names, staging: str) -> Statement:
    """Delete the stored rows whose key is staged with other values (they are re-inserted)."""
    hist, stg = n.q(PRICE_HISTORY), validate_identifier(staging, "staging table")
    return Statement(
        "delete changed history",
        f"DELETE FROM {hist} AS H WHERE EXISTS (SELECT 1 FROM {stg} AS S"
        f" WHERE {_history_match('H', 'S')} AND {_history_differs('H', 'S')})",
        {"source": HISTORY_SOURCE},
    )


def insert_history(n: Names, staging: str, loaded_at: str) -> Statement:
    """Insert the staged rows whose key is not stored (new, or deleted just before)."""
    hist, stg = n.q(PRICE_HISTORY), validate_identifier(staging, "staging table")
    cols = _cols(HISTORY_FILE_COLUMNS)
    return Statement(
        "insert history",
        f"INSERT INTO {hist} ({cols}, SOURCE, LOADED_AT)"
        f" SELECT {_cols(HISTORY_FILE_COLUMNS, 'S.')}, %(source)s,"
        f" CAST(%(loaded_at)s AS TIMESTAMP_TZ) FROM {stg} AS S"
        f" WHERE NOT EXISTS (SELECT 1 FROM {hist} AS H WHERE {_history_match('H', 'S')})",
        {"source": HISTORY_SOURCE, "loaded_at": loaded_at},
    )


if __name__ == "__main__":  # pragma: no cover - regenerates looker/views.sql
    print(views_script(), end="")
