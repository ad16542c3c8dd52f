"""The load sequence on an open connection.

0. ``ensure_objects``: the schema (the database must exist: creating one needs an admin), the
   tables (checked for missing columns) and the reporting views.
1. Outside any transaction: a TEMPORARY staging table and stage, PUT, COPY INTO staging;
   check the COPY loaded exactly ``row_count`` rows, one per coin id, all of this snapshot.
2. One transaction: count the snapshot's rows already there, DELETE them, INSERT the staged
   rows, write the ETL_RUNS row, COMMIT (ROLLBACK on any error: nothing changes).
   If COMMIT itself fails, its reply may just have been lost after the commit: a new session
   (``reconnect``) looks for this attempt's ETL_RUNS row and the load reports what it finds:
   committed (success), not committed (LoadError, unchanged) or, if it cannot look, UNKNOWN.
3. After the commit, in autocommit: MERGE the staged coins into CRYPTO_ASSET_DIM (idempotent,
   so a retry converges) and drop the staging table.

Every statement is short (one bulk statement per step), as the emulator re-executes a request
the connector re-sends after its socket timeout. Database and network failures (the
connector's errors, OSError) become LoadError naming the step.
"""

from __future__ import annotations

import contextlib
import csv
import gzip
import json
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from snowflake.connector.errors import Error as SnowflakeError
from snowflake.connector.errors import ProgrammingError as SnowflakeProgrammingError

from functions.common.errors import LoadError, ValidationError
from functions.common.keys import validate_snapshot_id
from functions.common.log import get_logger
from functions.common.schema import COLUMN_NAMES
from functions.load import sql
from functions.load.sql import Names, Statement

logger = get_logger("load")

# What a statement can raise when the database or the network fails: the connector's errors,
# and OSError (sockets, the PUT's file read; requests' exceptions are OSErrors too).
_DB_ERRORS: tuple[type[BaseException], ...] = (SnowflakeError, OSError)


@dataclass(frozen=True)
class Coverage:
    """How much of the market the snapshot holds, against CoinGecko ``/global`` (the Transform
    output's ``coverage``). Counts are coins; market caps are in the snapshot's vs_currency;
    ``*_pct`` are percentages (fetched / total x 100; may exceed 100 when /global lags the
    listing). None where /global was unavailable. ``warning`` is set below the threshold."""

    coins_fetched: int
    active_cryptocurrencies: int | None = None
    coin_pct: float | None = None
    market_cap_fetched: float | None = None
    total_market_cap: float | None = None
    market_cap_pct: float | None = None
    min_pct: float | None = None
    whole_market: bool | None = None
    warning: str | None = None


@dataclass(frozen=True)
class RunInfo:
    """What the ETL_RUNS row records besides the load's own counts (all optional)."""

    execution_id: str | None = None
    fetched_at: str | None = None
    fetch_date: str | None = None
    vs_currency: str | None = None
    coin_count: int | None = None
    rejected_count: int | None = None
    duplicate_count: int | None = None
    api_calls: int | None = None
    retries: int | None = None
    pages: int | None = None
    processed_key: str | None = None
    rejected_key: str | None = None
    quality: Mapping[str, Any] | None = None
    coverage: Coverage | None = None


@dataclass(frozen=True)
class LoadResult:
    """What the load did: rows inserted (new coin ids for the snapshot), rows replaced
    (rows of the snapshot that were there before), and the fully qualified table."""

    rows_inserted: int
    rows_replaced: int
    table: str
    rows_loaded: int = 0
    loaded_at: str = ""
    dominance_basis: str | None = None
    assets_merged: int = 0
    asset_dim_error: str | None = None
    timings: dict[str, float] = field(default_factory=dict)
    # True when the COMMIT statement raised (e.g. its reply was lost) and a new session then
    # found this attempt's ETL_RUNS row: the load is committed all the same.
    commit_reply_lost: bool = False


