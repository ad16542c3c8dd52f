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

import codecs
import csv
import gzip
import io
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import date, datetime

import numpy as np
import orjson
import pandas as pd

from functions.common.errors import DataQualityError
from functions.common.schema import COLUMN_NAMES, PROCESSED_COLUMNS, TIMESTAMP_FORMAT
from functions.transform.transform import REJECTED_COLUMNS

# Level 1: on 20k coins (10.7 MiB of CSV) it takes ~60 ms for 3.44 MiB, level 6 ~250 ms for
# 3.21 MiB, level 9 ~365 ms for 3.20 MiB (benchmarks/transform_bench.py): 7% more bytes to PUT
# is cheaper than a quarter of the Lambda's run time.
COMPRESS_LEVEL = 1
_KIND = {name: kind for name, _, kind in PROCESSED_COLUMNS}
# Rows formatted at a time: ~10 MiB of field strings for 10k rows, few pandas calls per chunk.
CHUNK_ROWS = 10_000
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


# A column's fields for rows [start, stop): the column is converted once, sliced per chunk.
_Fields = Callable[[int, int], list[str]]


def _blank_where(fields: list[str], missing: np.ndarray) -> list[str]:
    for i in np.flatnonzero(missing).tolist():
        fields[i] = ""
    return fields


def float_texts(values: np.ndarray) -> list[str]:
    """``repr(float(x))`` of each float64 of ``values`` ("" for NaN), for a whole array at once.

    orjson writes the same shortest round-trip digits as ``repr`` ~4x faster, in the same form
    wherever ``repr`` uses no exponent; ``repr`` switches to one for a magnitude below 1e-4 or
    from 1e16 (CPython's ``float_repr_style`` "short": decimal point position <= -4 or > 16),
    where orjson's form differs (``1e-7`` vs ``1e-07``), so those values are ``repr``'d.
    """
    if not len(values):
        return []
    values = np.ascontiguousarray(values, dtype=np.float64)
    texts = orjson.dumps(values, option=orjson.OPT_SERIALIZE_NUMPY)[1:-1].decode().split(",")
    magnitude = np.abs(values)
    exponent = ((magnitude < 1e-4) & (magnitude != 0)) | (magnitude >= 1e16)
    for i in np.flatnonzero(exponent).tolist():
        texts[i] = repr(float(values[i]))
    return _blank_where(texts, np.isnan(values))


def _float_column(series: pd.Series) -> _Fields:
    values = series.to_numpy(dtype="float64", na_value=np.nan)
    return lambda start, stop: float_texts(values[start:stop])


def _int_column(series: pd.Series) -> _Fields:
    ints = series.astype("Int64")
    missing = ints.isna().to_numpy()
    values = ints.fillna(0).to_numpy(dtype="int64")

    def fields(start: int, stop: int) -> list[str]:
        texts = list(map(str, values[start:stop].tolist()))
        return _blank_where(texts, missing[start:stop])

    return fields


def _joined_split(texts: list[str], transform: Callable[[str], str]) -> list[str] | None:
    """``transform`` applied to every text at once (joined by NUL, then split); None when a text
    holds a NUL itself, or ``transform`` adds or removes one."""
    joined = _SEP.join(texts)
    if joined.count(_SEP) != len(texts) - 1:
        return None
    out = transform(joined).split(_SEP)
    return out if len(out) == len(texts) else None


def _iso_texts(joined: str) -> str:
    # numpy's "YYYY-MM-DDTHH:MM:SS.ffffff" -> TIMESTAMP_FORMAT (no other "T" in these texts).
    return joined.replace("T", " ").replace(_SEP, "+00:00" + _SEP) + "+00:00"


def _timestamp_column(series: pd.Series) -> _Fields:
    if not isinstance(series.dtype, pd.DatetimeTZDtype):
        series = pd.to_datetime(series, utc=True)
    naive = series.dt.tz_convert("UTC").dt.tz_localize(None).astype("datetime64[us]")
    values = naive.to_numpy()

    def fields(start: int, stop: int) -> list[str]:
        chunk = values[start:stop]
        if not len(chunk):
            return []
        # numpy writes years 0001-9999 with 4 digits and always 6 fractional digits, like
        # datetime.isoformat (strftime's %Y does not pad years below 1000 on glibc).
        texts = np.datetime_as_string(chunk, unit="us").tolist()
        out = _joined_split(texts, _iso_texts)
        if out is None:  # pragma: no cover - numpy's text holds no NUL
            raise RuntimeError("numpy wrote a timestamp holding NUL")
        return _blank_where(out, np.isnat(chunk))

    return fields


