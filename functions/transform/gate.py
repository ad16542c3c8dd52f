"""The quality gate: checks the processed rows must pass before the Transform writes them
(pure: pandas only, no I/O).

The transform's row rules already refuse most bad rows (a negative price rejects the row); the
gate verifies the *output* again, so a future change to those rules cannot let bad rows reach
the warehouse. A failed check fails the run (``DataQualityError`` naming every violation), so
no processed file is written and Load is never reached. Checks, each reported in
``quality.checks`` beside the transform's informational ones and marked ``"gate": true``:

``gate_unique_coin_ids``         every ``coin_id`` once (the table's key is (SNAPSHOT_ID, COIN_ID));
``gate_non_negative``            ``NON_NEGATIVE_COLUMNS`` (prices, caps, volumes, supplies, ATH/ATL,
                                 rank, shares) >= 0 where not null (the 24h/ATH/ATL changes and
                                 ROI are signed by definition and not checked);
``gate_share_le_100``            each coin's ``market_cap_dominance_pct`` and ``volume_pct``
                                 <= 100 (+1e-6 for rounding). Required on the ``global`` basis;
                                 on the ``fetched`` basis shares are of the rows' own sums, so
                                 the check holds by construction and is verified all the same;
``gate_required_not_null``       ``REQUIRED_COLUMNS`` have a value on every row;
``gate_row_count_vs_previous``   rows >= ``min_row_fraction`` x the previous snapshot's rows
                                 (same ``vs_currency`` and ``max_coins``; see ``previous.py``).
                                 Passes, saying so, when there is no previous snapshot or the
                                 fraction is 0 (disabled).

Each check is ``{name, passed, detail, coins, coin_count, rows, threshold, gate}``: ``rows``
is how many rows violate it, ``coins`` up to ``SAMPLE_SIZE`` of their coin ids (sorted;
``#<n>`` stands for the n-th row, 0-based, when the id itself is null), ``coin_count`` how many
coin ids are behind it, ``threshold`` the rule as text. All empty/0 when it passed.

Configuration (environment, read by :func:`gate_config_from_env`): ``QUALITY_GATE`` ``on``
(default) or ``off``; ``QUALITY_MIN_ROW_FRACTION`` a number from 0 to 1 (default 0.5; 0 turns
the row-count check off). Any other value raises ConfigError naming the variable.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from functions.common.errors import ConfigError
from functions.transform.transform import NEGATIVE_CHECKED, SAMPLE_SIZE, SUM_EPSILON

GATE_ENV = "QUALITY_GATE"
MIN_ROW_FRACTION_ENV = "QUALITY_MIN_ROW_FRACTION"
DEFAULT_MIN_ROW_FRACTION = 0.5

# Every row must have these (the run and coin identity the table, the dimension and the
# reports key on). market_cap, price, the timestamps and even symbol and name may come as null
# or "" from CoinGecko for an obscure coin: such a row loads (with NULLs), it is not an error.
REQUIRED_COLUMNS: tuple[str, ...] = (
    "snapshot_id",
    "fetched_at",
    "fetch_date",
    "vs_currency",
    "coin_id",
    "dominance_basis",
)
# Quantities that cannot be negative (in the quote currency, coins, a rank, or %).
NON_NEGATIVE_COLUMNS: tuple[str, ...] = (
    *NEGATIVE_CHECKED,  # the row rules reject these below 0: the gate re-checks the output
    "market_cap_dominance_pct",
    "volume_pct",
)
SHARE_COLUMNS: tuple[str, ...] = ("market_cap_dominance_pct", "volume_pct")
SHARE_MAX_PCT = 100.0

CHECK_UNIQUE = "gate_unique_coin_ids"
CHECK_NON_NEGATIVE = "gate_non_negative"
CHECK_SHARE = "gate_share_le_100"
CHECK_REQUIRED = "gate_required_not_null"
CHECK_ROW_COUNT = "gate_row_count_vs_previous"
CHECK_NAMES: tuple[str, ...] = (
    CHECK_UNIQUE,
    CHECK_NON_NEGATIVE,
    CHECK_SHARE,
    CHECK_REQUIRED,
    CHECK_ROW_COUNT,
)


@dataclass(frozen=True)
class GateConfig:
    """``enabled``: run the gate at all; ``min_row_fraction``: 0 to 1 (0: no row-count check)."""

    enabled: bool = True
    min_row_fraction: float = DEFAULT_MIN_ROW_FRACTION


def gate_config_from_env(env: Mapping[str, str]) -> GateConfig:
    """``QUALITY_GATE`` (``on``/``off``, any case; default on) and ``QUALITY_MIN_ROW_FRACTION``
    (a number from 0 to 1; default 0.5). Raises ConfigError naming the variable."""
    raw = (env.get(GATE_ENV) or "").strip()
    if raw.lower() not in ("", "on", "off"):
        raise ConfigError(GATE_ENV, f"{raw!r} must be 'on' or 'off'")
    enabled = raw.lower() != "off"
    raw_fraction = (env.get(MIN_ROW_FRACTION_ENV) or "").strip()
    if not raw_fraction:
        return GateConfig(enabled, DEFAULT_MIN_ROW_FRACTION)
    try:
        fraction = float(raw_fraction)
    except ValueError:
        raise ConfigError(
            MIN_ROW_FRACTION_ENV, f"{raw_fraction!r} is not a number (a fraction, 0 to 1)"
        ) from None
    if not math.isfinite(fraction) or not 0.0 <= fraction <= 1.0:
        raise ConfigError(MIN_ROW_FRACTION_ENV, f"{raw_fraction!r} must be a fraction from 0 to 1")
    return GateConfig(enabled, fraction)


@dataclass(frozen=True)
class PreviousRows:
    """The previous snapshot the row count is held to (found in the lake by ``previous.py``).

    ``rows``: its row count (the rows Load stored, from the snapshot index; the manifest's
    ``coin_count`` when the index lacks it); ``fetched_at``: ISO-8601 UTC.
    """

    snapshot_id: str
    run_id: str
    fetched_at: str
    rows: int

    def describe(self) -> str:
        return f"snapshot {self.snapshot_id} (run {self.run_id}, fetched {self.fetched_at})"


@dataclass(frozen=True)
class GateResult:
    """The gate's checks (in ``CHECK_NAMES`` order) and the ones that failed."""

    checks: list[dict[str, Any]]

    @property
    def failed(self) -> list[dict[str, Any]]:
        return [c for c in self.checks if not c["passed"]]

    @property
    def passed(self) -> bool:
        return not self.failed