def _execute(cur: Any, stmt: Statement, timings: dict[str, float]) -> list[tuple[Any, ...]]:
    started = time.perf_counter()
    cur.execute(stmt.sql, dict(stmt.params) if stmt.params is not None else None)
    rows = [tuple(r) for r in cur.fetchall()] if cur.description else []
    timings[stmt.label] = round(time.perf_counter() - started, 4)
    return rows


def _run(
    cur: Any, stmt: Statement, timings: dict[str, float], snapshot_id: str | None = None
) -> list[tuple]:
    """Execute one statement; a database error becomes a LoadError naming the step."""
    try:
        return _execute(cur, stmt, timings)
    except _DB_ERRORS as exc:
        target = f" for snapshot {snapshot_id}" if snapshot_id else ""
        raise LoadError(f"load step {stmt.label!r} failed{target}: {_one_line(exc)}") from exc


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())[:600]
    return text if isinstance(exc, SnowflakeError) else f"{type(exc).__name__}: {text}"


@contextlib.contextmanager
def _cursor(conn: Any, purpose: str) -> Iterator[Any]:
    """``conn.cursor()``; failing to open one (e.g. a closed connection) is a LoadError."""
    try:
        cur = conn.cursor()
    except _DB_ERRORS as exc:
        raise LoadError(f"cannot open a cursor to {purpose}: {_one_line(exc)}") from exc
    with cur:
        yield cur


def ensure_objects(conn: Any, names: Names, *, views: bool = True) -> None:
    """Create the schema, the tables and the reporting views if missing; check the tables.

    The database must exist already (creating one needs an admin). Raises LoadError naming the
    step: the database is missing or not visible to this role, a statement failed, or a table
    lacks columns this version writes.
    """
    timings: dict[str, float] = {}
    with _cursor(conn, "create the warehouse objects") as cur:
        _ensure_schema(cur, names, timings)
        for stmt in sql.create_tables(names):
            _run(cur, stmt, timings)
        for table in sql.TABLES:
            _upgrade_table(cur, names, table, timings)
        for stmt in sql.create_views(names) if views else []:
            _run(cur, stmt, timings)
    logger.debug("warehouse objects ensured", extra={"timings": timings})


def _upgrade_table(cur: Any, names: Names, table: str, timings: dict[str, float]) -> None:
    """Add the nullable columns a table from an older version lacks; refuse any other gap.

    Only ``sql.ADDED_COLUMNS`` are added (``ADD COLUMN IF NOT EXISTS``: idempotent, and safe
    when two loads upgrade at once); existing rows keep their values and read NULL there. A
    missing column outside that list raises LoadError naming the columns and the fix.
    """
    present = {r[0].upper() for r in _run(cur, sql.table_columns(names, table), timings)}
    missing = [c for c in sql.expected_columns(table) if c not in present]
    addable = set(sql.ADDED_COLUMNS.get(table, ()))
    if not missing:
        return
    if not set(missing) <= addable:
        raise LoadError(
            f"table {names.q(table)} exists but lacks columns"
            f" {[c for c in missing if c not in addable]}; it was created by an older version:"
            " add them (ALTER TABLE ... ADD COLUMN) or recreate it"
        )
    for column in missing:
        _run(cur, sql.add_column(names, table, column), timings)
    logger.info(
        "table upgraded: columns added", extra={"table": names.q(table), "columns": missing}
    )


def _ensure_schema(cur: Any, names: Names, timings: dict[str, float]) -> None:
    """CREATE SCHEMA only when it is missing (a role may use a schema it cannot create)."""
    check = sql.schema_exists(names)
    try:
        ((present,),) = _execute(cur, check, timings)
    except _DB_ERRORS as exc:
        # 2003: "does not exist or not authorized" (Snowflake; the emulator uses it too).
        if getattr(exc, "errno", None) == 2003:
            raise LoadError(
                f"database {names.database} does not exist or this role cannot use it; the"
                " load creates only the schema: an admin must CREATE DATABASE"
                f" {names.database} and grant the load's role its ownership (or USAGE and"
                f" CREATE SCHEMA on it) - see the README ({_one_line(exc)})"
            ) from exc
        raise LoadError(f"load step {check.label!r} failed: {_one_line(exc)}") from exc
    if not present:
        _run(cur, sql.create_schema(names), timings)
        logger.info("schema created", extra={"schema": f"{names.database}.{names.schema}"})