def _date_text(value: object) -> str:
    if isinstance(value, datetime):  # also pd.Timestamp
        return value.date().isoformat()
    if isinstance(value, date):
        return value.isoformat()
    return pd.Timestamp(value).date().isoformat()


def _date_column(series: pd.Series) -> _Fields:
    # Factorized as objects: a datetime64[ns] detour would refuse years outside 1677-2262.
    codes, uniques = pd.factorize(series.astype(object))
    texts = np.asarray([*(_date_text(d) for d in uniques.tolist()), ""], dtype=object)

    def fields(start: int, stop: int) -> list[str]:
        return texts[codes[start:stop]].tolist()  # code -1 (NULL) -> the last text, ""

    return fields


def _quote(value: object) -> str:
    text = value if isinstance(value, str) else str(value)
    return '"' + text.replace('"', '""') + '"' if text else ""


def _quote_all(joined: str) -> str:
    return '"' + joined.replace('"', '""').replace(_SEP, '"' + _SEP + '"') + '"'


def _text_column(series: pd.Series) -> _Fields:
    values = series.to_numpy(dtype=object)
    missing = pd.isna(values)
    all_str = pd.api.types.infer_dtype(values, skipna=True) in ("string", "empty")

    def fields(start: int, stop: int) -> list[str]:
        texts = values[start:stop].tolist()
        gaps = missing[start:stop]
        if gaps.any():
            texts = _blank_where(texts, gaps)
        if not all_str:
            texts = [v if isinstance(v, str) else str(v) for v in texts]
        # Quoted all at once (C string methods on the joined column), not value by value.
        quoted = _joined_split(texts, _quote_all)
        if quoted is None:  # a value holds NUL (never kept by the transform): one by one
            return [_quote(v) for v in texts]
        return [q if q != '""' else "" for q in quoted]  # '""' is only an empty (NULL) text

    return fields


