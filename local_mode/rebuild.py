"""``crypto-etl rebuild``: load the local warehouse again from the lake, so losing
``.local/warehouse`` never loses history.

What is loaded is what the warehouse held: for each snapshot index ``snapshots/<id>.json`` of
the lake (``functions/common/snapshot_index.py``), the processed file of its ``current`` run
(``processed/dt=D/snapshot=<id>/run=R/crypto_data.csv.gz``), with the Load function's own code
(``functions.load.loader.ensure_objects`` + ``load_snapshot``): each snapshot is replaced whole
in one transaction, so a rebuild of a warehouse that already holds a snapshot leaves the same
rows (idempotent), and its rows get back the LOADED_AT of their original load. A rebuild adds
one ETL_RUNS row per snapshot, with EXECUTION_ID ``<original execution id>#rebuild`` (a later
rebuild replaces it; the original execution's row, if still there, is kept), the extract's
counts from the manifest (when ``raw/`` has not expired), the rebuild's load times, and
QUALITY ``{"rebuilt_from_lake": {...}}``.

Every processed file that is not loaded is reported with the reason: a superseded run (the
index names another), a snapshot whose index names no loaded run, a file with no index (e.g.
an older layout), a path outside the layout.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import gzip
import logging
import re
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from functions.common import keys
from functions.common.errors import CryptoEtlError, ValidationError
from functions.common.schema import COLUMN_NAMES, TIMESTAMP_FORMAT
from functions.common.snapshot_index import read_index
from functions.common.storage import LocalStorage, Storage, get_json
from functions.load.sql import CRYPTO_DATA, Names

PROCESSED_FILE = "crypto_data.csv.gz"
_PROCESSED_RE = re.compile(
    r"processed/dt=(?P<dt>\d{4}-\d{2}-\d{2})/snapshot=(?P<snapshot>[^/]+)/run=(?P<run>[^/]+)/"
    + re.escape(PROCESSED_FILE)
)
REBUILT_MARK = "rebuilt_from_lake"  # QUALITY key of the ETL_RUNS rows a rebuild writes
# A rebuild's ETL_RUNS row has its own EXECUTION_ID (the original one + this suffix): the load
# replaces the row of its execution id, so a rebuild never overwrites the original execution's
# row and a second rebuild replaces the first one's.
REBUILD_SUFFIX = "#rebuild"


@dataclass(frozen=True)
class SnapshotFile:
    """One snapshot to load: its index's ``current`` run (original values, as in the index)."""

    snapshot_id: str
    partition_date: str
    run_id: str
    processed_key: str
    manifest_key: str | None
    rejected_key: str | None
    execution_id: str | None
    index_rows: int | None
    loaded_at: str | None


@dataclass(frozen=True)
class NotLoaded:
    """A processed file the rebuild does not load, and why."""

    key: str
    reason: str


@dataclass(frozen=True)
class RebuildPlan:
    """What a rebuild of one lake loads (``snapshots``, in original load order), what it
    leaves (``not_loaded``), and the snapshots it cannot load (``problems``, one line each)."""

    snapshots: tuple[SnapshotFile, ...]
    not_loaded: tuple[NotLoaded, ...]
    problems: tuple[str, ...]


@dataclass(frozen=True)
class FileFacts:
    """What the processed file itself says: data rows (CSV records after the header) and the
    first row's FETCHED_AT, FETCH_DATE and VS_CURRENCY (None when it has no rows)."""

    rows: int
    fetched_at: str | None
    fetch_date: str | None
    vs_currency: str | None


@dataclass
class RebuildSummary:
    """What a rebuild did: snapshots loaded and their rows, and the failures (one line each)."""

    snapshots: int = 0
    rows: int = 0
    rows_replaced: int = 0
    failures: list[str] = field(default_factory=list)


def _index_ids(storage: Storage) -> list[str]:
    ids = []
    for key in storage.list_keys(keys.SNAPSHOTS):
        name = key[len(keys.SNAPSHOTS) :]
        if "/" not in name and name.endswith(".json"):
            ids.append(name[: -len(".json")])
    return ids


