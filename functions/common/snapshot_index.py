"""The snapshot index ``snapshots/<id>.json``: one small JSON object per snapshot id.

It makes the lake agree with the warehouse:

* ``partition_date`` is fixed by the snapshot's first run, so re-running snapshot ``daily`` after
  midnight writes under the same ``dt=`` partition (one lake copy per snapshot id);
* ``current`` names the run whose files are in the warehouse. Load switches it only after its
  transaction has committed, so a failed re-run (its files under their own ``run=`` prefix)
  leaves the index pointing at the loaded run. Anything reading the lake reads ``current``.

Shape::

    {"snapshot_id": "daily", "partition_date": "2026-11-27",
     "created_at": "<ISO-8601 UTC>", "created_by_execution": "<execution ARN>",
     "current": null | {"run_id", "execution_id", "manifest_key", "processed_key",
                        "rejected_key", "rows", "loaded_at"}}
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import date
from typing import Any

from functions.common import keys
from functions.common.errors import ValidationError
from functions.common.storage import Storage, get_json, put_json


def read_index(storage: Storage, snapshot_id: str) -> dict[str, Any] | None:
    """The snapshot's index, or None when it has none yet.

    Raises ValidationError naming the key when the object is not a valid index of this snapshot.
    """
    key = keys.snapshot_index_key(snapshot_id)
    if not storage.exists(key):
        return None
    index = dict(keys.validate_object(get_json(storage, key), key))
    if index.get("snapshot_id") != snapshot_id:
        raise ValidationError(
            f"{key}: snapshot_id", f"{index.get('snapshot_id')!r} is not {snapshot_id!r}"
        )
    index["partition_date"] = partition_date_of(index, key)
    return index


def partition_date_of(index: Mapping[str, Any], where: str) -> str:
    """The index's ``partition_date`` (YYYY-MM-DD), validated."""
    value = index.get("partition_date")
    if isinstance(value, str):
        try:
            return date.fromisoformat(value).isoformat()
        except ValueError:
            pass
    raise ValidationError(f"{where}: partition_date", f"{value!r} is not a YYYY-MM-DD date")


def claim_partition_date(
    storage: Storage, snapshot_id: str, *, today: date, execution_id: str, now_iso: str
) -> date:
    """The snapshot's partition date: the index's when it exists, else ``today`` (recorded).

    The first run of a snapshot creates the index with ``current: null``; later runs read it.
    """
    index = read_index(storage, snapshot_id)
    if index is not None:
        return date.fromisoformat(index["partition_date"])
    put_json(
        storage,
        keys.snapshot_index_key(snapshot_id),
        {
            "snapshot_id": snapshot_id,
            "partition_date": today.isoformat(),
            "created_at": now_iso,
            "created_by_execution": execution_id,
            "current": None,
        },
    )
    return today


def switch_current(
    storage: Storage, snapshot_id: str, *, partition_date: str, current: Mapping[str, Any]
) -> dict[str, Any]:
    """Point the index at the run just loaded (``current``); returns the index written."""
    index = read_index(storage, snapshot_id) or {
        "snapshot_id": snapshot_id,
        "partition_date": partition_date,
        "created_at": current.get("loaded_at"),
        "created_by_execution": current.get("execution_id"),
    }
    index["current"] = dict(current)
    put_json(storage, keys.snapshot_index_key(snapshot_id), index)
    return index
