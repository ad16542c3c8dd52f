"""The previous snapshot, read from the lake (never from the warehouse), for the quality gate's
row-count check.

"Previous" = the loaded run, fetched before this one, of a snapshot with the same
``vs_currency`` and the same ``max_coins`` (an integer or ``"all"``), latest first. A loaded
run is the ``current`` run of a snapshot index ``snapshots/<id>.json`` (Load sets it after its
COMMIT: see ``functions/common/snapshot_index.py``); its raw ``manifest.json`` gives the
currency, ``max_coins`` and ``fetched_at``; the index's ``current.rows`` the rows it loaded
(the manifest's ``coin_count`` when absent). The snapshot being transformed counts too when an
earlier run of it is loaded (a re-run is held to the rows it would replace); this run never does.

Bounded reads. Index keys carry no time, so candidates are ordered without reading them: one
listing of ``processed/`` (one key per transformed run, ``processed/dt=D/snapshot=S/run=R/…``:
1 ListObjectsV2 request per 1,000 runs) gives each snapshot's partition date ``D``, the day of
its first fetch. Snapshots are read newest ``D`` first (those after this run's fetch day are
skipped unread: they were fetched later); each costs one ListObjectsV2 (the index's existence),
one GetObject (the index) and, when it has a loaded run, one GetObject (the manifest), a few
hundred bytes each. The search stops at the end of the first day that holds a match, or after
``MAX_CANDIDATES`` snapshots (then the check passes and says so): at most
``3 x MAX_CANDIDATES`` object requests beyond the listing, whatever the lake's size. The one
approximation: a snapshot re-run on a later day keeps its first day ``D``, so it ranks by that
day. A missing or unreadable index or manifest (raw/ expires after its retention) skips that
snapshot; a failed S3 request (StorageError, e.g. access denied) propagates.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any

from functions.common import keys
from functions.common.errors import ValidationError
from functions.common.snapshot_index import read_index
from functions.common.storage import Storage, get_json
from functions.transform.gate import PreviousRows

MAX_CANDIDATES = 50  # snapshots whose index is read, at most, per lookup
_PROCESSED_KEY_RE = re.compile(
    r"processed/dt=(\d{4}-\d{2}-\d{2})/snapshot=([^/]+)/run=([^/]+)/crypto_data\.csv\.gz"
)


@dataclass
class PreviousLookup:
    """What :func:`find_previous` found: ``previous`` (None: none), ``note`` (how, or why not),
    ``snapshots_listed`` (distinct snapshots under ``processed/``), ``candidates_read`` (indexes
    read), ``manifests_read``, and ``skipped`` (``"<id>: <reason>"``, at most 20)."""

    previous: PreviousRows | None = None
    note: str = ""
    snapshots_listed: int = 0
    candidates_read: int = 0
    manifests_read: int = 0
    skipped: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """``{previous: null | {snapshot_id, run_id, fetched_at, rows}, note}``: what the
        Transform output carries. It depends only on the loaded snapshots, so a retried
        Transform returns the same output (the read counts, which this run's own files change,
        are in :meth:`stats`, for the logs)."""
        prev = self.previous
        return {
            "previous": None
            if prev is None
            else {
                "snapshot_id": prev.snapshot_id,
                "run_id": prev.run_id,
                "fetched_at": prev.fetched_at,
                "rows": prev.rows,
            },
            "note": self.note,
        }

    def stats(self) -> dict[str, Any]:
        """The lookup's cost and what it skipped, for the logs."""
        return {
            "snapshots_listed": self.snapshots_listed,
            "candidates_read": self.candidates_read,
            "manifests_read": self.manifests_read,
            "skipped": list(self.skipped),
        }


def snapshot_days(processed_keys: list[str]) -> dict[str, date]:
    """``{snapshot id: partition date}`` from processed keys (others are ignored)."""
    days: dict[str, date] = {}
    for key in processed_keys:
        m = _PROCESSED_KEY_RE.fullmatch(key)
        if m is None:
            continue
        try:
            day = date.fromisoformat(m.group(1))
            snapshot_id = keys.validate_snapshot_id(m.group(2))
        except (ValueError, ValidationError):
            continue
        days[snapshot_id] = max(day, days.get(snapshot_id, day))
    return days