def plan_rebuild(storage: Storage) -> RebuildPlan:
    """Read the snapshot indexes and list the processed files of ``storage`` (no warehouse).

    Never raises for a bad index or file: each becomes a line of ``problems`` (an index that
    is not valid JSON or not this snapshot's, a ``current`` naming a file that is not there)
    or of ``not_loaded``.
    """
    snapshots: list[SnapshotFile] = []
    problems: list[str] = []
    indexes: dict[str, dict[str, Any] | None] = {}
    for snapshot_id in _index_ids(storage):
        where = keys.SNAPSHOTS + snapshot_id + ".json"
        try:
            keys.validate_snapshot_id(snapshot_id, where)
            index = read_index(storage, snapshot_id)
            current = index.get("current") if index else None
            if current is not None:
                keys.validate_object(current, f"{where}: current")
        except CryptoEtlError as exc:
            problems.append(f"{where}: {exc}")
            continue
        indexes[snapshot_id] = index
        if not current:
            continue
        try:
            snap = _snapshot_file(snapshot_id, index or {}, current, where)
        except ValidationError as exc:
            problems.append(f"{where}: {exc}")
            continue
        if not storage.exists(snap.processed_key):
            problems.append(
                f"{where}: its current run's processed file {snap.processed_key} is not in the"
                " lake; snapshot not rebuilt"
            )
            continue
        snapshots.append(snap)
    loading = {s.processed_key for s in snapshots}
    not_loaded = [
        NotLoaded(key, _why_not_loaded(key, indexes))
        for key in storage.list_keys(keys.PROCESSED)
        if key not in loading
    ]
    snapshots.sort(key=lambda s: (s.loaded_at or "", s.partition_date, s.snapshot_id))
    return RebuildPlan(tuple(snapshots), tuple(not_loaded), tuple(problems))


def _snapshot_file(
    snapshot_id: str, index: dict[str, Any], current: Any, where: str
) -> SnapshotFile:
    run_id = keys.validate_run_id(current.get("run_id"), f"{where}: current.run_id")
    processed_key = keys.validate_key(
        current.get("processed_key"), f"{where}: current.processed_key", keys.PROCESSED
    )
    manifest_key = current.get("manifest_key")
    if manifest_key is not None:
        keys.validate_key(manifest_key, f"{where}: current.manifest_key", keys.RAW)
    rejected_key = current.get("rejected_key")
    if rejected_key is not None:
        keys.validate_key(rejected_key, f"{where}: current.rejected_key", keys.REJECTED)
    rows = current.get("rows")
    return SnapshotFile(
        snapshot_id=snapshot_id,
        partition_date=str(index.get("partition_date")),
        run_id=run_id,
        processed_key=processed_key,
        manifest_key=manifest_key,
        rejected_key=rejected_key,
        execution_id=current.get("execution_id"),
        index_rows=rows if isinstance(rows, int) and not isinstance(rows, bool) else None,
        loaded_at=current.get("loaded_at"),
    )


def _why_not_loaded(key: str, indexes: dict[str, dict[str, Any] | None]) -> str:
    match = _PROCESSED_RE.fullmatch(key)
    if not match:
        return (
            "not in the layout processed/dt=D/snapshot=S/run=R/crypto_data.csv.gz (an older"
            " layout?): no snapshot index names it"
        )
    snapshot_id = match["snapshot"]
    if snapshot_id not in indexes:
        return f"no snapshot index {keys.SNAPSHOTS}{snapshot_id}.json (or an invalid one)"
    current = (indexes[snapshot_id] or {}).get("current")
    if not current:
        return f"the index of snapshot {snapshot_id} names no loaded run (no load succeeded)"
    return f"superseded: the index of snapshot {snapshot_id} names run {current.get('run_id')}"


