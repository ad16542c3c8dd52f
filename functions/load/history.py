"""The backfill's last step: CoinGecko ``market_chart`` bodies in the lake -> CRYPTO_PRICE_HISTORY.

Event (``"action": "load_history"``, built by ``state_machine/backfill.asl.json`` from the
plan and the Distributed Map's output)::

    {"action": "load_history", "backfill_id", "bucket", "vs_currency", "days", "items_key",
     "history_prefix": "raw/history/backfill=<id>/", "results_prefix": ".../results/",
     "fetch": {"MapRunArn", "ResultWriterDetails": {"Bucket", "Key"}} | [child outputs] | null,
     ...the plan's other members (ignored)}

Which coins: ``items.json`` (the plan's ``[{"coin_id", "rank"}]``). Each coin's body is
``<history_prefix>coins/<coin_id>.json``, stored by the fetch exactly as CoinGecko sent it
(``{"prices": [[unix ms, value], ...], "market_caps": [...], "total_volumes": [...]}``). Why a
coin has no body comes from the Map's results: the ResultWriter's ``manifest.json`` and its
result files (each child's ``Output`` holds ``failed: [{"coin_id", "error"}]``; a FAILED child's
``Error``/``Cause`` applies to every coin of its batch), or a list of child outputs when the
Map ran without a ResultWriter; a coin still unexplained is reported as such.

Rules (decided here, like the snapshot transform's, functions/transform/transform.py):

* One row per (coin, UTC date of the point): each series keeps its **last** point of a date
  (CoinGecko's daily series ends with the current, partial day: that last point is today's
  row), and the three series are aligned by that date; a series without a point on a date
  leaves its column NULL.
* A JSON ``null`` value is NULL. A value that is not a finite number >= 0 (a boolean, text,
  ``NaN``/``Infinity``, a negative number) **rejects that row** (never silently nulled), as
  does a timestamp that is not a whole number of milliseconds in years 1-9999 (its point
  cannot be dated); rejected rows are counted with a sample of reasons
  (``invalid_number:<column>``, ``negative:<column>``, ``invalid_timestamp:<series>``).
* A body that is not that shape (not JSON, not an object, a series missing or not a list, a
  point that is not a ``[timestamp, value]`` pair, a CoinGecko error body, no point at all)
  **fails that coin** (``coins_failed``), never the whole load.

Load: the rows are written as one CSV.gz (text quoted), PUT to a temporary stage and COPY'd
into a temporary staging table outside any transaction; then one transaction counts, deletes
the stored rows whose key is staged with other values, inserts the staged rows whose key is not
stored, COMMIT. Statements are constant in the number of rows and coins.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import math
import re
import tempfile
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

from functions.common import keys
from functions.common.errors import CryptoEtlError, LoadError, ValidationError
from functions.common.log import get_logger
from functions.common.storage import Storage
from functions.load import sql
from functions.load.config import SnowflakeConfig
from functions.load.loader import (
    _DB_ERRORS,
    _copy_rows_loaded,
    _cursor,
    _execute,
    _one_line,
    _rollback,
    _run,
    ensure_objects,
)
from functions.load.sql import Names

logger = get_logger("load")

ACTION_LOAD_HISTORY = "load_history"
SERIES = (("prices", "PRICE"), ("market_caps", "MARKET_CAP"), ("total_volumes", "TOTAL_VOLUME"))
MAX_FAILED_LISTED = 200  # coins_failed entries returned (a state payload is at most 256 KB)
MAX_ERROR_CHARS = 240  # per listed failure
MAX_REASONS = 20  # distinct failure reasons counted in failure_reasons
REJECT_SAMPLE = 20  # rejected rows sampled in the result
READ_WORKERS = 16  # concurrent lake reads (S3 GETs are latency-bound)
READ_CHUNK = 64  # bodies read ahead at most (bounds memory on a full-market backfill)
NO_BODY = "no history body in the lake and no reason from the fetch"

_CURRENCY_RE = re.compile(r"[a-z0-9_-]{1,16}")
_MS_MIN = int(datetime(1, 1, 1, tzinfo=UTC).timestamp() * 1000)
_MS_MAX = int(datetime(9999, 12, 31, 23, 59, 59, 999000, tzinfo=UTC).timestamp() * 1000)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class MalformedHistory(ValueError):
    """A market_chart body that is not the documented shape: the coin fails."""


# --- Parsing (pure) ------------------------------------------------------------------------------


@dataclass(frozen=True)
class HistoryRow:
    """One daily row: UTC date and price / market cap / 24h volume in the vs_currency (or None)."""

    day: date
    price: float | None
    market_cap: float | None
    total_volume: float | None


@dataclass(frozen=True)
class CoinHistory:
    """A parsed body: its rows in date order and its rejected rows ``(date or None, reason)``."""

    rows: list[HistoryRow]
    rejected: list[tuple[date | None, str]] = field(default_factory=list)


def _error_body(body: Mapping[str, Any]) -> str | None:
    """CoinGecko's message when ``body`` is one of its error bodies (``{"error": ...}`` or
    ``{"status": {"error_code", "error_message"}}``), else None."""
    if "error" in body:
        return str(body["error"])
    status = body.get("status")
    if isinstance(status, Mapping) and "error_message" in status:
        return f"{status.get('error_message')} (error_code {status.get('error_code')})"
    return None


def _day(ms: Any) -> date | None:
    """The UTC date of a unix-milliseconds timestamp; None when it is not one (years 1-9999)."""
    if isinstance(ms, bool) or not isinstance(ms, int | float):
        return None
    if isinstance(ms, float) and not (math.isfinite(ms) and ms.is_integer()):
        return None
    if not _MS_MIN <= ms <= _MS_MAX:
        return None
    return (_EPOCH + timedelta(milliseconds=int(ms))).date()


def _value(value: Any, column: str) -> tuple[float | None, str | None]:
    """(the value as a float or None for null, the reject reason or None)."""
    if value is None:
        return None, None
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None, f"invalid_number:{column.lower()}"
    number = float(value)
    if not math.isfinite(number):
        return None, f"invalid_number:{column.lower()}"
    if number < 0:
        return None, f"negative:{column.lower()}"
    return number, None


def parse_market_chart(body: bytes | str) -> CoinHistory:
    """One ``/coins/{id}/market_chart?interval=daily`` body -> daily rows (see the module rules).

    Source of the shape: CoinGecko API v3 docs (``prices``, ``market_caps``, ``total_volumes``
    as ``[unix ms, value]`` arrays) and real recorded bodies (one is replayed by
    tests/unit/test_history_load.py). JSON is read by Python's ``json`` so the
    ``NaN``/``Infinity`` literals arrive as floats and are refused as values. Raises
    MalformedHistory when the body is not that shape.
    """
    try:
        parsed = json.loads(body)
    except (ValueError, RecursionError) as exc:
        raise MalformedHistory(f"body is not JSON: {exc}") from exc
    if not isinstance(parsed, dict):
        raise MalformedHistory(f"body is a JSON {type(parsed).__name__}, not an object")
    message = _error_body(parsed)
    if message is not None:
        raise MalformedHistory(f"CoinGecko error body: {message}")
    # date -> column -> (value, reason) of the date's last point; invalid timestamps apart.
    days: dict[date, dict[str, tuple[float | None, str | None]]] = {}
    rejected: list[tuple[date | None, str]] = []
    points = 0
    for name, column in SERIES:
        series = parsed.get(name)
        if not isinstance(series, list):
            raise MalformedHistory(f"{name!r} is missing or not a list")
        last_ms: dict[date, float] = {}
        for i, point in enumerate(series):
            if not isinstance(point, list) or len(point) != 2:
                raise MalformedHistory(f"{name}[{i}] is not a [timestamp, value] pair")
            ms, raw = point
            points += 1
            day = _day(ms)
            if day is None:
                rejected.append((None, f"invalid_timestamp:{name}"))
                continue
            # The day's last point by time (the later in the list on a tie).
            if day not in last_ms or ms >= last_ms[day]:
                last_ms[day] = ms
                days.setdefault(day, {})[column] = _value(raw, column)
    if not points:
        raise MalformedHistory("no data points (every series is empty)")
    rows: list[HistoryRow] = []
    for day in sorted(days):
        cells = days[day]
        reasons = [r for _, r in cells.values() if r]
        if reasons:
            rejected.append((day, "; ".join(sorted(reasons))))
            continue
        values = {c: cells.get(c, (None, None))[0] for _, c in SERIES}
        rows.append(HistoryRow(day, values["PRICE"], values["MARKET_CAP"], values["TOTAL_VOLUME"]))
    return CoinHistory(rows, rejected)


def _quoted(text: str) -> str:
    return '"' + text.replace('"', '""') + '"'


def _number(value: float | None) -> str:
    return "" if value is None else repr(value)


def history_csv_lines(coin_id: str, vs_currency: str, rows: Iterable[HistoryRow]) -> str:
    """The CSV lines (``sql.HISTORY_FILE_COLUMNS``) of one coin's rows: text always quoted
    (a bare CR or quote cannot break the COPY), floats as ``repr`` (exact round trip), NULL as
    an empty field, dates ``YYYY-MM-DD``."""
    prefix = f"{_quoted(coin_id)},"
    currency = _quoted(vs_currency)
    return "".join(
        f"{prefix}{r.day.isoformat()},{currency},{_number(r.price)},"
        f"{_number(r.market_cap)},{_number(r.total_volume)}\n"
        for r in rows
    )


def history_csv_header() -> str:
    """The header line of the history file."""
    return ",".join(sql.HISTORY_FILE_COLUMNS) + "\n"


# --- The event -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class HistoryRequest:
    """The validated ``load_history`` event."""

    bucket: str
    backfill_id: str
    vs_currency: str
    days: int | str | None
    items_key: str
    history_prefix: str
    results_prefix: str
    fetch: Any  # the Map's output (validated shape) or None


def _exact(event: Mapping[str, Any], name: str, expected: str, *, required: bool = True) -> str:
    value = event.get(name)
    if value is None and not required:
        return expected
    if value != expected:
        raise ValidationError(name, f"{value!r:.120} must be {expected!r}")
    return expected


def parse_history_event(event: Any, *, bucket: str) -> HistoryRequest:
    """Check a ``load_history`` event; raise ValidationError naming the first bad field.

    ``backfill_id`` key-safe (1-80 letters, digits, ``_ - .``); ``bucket`` this pipeline's;
    ``history_prefix`` exactly ``raw/history/backfill=<id>/``, ``items_key`` its
    ``items.json``, ``results_prefix`` (optional) its ``results/``; ``vs_currency`` 1-16 of
    ``a-z 0-9 _ -``; ``days`` (optional) an integer 1-3650 or ``"max"``; ``fetch`` null, a list
    of child outputs (objects), or ``{"ResultWriterDetails": {"Bucket": <bucket>, "Key":
    <under results_prefix>}}``.
    """
    event = keys.validate_object(event, "event")
    if event.get("action") != ACTION_LOAD_HISTORY:
        raise ValidationError("action", f"{event.get('action')!r:.80} must be 'load_history'")
    keys.validate_bucket(event.get("bucket"), expected=bucket)
    backfill_id = keys.validate_backfill_id(event.get("backfill_id"))
    prefix = _exact(event, "history_prefix", keys.history_prefix(backfill_id))
    items_key = _exact(event, "items_key", keys.history_items_key(backfill_id))
    results_prefix = _exact(
        event, "results_prefix", keys.history_results_prefix(backfill_id), required=False
    )
    currency = event.get("vs_currency")
    if not isinstance(currency, str) or not _CURRENCY_RE.fullmatch(currency):
        raise ValidationError("vs_currency", f"{currency!r:.80} must be 1-16 of a-z 0-9 _ -")
    days = event.get("days")
    if (days is not None and days != "max") and (
        isinstance(days, bool) or not isinstance(days, int) or not 1 <= days <= 3650
    ):
        raise ValidationError("days", f"{days!r:.80} must be an integer 1-3650 or 'max'")
    fetch = event.get("fetch")
    if isinstance(fetch, list):
        for i, child in enumerate(fetch):
            keys.validate_object(child, f"fetch[{i}]")
    elif fetch is not None:
        fetch = keys.validate_object(fetch, "fetch")
        where = "fetch.ResultWriterDetails"
        details = keys.validate_object(fetch.get("ResultWriterDetails"), where)
        keys.validate_bucket(
            details.get("Bucket"), expected=bucket, field="fetch.ResultWriterDetails.Bucket"
        )
        keys.validate_key(details.get("Key"), "fetch.ResultWriterDetails.Key", results_prefix)
    return HistoryRequest(
        bucket=bucket,
        backfill_id=backfill_id,
        vs_currency=currency,
        days=days,
        items_key=items_key,
        history_prefix=prefix,
        results_prefix=results_prefix,
        fetch=fetch,
    )


def read_items(storage: Storage, items_key: str) -> list[str]:
    """The plan's coin ids in rank order (``items.json``: ``[{"coin_id", "rank"}]``), deduped.

    Raises ValidationError naming ``items_key`` when it is missing or not that shape.
    """
    if not storage.exists(items_key):
        raise ValidationError("items_key", f"{items_key!r} does not exist in {storage.bucket}")
    try:
        items = json.loads(storage.get_bytes(items_key))
    except ValueError as exc:
        raise ValidationError("items_key", f"{items_key!r} is not JSON: {exc}") from exc
    if not isinstance(items, list):
        raise ValidationError("items_key", f"{items_key!r} must hold a JSON array")
    ids: list[str] = []
    for i, item in enumerate(items):
        coin_id = item.get("coin_id") if isinstance(item, Mapping) else None
        try:
            ids.append(keys.validate_coin_id(coin_id))
        except ValidationError as exc:
            raise ValidationError("items_key", f"{items_key!r} item {i}: {exc}") from exc
    return list(dict.fromkeys(ids))


# --- Why coins have no body: the Map's results ---------------------------------------------------


def _json_text(value: Any) -> Any:
    """A ResultWriter ``Input``/``Output`` (JSON text) parsed; None when absent or not JSON."""
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            return None
    return value


def _child_failures(output: Any, into: dict[str, str]) -> None:
    """Add a child output's ``failed: [{"coin_id", "error"}]`` (tolerating a Payload wrap)."""
    if isinstance(output, Mapping) and isinstance(output.get("Payload"), Mapping):
        output = output["Payload"]
    failed = output.get("failed") if isinstance(output, Mapping) else None
    for entry in failed if isinstance(failed, list) else []:
        if isinstance(entry, Mapping) and isinstance(entry.get("coin_id"), str):
            into.setdefault(entry["coin_id"], str(entry.get("error") or "failed (no message)"))