def _labels(processed: pd.DataFrame, mask: np.ndarray) -> list[str]:
    """The coin ids of the rows in ``mask`` (``#<row>`` for a null id), sorted, distinct."""
    positions = np.flatnonzero(mask)
    ids = processed["coin_id"].to_numpy(dtype=object)[positions]
    return sorted({f"#{p}" if pd.isna(i) else str(i) for p, i in zip(positions, ids, strict=True)})


def _check(
    name: str,
    rows: int,
    detail: str,
    threshold: str,
    coins: Sequence[str] = (),
    *,
    passed: bool | None = None,
) -> dict[str, Any]:
    """One gate check; it passed when no row violates it (unless ``passed`` says otherwise)."""
    passed = rows == 0 if passed is None else passed
    named = [] if passed else list(coins)
    return {
        "name": name,
        "passed": passed,
        "detail": detail,
        "coins": named[:SAMPLE_SIZE],
        "coin_count": len(named),
        "rows": int(rows),
        "threshold": threshold,
        "gate": True,
    }


def _numeric(processed: pd.DataFrame, column: str) -> pd.Series:
    return pd.to_numeric(processed[column], errors="coerce").astype("float64")


def check_unique_ids(processed: pd.DataFrame) -> dict[str, Any]:
    """Rows repeating an earlier row's ``coin_id`` (each repeat counts; the ids are named)."""
    ids = processed["coin_id"]
    repeat = ids.duplicated(keep="first") & ids.notna()
    every = (ids.duplicated(keep=False) & ids.notna()).to_numpy()
    n = int(repeat.sum())
    return _check(
        CHECK_UNIQUE,
        n,
        f"{n} rows repeat a coin id ({len(ids)} rows)",
        "each coin_id at most once",
        _labels(processed, every),
    )


def check_non_negative(processed: pd.DataFrame) -> dict[str, Any]:
    """Rows with a value below 0 in any of ``NON_NEGATIVE_COLUMNS``; detail counts per column."""
    bad_any = np.zeros(len(processed), dtype=bool)
    per_column = []
    for column in NON_NEGATIVE_COLUMNS:
        bad = (_numeric(processed, column) < 0).fillna(False).to_numpy(dtype=bool)
        if bad.any():
            per_column.append(f"{column} {int(bad.sum())}")
            bad_any |= bad
    n = int(bad_any.sum())
    detail = f"{n} rows with a negative value" + (f" ({', '.join(per_column)})" if n else "")
    return _check(
        CHECK_NON_NEGATIVE,
        n,
        detail,
        f">= 0 in {', '.join(NON_NEGATIVE_COLUMNS)}",
        _labels(processed, bad_any),
    )