def _copy_rows_loaded(cur: Any, rows: Sequence[tuple[Any, ...]]) -> int:
    """Sum ``rows_loaded`` over the COPY result; a file not LOADED (e.g. skipped) is an error."""
    cols = [d[0].lower() for d in (cur.description or [])]
    if "rows_loaded" not in cols:  # e.g. "Copy executed with 0 files processed."
        return 0
    idx, status = cols.index("rows_loaded"), cols.index("status") if "status" in cols else None
    total = 0
    for row in rows:
        if status is not None and str(row[status]).upper() not in ("LOADED", "PARTIALLY_LOADED"):
            raise LoadError(f"COPY did not load staged file {row[0]}: status {row[status]}")
        total += int(row[idx] or 0)
    return total


def _stage_and_check(
    cur: Any,
    *,
    local_file: Path,
    staging: str,
    stage: str,
    snapshot_id: str,
    row_count: int,
    timings: dict[str, float],
) -> str | None:
    """Steps outside the transaction; returns the dominance basis of the staged rows."""
    _check_header(local_file)
    _run(cur, sql.create_staging_table(staging), timings, snapshot_id)
    if row_count == 0:
        # Nothing to stage (COPY of a header-only file is not portable): the snapshot is
        # replaced by no rows, provided the file really holds none.
        data_lines = _data_lines(local_file)
        if data_lines:
            raise LoadError(
                f"the processed file {local_file.name} holds {data_lines} data lines but the"
                f" event's row_count is 0: refusing to load snapshot {snapshot_id}"
            )
        return None
    _run(cur, sql.create_stage(stage), timings, snapshot_id)
    put = _run(cur, sql.put_file(local_file, stage), timings, snapshot_id)
    if not put:
        raise LoadError(f"PUT of {local_file} to stage {stage} uploaded nothing")
    copy = sql.copy_into_staging(staging, stage)
    try:
        rows = _execute(cur, copy, timings)
    except SnowflakeProgrammingError as exc:  # the statement ran and refused the file
        raise LoadError(
            f"load step 'copy into staging' failed for snapshot {snapshot_id}: a value or the"
            f" column count of {local_file.name} does not fit CRYPTO_DATA: {_one_line(exc)}"
        ) from exc
    except _DB_ERRORS as exc:  # the connection or the reply failed: not the file's fault
        raise LoadError(
            f"load step 'copy into staging' failed for snapshot {snapshot_id}: {_one_line(exc)}"
        ) from exc
    loaded = _copy_rows_loaded(cur, rows)
    if loaded != row_count:
        raise LoadError(
            f"COPY loaded {loaded} rows from {local_file.name} but the event's row_count is"
            f" {row_count}: refusing a partial load of snapshot {snapshot_id}"
        )
    ((total, distinct_ids, ids, snaps, min_snap, max_snap, min_basis, max_basis),) = _run(
        cur, sql.staging_profile(staging), timings, snapshot_id
    )
    if total != row_count:
        raise LoadError(f"staging holds {total} rows, expected {row_count}")
    if ids != total:
        raise LoadError(f"{total - ids} staged rows of snapshot {snapshot_id} have no COIN_ID")
    if distinct_ids != total:
        raise LoadError(
            f"the processed file of snapshot {snapshot_id} repeats {total - distinct_ids}"
            " COIN_ID values; (SNAPSHOT_ID, COIN_ID) must be unique"
        )
    if total and (snaps != total or min_snap != snapshot_id or max_snap != snapshot_id):
        raise LoadError(
            f"the processed file holds SNAPSHOT_ID values {min_snap!r}..{max_snap!r}"
            f" (or NULLs), not only the event's snapshot_id {snapshot_id!r}"
        )
    if min_basis is None:
        return None
    return min_basis if min_basis == max_basis else "mixed"