def _batch_coins(child_input: Any) -> list[str]:
    items = child_input.get("Items") if isinstance(child_input, Mapping) else None
    return [
        i["coin_id"]
        for i in (items if isinstance(items, list) else [])
        if isinstance(i, Mapping) and isinstance(i.get("coin_id"), str)
    ]


def fetch_failures(storage: Storage, fetch: Any) -> tuple[dict[str, str], list[str]]:
    """(coin id -> why the fetch failed it, warnings) from the Map's output.

    ``fetch`` is a list of child outputs, or the ResultWriter's details: its ``manifest.json``
    lists result files per status; a SUCCEEDED child's ``Output`` names its failed coins, a
    FAILED (or aborted, timed out) child's ``Error``/``Cause`` applies to each coin of its
    batch (``Input.Items``). Results that cannot be read become warnings, never an error: the
    coins without a body are reported either way.
    """
    failures: dict[str, str] = {}
    warnings: list[str] = []
    if isinstance(fetch, list):
        for child in fetch:
            _child_failures(child, failures)
        return failures, warnings
    if not isinstance(fetch, Mapping):
        return failures, warnings
    manifest_key = fetch["ResultWriterDetails"]["Key"]
    try:
        manifest = json.loads(storage.get_bytes(manifest_key))
        files = manifest.get("ResultFiles") or {}
        result_keys = [(status, f["Key"]) for status, listed in files.items() for f in listed or []]
    except (CryptoEtlError, ValueError, AttributeError, TypeError, KeyError) as exc:
        return failures, [f"the Map's results {manifest_key} could not be read: {exc}"]
    for status, key in result_keys:
        try:
            executions = json.loads(storage.get_bytes(key))
        except (CryptoEtlError, ValueError) as exc:
            warnings.append(f"result file {key} could not be read: {exc}")
            continue
        for execution in executions if isinstance(executions, list) else []:
            if not isinstance(execution, Mapping):
                continue
            if status == "SUCCEEDED":
                _child_failures(_json_text(execution.get("Output")), failures)
                continue
            why = (
                " ".join(str(p) for p in (execution.get("Error"), execution.get("Cause")) if p)
                or f"child execution {execution.get('Status') or status}"
            )
            for coin_id in _batch_coins(_json_text(execution.get("Input"))):
                failures.setdefault(coin_id, f"fetch batch failed: {why}")
    return failures, warnings


