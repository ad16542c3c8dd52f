"""``crypto-etl dashboard``: the market as one self-contained HTML page (plotly, no server).

The page is built from the reporting views the load creates (``functions.load.sql``):
``SNAPSHOT_FILTER`` (the snapshot / fetch-date / currency control), ``MARKET_SNAPSHOTS``
(scorecards, market-cap and dominance history) and ``COIN_HISTORY`` (top coins, shares, movers,
a coin's history) - the same views the Looker Studio report reads - and, once a backfill has
loaded CRYPTO_PRICE_HISTORY, ``COIN_PRICE_SERIES`` (daily price of the top
:data:`SERIES_COINS` coins: the backfilled history, then the snapshots' daily close).

Shape of the work: :func:`fetch_dashboard_data` runs two queries; :func:`build_payload` turns the
rows into plotly figures (plain dicts) and formatted scorecards for every embedded snapshot;
:func:`render_html` writes them into one page with plotly.js inlined and a small script that
re-renders every chart with ``Plotly.react`` when the selection changes. Nothing is fetched when
the page is viewed.

Bounds (stated on the page): per currency the latest :data:`SNAPSHOT_LIMIT` snapshots; per
snapshot the top :data:`TOP_COINS` coins by market cap plus the :data:`SHARE_SLICES` largest by
24h volume; for a coin's history, every embedded snapshot of each coin that was in some embedded
snapshot's top :data:`TOP_COINS`. Totals (scorecards, "Others" slices, history) come from
``MARKET_SNAPSHOTS``, so they cover every loaded coin, not only the embedded ones.
"""

from __future__ import annotations

import argparse
import html
import json
import math
import os
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any, TextIO

from snowflake.connector.errors import Error as SnowflakeError

from functions.common.errors import ValidationError

SNAPSHOT_LIMIT = 60  # latest snapshots embedded per currency
TOP_COINS = 100  # coins embedded per snapshot (by market cap); movers are ranked among them
BAR_COINS = 20  # the "top 20 by market cap" chart
SHARE_SLICES = 10  # named slices of the dominance and volume share charts (+ "Others")
MOVERS_PER_SIDE = 10  # gainers and losers shown
SERIES_COINS = 10  # coins of the daily price series chart (by their latest market cap)

# Symbols people read in front of an amount; other currencies get their code after it.
CURRENCY_SYMBOLS = {"usd": "$", "eur": "€", "gbp": "£", "jpy": "¥", "btc": "₿", "eth": "Ξ"}
_UNITS = (("T", 1e12), ("B", 1e9), ("M", 1e6))

# Chart div ids, in page order, and which part of the payload draws them.
SNAPSHOT_CHARTS = ("top20", "dominance", "movers", "volume")
HISTORY_CHARTS = ("cap_history", "dominance_history")
COIN_CHART = "coin_history"
CHART_IDS = (*SNAPSHOT_CHARTS, *HISTORY_CHARTS, COIN_CHART)
# Drawn only when CRYPTO_PRICE_HISTORY has rows (a backfill ran), so not in CHART_IDS.
SERIES_CHART = "price_series"
SERIES_COLORS = (
    "#3b6fb6", "#f7931a", "#627eea", "#1a9850", "#9467bd",
    "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf",
)  # fmt: skip

GAIN_COLOR = "#1a9850"
LOSS_COLOR = "#d73027"
MARK_COLOR = "#d62728"
UNKNOWN_CURRENCY = "unknown"  # a snapshot whose VS_CURRENCY is NULL

EMPTY_WAREHOUSE = "No snapshot loaded yet: run `crypto-etl run --offline` first (nothing written)."


class DashboardEmpty(Exception):
    """Nothing to draw: no CRYPTO_DATA, no rows, no reporting views or no such currency.

    The message is one line for the user; the CLI prints it and exits 1.
    """


# --- Number formatting ------------------------------------------------------------------------


def _finite(value: Any) -> float | None:
    """A float, or None for NULL / NaN / infinity (shown as "n/a", never as 0)."""
    if value is None:
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def format_number(value: Any) -> str:
    """Compact magnitude as people read it: 1.23T, 456.7B, 12.35M, 67,890.12, 0.0001234.

    Millions and up get a unit with two decimals below 100 and one from 100 (3-4 significant
    digits); a value that rounds up to the next unit takes it (999.996B -> 1.00T). Below a
    million: thousands separators and two decimals; below 1: up to four significant digits
    (at least two decimals), never exponent notation. "n/a" for NULL, NaN and infinity.
    """
    number = _finite(value)
    if number is None:
        return "n/a"
    sign = "-" if number < 0 else ""
    size = abs(number)
    for unit, scale in _UNITS:  # largest first, so 0.999996T reads 1.00T, not 1000.0B
        scaled = size / scale
        if round(scaled, 2) >= 1:
            digits = 2 if round(scaled, 2) < 100 else 1
            return f"{sign}{scaled:.{digits}f}{unit}"
    if size >= 0.9995 or size == 0:
        return f"{sign}{size:,.2f}"
    digits = 3 - math.floor(math.log10(size))
    text = f"{size:.{digits}f}"
    while text.endswith("0") and len(text.split(".")[1]) > 2:  # 0.50, not 0.5000
        text = text[:-1]
    return f"{sign}{text}"


def format_money(value: Any, currency: str) -> str:
    """An amount in ``currency`` as people read it: $1.23T, €456.7B, $0.0001234, 1.2M CHF."""
    text = format_number(value)
    if text == "n/a":
        return text
    symbol = CURRENCY_SYMBOLS.get(currency.lower())
    if symbol is None:
        return f"{text} {currency.upper()}"
    if text.startswith("-"):
        return f"-{symbol}{text[1:]}"
    return f"{symbol}{text}"


def format_pct(value: Any, digits: int = 1) -> str:
    """A share in percent: 54.2 %; "n/a" for NULL/NaN."""
    number = _finite(value)
    return "n/a" if number is None else f"{number:.{digits}f} %"


def format_change(value: Any, digits: int = 1) -> str:
    """A signed change in percent: +3.4 %, -2.1 %, 0.0 %; "n/a" for NULL/NaN."""
    number = _finite(value)
    if number is None:
        return "n/a"
    text = f"{number:+.{digits}f} %"
    return "0.0 %" if text.lstrip("+-") == f"{0:.{digits}f} %" else text


def format_count(value: Any) -> str:
    """A whole count with thousands separators: 1,234; "n/a" for NULL."""
    number = _finite(value)
    return "n/a" if number is None else f"{round(number):,}"


def format_age(seconds: float) -> str:
    """How old something is, in the largest sensible unit: "42 s", "5 min", "3 h 10 min", "2 d".

    A negative age (a clock ahead of this one) reads "just now".
    """
    if seconds < 0:
        return "just now"
    if seconds < 60:
        return f"{int(seconds)} s"
    minutes = int(seconds // 60)
    if minutes < 60:
        return f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours} h {minutes} min" if minutes else f"{hours} h"
    return f"{hours // 24} d"


def _esc(text: Any) -> str:
    """Plotly renders ``<b>``, ``<br>``, ``<a href>`` in labels: escape names from the data."""
    return html.escape("" if text is None else str(text), quote=False)


# --- Data -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Snapshot:
    """One row of SNAPSHOT_FILTER joined with MARKET_SNAPSHOTS (amounts in ``vs_currency``)."""

    snapshot_id: str
    vs_currency: str
    fetch_date: date | None
    fetched_at: datetime | None  # UTC
    label: str
    is_latest: bool
    coin_count: int
    loaded_market_cap: float | None
    loaded_volume: float | None
    global_market_cap: float | None  # NULL on the fetched basis
    global_volume: float | None
    dominance_basis: str | None  # 'global' or 'fetched'
    btc_dominance_pct: float | None
    eth_dominance_pct: float | None
    gainers_24h: int
    losers_24h: int
    snapshots_in_currency: int = 0  # every loaded snapshot of this currency (before the bound)

    @property
    def key(self) -> str:
        """The page's id for this snapshot: ``<currency>|<snapshot id>``."""
        return f"{self.vs_currency}|{self.snapshot_id}"

    @property
    def total_market_cap(self) -> float | None:
        """The /global total when known, else the sum of the loaded coins."""
        if self.global_market_cap is not None:
            return self.global_market_cap
        return self.loaded_market_cap

    @property
    def total_volume(self) -> float | None:
        """The /global 24h volume when known, else the sum of the loaded coins."""
        return self.global_volume if self.global_volume is not None else self.loaded_volume


