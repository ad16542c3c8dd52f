"""Writers of the processed and rejected files, and the check that reads one back (pure: bytes).

Encoding (the rules of ``functions.common.schema``): UTF-8 CSV, a header row of the bare column
names, ``\\n`` line ends, ``,`` between fields. Every text value is enclosed in ``"`` (a ``"``
inside it doubled), whatever it holds: a bare ``\\r`` is then data, not a line end (Python's csv
writer before 3.11.9 / 3.12.3 left it unquoted, and the COPY failed). NULL is an *unquoted* empty
field (an empty string is written as NULL too: the transform never keeps one). Numbers, dates and
timestamps are never quoted: floats with full precision (Python ``repr``: ``0.1``, ``1e-07``,
``1381651251183.0``), ints without a decimal point, timestamps as ``TIMESTAMP_FORMAT`` in UTC for
any year 0001-9999, dates ``YYYY-MM-DD``. Gzip with mtime 0 and no file name, so the same rows
always give the same bytes (a rerun rewrites an identical object).

``verify_csv_gz`` parses a file back with the dialect Snowflake's COPY reads (``,`` delimiter,
``"`` enclosure, doubled quotes, no escape character) before it is staged.
"""

from __future__ import annotations

import csv
import gzip
import io
import zlib
from collections.abc import Sequence
from datetime import date, datetime

import numpy as np
import pandas as pd

from functions.common.errors import DataQualityError
from functions.common.schema import COLUMN_NAMES, PROCESSED_COLUMNS, TIMESTAMP_FORMAT
from functions.transform.transform import REJECTED_COLUMNS

# Level 1: on 20k coins (10.7 MiB of CSV) it takes ~60 ms for 3.44 MiB, level 6 ~250 ms for
# 3.21 MiB, level 9 ~365 ms for 3.20 MiB (benchmarks/transform_bench.py): 7% more bytes to PUT
# is cheaper than a quarter of the Lambda's run time.
COMPRESS_LEVEL = 1
_KIND = {name: kind for name, _, kind in PROCESSED_COLUMNS}
_CHUNK_ROWS = 2000
# Timestamps are written with datetime.isoformat (4-digit years below 1000, which strftime's %Y
# does not give on glibc); this is the only TIMESTAMP_FORMAT that matches it.
_ISOFORMAT_EQUIVALENT = "%Y-%m-%d %H:%M:%S.%f+00:00"
if TIMESTAMP_FORMAT != _ISOFORMAT_EQUIVALENT:  # pragma: no cover - a guard against schema edits
    raise RuntimeError(
        f"csv_gz writes timestamps as {_ISOFORMAT_EQUIVALENT!r}, but the schema's"
        f" TIMESTAMP_FORMAT is {TIMESTAMP_FORMAT!r}: update the writer with the schema"
    )


def _kind(name: str, series: pd.Series) -> str:
    """The schema's kind of a column, else one from its dtype (the rejected file's extras)."""
    if name in _KIND:
        return _KIND[name]
    if pd.api.types.is_bool_dtype(series):
        return "str"
    if pd.api.types.is_integer_dtype(series):
        return "int"
    if pd.api.types.is_float_dtype(series):
        return "float"
    return "str"


def _blank_where(fields: list[str], missing: np.ndarray) -> list[str]:
    for i in np.flatnonzero(missing).tolist():
        fields[i] = ""
    return fields


def _float_fields(series: pd.Series) -> list[str]:
    values = series.to_numpy(dtype="float64", na_value=np.nan)
    if not len(values):
        return []
    # repr of the whole list formats each float as repr(x) (shortest round trip), in C.
    fields = repr(values.tolist())[1:-1].split(", ")
    return _blank_where(fields, np.isnan(values))


def _int_fields(series: pd.Series) -> list[str]:
    ints = series.astype("Int64")
    missing = ints.isna().to_numpy()
    fields = [str(v) for v in ints.fillna(0).to_numpy(dtype="int64").tolist()]
    return _blank_where(fields, missing)


def _timestamp_fields(series: pd.Series) -> list[str]:
    if not isinstance(series.dtype, pd.DatetimeTZDtype):
        series = pd.to_datetime(series, utc=True)
    naive = series.dt.tz_convert("UTC").dt.tz_localize(None).astype("datetime64[us]")
    codes, uniques = pd.factorize(naive)
    # isoformat: 4-digit years for 0001-9999 and always 6 fractional digits; each distinct
    # instant is formatted once.
    texts = [
        d.isoformat(" ", "microseconds") + "+00:00"
        for d in uniques.to_numpy().astype(object).tolist()
    ]
    texts.append("")  # code -1 = NaT
    return np.asarray(texts, dtype=object)[codes].tolist()


def _date_text(value: object) -> str:
    if isinstance(value, datetime):  # also pd.Timestamp
        return value.date().isoformat()
    if isinstance(value, date):
        return value.isoformat()
    return pd.Timestamp(value).date().isoformat()


def _date_fields(series: pd.Series) -> list[str]:
    # Factorized as objects: a datetime64[ns] detour would refuse years outside 1677-2262.
    codes, uniques = pd.factorize(series.astype(object))
    texts = [_date_text(d) for d in uniques.tolist()]
    texts.append("")
    return np.asarray(texts, dtype=object)[codes].tolist()


def _quote(value: object) -> str:
    text = value if isinstance(value, str) else str(value)
    return '"' + text.replace('"', '""') + '"' if text else ""


def _text_fields(series: pd.Series) -> list[str]:
    missing = series.isna().to_numpy()
    fields = [_quote(v) for v in series.to_numpy(dtype=object).tolist()]
    return _blank_where(fields, missing)


