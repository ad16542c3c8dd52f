"""Raw CoinGecko ``/coins/markets`` pages -> the processed table (pure: pandas only, no I/O).

Every step works on whole columns: no per-row Python loops, no ``apply(axis=1)``/``iterrows``
(JSON types are told apart with ``Series.map(type)``, nested objects read with ``dict.get`` as a
NumPy ufunc; text stays in object columns on pandas 2 and 3).
The only Python loops run over pages and over columns, plus one over the (rare) null cells that
might be a JSON ``NaN`` literal (see Types). The rules, decided here:

Rows and pages
    Pages are concatenated in page-number order. Each page is cut to the row count its manifest
    entry says the Extract kept (a page body is stored exactly as received, so it may hold more),
    then the whole list to ``max_coins``. Rows cut that way are not input (``rows_trimmed``).
    A page with fewer rows than its manifest count means the lake is inconsistent: ValidationError.

Accounting
    Every input row ends up in exactly one place: ``rows_in == rows_out + rejected + duplicates``.
    Rows are validated first; duplicates are then removed among the *valid* rows by ``id``,
    keeping the first occurrence (the higher-ranked page). A row that is both invalid and a
    repeat of another id counts as rejected, not as a duplicate.

Rejects (the row goes to ``rejected/`` with ``reject_reason`` listing every code, ``"; "``-joined)
    ``not_an_object``                 the list entry is not a JSON object;
    ``missing_id``                    ``id`` absent, null, empty or only whitespace;
    ``invalid_type:<field>``          ``id``/``symbol``/``name``/``roi.currency`` not a string,
                                      ``image`` neither a string nor an object, ``roi`` not an
                                      object;
    ``invalid_type:<field>``          also any field holding a JSON ``NaN`` literal (below) where
                                      a string or object belongs;
    ``too_long:<column>``             text longer than its Snowflake VARCHAR (the COPY would abort);
    ``invalid_text:<column>``         text (``coin_id``, ``symbol``, ``name``, ``image_url``,
                                      ``roi_currency``) holding a lone UTF-16 surrogate (valid JSON
                                      ``"\\ud83d"``, but not encodable as UTF-8: the file could not
                                      be written) or a NUL character (never part of a real name or
                                      URL, and how Snowflake's COPY takes one is not documented;
                                      the emulator's DuckDB does load it);
    ``invalid_number:<column>``       a number field holding something that is not a finite number
                                      (booleans, objects, ``"abc"``, ``""``, ``"inf"``, ``"NaN"``,
                                      the JSON literals ``NaN``/``Infinity`` that Python's
                                      ``json`` accepts), or a non-integral / out-of-range
                                      ``market_cap_rank``;
    ``invalid_timestamp:<column>``    a timestamp field that is not an ISO-8601 string, or whose
                                      instant in UTC falls outside years 0001-9999 (or a ``NaN``);
    ``negative:<column>``             a price, market cap, rank, FDV, volume, 24h high/low,
                                      supply, ATH or ATL < 0 (``NEGATIVE_CHECKED``);
    ``implausible_outlier:<column>``  ``market_cap`` or ``total_volume`` above
                                      ``OUTLIER_FACTOR`` (1e6) x the sum of every other kept
                                      coin's (with at least two others): on any basis, so a spam
                                      token at ~3e27 USD cannot take ~100 % of a fetched basis;
    ``exceeds_global_total:market_cap``  on the ``global`` basis: a market cap above ``/global``'s
                                      total market cap, when it is one of a few such coins (at
                                      most 1 %) beside coins consistent with that total. A coin
                                      worth more than the whole market is an impossible fact, and
                                      keeping it would corrupt every SUM over the snapshot;
                                      ``reject_detail`` has the value and the total.
Dominance
    ``market_cap_dominance_pct = market_cap / global.data.total_market_cap[vs] * 100`` and
    ``volume_pct = total_volume / global.data.total_volume[vs] * 100`` with
    ``dominance_basis = 'global'``, when ``/global`` gives both totals for the currency as positive
    finite numbers. Otherwise (no body, error body, currency missing, zero) both use the sums of
    the accepted rows' caps / volumes and ``dominance_basis = 'fetched'`` (one flag per snapshot, so
    both percentages always share a basis). A NULL market cap (volume) gives a NULL percentage;
    a zero denominator gives NULL percentages. ``/global`` is checked against the coins first:
    when more than a few coins exceed its total market cap, when the coins together exceed it
    (beyond 5 %), or when any coin's volume exceeds its total volume (a coin's volume can exceed
    a fair share but not the whole), ``/global`` is the wrong one and the fetched basis is used,
    with the reason in ``quality.dominance_basis_reason``; so no stored market-cap share exceeds
    100 % and no volume share exceeds 100 % on the global basis. The fetched sums are taken over
    the rows kept. ``dominance_basis_reason`` also says ``"/global unavailable: <global_error>"``
    when the caller says why there is no body.

Quality checks (reported in ``quality.checks``; only "no valid rows" raises DataQualityError
here; the handler then adds the quality gate's ``gate_*`` checks, which fail the run: gate.py)
    rows accounted for, coin ids unique, ranks positive, dominance sum <= 100 (+1e-6), volume sum
    <= 200 (each trade is counted once for each of its two coins, so per-coin volumes add up to
    more than /global's total: the two recorded captures with a same-day /global give 125% and
    155% for their top 100 coins). Each check is ``{name, passed, detail, coins, coin_count}``:
    ``coins`` names the coin ids behind a failed check (at most ``SAMPLE_SIZE``), ``coin_count``
    how many there are; both empty/0 when it passed. ``unique_coin_ids``: the repeated ids;
    ``ranks_positive``: the coins ranked <= 0 (both sorted by id); the two sum checks: every coin
    with a share counts, ``coins`` are the largest shares, largest first. ``quality.failed_checks``
    lists the failed checks' names; ``quality.rejected_coins`` samples the first ``SAMPLE_SIZE``
    rejected rows as ``{coin_id, reason, source_page, source_row}`` (coin_id null when unknown or
    itself refused).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from operator import methodcaller
from typing import Any

import numpy as np
import pandas as pd

from functions.common.errors import DataQualityError, ValidationError
from functions.common.schema import COLUMN_NAMES, PROCESSED_COLUMNS, REJECT_REASON_COLUMN

BASIS_GLOBAL = "global"
BASIS_FETCHED = "fetched"
SUM_EPSILON = 1e-6
MAX_COINS_ALL = "all"  # max_coins of a whole-market run (the Extract pages until the end)
SAMPLE_SIZE = 20  # coin ids named per failed check, rejected rows sampled in the quality summary

# Extra columns of the rejected file (after the processed columns and the reason).
REJECT_DETAIL_COLUMN = "reject_detail"
REJECT_EXTRA_COLUMNS: tuple[str, ...] = (
    REJECT_REASON_COLUMN,
    REJECT_DETAIL_COLUMN,
    "source_page",
    "source_row",
)
REJECTED_COLUMNS: tuple[str, ...] = (*COLUMN_NAMES, *REJECT_EXTRA_COLUMNS)

# The source fields this transform reads; everything else is dropped (and reported).
USED_FIELDS = frozenset(
    {
        "id",
        "symbol",
        "name",
        "image",
        "roi",
        *(
            name
            for name, _, kind in PROCESSED_COLUMNS
            if kind in ("float", "int", "timestamp") and not name.startswith("roi_")
        ),
    }
)
_DERIVED = frozenset(
    {
        "snapshot_id",
        "fetched_at",
        "fetch_date",
        "vs_currency",
        "coin_id",
        "image_url",
        "roi_times",
        "roi_currency",
        "roi_percentage",
        "market_cap_dominance_pct",
        "volume_pct",
        "dominance_basis",
    }
)
# Quantities that cannot be negative: a row holding one below 0 is rejected (counted), so the
# quality gate's gate_non_negative check (gate.py) only ever catches a bug in these rules.
NEGATIVE_CHECKED = (
    "current_price",
    "market_cap",
    "market_cap_rank",
    "fully_diluted_valuation",
    "total_volume",
    "high_24h",
    "low_24h",
    "circulating_supply",
    "total_supply",
    "max_supply",
    "ath",
    "atl",
)
NULL_COUNTED = (
    "symbol",
    "name",
    "current_price",
    "market_cap",
    "market_cap_rank",
    "total_volume",
    "last_updated",
    "market_cap_dominance_pct",
    "volume_pct",
)
_IMAGE_SIZES = ("large", "small", "thumb")
_MAX_EXACT_INT = 2.0**53
_VARCHAR_RE = re.compile(r"^VARCHAR\((\d+)\)$")
_MAX_LEN = {
    name: int(m.group(1))
    for name, sqltype, _ in PROCESSED_COLUMNS
    if (m := _VARCHAR_RE.fullmatch(sqltype)) is not None
}
# NUL, or a lone surrogate (a str holding one cannot be encoded as UTF-8).
_BAD_TEXT_RE = re.compile("[\x00\ud800-\udfff]")
# Instants a timestamp may hold (Snowflake's and Python's years 0001-9999), in microseconds.
_MIN_US = np.datetime64("0001-01-01T00:00:00", "us")
_MAX_US = np.datetime64("9999-12-31T23:59:59.999999", "us")
# pandas 2 parses strings to nanoseconds only inside 1677-09-21..2262-04-11; the Gregorian
# calendar repeats every 400 years (146097 days, a whole number of weeks), so a year outside
# [_SAFE_FIRST_YEAR, _SAFE_FIRST_YEAR + 400) is parsed that many cycles nearer and shifted back.
_SAFE_FIRST_YEAR = 1700
_CYCLE_YEARS = 400
_CYCLE = np.timedelta64(146097, "D").astype("timedelta64[us]")
_SAFE_FIRST = np.datetime64(f"{_SAFE_FIRST_YEAR}-01-01", "us")
_SAFE_END = np.datetime64(f"{_SAFE_FIRST_YEAR + _CYCLE_YEARS}-01-01", "us")
_YEAR_PREFIX_RE = r"[0-9]{4}"  # ASCII digits only (\d would take other scripts' digits)


class _NaNLiteral:
    """Stands in for a raw ``float('nan')`` (JSON ``NaN``), so it is not taken for a null."""

    def __repr__(self) -> str:
        return "NaN"


_NAN_LITERAL = _NaNLiteral()


@dataclass
class TransformResult:
    """The processed rows, the refused rows (with reasons) and the quality summary."""

    processed: pd.DataFrame
    rejected: pd.DataFrame
    quality: dict[str, Any] = field(default_factory=dict)

    @property
    def row_count(self) -> int:
        return len(self.processed)

    @property
    def rejected_count(self) -> int:
        return len(self.rejected)

    @property
    def duplicate_count(self) -> int:
        return int(self.quality.get("duplicates", 0))


# --- column normalisers: each returns (values, invalid mask) -------------------------------


def _types(obj: pd.Series) -> pd.Series:
    return obj.map(type)


def _as_object(raw: pd.Series) -> pd.Series:
    return raw.astype(object)


_NUMERIC_INFERRED = frozenset({"floating", "integer", "mixed-integer-float", "empty"})


def _to_float(raw: pd.Series) -> tuple[pd.Series, pd.Series]:
    """Numbers and numeric strings -> float64; anything else that is present is invalid."""
    if (pd.api.types.is_float_dtype(raw) or pd.api.types.is_integer_dtype(raw)) and not (
        pd.api.types.is_bool_dtype(raw)
    ):
        values = raw.astype("float64")
        invalid = values.notna() & ~np.isfinite(values)
        return values.where(~invalid), invalid
    obj = _as_object(raw)
    # The common case, a column of only JSON numbers and nulls, without a per-value type check.
    if pd.api.types.infer_dtype(obj, skipna=True) in _NUMERIC_INFERRED:
        try:
            values = pd.Series(obj.to_numpy().astype("float64"), index=obj.index)
        except OverflowError:  # an int beyond float range: the general path below refuses it
            pass
        else:
            # NaN here is null: a raw NaN is _NAN_LITERAL by now, which is not "numeric".
            invalid = pd.Series(np.isinf(values.to_numpy()), index=obj.index)
            return values.where(~invalid), invalid
    present = obj.notna()
    usable = _types(obj).isin([int, float, str])  # bool is a subclass, but type() is exact
    values = pd.to_numeric(obj.where(usable), errors="coerce").astype("float64")
    invalid = present & ~np.isfinite(values)
    return values.where(~invalid), invalid


def _to_int(raw: pd.Series) -> tuple[pd.Series, pd.Series]:
    """Like ``_to_float`` but the value must be integral (and exactly representable)."""
    values, invalid = _to_float(raw)
    bad = values.notna() & ((values != np.floor(values)) | (values.abs() > _MAX_EXACT_INT))
    invalid = invalid | bad
    return values.where(~invalid).astype("Int64"), invalid


def _text_len(values: pd.Series) -> pd.Series:
    """Length of each string (0 for NA) of an object Series holding only str or NA."""
    return values.map(len, na_action="ignore").fillna(0).astype("int64")


def _nonempty_str(obj: pd.Series, is_str: pd.Series | None = None) -> pd.Series:
    """The non-empty strings of ``obj``; everything else NA (object dtype)."""
    if is_str is None:
        is_str = _types(obj).eq(str)
    return obj.where(is_str & obj.ne("")).astype(object)


def _longer_than(values: pd.Series, max_len: int) -> pd.Series:
    """Mask of the strings of ``values`` (str or NA) longer than ``max_len``."""
    strings = values.dropna().tolist()
    if max(map(len, strings), default=0) <= max_len:  # one C pass; per value only if needed
        return pd.Series(False, index=values.index)
    return _text_len(values) > max_len


def _bad_text(values: pd.Series) -> pd.Series:
    """Mask of the strings holding NUL or a lone surrogate (``values``: str or NA, object)."""
    strings = values.dropna().tolist()
    # One regex scan over the joined column: the per-value pass runs only when it finds one.
    if _BAD_TEXT_RE.search("\n".join(strings)) is None:
        return pd.Series(False, index=values.index)
    found = values.map(_BAD_TEXT_RE.search, na_action="ignore")
    return found.notna() & values.notna()


def _to_text(raw: pd.Series, max_len: int) -> tuple[pd.Series, pd.Series, pd.Series, pd.Series]:
    """Strings as given ('' -> NULL); returns (values, wrong-type, too-long, invalid-text masks)."""
    obj = _as_object(raw)
    is_str = _types(obj).eq(str)
    wrong_type = obj.notna() & ~is_str
    values = _nonempty_str(obj, is_str)
    return values, wrong_type, _longer_than(values, max_len), _bad_text(values)


def _parse_iso(strings: pd.Series) -> pd.Series:
    """ISO-8601 strings (or NA) -> datetime64[us, UTC]; NaT where pandas cannot read one."""
    parsed = pd.to_datetime(strings, utc=True, errors="coerce", format="ISO8601")
    return parsed.astype("datetime64[us, UTC]")


def _between(stamps: pd.Series, first: np.datetime64, end: np.datetime64) -> np.ndarray:
    """Mask of the instants in [first, end) (NaT: False) of a datetime64[us, UTC] Series."""
    naive = stamps.dt.tz_localize(None).to_numpy()
    return (naive >= first) & (naive < end)


def _parse_far_years(strings: pd.Series) -> pd.Series:
    """Like ``_parse_iso`` for strings starting with a year outside the safe window.

    Each year is moved by whole 400-year cycles into [1700, 2100), parsed, and the instant moved
    back by as many cycles (146097 days each), so pandas 2 (nanoseconds) and 3 read them alike.
    """
    years = strings.str.slice(0, 4).astype("int64")
    cycles = (years - _SAFE_FIRST_YEAR) // _CYCLE_YEARS
    near_years = (years - cycles * _CYCLE_YEARS).map("{:04d}".format).astype(object)
    near = near_years + strings.str.slice(4).astype(object)  # object: see _map_object
    return _parse_iso(near) + cycles.to_numpy() * _CYCLE


def _to_timestamp(raw: pd.Series) -> tuple[pd.Series, pd.Series]:
    """ISO-8601 strings (Z, offsets, or naive = UTC) -> datetime64[us, UTC]; others invalid.

    Valid for any instant from 0001-01-01 to 9999-12-31 (UTC) on pandas 2 and 3 alike.
    """
    obj = _as_object(raw)
    is_str = _types(obj).eq(str)
    strings = obj.where(is_str)
    parsed = _parse_iso(strings)
    # Strings pandas 2 could not read (NaT) and instants outside the safe window (which pandas 3
    # reads itself) are read again by the cycle shift, so both majors accept the same forms;
    # outside the window only what the shift reads is kept.
    in_window = _between(parsed, _SAFE_FIRST, _SAFE_END)
    outside = is_str.to_numpy() & ~in_window
    if outside.any():
        far = np.zeros(len(obj), dtype=bool)
        far[outside] = strings[outside].str.match(_YEAR_PREFIX_RE, na=False).to_numpy(bool)
        keep = in_window
        if far.any():
            reread = _parse_far_years(strings[far])
            keep[far] = _between(reread, _MIN_US, _MAX_US + np.timedelta64(1, "us"))
            parsed = parsed.where(~far, reread.reindex(parsed.index))
        parsed = parsed.where(keep)
    invalid = obj.notna() & parsed.isna()
    return parsed, invalid


def _map_object(values: pd.Series, func: Callable[[Any], Any]) -> pd.Series:
    """``func`` over the non-NA values (None elsewhere), as an object Series.

    Not ``Series.map``: pandas 3 would store a result of strings as its Arrow-backed ``str``
    dtype, which raises on a lone surrogate before the row can be rejected for it.
    """
    out = np.full(len(values), None, dtype=object)
    present = values.notna().to_numpy()
    if present.any():
        out[present] = np.frompyfunc(func, 1, 1)(values.to_numpy(dtype=object)[present])
    return pd.Series(out, index=values.index, dtype=object)


def _dict_get(dicts: pd.Series, key: str) -> pd.Series:
    """``d.get(key)`` for a Series holding dicts or NA."""
    return _map_object(dicts, methodcaller("get", key))


def _image_url(raw: pd.Series) -> tuple[pd.Series, pd.Series]:
    """A URL string, or the first non-empty of large/small/thumb of an object."""
    obj = _as_object(raw)
    kinds = _types(obj)
    is_str, is_dict = kinds.eq(str), kinds.eq(dict)
    invalid = obj.notna() & ~is_str & ~is_dict
    url = _nonempty_str(obj)
    if is_dict.any():
        dicts = obj.where(is_dict)
        for size in _IMAGE_SIZES:
            url = url.where(url.notna(), _nonempty_str(_dict_get(dicts, size)))
    return url, invalid


# --- page assembly ----------------------------------------------------------------------------


def _page_entries(manifest: Mapping[str, Any], n_pages: int) -> list[tuple[int, int | None]]:
    entries = manifest.get("pages")
    if not isinstance(entries, list):
        raise ValidationError("manifest.pages", f"must be a list, not {type(entries).__name__}")
    if len(entries) != n_pages:
        raise ValidationError(
            "manifest.pages", f"lists {len(entries)} pages but {n_pages} page bodies were given"
        )
    out: list[tuple[int, int | None]] = []
    for i, entry in enumerate(entries):
        if not isinstance(entry, Mapping):
            raise ValidationError(f"manifest.pages[{i}]", "must be an object")
        page, count = entry.get("page"), entry.get("count")
        if isinstance(page, bool) or not isinstance(page, int) or page < 1:
            raise ValidationError(f"manifest.pages[{i}].page", f"{page!r} must be an integer >= 1")
        bad_count = isinstance(count, bool) or not isinstance(count, int) or count < 0
        if count is not None and bad_count:
            raise ValidationError(
                f"manifest.pages[{i}].count", f"{count!r} must be an integer >= 0"
            )
        out.append((page, count))
    numbers = [p for p, _ in out]
    if len(set(numbers)) != len(numbers):
        raise ValidationError("manifest.pages", f"repeats page numbers: {numbers}")
    return out


# Rows whose page dicts are turned into columns at a time: only one chunk's dicts (plus the page
# being read) are alive, not every page's (~2.3 KB a coin as dicts, ~0.3 KB as object columns).
FRAME_CHUNK_ROWS = 5_000


@dataclass
class _Assembled:
    """The kept rows as one object frame (positional index), and where each row came from."""

    frame: pd.DataFrame
    not_object: pd.Series  # bool: the list entry is not a JSON object
    odd_entries: np.ndarray  # object: the entries that are not objects, None elsewhere
    page_arr: np.ndarray
    row_arr: np.ndarray
    trimmed: int


def _assemble(
    manifest: Mapping[str, Any], pages: Sequence[Any], max_coins: int | None
) -> _Assembled:
    """Rows in page order, cut to the manifest counts and max_coins, as a frame built chunk by
    chunk (each page is taken from ``pages`` once and not kept)."""
    entries = _page_entries(manifest, len(pages))
    order = sorted(range(len(pages)), key=lambda i: entries[i][0])
    pending: list[Any] = []
    parts: list[tuple[pd.DataFrame, pd.Series, np.ndarray]] = []
    page_nums: list[np.ndarray] = []
    row_nums: list[np.ndarray] = []
    trimmed = taken = 0
    for i in order:
        page, count = entries[i]
        body = pages[i]
        if not isinstance(body, list):
            raise ValidationError(
                f"page {page}", f"body must be a JSON list of coins, not {type(body).__name__}"
            )
        keep = len(body) if count is None else count
        if keep > len(body):
            raise ValidationError(
                f"page {page}", f"holds {len(body)} rows but the manifest count is {keep}"
            )
        take = keep if max_coins is None else max(0, min(keep, max_coins - taken))
        trimmed += len(body) - take
        taken += take
        pending.extend(body[:take])
        del body
        page_nums.append(np.full(take, page, dtype=np.int64))
        row_nums.append(np.arange(1, take + 1, dtype=np.int64))
        if len(pending) >= FRAME_CHUNK_ROWS:
            parts.append(_frame_part(pending))
            pending = []
    if pending or not parts:
        parts.append(_frame_part(pending))
    del pending
    frame = _join_frames([part[0] for part in parts])
    not_object = pd.Series(np.concatenate([part[1].to_numpy(dtype=bool) for part in parts]))
    odd_entries = np.concatenate([part[2] for part in parts])
    page_arr = np.concatenate(page_nums) if page_nums else np.empty(0, dtype=np.int64)
    row_arr = np.concatenate(row_nums) if row_nums else np.empty(0, dtype=np.int64)
    return _Assembled(frame, not_object, odd_entries, page_arr, row_arr, trimmed)


def _frame_part(rows: list[Any]) -> tuple[pd.DataFrame, pd.Series, np.ndarray]:
    """``_frame`` of one chunk of rows, plus its entries that are not objects (None elsewhere)."""
    frame, not_object = _frame(rows)
    odd = np.full(len(rows), None, dtype=object)
    flags = not_object.to_numpy(dtype=bool)
    if flags.any():
        odd[flags] = pd.Series(rows, dtype=object).to_numpy()[flags]
    return frame, not_object, odd


def _join_frames(frames: list[pd.DataFrame]) -> pd.DataFrame:
    """The chunks' frames stacked, columns in order of first appearance, a column missing from
    a chunk NaN there: the frame ``pd.DataFrame(all rows, dtype=object)`` gives."""
    if len(frames) == 1:
        return frames[0]
    names = list(dict.fromkeys(name for frame in frames for name in frame.columns))
    data = {
        name: np.concatenate(
            [
                frame[name].to_numpy(dtype=object)
                if name in frame.columns
                else np.full(len(frame), np.nan, dtype=object)
                for frame in frames
            ]
        )
        for name in names
    }
    n = sum(len(frame) for frame in frames)
    return pd.DataFrame(data, index=pd.RangeIndex(n), columns=pd.Index(names, dtype=object))


def _is_nan(value: Any) -> bool:
    return isinstance(value, float) and value != value


def _nan_literals(containers: np.ndarray, key: str, candidates: np.ndarray) -> np.ndarray:
    """Mask of the ``candidates`` rows whose dict in ``containers`` holds a NaN under ``key``."""
    found = np.zeros(len(candidates), dtype=bool)
    idx = np.flatnonzero(candidates)
    if len(idx):
        found[idx] = [_is_nan(d.get(key)) for d in containers[idx]]
    return found


def _mark_nan_literals(frame: pd.DataFrame, entries: np.ndarray, not_object: pd.Series) -> None:
    """Replace the raw NaNs of ``frame`` by ``_NAN_LITERAL`` (in place), keeping nulls null.

    In the frame an absent key is NaN too, so a NaN cell is looked up in its source dict (None
    cells, JSON null, are not NaN: only absent keys and real NaNs are looked up).
    """
    objects = ~not_object.to_numpy(dtype=bool)
    for name in frame.columns.intersection(sorted(USED_FIELDS)):
        column = frame[name]
        cells = column.to_numpy()
        # A NaN is the one value not equal to itself (None, text, numbers and dicts are).
        candidates = objects & np.not_equal(cells, cells)
        if candidates.any():
            literal = _nan_literals(entries, name, candidates)
            if literal.any():
                frame[name] = column.where(~literal, _NAN_LITERAL)


def _frame(rows: list[Any]) -> tuple[pd.DataFrame, pd.Series]:
    """A DataFrame of the JSON objects (positional index, object dtype) and the not-an-object mask.

    Object dtype throughout: None stays apart from NaN, and pandas 3 does not store text as its
    Arrow-backed ``str`` dtype (which raises on a lone surrogate before it can be rejected).
    """
    entries = pd.Series(rows, dtype=object)
    is_obj = _types(entries).eq(dict) if len(entries) else pd.Series([], dtype=bool)
    if bool(is_obj.all()):
        frame = pd.DataFrame(rows, dtype=object) if rows else pd.DataFrame()
    else:
        objs = entries[is_obj]
        frame = pd.DataFrame(objs.tolist(), index=objs.index, dtype=object)
        frame = frame.reindex(entries.index)
    frame.index = pd.RangeIndex(len(rows))
    not_object = (~is_obj).reset_index(drop=True)
    _mark_nan_literals(frame, entries.to_numpy(), not_object)
    return frame, not_object


# --- dominance ------------------------------------------------------------------------------


def positive_number(value: Any) -> float | None:
    """A positive finite number (a JSON number or numeric text, as ``/global``'s totals are
    read), else None."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return None
    try:
        number = float(value)
    except ValueError:
        return None
    return number if math.isfinite(number) and number > 0 else None