@dataclass(frozen=True)
class CoinRow:
    """One row of COIN_HISTORY, with its position in its snapshot by market cap and by volume."""

    snapshot_id: str
    vs_currency: str
    coin_id: str
    symbol: str | None
    name: str | None
    market_cap_rank: int | None
    current_price: float | None
    market_cap: float | None
    dominance_pct: float | None
    total_volume: float | None
    volume_pct: float | None
    change_24h_pct: float | None
    cap_pos: int  # 1 = largest market cap in its snapshot
    vol_pos: int  # 1 = largest 24h volume in its snapshot

    @property
    def key(self) -> str:
        return f"{self.vs_currency}|{self.snapshot_id}"

    @property
    def display(self) -> str:
        """``Name (SYMBOL)``, escaped for plotly labels."""
        symbol = f" ({_esc(self.symbol.upper())})" if self.symbol else ""
        return f"{_esc(self.name or self.coin_id)}{symbol}"


@dataclass(frozen=True)
class RunStatus:
    """One ETL_RUNS row: the last success or the last failure of the pipeline.

    ``at`` is the row's LOADED_AT (a load's commit, or when a failure was recorded), UTC;
    ``execution`` the execution's name; ``failed_state``, ``error`` and ``message`` are set
    for a FAILED row only.
    """

    status: str  # SUCCEEDED | FAILED
    at: datetime | None
    snapshot_id: str | None
    execution: str | None = None
    failed_state: str | None = None
    error: str | None = None
    message: str | None = None


@dataclass
class DashboardData:
    """What the page shows: the embedded snapshots (oldest first) and their coins, and the
    pipeline's last success and last failure from ETL_RUNS (None when there is none)."""

    snapshots: list[Snapshot]
    coins: list[CoinRow]
    source: str  # where the data came from, shown on the page
    generated_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    last_success: RunStatus | None = None
    last_failure: RunStatus | None = None
    series: list[SeriesPoint] = field(default_factory=list)


@dataclass(frozen=True)
class SeriesPoint:
    """One row of COIN_PRICE_SERIES: a coin's day (price and market cap in ``vs_currency``),
    from ``source`` 'market_chart' (backfilled history) or 'snapshot' (the day's close);
    ``coin_pos`` is the coin's place by latest market cap (1 = largest)."""

    vs_currency: str
    coin_id: str
    day: date
    price: float | None
    market_cap: float | None
    source: str
    coin_pos: int


def _bounded_snapshots(limit: int) -> str:
    # The latest snapshot first, whatever the clocks say (IS_LATEST orders like the views do).
    return f"""
SELECT * FROM (
    SELECT F.SNAPSHOT_ID, F.VS_CURRENCY, F.FETCH_DATE, F.FETCHED_AT, F.SNAPSHOT_LABEL, F.IS_LATEST,
        ROW_NUMBER() OVER (PARTITION BY F.VS_CURRENCY
            ORDER BY F.IS_LATEST DESC, F.FETCHED_AT DESC NULLS LAST, F.SNAPSHOT_ID DESC) AS POS,
        COUNT(*) OVER (PARTITION BY F.VS_CURRENCY) AS SNAPSHOTS_IN_CURRENCY
    FROM SNAPSHOT_FILTER AS F
) AS B WHERE B.POS <= {int(limit)}"""


def snapshots_sql(limit: int = SNAPSHOT_LIMIT) -> str:
    """The embedded snapshots with their MARKET_SNAPSHOTS figures, oldest first per currency."""
    return f"""
SELECT S.SNAPSHOT_ID, S.VS_CURRENCY, S.FETCH_DATE, S.FETCHED_AT, S.SNAPSHOT_LABEL, S.IS_LATEST,
    M.COIN_COUNT, M.LOADED_MARKET_CAP, M.LOADED_VOLUME, M.GLOBAL_MARKET_CAP, M.GLOBAL_VOLUME,
    M.DOMINANCE_BASIS, M.BTC_DOMINANCE_PCT, M.ETH_DOMINANCE_PCT, M.GAINERS_24H, M.LOSERS_24H,
    S.SNAPSHOTS_IN_CURRENCY
FROM ({_bounded_snapshots(limit)}) AS S
JOIN MARKET_SNAPSHOTS AS M
    ON M.SNAPSHOT_ID = S.SNAPSHOT_ID AND M.VS_CURRENCY IS NOT DISTINCT FROM S.VS_CURRENCY
ORDER BY S.VS_CURRENCY, S.POS DESC"""


def coins_sql(
    limit: int = SNAPSHOT_LIMIT, top: int = TOP_COINS, by_volume: int = SHARE_SLICES
) -> str:
    """COIN_HISTORY rows of the embedded snapshots: each one's top ``top`` by market cap and top
    ``by_volume`` by volume, plus every row of a coin that is in some snapshot's top ``top``."""
    return f"""
WITH S AS ({_bounded_snapshots(limit)}),
H AS (
    SELECT H.SNAPSHOT_ID, H.VS_CURRENCY, H.COIN_ID, H.SYMBOL, H.NAME, H.MARKET_CAP_RANK,
        H.CURRENT_PRICE, H.MARKET_CAP, H.MARKET_CAP_DOMINANCE_PCT, H.TOTAL_VOLUME, H.VOLUME_PCT,
        H.PRICE_CHANGE_PERCENTAGE_24H,
        ROW_NUMBER() OVER (PARTITION BY H.SNAPSHOT_ID, H.VS_CURRENCY
            ORDER BY H.MARKET_CAP DESC NULLS LAST, H.COIN_ID) AS CAP_POS,
        ROW_NUMBER() OVER (PARTITION BY H.SNAPSHOT_ID, H.VS_CURRENCY
            ORDER BY H.TOTAL_VOLUME DESC NULLS LAST, H.COIN_ID) AS VOL_POS
    FROM COIN_HISTORY AS H
    JOIN S ON S.SNAPSHOT_ID = H.SNAPSHOT_ID AND S.VS_CURRENCY IS NOT DISTINCT FROM H.VS_CURRENCY
),
K AS (SELECT DISTINCT VS_CURRENCY, COIN_ID FROM H WHERE CAP_POS <= {int(top)})
SELECT H.* FROM H
LEFT JOIN K ON K.VS_CURRENCY IS NOT DISTINCT FROM H.VS_CURRENCY AND K.COIN_ID = H.COIN_ID
WHERE H.CAP_POS <= {int(top)} OR H.VOL_POS <= {int(by_volume)} OR K.COIN_ID IS NOT NULL
ORDER BY H.VS_CURRENCY, H.SNAPSHOT_ID, H.CAP_POS"""


def series_sql(top: int = SERIES_COINS) -> str:
    """COIN_PRICE_SERIES of the top ``top`` coins (by the market cap of their latest day) of
    each currency, among the coins that have backfilled history in it; by currency, place,
    date."""
    return f"""
WITH HIST AS (SELECT DISTINCT VS_CURRENCY, COIN_ID FROM CRYPTO_PRICE_HISTORY),
LAST AS (
    SELECT S.VS_CURRENCY, S.COIN_ID, S.MARKET_CAP,
        ROW_NUMBER() OVER (PARTITION BY S.VS_CURRENCY, S.COIN_ID ORDER BY S.DATE DESC) AS P
    FROM COIN_PRICE_SERIES AS S
    JOIN HIST AS H ON H.VS_CURRENCY = S.VS_CURRENCY AND H.COIN_ID = S.COIN_ID
),
TOP_COINS AS (
    SELECT VS_CURRENCY, COIN_ID, ROW_NUMBER() OVER (PARTITION BY VS_CURRENCY
        ORDER BY MARKET_CAP DESC NULLS LAST, COIN_ID) AS COIN_POS
    FROM LAST WHERE P = 1
)
SELECT S.VS_CURRENCY, S.COIN_ID, S.DATE, S.PRICE, S.MARKET_CAP, S.SOURCE, T.COIN_POS
FROM COIN_PRICE_SERIES AS S
JOIN TOP_COINS AS T ON T.VS_CURRENCY = S.VS_CURRENCY AND T.COIN_ID = S.COIN_ID
WHERE T.COIN_POS <= {int(top)}
ORDER BY S.VS_CURRENCY, T.COIN_POS, S.DATE"""


def series_point_from_row(row: Mapping[str, Any]) -> SeriesPoint:
    """A :class:`SeriesPoint` from a row of :func:`series_sql` (upper-case column names)."""
    return SeriesPoint(
        vs_currency=str(row["VS_CURRENCY"]),
        coin_id=str(row["COIN_ID"]),
        day=row["DATE"],
        price=_opt_float(row["PRICE"]),
        market_cap=_opt_float(row["MARKET_CAP"]),
        source=str(row["SOURCE"]),
        coin_pos=int(row["COIN_POS"]),
    )