def _same_max_coins(a: Any, b: Any) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return False
    return a == b and isinstance(a, int | str)


def _candidate(
    storage: Storage,
    snapshot_id: str,
    *,
    run_id: str,
    fetched_at: datetime,
    vs_currency: str,
    max_coins: int | str,
    lookup: PreviousLookup,
) -> tuple[datetime, PreviousRows] | None:
    """The snapshot's loaded run if it matches, else None (the reason goes to ``skipped``)."""

    def skip(reason: str) -> None:
        if len(lookup.skipped) < 20:
            lookup.skipped.append(f"{snapshot_id}: {reason}")

    lookup.candidates_read += 1
    try:
        index = read_index(storage, snapshot_id)
    except ValidationError as exc:
        skip(f"unreadable index ({exc})")
        return None
    current = index.get("current") if index else None
    if not isinstance(current, Mapping):
        skip("no loaded run")
        return None
    if current.get("run_id") == run_id:
        return None  # this very run, already loaded (a retried Transform)
    try:
        manifest_key = keys.validate_key(current.get("manifest_key"), "manifest_key", keys.RAW)
        lookup.manifests_read += 1
        manifest = keys.validate_object(get_json(storage, manifest_key), manifest_key)
        its_time = datetime.fromisoformat(str(manifest.get("fetched_at")))
    except (ValidationError, ValueError) as exc:
        skip(f"unreadable manifest ({exc})")
        return None
    if its_time.tzinfo is None or its_time >= fetched_at:
        return None
    if str(manifest.get("vs_currency", "")).lower() != vs_currency.lower():
        return None
    if not _same_max_coins(manifest.get("max_coins"), max_coins):
        return None
    rows = current.get("rows")
    if isinstance(rows, bool) or not isinstance(rows, int) or rows < 0:
        rows = manifest.get("coin_count")
    if isinstance(rows, bool) or not isinstance(rows, int) or rows < 0:
        skip("no row count in its index or manifest")
        return None
    return its_time, PreviousRows(
        snapshot_id=snapshot_id,
        run_id=str(current.get("run_id")),
        fetched_at=its_time.isoformat(),
        rows=rows,
    )


def find_previous(
    storage: Storage,
    *,
    run_id: str,
    fetched_at: datetime,
    vs_currency: str,
    max_coins: int | str | None,
    max_candidates: int = MAX_CANDIDATES,
) -> PreviousLookup:
    """The latest loaded run fetched before ``fetched_at`` (timezone-aware) with the same
    ``vs_currency`` (any case) and ``max_coins`` (an integer or ``"all"``); see the module
    docstring for the order and the cost. Raises StorageError when the lake cannot be read."""
    lookup = PreviousLookup()
    if max_coins is None:
        lookup.note = "this run has no max_coins to match"
        return lookup
    days = snapshot_days(storage.list_keys(keys.PROCESSED))
    lookup.snapshots_listed = len(days)
    by_day: dict[date, list[str]] = defaultdict(list)
    for snapshot_id, day in days.items():
        if day <= fetched_at.astimezone(UTC).date():
            by_day[day].append(snapshot_id)
    best: tuple[datetime, PreviousRows] | None = None
    capped = False
    for day in sorted(by_day, reverse=True):
        for snapshot_id in sorted(by_day[day], reverse=True):
            if lookup.candidates_read >= max_candidates:
                capped = True
                break
            found = _candidate(
                storage,
                snapshot_id,
                run_id=run_id,
                fetched_at=fetched_at,
                vs_currency=vs_currency,
                max_coins=max_coins,
                lookup=lookup,
            )
            if found is not None and (best is None or found[0] > best[0]):
                best = found
        if best is not None or capped:
            break
    if best is not None:
        lookup.previous = best[1]
        lookup.note = f"the latest loaded run in {vs_currency} with max_coins {max_coins!r}"
    elif capped:
        lookup.note = f"none among the {max_candidates} newest snapshots in processed/"
    else:
        lookup.note = (
            f"no loaded snapshot in {vs_currency} with max_coins {max_coins!r} fetched before"
            " this one"
        )
    return lookup