# --- Writing the file ----------------------------------------------------------------------------


@dataclass
class HistoryFile:
    """What went into the staged file."""

    rows: int = 0
    coins_loaded: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    rows_rejected: int = 0
    rejected_sample: list[dict[str, Any]] = field(default_factory=list)
    first_date: date | None = None
    last_date: date | None = None


def _bodies(
    storage: Storage, keys_by_coin: Sequence[tuple[str, str]]
) -> Iterator[tuple[str, bytes | Exception]]:
    """(coin id, body or the read error) in order, READ_WORKERS reads at a time."""

    def get(key: str) -> bytes | Exception:
        try:
            return storage.get_bytes(key)
        except CryptoEtlError as exc:
            return exc

    with ThreadPoolExecutor(max_workers=READ_WORKERS) as pool:
        for start in range(0, len(keys_by_coin), READ_CHUNK):
            chunk = keys_by_coin[start : start + READ_CHUNK]
            yield from zip((c for c, _ in chunk), pool.map(get, [k for _, k in chunk]), strict=True)


def write_history_file(
    storage: Storage,
    path: Path,
    *,
    coins: Sequence[tuple[str, str]],
    vs_currency: str,
) -> HistoryFile:
    """Read each ``(coin_id, key)`` body, parse it and write the rows to ``path`` (CSV.gz).

    A body that cannot be read or parsed fails its coin (``HistoryFile.failed``); a coin with
    no valid row fails too (``no valid row``) so it is reported.
    """
    out = HistoryFile()
    with gzip.open(path, "wt", encoding="utf-8", newline="", compresslevel=5) as fh:
        fh.write(history_csv_header())
        for coin_id, body in _bodies(storage, coins):
            if isinstance(body, Exception):
                out.failed[coin_id] = f"history body unreadable: {body}"
                continue
            try:
                parsed = parse_market_chart(body)
            except MalformedHistory as exc:
                out.failed[coin_id] = f"malformed market_chart body: {exc}"
                continue
            out.rows_rejected += len(parsed.rejected)
            for day, reason in parsed.rejected[: max(0, REJECT_SAMPLE - len(out.rejected_sample))]:
                out.rejected_sample.append(
                    {"coin_id": coin_id, "date": day.isoformat() if day else None, "reason": reason}
                )
            if not parsed.rows:
                out.failed[coin_id] = f"no valid row ({len(parsed.rejected)} rejected)"
                continue
            fh.write(history_csv_lines(coin_id, vs_currency, parsed.rows))
            out.rows += len(parsed.rows)
            out.coins_loaded.append(coin_id)
            first, last = parsed.rows[0].day, parsed.rows[-1].day
            out.first_date = min(out.first_date or first, first)
            out.last_date = max(out.last_date or last, last)
    return out