def _check_header(local_file: Path) -> None:
    """COPY maps columns by position, so the file's header must be exactly the schema's."""
    try:
        with gzip.open(local_file, "rt", encoding="utf-8", newline="") as fh:
            header = next(csv.reader(fh), [])
    except (OSError, EOFError, UnicodeDecodeError, csv.Error) as exc:
        raise LoadError(f"the processed file {local_file.name} is not a gzip'd CSV: {exc}") from exc
    if tuple(header) != COLUMN_NAMES:
        expected, got = set(COLUMN_NAMES), set(header)
        detail = (
            f"missing {sorted(expected - got)}, unexpected {sorted(got - expected)}"
            if expected != got
            else "same columns in another order"
        )
        raise LoadError(
            f"the processed file {local_file.name} does not have the columns of"
            f" functions.common.schema.PROCESSED_COLUMNS in order: {detail}"
        )


def _data_lines(local_file: Path) -> int:
    """Non-empty lines after the header of a gzip'd CSV (used only for row_count 0)."""
    try:
        with gzip.open(local_file, "rt", encoding="utf-8") as fh:
            return sum(1 for i, line in enumerate(fh) if i > 0 and line.strip())
    except (OSError, EOFError, UnicodeDecodeError) as exc:
        raise LoadError(f"the processed file {local_file.name} is not gzip'd text: {exc}") from exc


def load_snapshot(
    conn: Any,
    *,
    local_file: Path,
    snapshot_id: str,
    row_count: int,
    names: Names | None = None,
    run: RunInfo | None = None,
    reconnect: Callable[[], Any] | None = None,
) -> LoadResult:
    """Load one processed file as snapshot ``snapshot_id`` (replacing it whole if present).

    ``local_file`` is the gzip'd processed CSV holding ``row_count`` data rows. ``reconnect``
    opens a new connection to the same account; it is called only if the COMMIT statement
    fails, to find out on a new session whether the commit happened all the same.

    Raises ValidationError for bad arguments, and LoadError naming the failed step; its message
    says what changed: "rolled back"/"did not commit" (CRYPTO_DATA and ETL_RUNS unchanged) or
    "UNKNOWN" (COMMIT failed and no new session could check; a retry is safe, as a load replaces
    its snapshot whole). A COMMIT that failed but is verified on a new session is a success
    (``LoadResult.commit_reply_lost``).
    """
    validate_snapshot_id(snapshot_id)
    if isinstance(row_count, bool) or not isinstance(row_count, int) or row_count < 0:
        raise ValidationError("row_count", f"{row_count!r} must be an integer >= 0")
    local_file = Path(local_file)
    if not local_file.is_file():
        raise ValidationError("local_file", f"{local_file} does not exist")
    names = names or Names(conn.database or sql.DEFAULT_DATABASE, conn.schema or "PUBLIC")
    suffix = uuid.uuid4().hex[:12].upper()
    staging = f"CRYPTO_DATA_STAGING_{suffix}"
    timings: dict[str, float] = {}

    session = _Session()
    with _cursor(conn, f"load snapshot {snapshot_id}") as cur:
        try:
            # The session's temporary staging objects go to the target schema, which is current
            # even if the connection named another (or none: it was created just now).
            _run(cur, sql.use_schema(names), timings, snapshot_id)
            result = _load(
                cur,
                local_file=local_file,
                snapshot_id=snapshot_id,
                row_count=row_count,
                names=names,
                run=run or RunInfo(),
                staging=staging,
                stage=f"CRYPTO_ETL_LOAD_{suffix}",
                timings=timings,
                reconnect=reconnect,
                session=session,
            )
        finally:
            # Best effort (Snowflake drops temporary objects with the session anyway).
            if not session.lost:
                with contextlib.suppress(*_DB_ERRORS):
                    _execute(cur, sql.drop_staging_table(staging), timings)
    logger.info(
        "snapshot loaded",
        extra={
            "rows_loaded": result.rows_loaded,
            "rows_inserted": result.rows_inserted,
            "rows_replaced": result.rows_replaced,
            "table": result.table,
            "commit_reply_lost": result.commit_reply_lost,
            "timings": timings,
        },
    )
    return result