def fetch_series(cur: Any, top: int = SERIES_COINS) -> list[SeriesPoint]:
    """The price series of :func:`series_sql`; empty when CRYPTO_PRICE_HISTORY or the view is
    missing (no backfill yet, or a warehouse from before the backfill) or holds no row."""
    try:
        (row,) = _rows(cur, "SELECT COUNT(*) AS N FROM CRYPTO_PRICE_HISTORY")
        if not row["N"]:
            return []
        return [series_point_from_row(r) for r in _rows(cur, series_sql(top))]
    except SnowflakeError as exc:
        if _missing_object(exc):
            return []
        raise


def _utc(value: Any) -> datetime | None:
    if value is None:
        return None
    if value.tzinfo is None:  # TIMESTAMP_NTZ-like: the pipeline writes UTC
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


def _int(value: Any) -> int:
    return 0 if value is None else int(value)


def _opt_int(value: Any) -> int | None:
    return None if value is None else int(value)


def _opt_float(value: Any) -> float | None:
    """A float from a FLOAT/NUMBER column (Decimal on Snowflake); NaN and infinity -> None."""
    if value is None:
        return None
    number = float(value) if isinstance(value, Decimal | int | float) else float(str(value))
    return number if math.isfinite(number) else None


def _rows(cur: Any, statement: str) -> list[dict[str, Any]]:
    cur.execute(statement)
    columns = [d[0].upper() for d in cur.description or []]
    return [dict(zip(columns, row, strict=True)) for row in cur.fetchall()]


def snapshot_from_row(row: Mapping[str, Any]) -> Snapshot:
    """A :class:`Snapshot` from a row of :func:`snapshots_sql` (upper-case column names)."""
    return Snapshot(
        snapshot_id=str(row["SNAPSHOT_ID"]),
        vs_currency=str(row["VS_CURRENCY"] or UNKNOWN_CURRENCY),
        fetch_date=row["FETCH_DATE"],
        fetched_at=_utc(row["FETCHED_AT"]),
        label=str(row["SNAPSHOT_LABEL"] or row["SNAPSHOT_ID"]),
        is_latest=bool(row["IS_LATEST"]),
        coin_count=_int(row["COIN_COUNT"]),
        loaded_market_cap=_opt_float(row["LOADED_MARKET_CAP"]),
        loaded_volume=_opt_float(row["LOADED_VOLUME"]),
        global_market_cap=_opt_float(row["GLOBAL_MARKET_CAP"]),
        global_volume=_opt_float(row["GLOBAL_VOLUME"]),
        dominance_basis=row["DOMINANCE_BASIS"],
        btc_dominance_pct=_opt_float(row["BTC_DOMINANCE_PCT"]),
        eth_dominance_pct=_opt_float(row["ETH_DOMINANCE_PCT"]),
        gainers_24h=_int(row["GAINERS_24H"]),
        losers_24h=_int(row["LOSERS_24H"]),
        snapshots_in_currency=_int(row.get("SNAPSHOTS_IN_CURRENCY")),
    )


def coin_from_row(row: Mapping[str, Any]) -> CoinRow:
    """A :class:`CoinRow` from a row of :func:`coins_sql` (upper-case column names)."""
    return CoinRow(
        snapshot_id=str(row["SNAPSHOT_ID"]),
        vs_currency=str(row["VS_CURRENCY"] or UNKNOWN_CURRENCY),
        coin_id=str(row["COIN_ID"]),
        symbol=row["SYMBOL"],
        name=row["NAME"],
        market_cap_rank=_opt_int(row["MARKET_CAP_RANK"]),
        current_price=_opt_float(row["CURRENT_PRICE"]),
        market_cap=_opt_float(row["MARKET_CAP"]),
        dominance_pct=_opt_float(row["MARKET_CAP_DOMINANCE_PCT"]),
        total_volume=_opt_float(row["TOTAL_VOLUME"]),
        volume_pct=_opt_float(row["VOLUME_PCT"]),
        change_24h_pct=_opt_float(row["PRICE_CHANGE_PERCENTAGE_24H"]),
        cap_pos=int(row["CAP_POS"]),
        vol_pos=int(row["VOL_POS"]),
    )


RUN_STATUS_MESSAGE_CHARS = 200  # a failure's message on the page


def run_status_sql(failure_columns: bool = True) -> str:
    """The latest SUCCEEDED and the latest FAILED row of ETL_RUNS (by LOADED_AT), at most one
    each. Without ``failure_columns``: for an ETL_RUNS from before failures were recorded."""
    extra = ", FAILED_STATE, ERROR_NAME, ERROR_MESSAGE" if failure_columns else ""
    return f"""
SELECT STATUS, LOADED_AT, SNAPSHOT_ID, EXECUTION_ID{extra} FROM (
    SELECT STATUS, LOADED_AT, SNAPSHOT_ID, EXECUTION_ID{extra},
        ROW_NUMBER() OVER (PARTITION BY STATUS
            ORDER BY LOADED_AT DESC NULLS LAST, SNAPSHOT_ID DESC) AS POS
    FROM ETL_RUNS
    WHERE STATUS IN ('SUCCEEDED', 'FAILED')
) AS R WHERE R.POS = 1"""


def run_status_from_row(row: Mapping[str, Any]) -> RunStatus:
    """A :class:`RunStatus` from a row of :func:`run_status_sql` (upper-case column names)."""
    execution = row.get("EXECUTION_ID")
    if isinstance(execution, str) and execution.startswith("arn:"):
        execution = execution.rsplit(":", 1)[-1]
    return RunStatus(
        status=str(row["STATUS"]),
        at=_utc(row.get("LOADED_AT")),
        snapshot_id=row.get("SNAPSHOT_ID"),
        execution=execution,
        failed_state=row.get("FAILED_STATE"),
        error=row.get("ERROR_NAME"),
        message=row.get("ERROR_MESSAGE"),
    )


def fetch_run_status(cur: Any) -> tuple[RunStatus | None, RunStatus | None]:
    """(last success, last failure) from ETL_RUNS; (None, None) when it does not exist. An
    ETL_RUNS without the failure columns (older version) gives its last success only."""
    for failure_columns in (True, False):
        try:
            rows = _rows(cur, run_status_sql(failure_columns))
            break
        except SnowflakeError as exc:
            if _missing_object(exc):
                return None, None
            if not failure_columns or "FAILED_STATE" not in str(exc).upper():
                raise
    by_status = {r.status: r for r in map(run_status_from_row, rows)}
    return by_status.get("SUCCEEDED"), by_status.get("FAILED")


def run_status_text(success: RunStatus | None, failure: RunStatus | None) -> dict[str, str]:
    """The page's "last success / last failure" line, as ``{"success", "failure"}`` texts;
    ``"failing"`` is ``"yes"`` when the last failure is newer than the last success."""

    def when(run: RunStatus) -> str:
        return run.at.strftime("%Y-%m-%d %H:%M UTC") if run.at else "time unknown"

    ok = (
        f"{when(success)} · snapshot {success.snapshot_id}"
        if success
        else "none recorded in ETL_RUNS"
    )
    if failure:
        message = failure.message or ""
        if len(message) > RUN_STATUS_MESSAGE_CHARS:
            message = message[: RUN_STATUS_MESSAGE_CHARS - 1] + "…"
        bad = (
            f"{when(failure)} · snapshot {failure.snapshot_id} · failed at"
            f" {failure.failed_state or '?'}: {failure.error or '?'}"
            + (f": {message}" if message else "")
        )
    else:
        bad = "none recorded in ETL_RUNS"
    oldest = datetime.min.replace(tzinfo=UTC)
    failing = bool(failure) and (success is None or (failure.at or oldest) > (success.at or oldest))
    return {"success": ok, "failure": bad, "failing": "yes" if failing else "no"}


def _missing_object(exc: SnowflakeError) -> bool:
    # 2003: "does not exist or not authorized" (Snowflake; the emulator uses it too).
    return getattr(exc, "errno", None) == 2003