def global_totals(global_body: Any, vs_currency: str) -> tuple[float | None, float | None, str]:
    """(total market cap, total volume, why not) from a ``/global`` body for ``vs_currency``."""
    vs = vs_currency.lower()
    if global_body is None:
        return None, None, "no /global body"
    data = global_body.get("data") if isinstance(global_body, Mapping) else None
    if not isinstance(data, Mapping):
        return None, None, "the /global body has no 'data' object"
    found: list[float | None] = []
    problems: list[str] = []
    for name in ("total_market_cap", "total_volume"):
        table = data.get(name)
        raw = table.get(vs) if isinstance(table, Mapping) else None
        value = positive_number(raw)
        found.append(value)
        if value is None:
            what = "lacks" if raw is None else f"has {raw!r} for"
            problems.append(f"data.{name} {what} {vs!r}")
    return found[0], found[1], "; ".join(problems)


def _percent(values: pd.Series, total: float | None) -> pd.Series:
    if total is None or not math.isfinite(total) or total <= 0:
        return pd.Series(np.nan, index=values.index, dtype="float64")
    return values / total * 100.0


# --- the transform ----------------------------------------------------------------------------


def _short_repr(value: Any) -> str:
    """``repr`` of a raw value, ``null`` for JSON null / absent (pandas turns None into NaN)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "null"
    text = repr(value)
    return text if len(text) <= 200 else text[:197] + "..."


class _Problems:
    """Accumulates reason codes and raw-value details per row, column by column."""

    def __init__(self, n: int) -> None:
        self.reasons = np.full(n, "", dtype=object)
        self.details = np.full(n, "", dtype=object)
        self.counts: dict[str, int] = {}

    def add(
        self,
        code: str,
        mask: pd.Series,
        raw: pd.Series | None = None,
        label: str = "",
        suffix: str = "",
    ) -> None:
        """Mark the rows of ``mask`` with ``code``; note ``label=<raw value><suffix>`` in the
        detail."""
        flags = mask.to_numpy(dtype=bool)
        hits = int(flags.sum())
        if not hits:
            return
        self.counts[code] = self.counts.get(code, 0) + hits
        current = self.reasons[flags]
        self.reasons[flags] = np.where(current == "", code, current + "; " + code)
        if raw is not None:
            shown = raw[mask].map(_short_repr).to_numpy(dtype=object)
            item = (label or code) + "=" + shown + suffix
            current = self.details[flags]
            self.details[flags] = np.where(current == "", item, current + "; " + item)

    @property
    def rejected(self) -> np.ndarray:
        return self.reasons != ""


def _text_column(
    raw: pd.Series, column: str, field: str, problems: _Problems
) -> tuple[pd.Series, pd.Series]:
    """A text column with its problems recorded; refused values NULL. Returns (values, wrong)."""
    values, wrong, too_long, bad = _to_text(raw, _MAX_LEN[column])
    problems.add(f"invalid_type:{field}", wrong, raw, field)
    problems.add(f"too_long:{column}", too_long, raw, field)
    problems.add(f"invalid_text:{column}", bad, raw, field)
    return values.where(~too_long & ~bad), wrong


def _roi_part(dicts: pd.Series, is_dict: pd.Series, part: str, empty: pd.Series) -> pd.Series:
    """``roi[part]`` per row (NA where roi is not an object), a NaN kept apart from null."""
    if not is_dict.any():
        return empty
    sub = _dict_get(dicts, part)
    literal = _nan_literals(dicts.to_numpy(), part, (is_dict & sub.isna()).to_numpy())
    return sub.where(~literal, _NAN_LITERAL) if literal.any() else sub


def _normalise(
    frame: pd.DataFrame, not_object: pd.Series, problems: _Problems
) -> dict[str, pd.Series]:
    """Typed source columns keyed by processed column name; problems recorded as found."""
    n = len(frame)
    empty = pd.Series([None] * n, index=frame.index, dtype=object)

    def raw(name: str) -> pd.Series:
        return frame[name] if name in frame.columns else empty

    cols: dict[str, pd.Series] = {}
    # id: the key
    ids, wrong = _text_column(raw("id"), "coin_id", "id", problems)
    raw_ids = _nonempty_str(_as_object(raw("id")))
    stripped = _map_object(raw_ids, methodcaller("strip"))
    blank = ((raw_ids.isna() & ~wrong) | stripped.eq("")) & ~not_object
    problems.add("missing_id", blank, raw("id"), "id")
    cols["coin_id"] = ids
    for name in ("symbol", "name"):
        cols[name], _ = _text_column(raw(name), name, name, problems)
    url, wrong = _image_url(raw("image"))
    too_long = _text_len(url) > _MAX_LEN["image_url"]
    bad = _bad_text(url)
    problems.add("invalid_type:image", wrong, raw("image"), "image")
    problems.add("too_long:image_url", too_long, raw("image"), "image")
    problems.add("invalid_text:image_url", bad, raw("image"), "image")
    cols["image_url"] = url.where(~too_long & ~bad)

    for name, _, kind in PROCESSED_COLUMNS:
        if name in _DERIVED:
            continue
        if kind == "float":
            cols[name], bad = _to_float(raw(name))
            problems.add(f"invalid_number:{name}", bad, raw(name), name)
        elif kind == "int":
            cols[name], bad = _to_int(raw(name))
            problems.add(f"invalid_number:{name}", bad, raw(name), name)
        elif kind == "timestamp":
            cols[name], bad = _to_timestamp(raw(name))
            problems.add(f"invalid_timestamp:{name}", bad, raw(name), name)

    roi = _as_object(raw("roi"))
    is_dict = _types(roi).eq(dict)
    problems.add("invalid_type:roi", roi.notna() & ~is_dict, roi, "roi")
    dicts = roi.where(is_dict)
    for part in ("times", "percentage"):
        sub = _roi_part(dicts, is_dict, part, empty)
        cols[f"roi_{part}"], bad = _to_float(sub)
        problems.add(f"invalid_number:roi_{part}", bad, sub, f"roi.{part}")
    sub = _roi_part(dicts, is_dict, "currency", empty)
    cols["roi_currency"], _ = _text_column(sub, "roi_currency", "roi.currency", problems)

    for name in NEGATIVE_CHECKED:
        problems.add(f"negative:{name}", cols[name].lt(0).fillna(False), cols[name], name)
    return cols


def _check(name: str, passed: bool, detail: str, coins: Sequence[str] = ()) -> dict[str, Any]:
    """One quality check; ``coins`` (the ids behind it) is reported only when it failed."""
    named = [] if passed else list(coins)
    return {
        "name": name,
        "passed": bool(passed),
        "detail": detail,
        "coins": named[:SAMPLE_SIZE],
        "coin_count": len(named),
    }


def _largest_shares(processed: pd.DataFrame, column: str) -> list[str]:
    """The coin ids with a share in ``column``, largest share first (ties by id)."""
    shares = processed.loc[processed[column].notna(), ["coin_id", column]]
    ordered = shares.sort_values([column, "coin_id"], ascending=[False, True], kind="stable")
    return [str(c) for c in ordered["coin_id"]]


def _quality_checks(
    processed: pd.DataFrame, rows_in: int, rejected: int, duplicates: int
) -> tuple[list[dict[str, Any]], float, float]:
    dominance_sum = float(processed["market_cap_dominance_pct"].sum(skipna=True))
    volume_sum = float(processed["volume_pct"].sum(skipna=True))
    ranks = processed["market_cap_rank"]
    bad_rank = (ranks <= 0).fillna(False).astype(bool)
    ids = processed["coin_id"]
    repeated = ids[ids.duplicated()]
    rows_out = len(processed)
    dominance_ok = dominance_sum <= 100.0 + SUM_EPSILON
    volume_ok = volume_sum <= 200.0 + SUM_EPSILON
    checks = [
        _check("has_rows", rows_out > 0, f"{rows_out} valid rows"),
        _check(
            "rows_accounted",
            rows_in == rows_out + rejected + duplicates,
            f"in {rows_in} = out {rows_out} + rejected {rejected} + dup {duplicates}",
        ),
        _check(
            "unique_coin_ids",
            repeated.empty,
            f"{len(repeated)} repeated coin ids",
            sorted(set(map(str, repeated))),
        ),
        _check(
            "ranks_positive",
            not bad_rank.any(),
            f"{int(bad_rank.sum())} ranks <= 0 ({int(ranks.notna().sum())} non-null)",
            sorted(map(str, ids[bad_rank])),
        ),
        _check(
            "dominance_sum_le_100",
            dominance_ok,
            f"sum of market_cap_dominance_pct = {dominance_sum:.6f}",
            [] if dominance_ok else _largest_shares(processed, "market_cap_dominance_pct"),
        ),
        # A coin's volume counts every trade it is either side of, so the coins' volumes can add
        # up to twice the market's (real captures show ~125% of /global's total).
        _check(
            "volume_sum_le_200",
            volume_ok,
            f"sum of volume_pct = {volume_sum:.6f}",
            [] if volume_ok else _largest_shares(processed, "volume_pct"),
        ),
    ]
    return checks, dominance_sum, volume_sum


def _rejected_sample(rejected: pd.DataFrame) -> list[dict[str, Any]]:
    """The first ``SAMPLE_SIZE`` rejected rows as ``{coin_id, reason, source_page, source_row}``."""
    head = rejected.head(SAMPLE_SIZE)
    return [
        {
            "coin_id": None if pd.isna(coin_id) else str(coin_id),
            "reason": str(reason),
            "source_page": int(page),
            "source_row": int(row),
        }
        for coin_id, reason, page, row in zip(
            head["coin_id"],
            head[REJECT_REASON_COLUMN],
            head["source_page"],
            head["source_row"],
            strict=True,
        )
    ]


def _parse_fetched_at(fetched_at: str | datetime) -> pd.Timestamp:
    if isinstance(fetched_at, str):
        try:
            fetched_at = datetime.fromisoformat(fetched_at)
        except ValueError as exc:
            raise ValidationError("fetched_at", f"{fetched_at!r} is not ISO-8601") from exc
    if fetched_at.tzinfo is None:
        raise ValidationError("fetched_at", f"{fetched_at.isoformat()!r} has no time zone")
    return pd.Timestamp(fetched_at.astimezone(UTC))


def _parse_fetch_date(fetch_date: str | date) -> date:
    if isinstance(fetch_date, datetime):
        return fetch_date.date()
    if isinstance(fetch_date, date):
        return fetch_date
    try:
        return date.fromisoformat(fetch_date)
    except (TypeError, ValueError) as exc:
        raise ValidationError("fetch_date", f"{fetch_date!r} is not YYYY-MM-DD") from exc


# A coin worth this many times every other fetched coin together is no market fact: the
# largest real coin is a few times the next two (CoinGecko's top coins, any day); spam tokens
# with absurd supplies report ~1e15 times that (the token: 3e27 USD).
OUTLIER_FACTOR = 1e6
OUTLIER_MIN_OTHERS = 2
# /global and the pages are fetched seconds apart: the coins may sum a little above its total.
GLOBAL_SUM_TOLERANCE = 1.05


def _outliers(values: pd.Series, kept: pd.Series) -> pd.Series:
    """Rows of ``kept`` whose value exceeds ``OUTLIER_FACTOR`` x the sum of the other kept rows'
    (only when at least ``OUTLIER_MIN_OTHERS`` other rows have a positive value)."""
    positive = values.where(kept & values.gt(0))
    total = float(positive.sum(skipna=True))
    others = total - positive
    enough = int(positive.notna().sum()) - 1 >= OUTLIER_MIN_OTHERS
    if not enough:
        return pd.Series(False, index=values.index)
    return (positive > OUTLIER_FACTOR * others).fillna(False).astype(bool)


def _check_global(
    cols: dict[str, pd.Series],
    kept: pd.Series,
    problems: _Problems,
    cap_total: float,
    vol_total: float,
) -> tuple[float | None, float | None, str]:
    """Check ``/global``'s totals against the kept coins; return the totals to use and why not.

    * A few coins (at most 1 % of them, at least one) whose market cap exceeds the total market
      cap, beside coins that are consistent with it, are rejected (``exceeds_global_total``).
    * When more coins exceed it, or the others together exceed it (beyond
      ``GLOBAL_SUM_TOLERANCE``), or any coin's volume exceeds the total volume, ``/global`` is
      the wrong one: both totals are set aside (``None``) and the fetched basis is used.
    """
    cap = cols["market_cap"].where(kept)
    above = cap.gt(cap_total).fillna(False).astype(bool)
    rest = kept & ~above
    rest_sum = float(cap[rest].sum(skipna=True))
    n_above, n_kept = int(above.sum()), int(kept.sum())
    ids = cols["coin_id"]
    if n_above and (n_above > max(1, n_kept // 100) or not rest.any()):
        return (
            None,
            None,
            (
                f"/global total_market_cap {cap_total!r} is below the market cap of {n_above}"
                f" of {n_kept} coins (e.g. {', '.join(map(str, ids[above].head(3)))}):"
                " /global set aside"
            ),
        )
    if rest_sum > cap_total * GLOBAL_SUM_TOLERANCE:
        return (
            None,
            None,
            (
                f"/global total_market_cap {cap_total!r} is below the sum of the fetched coins'"
                f" market caps {rest_sum!r}: /global set aside"
            ),
        )
    volume = cols["total_volume"].where(rest)
    over = volume.gt(vol_total).fillna(False).astype(bool)
    if over.any():
        return (
            None,
            None,
            (
                f"/global total_volume {vol_total!r} is below the volume of"
                f" {', '.join(map(str, ids[over].head(3)))}: /global set aside"
            ),
        )
    problems.add(
        "exceeds_global_total:market_cap",
        ids.isin(ids[above]) & ~pd.Series(problems.rejected),
        cols["market_cap"],
        "market_cap",
        f" > /global total_market_cap={cap_total!r}",
    )
    return cap_total, vol_total, ""


def transform(
    manifest: Mapping[str, Any],
    pages: Sequence[Any],
    global_body: Any,
    *,
    snapshot_id: str,
    fetched_at: str | datetime,
    fetch_date: str | date,
    vs_currency: str,
    max_coins: int | str | None = None,
    allow_empty: bool = False,
    global_error: str | None = None,
) -> TransformResult:
    """Turn the raw pages (aligned with ``manifest["pages"]``) into processed and rejected rows.

    ``pages`` is any sequence: each page is taken once, in page-number order, and not kept (the
    handler passes one that reads a page when it is taken), so only ``FRAME_CHUNK_ROWS`` rows of
    parsed JSON are alive at a time.

    ``global_body`` is the parsed ``/global`` body or None (fallback basis); ``global_error``
    says why it is None (e.g. ``"HTTP 403: This endpoint is temporarily unavailable"``) and is
    then reported as ``quality["dominance_basis_reason"] = "/global unavailable: <it>"`` (it is
    ignored when there is a body). ``max_coins`` defaults to ``manifest["max_coins"]`` (an
    integer; ``"all"`` there or here means no cap).
    Raises ValidationError for pages that do not match the manifest, and DataQualityError when
    no row is valid unless ``allow_empty`` (the handler writes the rejected rows first, then
    raises itself). The shapes of the result are in the module docstring.
    """
    fetched = _parse_fetched_at(fetched_at)
    day = _parse_fetch_date(fetch_date)
    manifest_max = manifest.get("max_coins")
    if max_coins == MAX_COINS_ALL:  # the whole market: no cap, whatever the manifest says
        max_coins = None
    elif max_coins is None and isinstance(manifest_max, int) and not isinstance(manifest_max, bool):
        max_coins = manifest_max
    assembled = _assemble(manifest, pages, max_coins)
    frame, not_object = assembled.frame, assembled.not_object
    page_arr, row_arr, trimmed = assembled.page_arr, assembled.row_arr, assembled.trimmed
    n = len(frame)

    problems = _Problems(n)
    problems.add("not_an_object", not_object, pd.Series(assembled.odd_entries, dtype=object), "row")
    cols = _normalise(frame, not_object, problems)
    dropped_fields = sorted(set(map(_printable_name, frame.columns)) - USED_FIELDS)
    index = frame.index
    del assembled, frame  # the raw cells: cols hold what is kept

    cap_total, vol_total, why_not = global_totals(global_body, vs_currency)
    if global_body is None and global_error:
        why_not = f"/global unavailable: {global_error}"

    def kept() -> pd.Series:
        rejected_now = pd.Series(problems.rejected, index=index)
        ids = cols["coin_id"].where(~rejected_now)
        return ~rejected_now & ~(ids.notna() & ids.duplicated(keep="first"))

    # Plausibility, on the rows that survived the row checks: /global against the coins first (a
    # coin above the whole market is rejected; /global itself is set aside when the coins say it
    # is the wrong one), then absurd outliers among the coins, whatever the basis.
    if cap_total is not None and vol_total is not None:
        cap_total, vol_total, why_not = _check_global(cols, kept(), problems, cap_total, vol_total)
    for name in ("market_cap", "total_volume"):
        flagged = _outliers(cols[name], kept())
        problems.add(
            f"implausible_outlier:{name}",
            cols["coin_id"].isin(cols["coin_id"][flagged]) & ~pd.Series(problems.rejected),
            cols[name],
            name,
            f" > {OUTLIER_FACTOR:g} x the sum of every other coin's",
        )
    basis = BASIS_GLOBAL if cap_total is not None and vol_total is not None else BASIS_FETCHED

    rejected_mask = pd.Series(problems.rejected, index=index)
    accepted_ids = cols["coin_id"].where(~rejected_mask)
    dup_mask = accepted_ids.notna() & accepted_ids.duplicated(keep="first")
    keep = ~rejected_mask & ~dup_mask
    if basis == BASIS_FETCHED:
        cap_total = float(cols["market_cap"][keep].sum(skipna=True))
        vol_total = float(cols["total_volume"][keep].sum(skipna=True))

    cols["market_cap_dominance_pct"] = _percent(cols["market_cap"], cap_total)
    cols["volume_pct"] = _percent(cols["total_volume"], vol_total)
    cols["snapshot_id"] = pd.Series(snapshot_id, index=index, dtype=object)
    cols["fetched_at"] = pd.Series(fetched, index=index).astype("datetime64[us, UTC]")
    cols["fetch_date"] = pd.Series([day] * n, index=index, dtype=object)
    cols["vs_currency"] = pd.Series(vs_currency, index=index, dtype=object)
    cols["dominance_basis"] = pd.Series(basis, index=index, dtype=object)
    table = pd.DataFrame({name: cols[name] for name in COLUMN_NAMES}, index=index)

    processed = table[keep.to_numpy()].reset_index(drop=True)
    rej = rejected_mask.to_numpy()
    rejected = table[rej].copy()
    for name in ("market_cap_dominance_pct", "volume_pct"):
        rejected[name] = np.nan
    rejected["dominance_basis"] = None
    rejected[REJECT_REASON_COLUMN] = problems.reasons[rej]
    rejected[REJECT_DETAIL_COLUMN] = problems.details[rej]
    rejected["source_page"] = page_arr[rej]
    rejected["source_row"] = row_arr[rej]
    rejected = rejected.reset_index(drop=True)

    duplicates = int(dup_mask.sum())
    checks, dominance_sum, volume_sum = _quality_checks(processed, n, len(rejected), duplicates)
    dup_ids = accepted_ids[dup_mask]
    quality: dict[str, Any] = {
        "rows_in": n,
        "rows_out": len(processed),
        "rejected": len(rejected),
        "duplicates": duplicates,
        "rows_trimmed": int(trimmed),
        "rejected_by_reason": dict(sorted(problems.counts.items())),
        "rejected_coins": _rejected_sample(rejected),
        "duplicate_ids": sorted(set(dup_ids.tolist()))[:SAMPLE_SIZE],
        "null_counts": {c: int(processed[c].isna().sum()) for c in NULL_COUNTED},
        "dominance_basis": basis,
        "dominance_basis_reason": "" if basis == BASIS_GLOBAL else why_not,
        "total_market_cap": float(cap_total),
        "total_volume": float(vol_total),
        "dominance_sum_pct": dominance_sum,
        "volume_sum_pct": volume_sum,
        "dropped_fields": dropped_fields,
        "checks": checks,
        "failed_checks": [c["name"] for c in checks if not c["passed"]],
        "passed": all(c["passed"] for c in checks),
    }
    if not len(processed) and not allow_empty:
        raise DataQualityError(empty_message(snapshot_id, quality))
    return TransformResult(processed=processed, rejected=rejected, quality=quality)


def _printable_name(name: Any) -> str:
    """A source field name as UTF-8-safe text (a lone surrogate is shown escaped)."""
    return str(name).encode("utf-8", "backslashreplace").decode("utf-8")


def empty_message(snapshot_id: str, quality: Mapping[str, Any]) -> str:
    """The DataQualityError text for a snapshot with no valid row."""
    return (
        f"snapshot {snapshot_id}: no valid rows out of {quality.get('rows_in', 0)}"
        f" (rejected by reason: {quality.get('rejected_by_reason', {})},"
        f" duplicates: {quality.get('duplicates', 0)})"
    )