def read_processed_file(path: Path) -> FileFacts:
    """Count the data rows of a gzip'd processed CSV (records, so quoted newlines count once).

    Raises ValidationError naming the file when it is not a gzip'd CSV with the columns of
    ``functions.common.schema.PROCESSED_COLUMNS``.
    """
    first: list[str] | None = None
    rows = 0
    try:
        with gzip.open(path, "rt", encoding="utf-8", newline="") as fh:
            reader = csv.reader(fh)
            header = next(reader, [])
            for record in reader:
                if first is None:
                    first = record
                rows += 1
    except (OSError, EOFError, UnicodeDecodeError, csv.Error) as exc:
        raise ValidationError(str(path), f"is not a gzip'd CSV: {exc}") from exc
    if tuple(header) != COLUMN_NAMES:
        raise ValidationError(str(path), "does not have the processed file's columns")
    values = dict(zip(COLUMN_NAMES, first, strict=False)) if first else {}
    return FileFacts(
        rows=rows,
        fetched_at=values.get("fetched_at") or None,
        fetch_date=values.get("fetch_date") or None,
        vs_currency=values.get("vs_currency") or None,
    )


def _utc_text(value: Any) -> str | None:
    """ISO-8601 text -> the processed file's UTC format (what the load casts), else None."""
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    if parsed.tzinfo is None:
        return None
    return parsed.astimezone(UTC).strftime(TIMESTAMP_FORMAT)


