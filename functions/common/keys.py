"""Object keys of the data lake and their validation (pure; no I/O).

Layout::

    raw/dt=YYYY-MM-DD/snapshot=<id>/markets/page-0001.json
    raw/dt=YYYY-MM-DD/snapshot=<id>/global.json
    raw/dt=YYYY-MM-DD/snapshot=<id>/manifest.json
    processed/dt=YYYY-MM-DD/snapshot=<id>/crypto_data.csv.gz
    rejected/dt=YYYY-MM-DD/snapshot=<id>/rejected.csv.gz
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import date
from typing import Any

from functions.common.errors import ValidationError

RAW = "raw/"
PROCESSED = "processed/"
REJECTED = "rejected/"

_SNAPSHOT_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,79}$")
_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]$")


def validate_snapshot_id(value: object, field: str = "snapshot_id") -> str:
    """Return ``value`` if it is a safe snapshot id (used in keys and SQL), else raise."""
    if not isinstance(value, str) or not _SNAPSHOT_RE.match(value) or ".." in value:
        raise ValidationError(
            field,
            f"{value!r} must be 1-80 characters of letters, digits, '_', '-', '.' "
            "starting with a letter or digit",
        )
    return value


def validate_bucket(value: object, expected: str | None = None, field: str = "bucket") -> str:
    """Return ``value`` if it is a plausible bucket name (and the expected one, when given)."""
    if not isinstance(value, str) or not _BUCKET_RE.match(value):
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


def _partition(snapshot_id: str, fetch_date: date) -> str:
    validate_snapshot_id(snapshot_id)
    return f"dt={fetch_date.isoformat()}/snapshot={snapshot_id}/"


def raw_prefix(snapshot_id: str, fetch_date: date) -> str:
    return f"{RAW}{_partition(snapshot_id, fetch_date)}"


def page_key(prefix: str, page: int) -> str:
    return f"{prefix}markets/page-{page:04d}.json"


def global_key(prefix: str) -> str:
    return f"{prefix}global.json"


def manifest_key(prefix: str) -> str:
    return f"{prefix}manifest.json"


def processed_key(snapshot_id: str, fetch_date: date) -> str:
    return f"{PROCESSED}{_partition(snapshot_id, fetch_date)}crypto_data.csv.gz"


def rejected_key(snapshot_id: str, fetch_date: date) -> str:
    return f"{REJECTED}{_partition(snapshot_id, fetch_date)}rejected.csv.gz"