# --- The warehouse -------------------------------------------------------------------------------


@dataclass(frozen=True)
class HistoryLoadResult:
    """Rows staged, and what the transaction did with them: inserted (new keys), replaced
    (stored keys whose values differed), unchanged (stored with the same values: untouched)."""

    rows: int
    rows_inserted: int
    rows_replaced: int
    rows_unchanged: int
    table: str
    loaded_at: str
    timings: dict[str, float] = field(default_factory=dict)


def load_history_file(
    conn: Any, *, local_file: Path, row_count: int, names: Names, label: str
) -> HistoryLoadResult:
    """Stage the history CSV.gz (``row_count`` data rows) and merge it into
    CRYPTO_PRICE_HISTORY in one transaction (module docstring). ``label`` names the backfill in
    messages. Raises LoadError naming the step; inside the transaction it is rolled back
    (CRYPTO_PRICE_HISTORY unchanged). A failed COMMIT's outcome is unknown, and a retry is safe:
    the merge is idempotent.
    """
    suffix = uuid.uuid4().hex[:12].upper()
    staging, stage = f"HISTORY_STAGING_{suffix}", f"CRYPTO_ETL_HISTORY_{suffix}"
    timings: dict[str, float] = {}
    table = names.q(sql.PRICE_HISTORY)
    with _cursor(conn, f"load history {label}") as cur:
        try:
            _run(cur, sql.use_schema(names), timings, label)
            _run(cur, sql.create_history_staging_table(staging), timings, label)
            _run(cur, sql.create_stage(stage), timings, label)
            if not _run(cur, sql.put_file(local_file, stage), timings, label):
                raise LoadError(f"PUT of {local_file} to stage {stage} uploaded nothing")
            copy = _run(cur, sql.copy_history_into_staging(staging, stage), timings, label)
            loaded = _copy_rows_loaded(cur, copy)
            if loaded != row_count:
                raise LoadError(
                    f"COPY loaded {loaded} history rows but {row_count} were written: refusing"
                    f" a partial load of backfill {label}"
                )
            ((total, distinct, whole, _coins),) = _run(
                cur, sql.history_staging_profile(staging), timings, label
            )
            if not total == distinct == whole == row_count:
                raise LoadError(
                    f"history staging of backfill {label} holds {total} rows, {distinct}"
                    f" distinct keys and {whole} complete keys; expected {row_count} of each"
                )
            loaded_at = datetime.now(UTC).isoformat()
            _run(cur, sql.BEGIN, timings, label)
            step = sql.count_history_changes(names, staging)
            try:
                ((new, changed),) = _execute(cur, step, timings)
                for step in (
                    sql.delete_changed_history(names, staging),
                    sql.insert_history(names, staging, loaded_at),
                ):
                    _execute(cur, step, timings)
            except BaseException as exc:
                _rollback(cur, label)
                if isinstance(exc, _DB_ERRORS):
                    raise LoadError(
                        f"load step {step.label!r} failed for backfill {label}: {_one_line(exc)};"
                        f" the transaction was rolled back ({sql.PRICE_HISTORY} unchanged)"
                    ) from exc
                raise
            try:
                _execute(cur, sql.COMMIT, timings)
            except _DB_ERRORS as exc:
                _rollback(cur, label)
                raise LoadError(
                    f"COMMIT failed for backfill {label} and its outcome is UNKNOWN"
                    f" ({_one_line(exc)}); a retry is safe: the history merge is idempotent"
                ) from exc
        finally:
            with contextlib.suppress(*_DB_ERRORS):
                _execute(cur, sql.drop_staging_table(staging), timings)
    new, changed = int(new), int(changed)
    return HistoryLoadResult(
        rows=row_count,
        rows_inserted=new,
        rows_replaced=changed,
        rows_unchanged=row_count - new - changed,
        table=table,
        loaded_at=loaded_at,
        timings=timings,
    )