def fetch_dashboard_data(
    conn: Any,
    source: str,
    *,
    snapshot_limit: int = SNAPSHOT_LIMIT,
    top_coins: int = TOP_COINS,
) -> DashboardData:
    """Read the embedded snapshots and coins through the reporting views on ``conn``.

    ``snapshot_limit`` and ``top_coins`` are the bounds of :func:`snapshots_sql` and
    :func:`coins_sql` (the page is built with the defaults, which it states).

    Raises DashboardEmpty when CRYPTO_DATA is missing or empty, or when it holds rows but the
    reporting views are missing (a warehouse loaded by an older version: one load creates them).
    Other warehouse errors propagate (the CLI turns them into one line and exit 2).
    """
    cur = conn.cursor()
    try:
        try:
            snapshots = [snapshot_from_row(r) for r in _rows(cur, snapshots_sql(snapshot_limit))]
        except SnowflakeError as exc:
            if not _missing_object(exc):
                raise
            try:
                (count,) = _rows(cur, "SELECT COUNT(*) AS N FROM CRYPTO_DATA")[0].values()
            except SnowflakeError as inner:
                if _missing_object(inner):
                    raise DashboardEmpty(EMPTY_WAREHOUSE) from None
                raise
            if not count:
                raise DashboardEmpty(EMPTY_WAREHOUSE) from None
            raise DashboardEmpty(
                "CRYPTO_DATA has rows but the reporting views (SNAPSHOT_FILTER, MARKET_SNAPSHOTS,"
                " COIN_HISTORY) are missing: one load creates them (`crypto-etl run --offline`,"
                " or run looker/views.sql on Snowflake); nothing written"
            ) from None
        if not snapshots:
            raise DashboardEmpty(EMPTY_WAREHOUSE)
        coins = [coin_from_row(r) for r in _rows(cur, coins_sql(snapshot_limit, top_coins))]
        last_success, last_failure = fetch_run_status(cur)
        series = fetch_series(cur)
    finally:
        cur.close()
    return DashboardData(
        snapshots=snapshots,
        coins=coins,
        source=source,
        last_success=last_success,
        last_failure=last_failure,
        series=series,
    )


# --- Figures (plain plotly figure dicts) --------------------------------------------------------


def _base_layout(**extra: Any) -> dict[str, Any]:
    layout: dict[str, Any] = {
        "margin": {"l": 10, "r": 10, "t": 30, "b": 10},
        "paper_bgcolor": "#ffffff",
        "plot_bgcolor": "#ffffff",
        "font": {"family": "system-ui, -apple-system, Segoe UI, Roboto, sans-serif", "size": 12},
        "hoverlabel": {"align": "left"},
    }
    layout.update(extra)
    return layout


def money_axis(currency: str, **extra: Any) -> dict[str, Any]:
    """A plotly axis showing amounts as $1.5T / $500B (plotly's "B" exponent format)."""
    symbol = CURRENCY_SYMBOLS.get(currency.lower())
    axis: dict[str, Any] = {
        "exponentformat": "B",
        "showexponent": "all",
        "gridcolor": "#eeeeee",
        "zeroline": False,
        "automargin": True,
    }
    if symbol:
        axis["tickprefix"] = symbol
    else:
        axis["ticksuffix"] = f" {currency.upper()}"
    axis.update(extra)
    return axis


def _pct_axis(**extra: Any) -> dict[str, Any]:
    axis: dict[str, Any] = {
        "ticksuffix": " %",
        "gridcolor": "#eeeeee",
        "zeroline": False,
        "automargin": True,
    }
    axis.update(extra)
    return axis


def _time_axis(snapshots: Sequence[Snapshot]) -> dict[str, Any]:
    """A UTC time axis; one snapshot alone gets a day around it (else plotly zooms to µs)."""
    axis: dict[str, Any] = {
        "type": "date",
        "title": {"text": "fetched at (UTC)"},
        "gridcolor": "#eeeeee",
        "automargin": True,
    }
    times = {s.fetched_at for s in snapshots if s.fetched_at is not None}
    if len(times) == 1:
        (only,) = times
        half_day = timedelta(hours=12)
        axis["range"] = [_plotly_time(only - half_day), _plotly_time(only + half_day)]
    return axis


def _empty_figure(message: str) -> dict[str, Any]:
    """A figure with no trace and a centred note (e.g. no 24h changes in this snapshot)."""
    return {
        "data": [],
        "layout": _base_layout(
            xaxis={"visible": False},
            yaxis={"visible": False},
            annotations=[
                {
                    "text": _esc(message),
                    "showarrow": False,
                    "x": 0.5,
                    "y": 0.5,
                    "xref": "paper",
                    "yref": "paper",
                    "font": {"size": 14, "color": "#666666"},
                }
            ],
        ),
    }


def _coin_hover(coin: CoinRow, currency: str) -> str:
    rank = coin.market_cap_rank if coin.market_cap_rank is not None else "n/a"
    return (
        f"<b>{coin.display}</b><br>rank {rank}<br>"
        f"price {format_money(coin.current_price, currency)}<br>"
        f"market cap {format_money(coin.market_cap, currency)}"
        f" ({format_pct(coin.dominance_pct)} of the market)<br>"
        f"24h volume {format_money(coin.total_volume, currency)}"
        f" ({format_pct(coin.volume_pct)})<br>"
        f"24h change {format_change(coin.change_24h_pct)}"
    )


def _by_cap(coins: Iterable[CoinRow], top: int = TOP_COINS) -> list[CoinRow]:
    """The snapshot's coins with a market cap, largest first, at most ``top``."""
    ranked = sorted((c for c in coins if c.cap_pos <= top), key=lambda c: c.cap_pos)
    return [c for c in ranked if c.market_cap is not None]


def top_coins_figure(
    snapshot: Snapshot, coins: Sequence[CoinRow], n: int = BAR_COINS
) -> dict[str, Any]:
    """Horizontal bars: the ``n`` largest coins by market cap, largest on top.

    Labels are "<position>. Name (SYMBOL)" so two coins with the same name stay two bars.
    """
    top = _by_cap(coins)[:n]
    if not top:
        return _empty_figure("No coin with a market cap in this snapshot")
    cur = snapshot.vs_currency
    trace = {
        "type": "bar",
        "orientation": "h",
        "name": "Market cap",
        "x": [c.market_cap for c in top],
        "y": [f"{i}. {c.display}" for i, c in enumerate(top, 1)],
        "text": [format_money(c.market_cap, cur) for c in top],
        "textposition": "outside",
        "cliponaxis": False,
        "hovertext": [_coin_hover(c, cur) for c in top],
        "hoverinfo": "text",
        "marker": {"color": "#3b6fb6"},
    }
    return {
        "data": [trace],
        "layout": _base_layout(
            # Headroom for the value written after the longest bar.
            xaxis=money_axis(cur, range=[0, max(c.market_cap for c in top) * 1.2]),
            yaxis={"autorange": "reversed", "type": "category", "automargin": True},
            showlegend=False,
        ),
    }


def unique_labels(labels: Sequence[str], ids: Sequence[str]) -> list[str]:
    """``labels`` with repeats told apart by their id ("Tether (USDT) · tether-2"): plotly
    merges pie slices (and bar categories) that share a label."""
    seen: dict[str, int] = defaultdict(int)
    for label in labels:
        seen[label] += 1
    pairs = zip(labels, ids, strict=True)
    return [f"{lab} · {_esc(i)}" if seen[lab] > 1 else lab for lab, i in pairs]


def share_figure(
    snapshot: Snapshot,
    coins: Sequence[CoinRow],
    measure: str,
    n: int = SHARE_SLICES,
) -> dict[str, Any]:
    """A pie of the ``n`` largest coins by ``measure`` ("market_cap" or "total_volume") and
    "Others" = the snapshot's total (MARKET_SNAPSHOTS: /global when known, else the loaded sum)
    minus those ``n``.

    Shares are of that total. "Others" is left out when the named slices already reach the
    total (it is never drawn negative).
    """
    if measure == "market_cap":
        ranked = _by_cap(coins)
        total, basis_global = snapshot.total_market_cap, snapshot.global_market_cap is not None
    elif measure == "total_volume":
        ranked = sorted(
            (c for c in coins if c.vol_pos <= n and c.total_volume is not None),
            key=lambda c: c.vol_pos,
        )
        total, basis_global = snapshot.total_volume, snapshot.global_volume is not None
    else:
        raise ValueError(f"measure must be market_cap or total_volume, not {measure!r}")
    named = ranked[:n]
    values = [float(getattr(c, measure)) for c in named]
    if not named or not total or total <= 0:
        return _empty_figure(
            "No market cap in this snapshot"
            if measure == "market_cap"
            else "No 24h volume in this snapshot"
        )
    cur = snapshot.vs_currency
    labels = unique_labels([c.display for c in named], [c.coin_id for c in named])
    others = total - sum(values)
    if others > 0:
        labels.append("Others")
        values.append(others)
    what = "market cap" if measure == "market_cap" else "24h volume"
    of = "the /global total" if basis_global else "the loaded coins' total"
    hover = [
        f"<b>{lab}</b><br>{what} {format_money(v, cur)}<br>{format_pct(v / total * 100)} of {of}"
        for lab, v in zip(labels, values, strict=True)
    ]
    trace = {
        "type": "pie",
        "labels": labels,
        "values": values,
        "text": [format_pct(v / total * 100) for v in values],
        "textinfo": "text",
        "textposition": "inside",
        "insidetextorientation": "horizontal",
        "hovertext": hover,
        "hoverinfo": "text",
        "sort": False,
        "direction": "clockwise",
        "hole": 0.35,
    }
    return {
        "data": [trace],
        "layout": _base_layout(legend={"font": {"size": 11}}),
    }


