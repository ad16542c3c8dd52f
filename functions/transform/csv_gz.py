"""Writers of the processed and rejected files (pure: bytes out, no I/O).

Encoding (the rules of ``functions.common.schema``): UTF-8 CSV, a header row, ``\\n`` line ends,
NULL = empty field, strings quoted with ``"`` only when needed (quotes doubled), floats with
full precision (Python ``repr``: ``0.1``, ``1e-07``, ``1381651251183.0``), ints without a decimal
point, timestamps as ``TIMESTAMP_FORMAT`` in UTC, dates ``YYYY-MM-DD``. Gzip with mtime 0 and no
file name, so the same rows always give the same bytes (a rerun rewrites an identical object).
"""

from __future__ import annotations

import gzip
from collections.abc import Sequence

import pandas as pd

from functions.common.schema import COLUMN_NAMES, PROCESSED_COLUMNS, TIMESTAMP_FORMAT
from functions.transform.transform import REJECTED_COLUMNS

# Level 1: on 20k coins (10.7 MiB of CSV) it takes ~60 ms for 3.44 MiB, level 6 ~250 ms for
# 3.21 MiB, level 9 ~365 ms for 3.20 MiB (benchmarks/transform_bench.py): 7% more bytes to PUT
# is cheaper than a quarter of the Lambda's run time.
COMPRESS_LEVEL = 1
_KIND = {name: kind for name, _, kind in PROCESSED_COLUMNS}


def _csv_ready(df: pd.DataFrame, columns: Sequence[str]) -> pd.DataFrame:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ValueError(f"cannot write the file: the DataFrame lacks columns {missing}")
    out = df.loc[:, list(columns)].copy()
    for name in columns:
        kind = _KIND.get(name)
        if kind == "timestamp":
            stamps = pd.to_datetime(out[name], utc=True)
            out[name] = stamps.dt.strftime(TIMESTAMP_FORMAT).astype(object)
        elif kind == "date":
            out[name] = pd.to_datetime(out[name]).dt.strftime("%Y-%m-%d").astype(object)
        elif kind == "int":
            out[name] = out[name].astype("Int64")
        elif kind == "float":
            out[name] = out[name].astype("float64")
    return out


def csv_bytes(df: pd.DataFrame, columns: Sequence[str] = COLUMN_NAMES) -> bytes:
    """The uncompressed CSV text of ``df[columns]`` (encoding rules above)."""
    text = _csv_ready(df, columns).to_csv(index=False, lineterminator="\n", na_rep="")
    return text.encode("utf-8")


def gzip_bytes(data: bytes, level: int = COMPRESS_LEVEL) -> bytes:
    """Deterministic gzip (mtime 0, no file name)."""
    return gzip.compress(data, compresslevel=level, mtime=0)


def to_csv_gz(df: pd.DataFrame) -> bytes:
    """The processed file: exactly ``PROCESSED_COLUMNS``, in order, gzip'd."""
    return gzip_bytes(csv_bytes(df, COLUMN_NAMES))


def rejected_to_csv_gz(df: pd.DataFrame) -> bytes:
    """The rejected file: the processed columns plus reason, detail, source page and row."""
    return gzip_bytes(csv_bytes(df, REJECTED_COLUMNS))