_FORMATTERS = {
    "float": _float_fields,
    "int": _int_fields,
    "timestamp": _timestamp_fields,
    "date": _date_fields,
    "str": _text_fields,
}


def _unencodable(df: pd.DataFrame, columns: Sequence[str]) -> str:
    """Where the first value that UTF-8 cannot encode is (for the error message)."""
    for name in columns:
        for i, value in enumerate(df[name].tolist()):
            if isinstance(value, str):
                try:
                    value.encode("utf-8")
                except UnicodeEncodeError:
                    coin = df["coin_id"].iloc[i] if "coin_id" in df.columns else None
                    return f"data row {i + 1} (coin_id {coin!r}), column {name}: {value!r}"
    return "unknown position"


def _encode(text: str, df: pd.DataFrame, columns: Sequence[str]) -> bytes:
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise DataQualityError(
            f"cannot write the file: a text value is not encodable as UTF-8 at"
            f" {_unencodable(df, columns)}"
        ) from exc


def csv_bytes(df: pd.DataFrame, columns: Sequence[str] = COLUMN_NAMES) -> bytes:
    """The uncompressed CSV text of ``df[columns]`` (encoding rules above), UTF-8.

    Raises ValueError when ``df`` lacks one of ``columns``, and DataQualityError naming the row
    and column when a text value cannot be encoded as UTF-8 (a lone surrogate).
    """
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ValueError(f"cannot write the file: the DataFrame lacks columns {missing}")
    kinds = [_kind(name, df[name]) for name in columns]
    parts = [(",".join(columns) + "\n").encode("utf-8")]
    # In chunks of rows, so the per-field strings of only one chunk are alive at a time.
    for start in range(0, len(df), _CHUNK_ROWS):
        chunk = df.iloc[start : start + _CHUNK_ROWS]
        fields = [_FORMATTERS[kind](chunk[name]) for name, kind in zip(columns, kinds, strict=True)]
        lines = "\n".join(map(",".join, zip(*fields, strict=True))) + "\n"
        parts.append(_encode(lines, df, columns))
    return b"".join(parts)


def gzip_bytes(data: bytes, level: int = COMPRESS_LEVEL) -> bytes:
    """Deterministic gzip (mtime 0, no file name)."""
    return gzip.compress(data, compresslevel=level, mtime=0)


def to_csv_gz(df: pd.DataFrame) -> bytes:
    """The processed file: exactly ``PROCESSED_COLUMNS``, in order, gzip'd."""
    return gzip_bytes(csv_bytes(df, COLUMN_NAMES))


def rejected_to_csv_gz(df: pd.DataFrame) -> bytes:
    """The rejected file: the processed columns plus reason, detail, source page and row."""
    return gzip_bytes(csv_bytes(df, REJECTED_COLUMNS))


def verify_csv_gz(data: bytes, expected_rows: int, columns: Sequence[str] = COLUMN_NAMES) -> None:
    """Check a gzip'd CSV parses back to ``expected_rows`` rows of ``columns`` (header first).

    Parsed with Python's csv module in the dialect Snowflake's COPY reads the file with
    (``FIELD_DELIMITER ','``, ``FIELD_OPTIONALLY_ENCLOSED_BY '"'``, a quote inside a quoted field
    doubled, no escape character; ``functions.load.sql.copy_into_staging``), strictly (a quote
    inside an unquoted field or text after a closing quote is an error). Raises
    DataQualityError naming the first bad data row (1-based, with its coin_id when readable)
    when the data is not gzip or UTF-8, the header differs, a row has the wrong number of
    fields or holds a NUL character (the transform refuses NUL text as ``invalid_text``), or the
    row count differs.
    """
    try:
        text = gzip.decompress(data).decode("utf-8")
    except (OSError, EOFError, zlib.error, UnicodeDecodeError) as exc:
        raise DataQualityError(f"the processed file is not gzip'd UTF-8 text: {exc}") from exc
    expected = list(columns)
    id_at = expected.index("coin_id") if "coin_id" in expected else None

    def where(number: int, fields: list[str]) -> str:
        coin = f" (coin_id {fields[id_at]!r})" if id_at is not None and len(fields) > id_at else ""
        return f"data row {number}{coin}"

    reader = csv.reader(
        io.StringIO(text, newline=""),
        delimiter=",",
        quotechar='"',
        doublequote=True,
        escapechar=None,
        quoting=csv.QUOTE_MINIMAL,
        strict=True,
    )
    number = 0
    fields: list[str] = []
    has_nul = "\x00" in text  # looked for per row only when the file holds one
    try:
        header = next(reader, None)
        if header != expected:
            raise DataQualityError(
                f"the processed file's header is {header!r}, expected the {len(expected)}"
                f" columns {expected!r}"
            )
        for number, fields in enumerate(reader, start=1):
            if len(fields) != len(expected):
                raise DataQualityError(
                    f"the processed file's {where(number, fields)} has {len(fields)} fields,"
                    f" expected {len(expected)}: the writer's quoting is broken"
                )
            if has_nul and any("\x00" in f for f in fields):
                bad = next(c for c, f in zip(expected, fields, strict=True) if "\x00" in f)
                raise DataQualityError(
                    f"the processed file's {where(number, fields)} holds a NUL character in"
                    f" column {bad}, which the transform refuses (invalid_text)"
                )
    except csv.Error as exc:
        raise DataQualityError(
            f"the processed file does not parse as CSV at data row {number + 1}: {exc}"
        ) from exc
    if number != expected_rows:
        raise DataQualityError(
            f"the processed file parses to {number} data rows, expected {expected_rows}"
        )