def movers_figure(
    snapshot: Snapshot, coins: Sequence[CoinRow], n: int = MOVERS_PER_SIDE
) -> dict[str, Any]:
    """Bars of the ``n`` biggest 24h gainers (> 0) and losers (< 0) among the snapshot's top
    :data:`TOP_COINS` by market cap, biggest gain on top, biggest loss at the bottom."""
    pool = [c for c in _by_cap(coins) if c.change_24h_pct is not None]
    gainers = sorted(
        (c for c in pool if c.change_24h_pct > 0), key=lambda c: (-c.change_24h_pct, c.cap_pos)
    )[:n]
    losers = sorted(
        (c for c in pool if c.change_24h_pct < 0), key=lambda c: (c.change_24h_pct, c.cap_pos)
    )[:n]
    if not gainers and not losers:
        return _empty_figure("No 24h price change in this snapshot")
    cur = snapshot.vs_currency
    ordered = gainers + list(reversed(losers))
    labels = dict(
        zip(
            (c.coin_id for c in ordered),
            unique_labels([c.display for c in ordered], [c.coin_id for c in ordered]),
            strict=True,
        )
    )

    def bars(name: str, side: list[CoinRow], color: str) -> dict[str, Any]:
        return {
            "type": "bar",
            "orientation": "h",
            "name": name,
            "x": [c.change_24h_pct for c in side],
            "y": [labels[c.coin_id] for c in side],
            "text": [format_change(c.change_24h_pct) for c in side],
            "textposition": "outside",
            "cliponaxis": False,
            "hovertext": [_coin_hover(c, cur) for c in side],
            "hoverinfo": "text",
            "marker": {"color": color},
        }

    data = []
    if gainers:
        data.append(bars("Gainers", gainers, GAIN_COLOR))
    if losers:
        data.append(bars("Losers", list(reversed(losers)), LOSS_COLOR))
    return {
        "data": data,
        "layout": _base_layout(
            xaxis=_pct_axis(zeroline=True, zerolinecolor="#999999", range=_padded(ordered)),
            yaxis={
                "autorange": "reversed",
                "type": "category",
                "automargin": True,
                "categoryorder": "array",
                "categoryarray": [labels[c.coin_id] for c in ordered],
            },
            barmode="overlay",
            legend={"orientation": "h", "y": -0.08},
        ),
    }


def _padded(coins: Sequence[CoinRow]) -> list[float]:
    """An x range around 0 with room for the "+3.4 %" written beyond each bar's end."""
    changes = [c.change_24h_pct or 0.0 for c in coins]
    low, high = min(0.0, *changes), max(0.0, *changes)
    pad = (high - low) * 0.25 or 1.0
    return [low - pad if low < 0 else 0.0, high + pad if high > 0 else 0.0]


def rank_axis(ranks: Sequence[int | None]) -> dict[str, Any]:
    """A right-hand axis for market-cap ranks: 1 at the top, whole-number ticks only."""
    known = [r for r in ranks if r is not None]
    low, high = (min(known), max(known)) if known else (1, 1)
    step = max(1, math.ceil((high - low) / 5))
    return {
        "overlaying": "y",
        "side": "right",
        "range": [high + 0.5 * step, max(low - 0.5 * step, 0.5)],  # reversed: 1 on top
        "tick0": 1,
        "dtick": step,
        "title": {"text": "rank"},
        "showgrid": False,
        "zeroline": False,
        "automargin": True,
    }


def _plotly_time(moment: datetime) -> str:
    """Naive UTC text: plotly's date axes have no time zones."""
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")


def _x(snapshot: Snapshot) -> str | None:
    """A snapshot's position on a time axis."""
    return None if snapshot.fetched_at is None else _plotly_time(snapshot.fetched_at)


def _top_share(coins: Sequence[CoinRow], n: int = SHARE_SLICES) -> float | None:
    shares = [c.dominance_pct for c in _by_cap(coins)[:n] if c.dominance_pct is not None]
    return sum(shares) if shares else None


def _mark(name: str) -> dict[str, Any]:
    return {
        "type": "scatter",
        "mode": "markers",
        "name": name,
        "x": [],
        "y": [],
        "marker": {"size": 14, "symbol": "circle-open", "color": MARK_COLOR, "line": {"width": 3}},
        "hoverinfo": "skip",
        "showlegend": True,
    }


def cap_history_figure(snapshots: Sequence[Snapshot]) -> dict[str, Any]:
    """Total market cap across a currency's snapshots: the /global total (gaps where a snapshot
    is on the fetched basis) and the sum of the loaded coins; the last trace marks the
    selected snapshot (filled in by the page)."""
    timed = [s for s in snapshots if s.fetched_at is not None]
    cur = snapshots[0].vs_currency
    x = [_x(s) for s in timed]

    def line(name: str, values: list[float | None], color: str, dash: str) -> dict[str, Any]:
        return {
            "type": "scatter",
            "mode": "lines+markers",
            "name": name,
            "x": x,
            "y": values,
            "line": {"color": color, "dash": dash},
            "hovertext": [
                f"<b>{name}</b><br>{format_money(v, cur)}<br>{_esc(s.label)}"
                for s, v in zip(timed, values, strict=True)
            ],
            "hoverinfo": "text",
        }

    data = [
        line("Total (/global)", [s.global_market_cap for s in timed], "#3b6fb6", "solid"),
        line("Sum of loaded coins", [s.loaded_market_cap for s in timed], "#7f7f7f", "dot"),
        _mark("Selected snapshot"),
    ]
    return {
        "data": data,
        "layout": _base_layout(
            xaxis=_time_axis(timed),
            yaxis=money_axis(cur),
            legend={"orientation": "h", "y": -0.25},
        ),
    }


def dominance_history_figure(
    snapshots: Sequence[Snapshot], coins_by_key: Mapping[str, Sequence[CoinRow]]
) -> dict[str, Any]:
    """Dominance across a currency's snapshots: BTC and ETH (when any snapshot has them), the
    top :data:`SHARE_SLICES` combined and the largest coin; the last trace marks the selection."""
    timed = [s for s in snapshots if s.fetched_at is not None]
    x = [_x(s) for s in timed]
    series: list[tuple[str, list[float | None], list[str], str]] = []
    top_share = [_top_share(coins_by_key.get(s.key, ())) for s in timed]
    series.append((f"Top {SHARE_SLICES} combined", top_share, ["" for _ in timed], "#3b6fb6"))
    leaders = [(_by_cap(coins_by_key.get(s.key, ()))[:1] or [None])[0] for s in timed]
    series.append(
        (
            "Largest coin",
            [c.dominance_pct if c else None for c in leaders],
            [c.display if c else "" for c in leaders],
            "#9467bd",
        )
    )
    for name, attr, color in (
        ("BTC", "btc_dominance_pct", "#f7931a"),
        ("ETH", "eth_dominance_pct", "#627eea"),
    ):
        values = [getattr(s, attr) for s in timed]
        if any(v is not None for v in values):
            series.append((name, values, ["" for _ in timed], color))
    data = []
    for name, values, who, color in series:
        data.append(
            {
                "type": "scatter",
                "mode": "lines+markers",
                "name": name,
                "x": x,
                "y": values,
                "line": {"color": color},
                "hovertext": [
                    f"<b>{name}</b>{' · ' + w if w else ''}<br>{format_pct(v)}<br>{_esc(s.label)}"
                    for s, v, w in zip(timed, values, who, strict=True)
                ],
                "hoverinfo": "text",
            }
        )
    data.append(_mark("Selected snapshot"))
    return {
        "data": data,
        "layout": _base_layout(
            xaxis=_time_axis(timed),
            yaxis=_pct_axis(rangemode="tozero"),
            legend={"orientation": "h", "y": -0.25},
        ),
    }