def check_shares(processed: pd.DataFrame, dominance_basis: str) -> dict[str, Any]:
    """Rows whose market-cap or volume share exceeds ``SHARE_MAX_PCT`` (+ ``SUM_EPSILON``)."""
    bad_any = np.zeros(len(processed), dtype=bool)
    per_column = []
    for column in SHARE_COLUMNS:
        values = _numeric(processed, column)
        bad = (values > SHARE_MAX_PCT + SUM_EPSILON).fillna(False).to_numpy(dtype=bool)
        if bad.any():
            per_column.append(f"{column} {int(bad.sum())}, max {float(values.max()):.6g}%")
            bad_any |= bad
    n = int(bad_any.sum())
    detail = f"{n} rows with a share above {SHARE_MAX_PCT:g}% on the {dominance_basis} basis"
    detail += f" ({'; '.join(per_column)})" if n else ""
    return _check(
        CHECK_SHARE,
        n,
        detail,
        f"<= {SHARE_MAX_PCT:g}% per coin in {', '.join(SHARE_COLUMNS)}",
        _labels(processed, bad_any),
    )


def check_required(processed: pd.DataFrame) -> dict[str, Any]:
    """Rows with a null (or missing column) in any of ``REQUIRED_COLUMNS``."""
    bad_any = np.zeros(len(processed), dtype=bool)
    per_column = []
    for column in REQUIRED_COLUMNS:
        if column not in processed.columns:
            bad = np.ones(len(processed), dtype=bool)
        else:
            bad = processed[column].isna().to_numpy(dtype=bool)
        if bad.any():
            per_column.append(f"{column} {int(bad.sum())}")
            bad_any |= bad
    n = int(bad_any.sum())
    detail = f"{n} rows with a null required value" + (f" ({', '.join(per_column)})" if n else "")
    return _check(
        CHECK_REQUIRED,
        n,
        detail,
        f"not null: {', '.join(REQUIRED_COLUMNS)}",
        _labels(processed, bad_any),
    )


def check_row_count(
    rows: int, previous: PreviousRows | None, min_row_fraction: float, previous_note: str = ""
) -> dict[str, Any]:
    """``rows`` >= ``min_row_fraction`` x ``previous.rows``; passes when there is no previous
    snapshot (``previous_note`` says why) or the fraction is 0."""
    if min_row_fraction <= 0:
        return _check(
            CHECK_ROW_COUNT,
            0,
            f"{rows} rows; not checked ({MIN_ROW_FRACTION_ENV}=0)",
            "disabled",
        )
    threshold = f">= {min_row_fraction:g} x the previous snapshot's rows"
    if previous is None:
        why = f": {previous_note}" if previous_note else ""
        return _check(
            CHECK_ROW_COUNT, 0, f"{rows} rows; no previous snapshot to compare with{why}", threshold
        )
    minimum = min_row_fraction * previous.rows
    short = rows < minimum
    detail = (
        f"{rows} rows vs {previous.rows} in the previous {previous.describe()}"
        f" ({rows / previous.rows:.1%} of it)"
        if previous.rows
        else f"{rows} rows vs 0 in the previous {previous.describe()}"
    )
    return _check(
        CHECK_ROW_COUNT,
        rows if short else 0,
        detail,
        f"{threshold} = {minimum:g} rows",
        passed=not short,
    )


def run_gate(
    processed: pd.DataFrame,
    *,
    dominance_basis: str,
    min_row_fraction: float,
    previous: PreviousRows | None,
    previous_note: str = "",
) -> GateResult:
    """Every gate check on ``processed`` (the processed columns of ``schema.py``)."""
    return GateResult(
        checks=[
            check_unique_ids(processed),
            check_non_negative(processed),
            check_shares(processed, dominance_basis),
            check_required(processed),
            check_row_count(len(processed), previous, min_row_fraction, previous_note),
        ]
    )


def gate_message(snapshot_id: str, result: GateResult) -> str:
    """The DataQualityError text: every failed check with its rows, threshold and coins."""
    parts = []
    for check in result.failed:
        coins = check["coins"]
        more = check["coin_count"] - len(coins)
        named = f"; coins: {', '.join(coins)}" if coins else ""
        named += f" and {more} more" if coins and more > 0 else ""
        parts.append(
            f"{check['name']}: {check['rows']} rows (threshold {check['threshold']};"
            f" {check['detail']}{named})"
        )
    hint = ""
    if any(c["name"] == CHECK_ROW_COUNT for c in result.failed):
        # A smaller snapshot on purpose (another --coins, a narrower market) is not an error.
        hint = (
            " (a smaller snapshot on purpose: set QUALITY_MIN_ROW_FRACTION lower, 0 to skip"
            " this check, or QUALITY_GATE=off)"
        )
    return (
        f"snapshot {snapshot_id}: quality gate failed {len(parts)} of {len(result.checks)}"
        f" checks, nothing written to processed/: {' | '.join(parts)}{hint}"
    )
