"""The processed file's columns, shared by Transform (writer) and Load (reader).

The processed file is a gzip'd CSV with a header row of these lower-case names, in this order.
Encoding rules (both sides rely on them):

* Fields are separated by ``,``, rows end with ``\n``; the header row holds the bare names.
* Every text (VARCHAR) value is enclosed in ``"``, a ``"`` inside it doubled, no escape
  character; ``\r``, ``\n``, ``,``, tabs, backslashes and any non-ASCII text are kept as is
  inside the quotes. Text is valid UTF-8 without NUL (the transform refuses a lone surrogate or
  a NUL as ``invalid_text``).
* NULL is an *unquoted* empty field (an empty string is NULL too: there is no quoted ``""``).
* Floats are written with full precision (``repr``), ints without a decimal point; numbers,
  timestamps and dates are never quoted.
* Timestamps are UTC, ``YYYY-MM-DD HH:MM:SS.ffffff+00:00`` (``TIMESTAMP_FORMAT``) for any year
  0001-9999, 4-digit years; dates ``YYYY-MM-DD``.
* ``functions.transform.csv_gz.verify_csv_gz`` reads a file back with exactly these rules.

Snowflake column names are the upper-case versions; ``LOADED_AT`` is added by the load.
"""

from __future__ import annotations

# (column, Snowflake type, kind) - kind drives pandas typing in Transform.
PROCESSED_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("snapshot_id", "VARCHAR(80)", "str"),
    ("fetched_at", "TIMESTAMP_TZ", "timestamp"),
    ("fetch_date", "DATE", "date"),
    ("vs_currency", "VARCHAR(16)", "str"),
    ("coin_id", "VARCHAR(200)", "str"),
    ("symbol", "VARCHAR(100)", "str"),
    ("name", "VARCHAR(300)", "str"),
    ("image_url", "VARCHAR(1000)", "str"),
    ("current_price", "DOUBLE", "float"),
    ("market_cap", "DOUBLE", "float"),
    ("market_cap_rank", "INTEGER", "int"),
    ("fully_diluted_valuation", "DOUBLE", "float"),
    ("total_volume", "DOUBLE", "float"),
    ("high_24h", "DOUBLE", "float"),
    ("low_24h", "DOUBLE", "float"),
    ("price_change_24h", "DOUBLE", "float"),
    ("price_change_percentage_24h", "DOUBLE", "float"),
    ("market_cap_change_24h", "DOUBLE", "float"),
    ("market_cap_change_percentage_24h", "DOUBLE", "float"),
    ("circulating_supply", "DOUBLE", "float"),
    ("total_supply", "DOUBLE", "float"),
    ("max_supply", "DOUBLE", "float"),
    ("ath", "DOUBLE", "float"),
    ("ath_change_percentage", "DOUBLE", "float"),
    ("ath_date", "TIMESTAMP_TZ", "timestamp"),
    ("atl", "DOUBLE", "float"),
    ("atl_change_percentage", "DOUBLE", "float"),
    ("atl_date", "TIMESTAMP_TZ", "timestamp"),
    ("roi_times", "DOUBLE", "float"),
    ("roi_currency", "VARCHAR(16)", "str"),
    ("roi_percentage", "DOUBLE", "float"),
    ("last_updated", "TIMESTAMP_TZ", "timestamp"),
    ("market_cap_dominance_pct", "DOUBLE", "float"),
    ("volume_pct", "DOUBLE", "float"),
    ("dominance_basis", "VARCHAR(16)", "str"),
)

COLUMN_NAMES: tuple[str, ...] = tuple(name for name, _, _ in PROCESSED_COLUMNS)

TIMESTAMP_FORMAT = "%Y-%m-%d %H:%M:%S.%f+00:00"

# The rejected file (rejected/...): the processed columns that could be derived, plus
# reject_reason (codes joined by "; "), reject_detail (the offending raw values),
# source_page and source_row (where the row came from in the raw pages).
REJECT_REASON_COLUMN = "reject_reason"