# --- The action ----------------------------------------------------------------------------------


def _failure_summary(failed: Mapping[str, str], order: Sequence[str]) -> dict[str, Any]:
    listed = [c for c in order if c in failed]
    reasons = Counter(failed[c] for c in listed)
    return {
        "coins_failed": [
            {"coin_id": c, "error": _bounded(failed[c])} for c in listed[:MAX_FAILED_LISTED]
        ],
        "coins_failed_count": len(listed),
        "failure_reasons": {
            _bounded(reason): count for reason, count in reasons.most_common(MAX_REASONS)
        },
    }


def _bounded(text: str) -> str:
    one_line = " ".join(text.split())
    return one_line if len(one_line) <= MAX_ERROR_CHARS else one_line[: MAX_ERROR_CHARS - 1] + "…"


def load_history_run(
    event: Mapping[str, Any],
    *,
    storage: Storage,
    config: SnowflakeConfig | Callable[[], SnowflakeConfig],
    connect: Callable[[SnowflakeConfig], Any] | None = None,
) -> dict[str, Any]:
    """Validate a ``load_history`` event, read the bodies and merge them into the warehouse.

    Returns ``{"backfill_id", "vs_currency", "days", "coins_loaded", "coins_failed": [{"coin_id",
    "error"}] (at most MAX_FAILED_LISTED, in plan order), "coins_failed_count",
    "failure_reasons": {error: coins}, "rows", "rows_inserted", "rows_replaced",
    "rows_unchanged", "rows_rejected", "rejected_sample", "first_date", "last_date", "table",
    "loaded_at", "warnings"}``. Raises ValidationError (bad event, missing items.json),
    ConfigError (no credentials) or LoadError (the warehouse failed: nothing changed, or
    UNKNOWN after a failed COMMIT).
    """
    request = parse_history_event(event, bucket=storage.bucket)
    logger.append_keys(backfill_id=request.backfill_id)
    items = read_items(storage, request.items_key)
    coins_prefix = f"{request.history_prefix}coins/"
    stored = {
        k[len(coins_prefix) : -len(".json")]
        for k in storage.list_keys(coins_prefix)
        if k.endswith(".json")
    }
    planned = set(items)
    warnings: list[str] = []
    extra = sorted(stored - planned)
    if extra:
        warnings.append(f"{len(extra)} bodies of coins not in items.json ignored: {extra[:10]}")
    failures, result_warnings = fetch_failures(storage, request.fetch)
    warnings += result_warnings
    with_body = [c for c in items if c in stored]
    cfg = config() if callable(config) else config
    if connect is None:
        from functions.load.connection import connect
    names = Names(cfg.database, cfg.schema)
    with tempfile.TemporaryDirectory(prefix="crypto-etl-history-") as tmp:
        local_file = Path(tmp) / f"history-{request.backfill_id}.csv.gz"
        written = write_history_file(
            storage,
            local_file,
            coins=[(c, keys.history_coin_key(request.backfill_id, c)) for c in with_body],
            vs_currency=request.vs_currency,
        )
        failed = {c: failures.get(c, NO_BODY) for c in items if c not in stored}
        failed.update(written.failed)
        result: HistoryLoadResult | None = None
        logger.info("connecting to Snowflake", extra={"snowflake": cfg.describe()})
        conn = connect(cfg)
        try:
            ensure_objects(conn, names)
            if written.rows:
                result = load_history_file(
                    conn,
                    local_file=local_file,
                    row_count=written.rows,
                    names=names,
                    label=request.backfill_id,
                )
        finally:
            with contextlib.suppress(Exception):
                conn.close()
    if not written.rows:
        warnings.append("no history row to load: every coin failed")
    out = {
        "backfill_id": request.backfill_id,
        "vs_currency": request.vs_currency,
        "days": request.days,
        "coins_planned": len(items),
        "coins_loaded": len(written.coins_loaded),
        **_failure_summary(failed, items),
        "rows": written.rows,
        "rows_inserted": result.rows_inserted if result else 0,
        "rows_replaced": result.rows_replaced if result else 0,
        "rows_unchanged": result.rows_unchanged if result else 0,
        "rows_rejected": written.rows_rejected,
        "rejected_sample": written.rejected_sample,
        "first_date": written.first_date.isoformat() if written.first_date else None,
        "last_date": written.last_date.isoformat() if written.last_date else None,
        "table": names.q(sql.PRICE_HISTORY),
        "loaded_at": result.loaded_at if result else None,
        "warnings": warnings,
    }
    logger.info(
        "history loaded",
        extra={k: out[k] for k in ("coins_loaded", "coins_failed_count", "rows", "rows_inserted")}
        | {"timings": result.timings if result else {}},
    )
    return out