@dataclass
class _Session:
    """Whether the load's session stopped answering (then no more statements are sent)."""

    lost: bool = False


def _load(
    cur: Any,
    *,
    local_file: Path,
    snapshot_id: str,
    row_count: int,
    names: Names,
    run: RunInfo,
    staging: str,
    stage: str,
    timings: dict[str, float],
    reconnect: Callable[[], Any] | None,
    session: _Session,
) -> LoadResult:
    load_started_at = datetime.now(UTC).isoformat()
    basis = _stage_and_check(
        cur,
        local_file=local_file,
        staging=staging,
        stage=stage,
        snapshot_id=snapshot_id,
        row_count=row_count,
        timings=timings,
    )
    loaded_at = datetime.now(UTC).isoformat()
    _run(cur, sql.BEGIN, timings, snapshot_id)
    step = sql.count_existing(names, staging, snapshot_id)
    try:
        ((existing, new_keys),) = _execute(cur, step, timings)
        steps = [sql.delete_snapshot(names, snapshot_id)]
        steps.append(sql.insert_snapshot(names, staging, loaded_at))
        if run.execution_id:
            steps.append(sql.delete_run(names, snapshot_id, run.execution_id))
        values = _run_values(
            run,
            snapshot_id=snapshot_id,
            load_started_at=load_started_at,
            loaded_at=loaded_at,
            rows_loaded=row_count,
            rows_inserted=int(new_keys),
            rows_replaced=int(existing),
            dominance_basis=basis,
        )
        steps.append(sql.insert_run(names, values))
        for step in steps:
            _execute(cur, step, timings)
    except BaseException as exc:
        if _rollback(cur, snapshot_id):
            logger.warning("load transaction rolled back", extra={"snapshot": snapshot_id})
        if isinstance(exc, _DB_ERRORS):
            raise LoadError(
                f"load step {step.label!r} failed for snapshot {snapshot_id}:"
                f" {_one_line(exc)}; the transaction was rolled back"
                " (CRYPTO_DATA and ETL_RUNS unchanged)"
            ) from exc
        raise
    commit_reply_lost = _commit(
        cur,
        names=names,
        snapshot_id=snapshot_id,
        loaded_at=loaded_at,
        reconnect=reconnect,
        session=session,
        timings=timings,
    )

    # Autocommit from here. The snapshot is committed, so a failure of the (idempotent) asset
    # MERGE must not fail the execution and alert "nothing changed": it is logged, reported as
    # asset_dim_error, and the next load of any snapshot converges the dimension.
    merged: list[tuple[Any, ...]] = []
    asset_dim_error: str | None = None
    if session.lost:
        # The staging table lived in that session: nothing to merge from.
        asset_dim_error = "skipped: the load's session was lost after the commit"
    else:
        try:
            merged = _execute(cur, sql.merge_asset_dim(names, staging), timings)
        except _DB_ERRORS as exc:
            asset_dim_error = _one_line(exc)
    if asset_dim_error:
        logger.warning(
            "asset dimension merge failed after the snapshot was committed",
            extra={"snapshot": snapshot_id, "error": asset_dim_error},
        )
    return LoadResult(
        rows_inserted=int(new_keys),
        rows_replaced=int(existing),
        table=names.q(sql.CRYPTO_DATA),
        rows_loaded=row_count,
        loaded_at=loaded_at,
        dominance_basis=basis,
        assets_merged=sum(int(v or 0) for v in merged[0]) if merged else 0,
        asset_dim_error=asset_dim_error,
        timings=timings,
        commit_reply_lost=commit_reply_lost,
    )