_SEP = "\x00"
_COLUMN_FORMATTERS: dict[str, Callable[[pd.Series], _Fields]] = {
    "float": _float_column,
    "int": _int_column,
    "timestamp": _timestamp_column,
    "date": _date_column,
    "str": _text_column,
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


def iter_csv_bytes(
    df: pd.DataFrame, columns: Sequence[str] = COLUMN_NAMES, chunk_rows: int = CHUNK_ROWS
) -> Iterator[bytes]:
    """The CSV of ``df[columns]`` (encoding rules above) as UTF-8 pieces: the header, then one
    piece per ``chunk_rows`` rows, so only one chunk's field strings are alive at a time.

    Raises ValueError when ``df`` lacks one of ``columns`` (before yielding anything), and
    DataQualityError naming the row and column when a text value cannot be encoded as UTF-8
    (a lone surrogate).
    """
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ValueError(f"cannot write the file: the DataFrame lacks columns {missing}")
    formatters = [_COLUMN_FORMATTERS[_kind(name, df[name])](df[name]) for name in columns]
    return _chunks(df, columns, formatters, chunk_rows)


def _chunks(
    df: pd.DataFrame, columns: Sequence[str], formatters: list[_Fields], chunk_rows: int
) -> Iterator[bytes]:
    yield (",".join(columns) + "\n").encode("utf-8")
    for start in range(0, len(df), chunk_rows):
        stop = min(start + chunk_rows, len(df))
        fields = [fmt(start, stop) for fmt in formatters]
        lines = "\n".join(map(",".join, zip(*fields, strict=True))) + "\n"
        del fields
        yield _encode(lines, df, columns)


def csv_bytes(df: pd.DataFrame, columns: Sequence[str] = COLUMN_NAMES) -> bytes:
    """The uncompressed CSV text of ``df[columns]`` (encoding rules above), UTF-8.

    Raises ValueError when ``df`` lacks one of ``columns``, and DataQualityError naming the row
    and column when a text value cannot be encoded as UTF-8 (a lone surrogate).
    """
    return b"".join(iter_csv_bytes(df, columns))


def gzip_bytes(data: bytes, level: int = COMPRESS_LEVEL) -> bytes:
    """Deterministic gzip (mtime 0, no file name)."""
    return gzip.compress(data, compresslevel=level, mtime=0)


def gzip_pieces(pieces: Iterable[bytes], level: int = COMPRESS_LEVEL) -> bytes:
    """``gzip_bytes(b"".join(pieces))``, byte for byte, without holding the joined text.

    zlib's gzip wrapper (wbits 31) writes the header ``gzip.compress`` writes with mtime 0;
    deflate output does not depend on how its input is split when nothing is flushed between.
    """
    compressor = zlib.compressobj(level, zlib.DEFLATED, 31)
    out = [compressor.compress(piece) for piece in pieces]
    out.append(compressor.flush())
    return b"".join(out)


def to_csv_gz(df: pd.DataFrame) -> bytes:
    """The processed file: exactly ``PROCESSED_COLUMNS``, in order, gzip'd."""
    return gzip_pieces(iter_csv_bytes(df, COLUMN_NAMES))


def rejected_to_csv_gz(df: pd.DataFrame) -> bytes:
    """The rejected file: the processed columns plus reason, detail, source page and row."""
    return gzip_pieces(iter_csv_bytes(df, REJECTED_COLUMNS))


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
    expected = list(columns)
    id_at = expected.index("coin_id") if "coin_id" in expected else None

    def where(number: int, fields: list[str]) -> str:
        coin = f" (coin_id {fields[id_at]!r})" if id_at is not None and len(fields) > id_at else ""
        return f"data row {number}{coin}"

    # Streamed (gzip -> UTF-8 -> lines -> CSV records): the whole text is never held at once.
    lines = _Lines(data)
    reader = csv.reader(
        lines,
        delimiter=",",
        quotechar='"',
        doublequote=True,
        escapechar=None,
        quoting=csv.QUOTE_MINIMAL,
        strict=True,
    )
    number = 0
    fields: list[str] = []
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
            if lines.nul_seen and any("\x00" in f for f in fields):
                bad = next(c for c, f in zip(expected, fields, strict=True) if "\x00" in f)
                raise DataQualityError(
                    f"the processed file's {where(number, fields)} holds a NUL character in"
                    f" column {bad}, which the transform refuses (invalid_text)"
                )
    except csv.Error as exc:
        raise DataQualityError(
            f"the processed file does not parse as CSV at data row {number + 1}: {exc}"
        ) from exc
    except (OSError, EOFError, zlib.error, UnicodeDecodeError) as exc:
        raise DataQualityError(f"the processed file is not gzip'd UTF-8 text: {exc}") from exc
    if number != expected_rows:
        raise DataQualityError(
            f"the processed file parses to {number} data rows, expected {expected_rows}"
        )


class _Lines:
    """The lines (with their line ends) of a gzip'd UTF-8 text, decompressed piece by piece;
    ``nul_seen`` turns true once a piece holding NUL was read (looked for per row only then:
    Python's csv module reads NUL as data).

    Raises zlib.error (not gzip), EOFError (truncated), OSError (data after the gzip stream)
    or UnicodeDecodeError while iterating.
    """

    _READ = 1 << 18  # compressed bytes per piece (~1 MiB of text at level 1)

    def __init__(self, data: bytes) -> None:
        self.nul_seen = False
        self._pieces = self._texts(memoryview(data))

    def _texts(self, data: memoryview) -> Iterator[str]:
        inflater = zlib.decompressobj(wbits=31)  # 31: a gzip header and trailer, nothing else
        decoder = codecs.getincrementaldecoder("utf-8")()
        for start in range(0, len(data), self._READ):
            yield decoder.decode(inflater.decompress(data[start : start + self._READ]))
        yield decoder.decode(inflater.flush(), final=True)
        if not inflater.eof:
            raise EOFError("the gzip stream ends before its end-of-stream marker")
        if inflater.unused_data:
            raise OSError(f"{len(inflater.unused_data)} bytes after the gzip stream")

    def __iter__(self) -> Iterator[str]:
        tail = ""
        for text in self._pieces:
            if not self.nul_seen and "\x00" in text:
                self.nul_seen = True
            # Split as a file opened with newline="" is (at LF, CR and CRLF, ends kept); a last
            # line without LF (or ending in CR, before a possible LF) waits for the next piece.
            lines = io.StringIO(tail + text, newline="").readlines()
            tail = lines.pop() if lines and not lines[-1].endswith("\n") else ""
            yield from lines
        if tail:
            yield tail