def coin_history_figure(
    currency: str, points: Sequence[tuple[Snapshot, CoinRow]]
) -> dict[str, Any]:
    """One coin across snapshots (oldest first): price (left axis) and market-cap rank (right
    axis, 1 at the top); the last trace marks the selected snapshot on the price line."""
    timed = [(s, c) for s, c in points if s.fetched_at is not None]
    x = [_x(s) for s, _ in timed]
    # Short on purpose: this text is embedded for every coin at every snapshot.
    hover = [
        f"<b>{c.display}</b> · rank {c.market_cap_rank if c.market_cap_rank is not None else 'n/a'}"
        f"<br>price {format_money(c.current_price, currency)}"
        f"<br>market cap {format_money(c.market_cap, currency)} ({format_pct(c.dominance_pct)})"
        f"<br>24h {format_change(c.change_24h_pct)}<br>{_esc(s.label)}"
        for s, c in timed
    ]
    data = [
        {
            "type": "scatter",
            "mode": "lines+markers",
            "name": "Price",
            "x": x,
            "y": [c.current_price for _, c in timed],
            "line": {"color": "#3b6fb6"},
            "hovertext": hover,
            "hoverinfo": "text",
        },
        {
            "type": "scatter",
            "mode": "lines+markers",
            "name": "Market-cap rank",
            "x": x,
            "y": [c.market_cap_rank for _, c in timed],
            "yaxis": "y2",
            "line": {"color": "#ff7f0e", "dash": "dot"},
            "hovertemplate": "rank %{y}<extra></extra>",
        },
        _mark("Selected snapshot"),
    ]
    return {
        "data": data,
        "layout": _base_layout(
            xaxis=_time_axis([snap for snap, _ in timed]),
            yaxis=money_axis(currency, title={"text": "price"}),
            yaxis2=rank_axis([c.market_cap_rank for _, c in timed]),
            legend={"orientation": "h", "y": -0.25},
        ),
    }


def price_series_figure(currency: str, points: Sequence[SeriesPoint]) -> dict[str, Any]:
    """Daily price of each coin (one line per coin, in place order) on a log axis (prices
    differ by orders of magnitude); backfilled days are a solid line, the snapshots' days
    after them dotted markers on the same colour, so where history ends shows."""
    by_coin: dict[str, list[SeriesPoint]] = defaultdict(list)
    for p in sorted(points, key=lambda p: (p.coin_pos, p.coin_id, p.day)):
        by_coin[p.coin_id].append(p)
    data: list[dict[str, Any]] = []
    for i, (coin_id, rows) in enumerate(by_coin.items()):
        color = SERIES_COLORS[i % len(SERIES_COLORS)]
        for source, mode, dash, show in (
            ("market_chart", "lines", "solid", True),
            ("snapshot", "lines+markers", "dot", False),
        ):
            part = [r for r in rows if r.source == source]
            if not part:
                continue
            data.append(
                {
                    "type": "scatter",
                    "mode": mode,
                    "name": _esc(coin_id),
                    "legendgroup": _esc(coin_id),
                    "showlegend": show or not any(r.source == "market_chart" for r in rows),
                    "x": [r.day.isoformat() for r in part],
                    "y": [r.price for r in part],
                    "line": {"color": color, "dash": dash, "width": 1.5},
                    "hovertext": [
                        f"<b>{_esc(coin_id)}</b> · {r.day.isoformat()}<br>price"
                        f" {format_money(r.price, currency)}<br>market cap"
                        f" {format_money(r.market_cap, currency)}<br>{r.source}"
                        for r in part
                    ],
                    "hoverinfo": "text",
                }
            )
    if not data:
        return _empty_figure(f"No backfilled history in {currency.upper()}")
    return {
        "data": data,
        "layout": _base_layout(
            xaxis={
                "type": "date",
                "title": {"text": "date (UTC)"},
                "gridcolor": "#eeeeee",
                "automargin": True,
            },
            yaxis=money_axis(currency, type="log", title={"text": "price (log)"}),
            legend={"orientation": "h", "y": -0.25},
        ),
    }


# --- Scorecards --------------------------------------------------------------------------------


def scorecards(snapshot: Snapshot, generated_at: datetime) -> dict[str, dict[str, str]]:
    """The six scorecards of one snapshot: ``{card: {"value": text, "note": text}}``.

    Cards: market_cap, volume, coins, btc, eth, freshness. Missing figures read "n/a"; the
    freshness value is the age at ``generated_at`` (the page recomputes it when viewed).
    """
    cur = snapshot.vs_currency
    loaded = f"sum of the {format_count(snapshot.coin_count)} loaded coins (no /global figure)"
    cap_note = vol_note = loaded
    if snapshot.global_market_cap is not None:
        cap_note = f"/global total · loaded coins {format_money(snapshot.loaded_market_cap, cur)}"
    if snapshot.global_volume is not None:
        vol_note = f"/global total · loaded coins {format_money(snapshot.loaded_volume, cur)}"

    def dominance(value: float | None, coin: str) -> dict[str, str]:
        if value is None:
            return {"value": "n/a", "note": f"{coin} is not in this snapshot"}
        return {"value": format_pct(value), "note": f"{coin}'s share of the total market cap"}

    if snapshot.fetched_at is None:
        age, when = "n/a", "fetch time unknown"
    else:
        age = f"{format_age((generated_at - snapshot.fetched_at).total_seconds())} old"
        when = f"fetched {snapshot.fetched_at:%Y-%m-%d %H:%M} UTC"
    latest = "latest" if snapshot.is_latest else "a newer snapshot exists"
    return {
        "market_cap": {"value": format_money(snapshot.total_market_cap, cur), "note": cap_note},
        "volume": {"value": format_money(snapshot.total_volume, cur), "note": vol_note},
        "coins": {
            "value": format_count(snapshot.coin_count),
            "note": f"{format_count(snapshot.gainers_24h)} up · "
            f"{format_count(snapshot.losers_24h)} down over 24h",
        },
        "btc": dominance(snapshot.btc_dominance_pct, "bitcoin"),
        "eth": dominance(snapshot.eth_dominance_pct, "ethereum"),
        "freshness": {
            "value": age,
            "note": f"{when} · snapshot {snapshot.snapshot_id} · {latest}",
        },
    }


# --- Payload and page --------------------------------------------------------------------------


def pick_currency(snapshots: Sequence[Snapshot], wanted: str | None) -> str:
    """The currency the page opens on: ``wanted`` (case-insensitive), else usd when loaded,
    else the currency of the most recently fetched snapshot.

    Raises DashboardEmpty naming the loaded currencies when ``wanted`` has no snapshot.
    """
    loaded = sorted({s.vs_currency for s in snapshots})
    if wanted:
        for currency in loaded:
            if currency.lower() == wanted.lower():
                return currency
        raise DashboardEmpty(
            f"no snapshot in {wanted!r}: the warehouse has {', '.join(loaded)} (nothing written)"
        )
    if "usd" in loaded:
        return "usd"
    oldest = datetime.min.replace(tzinfo=UTC)
    return max(snapshots, key=lambda s: s.fetched_at or oldest).vs_currency


def build_payload(data: DashboardData, currency: str | None = None) -> dict[str, Any]:
    """Everything the page draws, as JSON-ready data.

    Shape: ``{"default": key, "currencies": {cur: {"dates": [[date, [key, ...]], ...] newest
    first, "latest": key}}, "snapshots": {key: {"id", "currency", "fetch_date", "label",
    "fetched_at_ms", "x", "is_latest", "cards", "figures": {chart: figure}, "marks": {chart: y},
    "coins": [[coin_id, label], ...]}}, "history": {cur: {chart: figure}}, "coin_history":
    {cur: {coin_id: figure}}, "price_series": {cur: figure} (empty without backfilled history),
    "bounds": {...}, "source", "generated_at", "runs": {"success", "failure", "failing"}}``
    (``runs``: :func:`run_status_text`). A key is
    ``<currency>|<snapshot id>``. Raises DashboardEmpty when ``data`` has no snapshot or
    ``currency`` has none.
    """
    if not data.snapshots:
        raise DashboardEmpty(EMPTY_WAREHOUSE)
    default_currency = pick_currency(data.snapshots, currency)
    coins_by_key: dict[str, list[CoinRow]] = defaultdict(list)
    for coin in data.coins:
        coins_by_key[coin.key].append(coin)
    by_currency: dict[str, list[Snapshot]] = defaultdict(list)
    for snap in data.snapshots:
        by_currency[snap.vs_currency].append(snap)
    oldest = datetime.min.replace(tzinfo=UTC)
    for snaps in by_currency.values():
        snaps.sort(key=lambda s: (s.fetched_at or oldest, s.snapshot_id))

    payload: dict[str, Any] = {
        "source": data.source,
        "generated_at": data.generated_at.strftime("%Y-%m-%d %H:%M UTC"),
        "runs": run_status_text(data.last_success, data.last_failure),
        "currencies": {},
        "snapshots": {},
        "history": {},
        "coin_history": {},
        "bounds": {
            "snapshot_limit": SNAPSHOT_LIMIT,
            "top_coins": TOP_COINS,
            "shown": {c: len(s) for c, s in by_currency.items()},
            "loaded": {
                c: max(len(s), *(x.snapshots_in_currency for x in s))
                for c, s in by_currency.items()
            },
        },
    }
    for cur, snaps in sorted(by_currency.items()):
        history = {
            "cap_history": cap_history_figure(snaps),
            "dominance_history": dominance_history_figure(snaps, coins_by_key),
        }
        payload["history"][cur] = history
        dates: dict[str, list[str]] = defaultdict(list)
        for snap in snaps:
            dates[str(snap.fetch_date) if snap.fetch_date else "unknown date"].append(snap.key)
        latest = next((s for s in reversed(snaps) if s.is_latest), snaps[-1])
        payload["currencies"][cur] = {
            "dates": [[d, list(reversed(keys))] for d, keys in sorted(dates.items(), reverse=True)],
            "latest": latest.key,
        }
        per_coin: dict[str, list[tuple[Snapshot, CoinRow]]] = defaultdict(list)
        for snap in snaps:
            coins = coins_by_key.get(snap.key, [])
            for coin in coins:
                per_coin[coin.coin_id].append((snap, coin))
            payload["snapshots"][snap.key] = _snapshot_entry(snap, coins, data.generated_at)
        payload["coin_history"][cur] = {
            coin_id: coin_history_figure(cur, points)
            for coin_id, points in per_coin.items()
            if any(c.cap_pos <= TOP_COINS for _, c in points)
        }
        timed = [s.key for s in snaps if s.fetched_at is not None]
        top_share = history["dominance_history"]["data"][0]["y"]
        for snap in snaps:
            at = timed.index(snap.key) if snap.key in timed else None
            payload["snapshots"][snap.key]["marks"] = {
                "cap_history": snap.total_market_cap,
                "dominance_history": None if at is None else top_share[at],
            }
    series_by_currency: dict[str, list[SeriesPoint]] = defaultdict(list)
    for point in data.series:
        series_by_currency[point.vs_currency].append(point)
    # Only when a backfill loaded rows: then every currency gets a figure (a note if it has none).
    payload["price_series"] = (
        {cur: price_series_figure(cur, series_by_currency.get(cur, ())) for cur in by_currency}
        if data.series
        else {}
    )
    payload["default"] = payload["currencies"][default_currency]["latest"]
    return payload