def _commit(
    cur: Any,
    *,
    names: Names,
    snapshot_id: str,
    loaded_at: str,
    reconnect: Callable[[], Any] | None,
    session: _Session,
    timings: dict[str, float],
) -> bool:
    """COMMIT; if it raises, find out whether it committed. True = committed, reply lost.

    The failed session cannot tell (it would see its own uncommitted rows), so a new session
    looks for the ETL_RUNS row this attempt wrote (its LOADED_AT is unique to the attempt).
    """
    try:
        _execute(cur, sql.COMMIT, timings)
        return False
    except _DB_ERRORS as exc:
        commit_error = _one_line(exc)
        cause: BaseException = exc
    # Discards the transaction if it is still open (a no-op if it committed), so it cannot
    # commit after the check; failing means the session is gone (Snowflake aborts its
    # transaction).
    if not _rollback(cur, snapshot_id):
        session.lost = True
    where = f"for snapshot {snapshot_id} ({commit_error})"
    unknown = (
        f"; CRYPTO_DATA and ETL_RUNS may or may not hold this load (its ETL_RUNS row would have"
        f" SNAPSHOT_ID '{snapshot_id}' and LOADED_AT {loaded_at}). A retry is safe: a load"
        " replaces its snapshot whole (idempotent per snapshot)"
    )
    if reconnect is None:
        raise LoadError(
            f"COMMIT failed {where} and its outcome is UNKNOWN: no way to open a new session"
            f" to check was given{unknown}"
        ) from cause
    try:
        found = _count_on_new_session(reconnect, sql.find_run(names, snapshot_id, loaded_at))
    except Exception as exc:  # whatever reconnect raises: the outcome stays unknown
        raise LoadError(
            f"COMMIT failed {where} and its outcome is UNKNOWN: checking ETL_RUNS on a new"
            f" session failed ({_one_line(exc)}){unknown}"
        ) from cause
    if not found:
        raise LoadError(
            f"COMMIT failed {where} and the transaction did not commit (a new session finds"
            f" no ETL_RUNS row with this attempt's LOADED_AT {loaded_at}): CRYPTO_DATA and"
            " ETL_RUNS unchanged"
        ) from cause
    logger.warning(
        "the COMMIT reply was lost but the commit is verified on a new session",
        extra={"snapshot": snapshot_id, "loaded_at": loaded_at, "error": commit_error},
    )
    return True


def _count_on_new_session(reconnect: Callable[[], Any], stmt: Statement) -> int:
    """Run a one-number query on a new connection (closed afterwards)."""
    conn = reconnect()
    try:
        with conn.cursor() as cur:
            ((count,),) = _execute(cur, stmt, {})
            return int(count)
    finally:
        with contextlib.suppress(*_DB_ERRORS):
            conn.close()


def _rollback(cur: Any, snapshot_id: str) -> bool:
    """ROLLBACK (a no-op outside a transaction); False when the session did not answer."""
    try:
        cur.execute(sql.ROLLBACK.sql)
    except _DB_ERRORS as exc:  # the session may be gone: Snowflake aborts it anyway
        logger.warning("rollback failed", extra={"snapshot": snapshot_id, "error": _one_line(exc)})
        return False
    return True


def _run_values(run: RunInfo, **load: Any) -> dict[str, Any]:
    quality = json.dumps(dict(run.quality), sort_keys=True, default=str) if run.quality else None
    return {
        "snapshot_id": load["snapshot_id"],
        "execution_id": run.execution_id,
        "status": sql.STATUS_SUCCEEDED,
        "fetched_at": run.fetched_at,
        "fetch_date": run.fetch_date,
        "load_started_at": load["load_started_at"],
        "loaded_at": load["loaded_at"],
        "vs_currency": run.vs_currency,
        "coin_count": run.coin_count,
        "rows_loaded": load["rows_loaded"],
        "rows_inserted": load["rows_inserted"],
        "rows_replaced": load["rows_replaced"],
        "rejected_count": run.rejected_count,
        "duplicate_count": run.duplicate_count,
        "api_calls": run.api_calls,
        "retries": run.retries,
        "pages": run.pages,
        "processed_key": run.processed_key,
        "rejected_key": run.rejected_key,
        "dominance_basis": load["dominance_basis"],
        "quality": quality,
        **_coverage_values(run.coverage),
    }


