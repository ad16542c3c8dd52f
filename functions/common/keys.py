"""Object keys of the data lake and their validation (pure; no I/O).

Layout (``D`` is the snapshot's partition date, fixed at its first run; ``R`` the run, one per
execution attempt, so a failed re-run never overwrites the files of the run that was loaded)::

    raw/dt=D/snapshot=<id>/run=R/markets/page-0001.json
    raw/dt=D/snapshot=<id>/run=R/global.json
    raw/dt=D/snapshot=<id>/run=R/manifest.json
    processed/dt=D/snapshot=<id>/run=R/crypto_data.csv.gz
    rejected/dt=D/snapshot=<id>/run=R/rejected.csv.gz
    snapshots/<id>.json          the snapshot index: its partition date and the run now loaded
    raw/history/backfill=<B>/items.json             a backfill's plan: its coins, in order
    raw/history/backfill=<B>/coins/<coin id>.json   one coin's /market_chart body as received
    raw/history/backfill=<B>/results/...            the Distributed Map's ResultWriter files

Every validator matches the whole string (``re.fullmatch``: ``$`` would accept a final newline).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from datetime import date
from typing import Any

from functions.common.errors import ValidationError

RAW = "raw/"
PROCESSED = "processed/"
REJECTED = "rejected/"
SNAPSHOTS = "snapshots/"
HISTORY = "raw/history/"

# Snapshot and run ids: they become key segments and SQL literals.
_SAFE_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,79}")
_BUCKET_RE = re.compile(r"[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]")
# CoinGecko API ids ("bitcoin", "usd-coin", "0x", "wrapped-steth"): lower-case letters, digits
# and '-' as listed by /coins/list; '.' and '_' are accepted too (key- and URL-safe).
_COIN_ID_RE = re.compile(r"[a-z0-9][a-z0-9._\-]{0,127}")


def _safe_name(value: object, field: str) -> str:
    if not isinstance(value, str) or not _SAFE_NAME_RE.fullmatch(value) or ".." in value:
        raise ValidationError(
            field,
            f"{value!r} must be 1-80 characters of letters, digits, '_', '-', '.' "
            "starting with a letter or digit",
        )
    return value


def validate_snapshot_id(value: object, field: str = "snapshot_id") -> str:
    """Return ``value`` if it is a safe snapshot id (used in keys and SQL), else raise."""
    return _safe_name(value, field)


def validate_bucket(value: object, expected: str | None = None, field: str = "bucket") -> str:
    """Return ``value`` if it is a plausible bucket name (and the expected one, when given)."""
    if not isinstance(value, str) or not _BUCKET_RE.fullmatch(value):
        raise ValidationError(field, f"{value!r} is not a valid bucket name")
    if expected is not None and value != expected:
        raise ValidationError(field, f"{value!r} is not this pipeline's bucket {expected!r}")
    return value


def validate_object(value: object, field: str) -> Mapping[str, Any]:
    """Return ``value`` if it is a JSON object (a mapping), else raise naming ``field``."""
    if not isinstance(value, Mapping):
        raise ValidationError(field, f"must be a JSON object, not {type(value).__name__}")
    return value


def validate_key(value: object, field: str, prefix: str) -> str:
    """Return ``value`` if it is a relative key under ``prefix`` with no path tricks."""
    if not isinstance(value, str) or not value:
        raise ValidationError(field, f"{value!r} must be a non-empty string")
    if value.startswith("/") or "\\" in value or "//" in value:
        raise ValidationError(field, f"{value!r} must be a relative key without '//' or '\\'")
    if any(part in ("..", ".") for part in value.split("/")):
        raise ValidationError(field, f"{value!r} must not contain '.' or '..' segments")
    if not value.startswith(prefix):
        raise ValidationError(field, f"{value!r} must live under {prefix!r}")
    return value


def validate_run_id(value: object, field: str = "run_id") -> str:
    """Return ``value`` if it is a safe run id (1-80 letters, digits, ``_ - .``), else raise."""
    return _safe_name(value, field)


def run_id(execution_name: str, execution_id: str) -> str:
    """The run id of one execution: its name when key-safe, else ``x-`` + 16 hex of its id.

    Step Functions execution names are unique per state machine (for 90 days) and a retried
    task keeps its execution, so every attempt of a task within one execution writes the same
    keys, and another execution of the same snapshot writes beside them, never over them.
    """
    if _SAFE_NAME_RE.fullmatch(execution_name) and ".." not in execution_name:
        return execution_name
    return "x-" + hashlib.sha256(execution_id.encode()).hexdigest()[:16]


def _partition(snapshot_id: str, partition_date: date, run: str) -> str:
    validate_snapshot_id(snapshot_id)
    validate_run_id(run)
    return f"dt={partition_date.isoformat()}/snapshot={snapshot_id}/run={run}/"


def raw_prefix(snapshot_id: str, partition_date: date, run: str) -> str:
    """``raw/dt=D/snapshot=<id>/run=R/``: every raw file of one run lives under it."""
    return f"{RAW}{_partition(snapshot_id, partition_date, run)}"


def page_key(prefix: str, page: int) -> str:
    return f"{prefix}markets/page-{page:04d}.json"


def global_key(prefix: str) -> str:
    return f"{prefix}global.json"


def manifest_key(prefix: str) -> str:
    return f"{prefix}manifest.json"


def progress_key(prefix: str) -> str:
    """The extract's running record of a run (pages so far, pacing), for the next invocation."""
    return f"{prefix}progress.json"