def _snapshot_entry(snap: Snapshot, coins: Sequence[CoinRow], now: datetime) -> dict[str, Any]:
    picker = [[c.coin_id, f"{i}. {c.display}"] for i, c in enumerate(_by_cap(coins), 1)]
    return {
        "id": snap.snapshot_id,
        "currency": snap.vs_currency,
        "fetch_date": str(snap.fetch_date) if snap.fetch_date else "unknown date",
        "label": snap.label,
        "fetched_at_ms": int(snap.fetched_at.timestamp() * 1000) if snap.fetched_at else None,
        "x": _x(snap),
        "is_latest": snap.is_latest,
        "cards": scorecards(snap, now),
        "figures": {
            "top20": top_coins_figure(snap, coins),
            "dominance": share_figure(snap, coins, "market_cap"),
            "movers": movers_figure(snap, coins),
            "volume": share_figure(snap, coins, "total_volume"),
        },
        "coins": picker,
    }


def embed_json(value: Any) -> str:
    """JSON safe inside a ``<script>`` element: ``<``, ``>``, ``&`` and the JS line separators
    are escaped, so no data value can close the element or start a comment."""
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    for char, escape in (
        ("<", "\\u003c"),
        (">", "\\u003e"),
        ("&", "\\u0026"),
        ("\u2028", "\\u2028"),
        ("\u2029", "\\u2029"),
    ):
        text = text.replace(char, escape)
    return text


def _plotly_js() -> str:
    """The plotly.js bundle shipped inside the plotly package (no CDN: the page works offline)."""
    from plotly.offline import get_plotlyjs

    return get_plotlyjs()


CARDS = (
    ("market_cap", "Total market cap"),
    ("volume", "24h volume"),
    ("coins", "Coins"),
    ("btc", "BTC dominance"),
    ("eth", "ETH dominance"),
    ("freshness", "Data freshness"),
)
CHART_TITLES = {
    "top20": f"Top {BAR_COINS} by market cap",
    "dominance": f"Market-cap share: top {SHARE_SLICES} + others",
    "movers": f"24h gainers and losers (top {TOP_COINS} coins)",
    "volume": f"24h volume share: top {SHARE_SLICES} + others",
    "cap_history": "Total market cap across snapshots",
    "dominance_history": "Dominance across snapshots",
    "coin_history": "A coin across snapshots",
    SERIES_CHART: f"Daily price of the top {SERIES_COINS} coins: history, then snapshots",
}

_CSS = """
body{margin:0;font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#1f2328;
background:#f5f6f8}
header{background:#fff;padding:16px 24px;border-bottom:1px solid #e1e4e8}
h1{margin:0 0 4px;font-size:22px}
h2{margin:0 0 8px;font-size:15px;font-weight:600}
.meta{margin:0;color:#57606a;font-size:13px}
.controls{display:flex;flex-wrap:wrap;gap:16px;margin-top:12px;align-items:flex-end}
.controls label{display:flex;flex-direction:column;font-size:12px;color:#57606a;gap:4px}
select{font-size:14px;padding:4px 6px;min-width:120px;max-width:420px}
main{padding:16px 24px}
.cards{display:grid;grid-template-columns:repeat(auto-fit,minmax(170px,1fr));gap:12px}
.card{background:#fff;border:1px solid #e1e4e8;border-radius:8px;padding:12px 14px}
.card .name{font-size:12px;color:#57606a;text-transform:uppercase;letter-spacing:.03em}
.card .value{font-size:24px;font-weight:600;margin:4px 0}
.card .note{font-size:12px;color:#57606a}
.grid{display:grid;grid-template-columns:repeat(auto-fit,minmax(480px,1fr));gap:12px;
margin-top:12px}
.panel{background:#fff;border:1px solid #e1e4e8;border-radius:8px;padding:12px 14px}
.chart{height:380px}
#chart-top20,#chart-movers{height:520px}
footer{padding:8px 24px 24px;color:#57606a;font-size:12px}
#run-status.failing #run-failure{color:#d73027;font-weight:600}
"""

_APP_JS = r"""
(function () {
  "use strict";
  var P = JSON.parse(document.getElementById("dashboard-data").textContent);
  var CONFIG = {displaylogo: false, responsive: true};
  var $ = function (id) { return document.getElementById(id); };
  var currencySel = $("currency-select"), dateSel = $("date-select");
  var snapSel = $("snapshot-select"), coinSel = $("coin-select");
  var current = null;

  function fill(sel, items, value) {
    sel.replaceChildren();
    items.forEach(function (item) {
      var opt = document.createElement("option");
      opt.value = item[0];
      opt.textContent = item[1];
      sel.appendChild(opt);
    });
    sel.value = value;
  }
  function clone(fig) { return JSON.parse(JSON.stringify(fig)); }
  function draw(id, fig) {
    var f = clone(fig);
    Plotly.react("chart-" + id, f.data, f.layout, CONFIG);
  }
  function withMark(fig, x, y) {
    var f = clone(fig);
    var mark = f.data[f.data.length - 1];
    mark.x = (x === null || y === null || y === undefined) ? [] : [x];
    mark.y = mark.x.length ? [y] : [];
    return f;
  }
  function age(ms) {
    var s = (Date.now() - ms) / 1000;
    if (s < 0) return "just now";
    if (s < 60) return Math.floor(s) + " s";
    var m = Math.floor(s / 60);
    if (m < 60) return m + " min";
    var h = Math.floor(m / 60); m = m % 60;
    if (h < 48) return m ? h + " h " + m + " min" : h + " h";
    return Math.floor(h / 24) + " d";
  }
  function showCards(s) {
    Object.keys(s.cards).forEach(function (k) {
      $("card-" + k + "-value").textContent = s.cards[k].value;
      $("card-" + k + "-note").textContent = s.cards[k].note;
    });
    if (s.fetched_at_ms !== null) {
      $("card-freshness-value").textContent = age(s.fetched_at_ms) + " old";
    }
  }
  function showCoin() {
    var s = P.snapshots[current];
    var fig = P.coin_history[s.currency][coinSel.value];
    if (!fig) {
      Plotly.react("chart-coin_history", [], {annotations: [{text: "No coin in this snapshot",
        showarrow: false, xref: "paper", yref: "paper", x: 0.5, y: 0.5}]}, CONFIG);
      return;
    }
    var price = fig.data[0], i = price.x.indexOf(s.x);
    draw("coin_history", withMark(fig, s.x, i >= 0 ? price.y[i] : null));
  }
  function showSnapshot(key) {
    current = key;
    var s = P.snapshots[key];
    $("selection-label").textContent = s.label;
    showCards(s);
    ["top20", "dominance", "movers", "volume"].forEach(function (c) { draw(c, s.figures[c]); });
    var h = P.history[s.currency];
    ["cap_history", "dominance_history"].forEach(function (c) {
      draw(c, withMark(h[c], s.x, s.marks[c]));
    });
    if (P.price_series && P.price_series[s.currency]) {
      draw("price_series", P.price_series[s.currency]);
    }
    var keep = coinSel.value;
    var ids = s.coins.map(function (c) { return c[0]; });
    fill(coinSel, s.coins, ids.indexOf(keep) >= 0 ? keep : (ids[0] || ""));
    showCoin();
    document.body.dataset.snapshot = key;
  }
  function datesOf(cur) { return P.currencies[cur].dates; }
  function showDate(cur, date, key) {
    var entry = datesOf(cur).filter(function (d) { return d[0] === date; })[0];
    var options = entry[1].map(function (k) { return [k, P.snapshots[k].label]; });
    fill(snapSel, options, key || entry[1][0]);
    showSnapshot(snapSel.value);
  }
  function showCurrency(cur, key) {
    key = key || P.currencies[cur].latest;
    var date = P.snapshots[key].fetch_date;
    fill(dateSel, datesOf(cur).map(function (d) { return [d[0], d[0]]; }), date);
    showDate(cur, date, key);
  }
  fill(currencySel, Object.keys(P.currencies).map(function (c) { return [c, c.toUpperCase()]; }),
       P.snapshots[P.default].currency);
  currencySel.addEventListener("change", function () { showCurrency(currencySel.value); });
  dateSel.addEventListener("change", function () { showDate(currencySel.value, dateSel.value); });
  snapSel.addEventListener("change", function () { showSnapshot(snapSel.value); });
  coinSel.addEventListener("change", showCoin);
  showCurrency(P.snapshots[P.default].currency, P.default);
  document.body.dataset.ready = "1";
})();
"""