def _coverage_values(cov: Coverage | None) -> dict[str, Any]:
    """The ETL_RUNS coverage columns (lower-case) of ``cov``; all None (NULL) without one."""
    if cov is None:
        return dict.fromkeys(c.lower() for c in sql.COVERAGE_COLUMNS)
    return {
        "coins_fetched": cov.coins_fetched,
        "active_cryptocurrencies": cov.active_cryptocurrencies,
        "coin_coverage_pct": cov.coin_pct,
        "market_cap_fetched": cov.market_cap_fetched,
        "total_market_cap": cov.total_market_cap,
        "market_cap_coverage_pct": cov.market_cap_pct,
        "coverage_warning": cov.warning,
    }


@dataclass(frozen=True)
class FailureRecord:
    """One failed execution, as its FAILED row in ETL_RUNS records it.

    ``failed_state`` is the state that failed (e.g. ``"Extract"``); ``error_name`` the error's
    name (e.g. ``"SourceUnavailableError"``, ``"States.Timeout"``) and ``error_message`` its
    message, both already bounded (``sql.ERROR_NAME_MAX_CHARS``, ``sql.ERROR_MESSAGE_MAX_CHARS``).
    ``run`` holds the counts so far (what the states that finished reported; None if unknown).
    """

    snapshot_id: str
    execution_id: str
    failed_state: str
    error_name: str
    error_message: str | None
    run: RunInfo = field(default_factory=RunInfo)


def record_failure(conn: Any, failure: FailureRecord, *, names: Names) -> str:
    """Write the execution's FAILED row in ETL_RUNS (replacing one a retry wrote before).

    One transaction: DELETE the execution's FAILED row, INSERT the new one, COMMIT. Touches no
    other table and no SUCCEEDED row; ROWS_* and LOAD_STARTED_AT are NULL, LOADED_AT is when
    the failure was recorded. Returns that time (ISO-8601, UTC). Raises LoadError naming the
    step when the warehouse fails (the transaction is rolled back).
    """
    validate_snapshot_id(failure.snapshot_id)
    recorded_at = datetime.now(UTC).isoformat()
    run = failure.run
    quality = json.dumps(dict(run.quality), sort_keys=True, default=str) if run.quality else None
    values = {
        "snapshot_id": failure.snapshot_id,
        "execution_id": failure.execution_id,
        "status": sql.STATUS_FAILED,
        "fetched_at": run.fetched_at,
        "fetch_date": run.fetch_date,
        "loaded_at": recorded_at,
        "vs_currency": run.vs_currency,
        "coin_count": run.coin_count,
        "rejected_count": run.rejected_count,
        "duplicate_count": run.duplicate_count,
        "api_calls": run.api_calls,
        "retries": run.retries,
        "pages": run.pages,
        "processed_key": run.processed_key,
        "rejected_key": run.rejected_key,
        "quality": quality,
        **_coverage_values(run.coverage),
        "failed_state": failure.failed_state,
        "error_name": failure.error_name,
        "error_message": failure.error_message,
    }
    timings: dict[str, float] = {}
    # A failed COMMIT may have committed all the same: a retry replaces the row (idempotent).
    steps = [
        sql.delete_failure(names, failure.execution_id),
        sql.insert_run(names, values),
        sql.COMMIT,
    ]
    with _cursor(conn, "record the failure") as cur:
        _run(cur, sql.BEGIN, timings, failure.snapshot_id)
        step = steps[0]
        try:
            for step in steps:
                _execute(cur, step, timings)
        except _DB_ERRORS as exc:
            _rollback(cur, failure.snapshot_id)
            raise LoadError(
                f"run log step {step.label!r} failed for the failed execution"
                f" {failure.execution_id}: {_one_line(exc)}"
            ) from exc
        except BaseException:
            _rollback(cur, failure.snapshot_id)
            raise
    logger.info(
        "failure recorded in ETL_RUNS",
        extra={
            "snapshot": failure.snapshot_id,
            "failed_state": failure.failed_state,
            "error": failure.error_name,
            "timings": timings,
        },
    )
    return recorded_at