def processed_key(snapshot_id: str, partition_date: date, run: str) -> str:
    return f"{PROCESSED}{_partition(snapshot_id, partition_date, run)}crypto_data.csv.gz"


def rejected_key(snapshot_id: str, partition_date: date, run: str) -> str:
    return f"{REJECTED}{_partition(snapshot_id, partition_date, run)}rejected.csv.gz"


def snapshot_index_key(snapshot_id: str) -> str:
    """``snapshots/<id>.json``: the snapshot's partition date and the run now loaded."""
    return f"{SNAPSHOTS}{validate_snapshot_id(snapshot_id)}.json"


def validate_coin_id(value: object, field: str = "coin_id") -> str:
    """Return ``value`` if it is a safe CoinGecko coin id (1-128 of ``a-z 0-9 . _ -``, starting
    with a letter or digit, no ``..``): it becomes a URL path segment and a key segment."""
    if not isinstance(value, str) or not _COIN_ID_RE.fullmatch(value) or ".." in value:
        raise ValidationError(
            field,
            f"{value!r:.140} must be a CoinGecko coin id: 1-128 lower-case letters, digits, "
            "'.', '_' or '-' starting with a letter or digit",
        )
    return value


def validate_backfill_id(value: object, field: str = "backfill_id") -> str:
    """Return ``value`` if it is a safe backfill id (the snapshot id rule), else raise."""
    return _safe_name(value, field)


def history_prefix(backfill_id: str) -> str:
    """``raw/history/backfill=<id>/``: every file of one backfill lives under it."""
    return f"{HISTORY}backfill={validate_backfill_id(backfill_id)}/"


def history_items_key(backfill_id: str) -> str:
    """The backfill's plan: a JSON array of ``{"coin_id", "rank"}`` (the Map's ItemReader)."""
    return f"{history_prefix(backfill_id)}items.json"


def history_results_prefix(backfill_id: str) -> str:
    """Where the Distributed Map's ResultWriter writes its manifest and result files."""
    return f"{history_prefix(backfill_id)}results/"


def history_coin_key(backfill_id: str, coin_id: str) -> str:
    """One coin's ``/coins/{id}/market_chart`` body, exactly as received."""
    return f"{history_prefix(backfill_id)}coins/{validate_coin_id(coin_id)}.json"