def _bounds_text(payload: Mapping[str, Any]) -> str:
    b = payload["bounds"]
    per = "; ".join(
        f"{c.upper()}: {b['shown'][c]} of {b['loaded'][c]} snapshots" for c in sorted(b["shown"])
    )
    return (
        f"Embedded: per currency the latest {b['snapshot_limit']} snapshots ({per}); per"
        f" snapshot the top {b['top_coins']} coins by market cap (gainers and losers are ranked"
        f" among them) plus the {SHARE_SLICES} largest by 24h volume. Totals, coin counts and"
        " the Others slices cover every loaded coin (view MARKET_SNAPSHOTS)."
    )


def render_html(payload: Mapping[str, Any], plotly_js: str | None = None) -> str:
    """The self-contained page: plotly.js inlined once, the payload as a JSON script element,
    and the script that draws every chart for the selected snapshot.

    ``plotly_js`` defaults to the bundle shipped in the plotly package.
    """
    js = _plotly_js() if plotly_js is None else plotly_js
    cards = "\n".join(
        f'<div class="card" id="card-{key}"><div class="name">{title}</div>'
        f'<div class="value" id="card-{key}-value"></div>'
        f'<div class="note" id="card-{key}-note"></div></div>'
        for key, title in CARDS
    )
    panels = "\n".join(
        f'<section class="panel"><h2>{CHART_TITLES[c]}</h2>'
        f'<div class="chart" id="chart-{c}"></div></section>'
        for c in (*SNAPSHOT_CHARTS, *HISTORY_CHARTS)
    )
    coin_panel = (
        '<section class="panel" style="margin-top:12px"><h2>A coin across snapshots</h2>'
        '<label class="meta">Coin <select id="coin-select"></select></label>'
        f'<div class="chart" id="chart-{COIN_CHART}"></div></section>'
    )
    if payload.get("price_series"):
        coin_panel += (
            f'<section class="panel" style="margin-top:12px"><h2>{CHART_TITLES[SERIES_CHART]}'
            '</h2><p class="meta">Backfilled daily history (CRYPTO_PRICE_HISTORY, solid), then'
            " the day's last snapshot where there is no history (dotted): view"
            f' COIN_PRICE_SERIES.</p><div class="chart" id="chart-{SERIES_CHART}"></div></section>'
        )
    source = html.escape(str(payload["source"]))
    generated = html.escape(str(payload["generated_at"]))
    runs = payload.get("runs") or run_status_text(None, None)
    failing = ' class="meta failing"' if runs["failing"] == "yes" else ' class="meta"'
    run_status = (
        f'<p{failing} id="run-status">Last success: <span id="run-success">'
        f'{html.escape(runs["success"])}</span> · Last failure: <span id="run-failure">'
        f"{html.escape(runs['failure'])}</span> (ETL_RUNS)</p>"
    )
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>crypto-etl · market dashboard</title>
<style>{_CSS}</style>
<script>{js}</script>
</head>
<body>
<header>
<h1>Crypto market</h1>
<p class="meta">Source: {source} · page generated {generated} · views SNAPSHOT_FILTER,
MARKET_SNAPSHOTS, COIN_HISTORY</p>
{run_status}
<div class="controls">
<label>Currency <select id="currency-select"></select></label>
<label>Fetch date <select id="date-select"></select></label>
<label>Snapshot <select id="snapshot-select"></select></label>
</div>
<p class="meta" id="selection-label"></p>
</header>
<main>
<section class="cards">
{cards}
</section>
<div class="grid">
{panels}
</div>
{coin_panel}
</main>
<footer><p>{html.escape(_bounds_text(payload))}</p>
<p>Market data from CoinGecko (via crypto-etl). Times in UTC.</p></footer>
<script type="application/json" id="dashboard-data">{embed_json(payload)}</script>
<script>{_APP_JS}</script>
</body>
</html>
"""


def write_page(path: Path, page: str) -> None:
    """Write ``page`` to ``path`` through a temporary file, so a failure leaves no half page."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(page, encoding="utf-8")
    os.replace(tmp, path)


# --- CLI ---------------------------------------------------------------------------------------


def _source_name(local_dir: Path, remote: bool, env: Mapping[str, str]) -> str:
    if not remote:
        return f"local warehouse {(local_dir / 'warehouse').resolve()}"
    account = env.get("SNOWFLAKE_ACCOUNT") or "the configured account"
    database = env.get("SNOWFLAKE_DATABASE") or "CRYPTO_ETL_DB"
    schema = env.get("SNOWFLAKE_SCHEMA") or "PUBLIC"
    return f"Snowflake {account} {database}.{schema}"


def register(sub: Any) -> None:
    """Add ``dashboard`` to the CLI's sub-parsers."""
    dash = sub.add_parser(
        "dashboard",
        help="write the market dashboard: one self-contained HTML page (opens offline)",
    )
    dash.add_argument(
        "--out",
        type=Path,
        metavar="FILE",
        help="where to write it (default <local dir>/dashboard.html)",
    )
    dash.add_argument(
        "--remote",
        action="store_true",
        help="read the Snowflake account configured by SNOWFLAKE_* variables, not the local one",
    )
    dash.add_argument(
        "--vs-currency", metavar="CUR", help="the currency the page opens on (default usd)"
    )
    dash.set_defaults(func=dashboard_cli)


def build_dashboard(
    local_dir: Path,
    remote: bool = False,
    vs_currency: str | None = None,
    connection: Callable[[Path, bool], Any] | None = None,
) -> tuple[str, dict[str, Any]]:
    """Query the warehouse and return (page HTML, payload). Raises DashboardEmpty (nothing to
    show), ConfigError (--remote without settings), LoadError / SnowflakeError (warehouse)."""
    from local_mode.warehouse_commands import warehouse_connection

    open_conn = connection or warehouse_connection
    with open_conn(local_dir, remote) as conn:
        data = fetch_dashboard_data(conn, _source_name(local_dir, remote, os.environ))
    payload = build_payload(data, vs_currency)
    return render_html(payload), payload


def dashboard_cli(args: argparse.Namespace, out: TextIO) -> int:
    """``crypto-etl dashboard``: write the page and print its path; 1 (no file) when empty."""
    path = Path(args.out) if args.out else Path(args.local_dir) / "dashboard.html"
    if args.out and not path.parent.is_dir():
        raise ValidationError("--out", f"folder {path.parent} does not exist")
    # The page replaces the file: only ever an .html file, never a directory or a system file.
    if path.suffix.lower() not in (".html", ".htm"):
        raise ValidationError("--out", f"{path} must name an .html file (it is overwritten)")
    if path.exists() and not path.is_file():
        raise ValidationError("--out", f"{path} exists and is not a regular file")
    try:
        page, payload = build_dashboard(args.local_dir, args.remote, args.vs_currency)
    except DashboardEmpty as exc:
        print(str(exc), file=out)
        return 1
    path.parent.mkdir(parents=True, exist_ok=True)
    write_page(path, page)
    shown = sum(payload["bounds"]["shown"].values())
    print(f"Dashboard: {path.resolve()} ({shown} snapshots, {len(page) / 1e6:.1f} MB)", file=out)
    return 0