def _count(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def run_info(storage: Storage, snap: SnapshotFile, facts: FileFacts, rebuilt_at: str) -> Any:
    """The ETL_RUNS values of a rebuilt snapshot (a ``functions.load.loader.RunInfo``).

    From the manifest when it is still in the lake (raw/ expires): fetched_at, fetch_date,
    vs_currency, coin_count, pages, api_calls, retries; else from the file's first row. The
    rejected count is the rejected file's rows when it exists; duplicates are not recorded in
    the lake (None). QUALITY records that the row was rebuilt, when, and the original load.
    """
    from functions.load.loader import RunInfo

    manifest: dict[str, Any] = {}
    if snap.manifest_key and storage.exists(snap.manifest_key):
        try:
            loaded = get_json(storage, snap.manifest_key)
            manifest = dict(loaded) if isinstance(loaded, dict) else {}
        except CryptoEtlError:
            manifest = {}
    rejected_count = None
    if snap.rejected_key and storage.exists(snap.rejected_key):
        with tempfile.TemporaryDirectory(prefix="crypto-etl-rebuild-") as tmp:
            local = Path(tmp) / "rejected.csv.gz"
            storage.download(snap.rejected_key, local)
            try:
                with gzip.open(local, "rt", encoding="utf-8", newline="") as fh:
                    rejected_count = max(sum(1 for _ in csv.reader(fh)) - 1, 0)
            except (OSError, EOFError, UnicodeDecodeError, csv.Error):
                rejected_count = None
    pages = manifest.get("pages")
    return RunInfo(
        execution_id=f"{snap.execution_id or 'unknown-execution'}{REBUILD_SUFFIX}",
        fetched_at=_utc_text(manifest.get("fetched_at") or facts.fetched_at),
        fetch_date=manifest.get("fetch_date") or facts.fetch_date,
        vs_currency=manifest.get("vs_currency") or facts.vs_currency,
        coin_count=_count(manifest.get("coin_count")),
        rejected_count=rejected_count,
        duplicate_count=None,
        api_calls=_count(manifest.get("api_calls")),
        retries=_count(manifest.get("retries")),
        pages=len(pages) if isinstance(pages, list) else None,
        processed_key=snap.processed_key,
        rejected_key=snap.rejected_key,
        quality={
            REBUILT_MARK: {
                "rebuilt_at": rebuilt_at,
                "run_id": snap.run_id,
                "original_loaded_at": snap.loaded_at,
                "manifest": bool(manifest),
            }
        },
    )


def _label(i: int, n: int, snap: SnapshotFile) -> str:
    return f"[{i}/{n}] {snap.snapshot_id} (run {snap.run_id}, dt={snap.partition_date})"


def print_plan_notes(plan: RebuildPlan, out: TextIO) -> None:
    """The files not loaded and the problems, one line each."""
    for item in plan.not_loaded:
        print(f"  not loaded: {item.key}: {item.reason}", file=out)
    for problem in plan.problems:
        print(f"  problem: {problem}", file=out)


def dry_run(storage: Storage, plan: RebuildPlan, out: TextIO) -> RebuildSummary:
    """Print what a rebuild would load (rows counted in each file); change nothing."""
    summary = RebuildSummary(failures=list(plan.problems))
    n = len(plan.snapshots)
    with tempfile.TemporaryDirectory(prefix="crypto-etl-rebuild-") as tmp:
        for i, snap in enumerate(plan.snapshots, 1):
            local = Path(tmp) / f"{snap.snapshot_id}.csv.gz"
            storage.download(snap.processed_key, local)
            try:
                facts = read_processed_file(local)
            except ValidationError as exc:
                summary.failures.append(f"{snap.snapshot_id}: {exc}")
                print(f"{_label(i, n, snap)}: cannot load: {exc}", file=out, flush=True)
                continue
            print(
                f"{_label(i, n, snap)}: would load {facts.rows} rows from {snap.processed_key}",
                file=out,
                flush=True,
            )
            summary.snapshots += 1
            summary.rows += facts.rows
    print_plan_notes(plan, out)
    return summary


def rebuild(
    storage: Storage,
    plan: RebuildPlan,
    *,
    connect: Callable[[], Any],
    names: Names,
    out: TextIO,
) -> RebuildSummary:
    """Load every snapshot of ``plan`` (``connect()`` opens a warehouse connection).

    Each load replaces its snapshot whole; then the rows get back the LOADED_AT of their
    original load (the index's ``current.loaded_at``), so a rebuilt CRYPTO_DATA equals the lost
    one. A snapshot that fails (a bad file, a LoadError: the warehouse keeps that snapshot as it
    was) is printed and the others still load; ``RebuildSummary.failures`` lists them (the
    plan's problems are not repeated there).
    """
    from functions.load.loader import ensure_objects, load_snapshot

    summary = RebuildSummary()
    rebuilt_at = datetime.now(UTC).isoformat()
    n = len(plan.snapshots)
    conn = connect()
    try:
        ensure_objects(conn, names)
        with tempfile.TemporaryDirectory(prefix="crypto-etl-rebuild-") as tmp:
            for i, snap in enumerate(plan.snapshots, 1):
                label = _label(i, n, snap)
                print(f"{label}: loading {snap.processed_key}", file=out, flush=True)
                local = Path(tmp) / f"{snap.snapshot_id}.csv.gz"
                try:
                    storage.download(snap.processed_key, local)
                    facts = read_processed_file(local)
                    result = load_snapshot(
                        conn,
                        local_file=local,
                        snapshot_id=snap.snapshot_id,
                        row_count=facts.rows,
                        names=names,
                        run=run_info(storage, snap, facts, rebuilt_at),
                        reconnect=connect,
                    )
                    _restore_loaded_at(conn, names, snap)
                except CryptoEtlError as exc:
                    summary.failures.append(f"{snap.snapshot_id}: {exc}")
                    print(f"{label}: FAILED: {exc}", file=out, flush=True)
                    continue
                finally:
                    local.unlink(missing_ok=True)
                note = ""
                if snap.index_rows is not None and snap.index_rows != facts.rows:
                    note = f" (the index says {snap.index_rows} rows)"
                print(
                    f"{label}: {result.rows_loaded} rows{note} ({result.rows_inserted} new,"
                    f" {result.rows_replaced} replaced)",
                    file=out,
                    flush=True,
                )
                summary.snapshots += 1
                summary.rows += result.rows_loaded
                summary.rows_replaced += result.rows_replaced
    finally:
        conn.close()
    print_plan_notes(plan, out)
    return summary


def _restore_loaded_at(conn: Any, names: Names, snap: SnapshotFile) -> None:
    """Set the snapshot's LOADED_AT back to its original load's (one autocommit statement;
    if it fails the rows keep the rebuild's time, and a rebuild again fixes it)."""
    from snowflake.connector.errors import Error as SnowflakeError

    from functions.common.errors import LoadError

    original = _utc_text(snap.loaded_at)
    if original is None:
        return
    try:
        with conn.cursor() as cur:
            cur.execute(
                f"UPDATE {names.q(CRYPTO_DATA)} SET LOADED_AT = CAST(%(loaded_at)s AS TIMESTAMP_TZ)"
                " WHERE SNAPSHOT_ID = %(snapshot_id)s",
                {"loaded_at": original, "snapshot_id": snap.snapshot_id},
            )
    except (SnowflakeError, OSError) as exc:
        raise LoadError(
            f"snapshot {snap.snapshot_id} was reloaded but its LOADED_AT could not be set back"
            f" to {snap.loaded_at}: {exc}"
        ) from exc


@contextlib.contextmanager
def _load_logs(verbose: bool) -> Iterator[None]:
    """The load's JSON logs: INFO lines only with ``-v`` (its warnings always show)."""
    import functions.load.loader  # noqa: F401 - creates the "load" logger

    log = logging.getLogger("load")
    saved = [(h, h.level) for h in log.handlers]
    if not verbose:
        for handler in log.handlers:
            handler.setLevel(max(handler.level, logging.WARNING))
    try:
        yield
    finally:
        for handler, level in saved:
            handler.setLevel(level)


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def rebuild_cli(args: argparse.Namespace, out: TextIO) -> int:
    """``crypto-etl rebuild [--dry-run]``: 0 when every indexed snapshot loaded, else 1."""
    from local_mode.run_command import LOCAL_BUCKET
    from local_mode.warehouse import LocalWarehouse

    local_dir = Path(args.local_dir)
    lake_dir = (local_dir / "lake").resolve()
    warehouse_dir = (local_dir / "warehouse").resolve()
    for path in (local_dir, lake_dir):
        if path.exists() and not path.is_dir():
            raise ValidationError("--local-dir", f"{path} is not a directory")
    if not lake_dir.is_dir():
        print(f"No lake at {lake_dir}: nothing to rebuild.", file=out)
        return 1
    storage = LocalStorage(lake_dir, bucket=LOCAL_BUCKET)
    plan = plan_rebuild(storage)
    skipped = len(plan.not_loaded)
    if args.dry_run:
        summary = dry_run(storage, plan, out)
        print(
            f"Dry run: would load {_plural(summary.snapshots, 'snapshot')},"
            f" {_plural(summary.rows, 'row')} into {warehouse_dir};"
            f" {_plural(skipped, 'processed file')} not loaded,"
            f" {_plural(len(summary.failures), 'problem')}. Nothing was changed.",
            file=out,
        )
        return 1 if summary.failures or not summary.snapshots else 0
    if not plan.snapshots:
        print_plan_notes(plan, out)
        print(f"Nothing to rebuild: no snapshot index in {lake_dir} names a loaded run.", file=out)
        return 1
    print(f"Starting local warehouse (fakesnow) in {warehouse_dir}", file=out, flush=True)
    with _load_logs(args.verbose), LocalWarehouse(warehouse_dir) as wh:
        summary = rebuild(
            storage, plan, connect=wh.connect, names=Names(wh.database, wh.schema), out=out
        )
    problems = len(plan.problems) + len(summary.failures)
    print(
        f"Rebuilt {_plural(summary.snapshots, 'snapshot')}, {_plural(summary.rows, 'row')}"
        f" (replacing {summary.rows_replaced} rows already there) into {warehouse_dir};"
        f" {_plural(skipped, 'processed file')} not loaded, {_plural(problems, 'problem')}.",
        file=out,
    )
    return 1 if problems else 0


def register(sub: Any) -> None:
    """Add ``rebuild`` to the CLI's sub-parsers."""
    parser = sub.add_parser(
        "rebuild",
        help="load the local warehouse again from the lake's processed files",
        description="Load every snapshot of the local lake (the run its snapshot index names)"
        " into the local warehouse, replacing it if present. Processed files that are not"
        " loaded are listed with the reason.",
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="list what would be loaded; change nothing"
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="show the load's JSON logs")
    parser.set_defaults(func=rebuild_cli)
