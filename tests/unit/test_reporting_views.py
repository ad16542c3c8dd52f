"""The reporting views (functions.load.sql.create_views) against pandas on the same rows.

A real local warehouse (the fakesnow server, reached through the real connector) holds six
snapshots made by the real transform from hand-made CoinGecko pages and loaded by the real load:
three fetch dates, usd and eur, the /global and the fetched dominance basis, coins 'bitcoin' and
'ethereum', NULL and zero 24h changes, a NULL price at a day's close, a coin without a rank, a
coin that leaves and comes back, two snapshots with the same FETCHED_AT, and a snapshot loaded
last although it was fetched first. Each view is read back whole and compared with the same
figures computed by pandas from CRYPTO_DATA.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from functions.load import sql
from functions.load.loader import ensure_objects, load_snapshot
from functions.load.sql import Names
from functions.transform.csv_gz import to_csv_gz
from functions.transform.transform import transform
from local_mode.warehouse import LocalWarehouse

COINS = 60
EUR_PER_USD = 0.9
GLOBAL_SHARE = 0.8  # the listed coins' share of the /global totals


@dataclass(frozen=True)
class Snap:
    """One snapshot to build: id, currency, fetch time, /global present, market drift step."""

    snapshot_id: str
    vs_currency: str
    fetched_at: str
    with_global: bool
    step: int


# In load order. usd-c is the latest usd snapshot (on the fetched basis); eur-a the latest eur
# one: the same FETCHED_AT as eur-b but loaded later (LOADED_AT decides before SNAPSHOT_ID);
# usd-0 is loaded last but fetched first.
SNAPSHOTS = (
    Snap("usd-a", "usd", "2026-11-26T06:00:00Z", True, 0),
    Snap("usd-b", "usd", "2026-11-26T18:30:00Z", True, 1),
    Snap("usd-c", "usd", "2026-11-27T06:00:00Z", False, 2),
    Snap("eur-b", "eur", "2026-11-27T09:15:00Z", True, 2),
    Snap("eur-a", "eur", "2026-11-27T09:15:00Z", True, 3),
    Snap("usd-0", "usd", "2026-11-25T23:59:00Z", True, -1),
)
LATEST = {"usd": "usd-c", "eur": "eur-a"}
NULL_CLOSE = ("usd-b", "coin-07")  # its price is NULL at the close of 2026-11-26
LEAVES = {"usd-b": "coin-12"}  # not listed in that snapshot


def coin_row(i: int, snap: Snap) -> dict[str, Any]:
    """Coin ``i`` (rank i+1) of a /coins/markets page, drifting with ``snap.step``."""
    coin_id = {0: "bitcoin", 1: "ethereum"}.get(i, f"coin-{i:02d}")
    fx = EUR_PER_USD if snap.vs_currency == "eur" else 1.0
    drift = 1 + 0.02 * snap.step * ((i % 7) - 3)
    price = 60_000.0 / (i + 1) ** 1.5 * drift * fx
    supply = 1e7 * (1 + i % 5)
    change = float((i * 37 + snap.step * 11) % 41 - 20)  # -20..20, zero for some coins
    last = i == COINS - 1  # the unranked tail: no rank, no market cap
    row = {
        "id": coin_id,
        "symbol": coin_id[:4],
        "name": coin_id.replace("-", " ").title(),
        "image": f"https://assets.example/{coin_id}.png",
        "current_price": price,
        "market_cap": 0 if last else price * supply,
        "market_cap_rank": None if last else i + 1,
        "fully_diluted_valuation": None,
        "total_volume": price * supply / (10 + i % 4),
        "high_24h": price * 1.05,
        "low_24h": price * 0.95,
        "price_change_24h": price * change / 100,
        "price_change_percentage_24h": None if i % 13 == 5 else change,
        "market_cap_change_24h": None,
        "market_cap_change_percentage_24h": change,
        "circulating_supply": supply,
        "total_supply": supply,
        "max_supply": None,
        "ath": price * 2,
        "ath_change_percentage": -50.0,
        "ath_date": "2021-11-10T14:24:11.849Z",
        "atl": price / 10,
        "atl_change_percentage": 900.0,
        "atl_date": "2015-01-14T00:00:00.000Z",
        "roi": None,
        "last_updated": snap.fetched_at,
    }
    if (snap.snapshot_id, coin_id) == NULL_CLOSE:
        row["current_price"] = None
    return row


def build(snap: Snap) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    """(the page of coins, the /global body or None)."""
    rows = [coin_row(i, snap) for i in range(COINS)]
    rows = [r for r in rows if r["id"] != LEAVES.get(snap.snapshot_id)]
    if not snap.with_global:
        return rows, None
    cur = snap.vs_currency
    body = {
        "data": {
            "total_market_cap": {cur: sum(r["market_cap"] for r in rows) / GLOBAL_SHARE},
            "total_volume": {cur: sum(r["total_volume"] for r in rows) / GLOBAL_SHARE},
        }
    }
    return rows, body


def load(conn: Any, snap: Snap, work: Path, names: Names | None = None) -> dict[str, Any]:
    """Transform ``snap``'s page and load it (into ``names``, default CRYPTO_ETL_DB.PUBLIC);
    returns the transform's quality summary."""
    page, global_body = build(snap)
    manifest = {
        "snapshot_id": snap.snapshot_id,
        "vs_currency": snap.vs_currency,
        "pages": [{"page": 1, "key": "raw/markets/page-0001.json", "count": len(page)}],
    }
    result = transform(
        manifest,
        [page],
        global_body,
        snapshot_id=snap.snapshot_id,
        fetched_at=snap.fetched_at,
        fetch_date=snap.fetched_at[:10],
        vs_currency=snap.vs_currency,
    )
    assert result.rejected_count == 0, result.quality["rejected_coins"]
    path = work / f"{snap.snapshot_id}.csv.gz"
    path.write_bytes(to_csv_gz(result.processed))
    load_snapshot(
        conn,
        local_file=path,
        snapshot_id=snap.snapshot_id,
        row_count=result.row_count,
        names=names or Names(),
    )
    return result.quality


def frame(conn: Any, statement: str) -> pd.DataFrame:
    """The statement's rows as a DataFrame with the warehouse's column names."""
    with conn.cursor() as cur:
        cur.execute(statement)
        columns = [d[0] for d in cur.description]
        return pd.DataFrame([tuple(r) for r in cur.fetchall()], columns=columns)


@dataclass
class Market:
    """The loaded warehouse: a connection, quality summaries, what was seen while loading."""

    conn: Any
    quality: dict[str, dict[str, Any]]
    latest_usd_before_eur: pd.DataFrame


@contextmanager
def market_warehouse(data_dir: Path) -> Iterator[Market]:
    """A local warehouse (CRYPTO_ETL_DB.PUBLIC) holding ``SNAPSHOTS``, with its views."""
    with LocalWarehouse(data_dir / "warehouse") as wh:
        conn = wh.connect()
        try:
            ensure_objects(conn, Names())
            quality: dict[str, dict[str, Any]] = {}
            before = pd.DataFrame()
            for snap in SNAPSHOTS:
                if snap.vs_currency == "eur" and before.empty:
                    before = frame(conn, LATEST_USD)
                quality[snap.snapshot_id] = load(conn, snap, data_dir)
            yield Market(conn, quality, before)
        finally:
            conn.close()


# The reporting contract (/tmp/prompts/views.md, looker/README.md): each view's columns in order
# (LATEST_SNAPSHOT: every CRYPTO_DATA column) and a unique key of its rows.
COLUMNS: dict[str, list[str]] = {
    "DATE_DIM": [
        "DATE_KEY", "VS_CURRENCY", "CALENDAR_YEAR", "CALENDAR_QUARTER", "MONTH_NUMBER",
        "MONTH_NAME", "MONTH_START", "ISO_WEEK", "WEEK_START", "DAY_OF_MONTH", "DAY_OF_YEAR",
        "ISO_DAY_OF_WEEK", "DAY_NAME", "IS_WEEKEND",
    ],
    "SNAPSHOT_FILTER": [
        "SNAPSHOT_ID", "VS_CURRENCY", "FETCH_DATE", "FETCHED_AT", "SNAPSHOT_LABEL", "IS_LATEST",
    ],
    "MARKET_SNAPSHOTS": [
        "SNAPSHOT_ID", "VS_CURRENCY", "FETCHED_AT", "FETCH_DATE", "COIN_COUNT",
        "LOADED_MARKET_CAP", "LOADED_VOLUME", "GLOBAL_MARKET_CAP", "GLOBAL_VOLUME",
        "DOMINANCE_BASIS", "BTC_DOMINANCE_PCT", "ETH_DOMINANCE_PCT", "GAINERS_24H",
        "LOSERS_24H", "IS_LATEST",
    ],
    "COIN_HISTORY": [
        "SNAPSHOT_ID", "VS_CURRENCY", "FETCHED_AT", "FETCH_DATE", "COIN_ID", "SYMBOL", "NAME",
        "MARKET_CAP_RANK", "CURRENT_PRICE", "MARKET_CAP", "MARKET_CAP_DOMINANCE_PCT",
        "TOTAL_VOLUME", "VOLUME_PCT", "PRICE_CHANGE_PERCENTAGE_24H",
    ],
    "DAILY_ROLLUP": [
        "FETCH_DATE", "VS_CURRENCY", "COIN_ID", "SYMBOL", "NAME", "SNAPSHOTS",
        "FIRST_FETCHED_AT", "LAST_FETCHED_AT", "OPEN_PRICE", "HIGH_PRICE", "LOW_PRICE",
        "CLOSE_PRICE", "DAY_CHANGE_PCT", "AVG_MARKET_CAP", "CLOSE_MARKET_CAP",
        "CLOSE_MARKET_CAP_RANK", "AVG_TOTAL_VOLUME", "AVG_DOMINANCE_PCT", "CLOSE_DOMINANCE_PCT",
        "AVG_VOLUME_PCT",
    ],
    "TOP_MOVERS": [
        "SNAPSHOT_ID", "FETCHED_AT", "VS_CURRENCY", "COIN_ID", "SYMBOL", "NAME", "IMAGE_URL",
        "MARKET_CAP_RANK", "CURRENT_PRICE", "MARKET_CAP", "TOTAL_VOLUME", "PRICE_CHANGE_24H",
        "PRICE_CHANGE_PERCENTAGE_24H", "DIRECTION", "MOVE_RANK",
    ],
    "COIN_PRICE_SERIES": [
        "COIN_ID", "DATE", "VS_CURRENCY", "PRICE", "MARKET_CAP", "TOTAL_VOLUME", "SOURCE",
    ],
}  # fmt: skip
VIEW_KEYS = {
    "DATE_DIM": ["DATE_KEY", "VS_CURRENCY"],
    "SNAPSHOT_FILTER": ["SNAPSHOT_ID", "VS_CURRENCY"],
    "LATEST_SNAPSHOT": ["SNAPSHOT_ID", "COIN_ID"],
    "MARKET_SNAPSHOTS": ["SNAPSHOT_ID", "VS_CURRENCY"],
    "COIN_HISTORY": ["SNAPSHOT_ID", "COIN_ID"],
    "DAILY_ROLLUP": ["FETCH_DATE", "VS_CURRENCY", "COIN_ID"],
    "TOP_MOVERS": ["VS_CURRENCY", "DIRECTION", "MOVE_RANK"],
    "COIN_PRICE_SERIES": ["COIN_ID", "DATE", "VS_CURRENCY"],
}
LATEST_USD = "SELECT * FROM LATEST_SNAPSHOT WHERE VS_CURRENCY = 'usd' ORDER BY COIN_ID"


@pytest.fixture(scope="module")
def market(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Market]:
    with market_warehouse(tmp_path_factory.mktemp("reporting")) as m:
        yield m


@pytest.fixture(scope="module")
def data(market: Market) -> pd.DataFrame:
    return frame(market.conn, "SELECT * FROM CRYPTO_DATA")


def view(market: Market, name: str) -> pd.DataFrame:
    return frame(market.conn, f"SELECT * FROM {name}")


def _normalised(df: pd.DataFrame, keys: Sequence[str]) -> pd.DataFrame:
    out = df.sort_values(list(keys), kind="stable").reset_index(drop=True)
    for col in out.columns:
        values = out[col].dropna()
        numeric = values.map(lambda v: isinstance(v, int | float) and not isinstance(v, bool))
        if len(values) and numeric.all():
            out[col] = out[col].astype("float64")
        elif len(values) and values.map(lambda v: isinstance(v, bool)).all():
            out[col] = out[col].astype(bool)
        else:
            out[col] = out[col].astype(object).where(out[col].notna(), None)
    return out


def assert_same(actual: pd.DataFrame, expected: pd.DataFrame, keys: Sequence[str]) -> None:
    """Same columns (in order), same rows (by ``keys``), floats equal to 1e-9 relative."""
    assert list(actual.columns) == list(expected.columns)
    assert len(actual) == len(expected)
    pd.testing.assert_frame_equal(
        _normalised(actual, keys),
        _normalised(expected, keys),
        check_dtype=False,
        check_exact=False,
        rtol=1e-9,
    )


def snapshot_order(data: pd.DataFrame) -> pd.DataFrame:
    """One row per (SNAPSHOT_ID, VS_CURRENCY) with FETCHED_AT, FETCH_DATE and IS_LATEST."""
    snaps = data.groupby(["SNAPSHOT_ID", "VS_CURRENCY"], as_index=False).agg(
        FETCHED_AT=("FETCHED_AT", "max"),
        FETCH_DATE=("FETCH_DATE", "max"),
        LOADED_AT=("LOADED_AT", "max"),
    )
    ordered = snaps.sort_values(
        ["VS_CURRENCY", "FETCHED_AT", "LOADED_AT", "SNAPSHOT_ID"],
        ascending=[True, False, False, False],
    )
    first = ordered.groupby("VS_CURRENCY").head(1).index
    snaps["IS_LATEST"] = snaps.index.isin(first)
    return snaps


def latest_rows(data: pd.DataFrame) -> pd.DataFrame:
    snaps = snapshot_order(data)
    keys = snaps.loc[snaps["IS_LATEST"], ["SNAPSHOT_ID", "VS_CURRENCY"]]
    return data.merge(keys, on=["SNAPSHOT_ID", "VS_CURRENCY"])[list(data.columns)]


# --- the warehouse under test is what the scenario says ---------------------------------------


def test_the_scenario_covers_what_the_views_must_handle(data):
    assert sorted(data["SNAPSHOT_ID"].unique()) == sorted(s.snapshot_id for s in SNAPSHOTS)
    assert set(data["VS_CURRENCY"]) == {"usd", "eur"}
    assert data["FETCH_DATE"].nunique() >= 2
    assert set(data["DOMINANCE_BASIS"]) == {"global", "fetched"}
    assert {"bitcoin", "ethereum"} <= set(data["COIN_ID"])
    pct = data["PRICE_CHANGE_PERCENTAGE_24H"]
    assert pct.isna().any() and (pct == 0).any() and (pct > 0).sum() > 20


def test_every_view_has_the_contracts_columns(market, data):
    expected = {**COLUMNS, "LATEST_SNAPSHOT": list(data.columns)}
    assert set(sql.VIEWS) == set(expected)
    for name, columns in expected.items():
        assert list(frame(market.conn, f"SELECT * FROM {name} LIMIT 0").columns) == columns, name
        assert list(sql.VIEW_COLUMNS[name]) == columns, name
        assert "VS_CURRENCY" in columns, name


# --- latest is per currency -------------------------------------------------------------------


def test_latest_snapshot_is_per_currency_and_a_eur_run_does_not_switch_usd(market, data):
    latest = view(market, "LATEST_SNAPSHOT")
    by_currency = latest.groupby("VS_CURRENCY")["SNAPSHOT_ID"].unique().map(list).to_dict()
    assert by_currency == {cur: [sid] for cur, sid in LATEST.items()}
    assert_same(latest, latest_rows(data), ["SNAPSHOT_ID", "COIN_ID"])
    # Loading eur-a, eur-b and the older usd-0 afterwards left the usd rows as they were.
    after = frame(market.conn, LATEST_USD)
    assert not market.latest_usd_before_eur.empty
    assert_same(after, market.latest_usd_before_eur, ["COIN_ID"])


def test_snapshot_filter_lists_every_snapshot_with_a_label_and_the_latest_flag(market, data):
    snaps = snapshot_order(data)
    label = (
        snaps["FETCHED_AT"].dt.tz_convert("UTC").dt.strftime("%Y-%m-%d %H:%M UTC")
        + " · "
        + snaps["VS_CURRENCY"]
        + " · "
        + snaps["SNAPSHOT_ID"]
    )
    expected = snaps.assign(SNAPSHOT_LABEL=label)[COLUMNS["SNAPSHOT_FILTER"]]
    actual = view(market, "SNAPSHOT_FILTER")
    assert_same(actual, expected, ["SNAPSHOT_ID"])
    row = actual.set_index("SNAPSHOT_ID").loc["eur-a"]
    assert row["SNAPSHOT_LABEL"] == "2026-11-27 09:15 UTC · eur · eur-a"
    assert sorted(actual.loc[actual["IS_LATEST"], "SNAPSHOT_ID"]) == sorted(LATEST.values())


# --- MARKET_SNAPSHOTS -------------------------------------------------------------------------


def _global_total(g: pd.DataFrame, value: str, share: str) -> float:
    rows = g[(g["DOMINANCE_BASIS"] == "global") & g[value].notna() & g[share].notna()]
    denominator = rows[share].sum()
    return rows[value].sum() / denominator * 100 if len(rows) and denominator else math.nan


def _market_row(g: pd.DataFrame) -> pd.Series:
    bases = sorted(g["DOMINANCE_BASIS"].dropna().unique())
    pct = g["PRICE_CHANGE_PERCENTAGE_24H"]

    def dominance(coin_id: str) -> float:
        values = g.loc[g["COIN_ID"] == coin_id, "MARKET_CAP_DOMINANCE_PCT"].dropna()
        return values.max() if len(values) else math.nan

    return pd.Series(
        {
            "FETCHED_AT": g["FETCHED_AT"].max(),
            "FETCH_DATE": g["FETCH_DATE"].max(),
            "COIN_COUNT": len(g),
            "LOADED_MARKET_CAP": g["MARKET_CAP"].sum(min_count=1),
            "LOADED_VOLUME": g["TOTAL_VOLUME"].sum(min_count=1),
            "GLOBAL_MARKET_CAP": _global_total(g, "MARKET_CAP", "MARKET_CAP_DOMINANCE_PCT"),
            "GLOBAL_VOLUME": _global_total(g, "TOTAL_VOLUME", "VOLUME_PCT"),
            "DOMINANCE_BASIS": bases[0] if len(bases) == 1 else ("mixed" if bases else None),
            "BTC_DOMINANCE_PCT": dominance("bitcoin"),
            "ETH_DOMINANCE_PCT": dominance("ethereum"),
            "GAINERS_24H": int((pct > 0).sum()),
            "LOSERS_24H": int((pct < 0).sum()),
        }
    )


def test_market_snapshots_aggregate_each_snapshot(market, data):
    rows = data.groupby(["SNAPSHOT_ID", "VS_CURRENCY"]).apply(_market_row, include_groups=False)
    expected = rows.reset_index().merge(
        snapshot_order(data)[["SNAPSHOT_ID", "VS_CURRENCY", "IS_LATEST"]],
        on=["SNAPSHOT_ID", "VS_CURRENCY"],
    )[COLUMNS["MARKET_SNAPSHOTS"]]
    actual = view(market, "MARKET_SNAPSHOTS")
    assert_same(actual, expected, ["SNAPSHOT_ID"])

    by_id = actual.set_index("SNAPSHOT_ID")
    for snap in SNAPSHOTS:
        row, quality = by_id.loc[snap.snapshot_id], market.quality[snap.snapshot_id]
        if snap.with_global:
            # The /global totals the transform used come back exactly from the stored shares.
            assert row["GLOBAL_MARKET_CAP"] == pytest.approx(quality["total_market_cap"], 1e-9)
            assert row["GLOBAL_VOLUME"] == pytest.approx(quality["total_volume"], 1e-9)
            assert row["DOMINANCE_BASIS"] == "global"
        else:
            assert row["DOMINANCE_BASIS"] == "fetched"
    nulls = frame(
        market.conn,
        "SELECT SNAPSHOT_ID FROM MARKET_SNAPSHOTS WHERE GLOBAL_MARKET_CAP IS NULL"
        " AND GLOBAL_VOLUME IS NULL",
    )
    assert list(nulls["SNAPSHOT_ID"]) == ["usd-c"]
    btc = by_id.loc["usd-a", "BTC_DOMINANCE_PCT"]
    assert btc == pytest.approx(
        data.query("SNAPSHOT_ID == 'usd-a' and COIN_ID == 'bitcoin'")["MARKET_CAP"].iloc[0]
        / market.quality["usd-a"]["total_market_cap"]
        * 100
    )
    assert sorted(by_id.index[by_id["IS_LATEST"]]) == sorted(LATEST.values())


# --- COIN_HISTORY, DAILY_ROLLUP, TOP_MOVERS, DATE_DIM -------------------------------------------


def test_coin_history_is_every_coin_of_every_snapshot(market, data):
    expected = data[COLUMNS["COIN_HISTORY"]]
    assert_same(view(market, "COIN_HISTORY"), expected, ["SNAPSHOT_ID", "COIN_ID"])
    history = frame(
        market.conn,
        "SELECT SNAPSHOT_ID FROM COIN_HISTORY WHERE COIN_ID = 'coin-12' ORDER BY FETCHED_AT",
    )
    assert "usd-b" not in set(history["SNAPSHOT_ID"]) and len(history) == len(SNAPSHOTS) - 1


def _daily_row(g: pd.DataFrame) -> pd.Series:
    g = g.sort_values(["FETCHED_AT", "LOADED_AT", "SNAPSHOT_ID"], kind="stable")
    first, last = g.iloc[0], g.iloc[-1]
    open_, close = first["CURRENT_PRICE"], last["CURRENT_PRICE"]
    change = (close - open_) / open_ * 100 if open_ and not pd.isna(open_) else math.nan
    return pd.Series(
        {
            "SYMBOL": last["SYMBOL"],
            "NAME": last["NAME"],
            "SNAPSHOTS": len(g),
            "FIRST_FETCHED_AT": g["FETCHED_AT"].min(),
            "LAST_FETCHED_AT": g["FETCHED_AT"].max(),
            "OPEN_PRICE": open_,
            "HIGH_PRICE": g["CURRENT_PRICE"].max(),
            "LOW_PRICE": g["CURRENT_PRICE"].min(),
            "CLOSE_PRICE": close,
            "DAY_CHANGE_PCT": change,
            "AVG_MARKET_CAP": g["MARKET_CAP"].mean(),
            "CLOSE_MARKET_CAP": last["MARKET_CAP"],
            "CLOSE_MARKET_CAP_RANK": last["MARKET_CAP_RANK"],
            "AVG_TOTAL_VOLUME": g["TOTAL_VOLUME"].mean(),
            "AVG_DOMINANCE_PCT": g["MARKET_CAP_DOMINANCE_PCT"].mean(),
            "CLOSE_DOMINANCE_PCT": last["MARKET_CAP_DOMINANCE_PCT"],
            "AVG_VOLUME_PCT": g["VOLUME_PCT"].mean(),
        }
    )


def test_daily_rollup_opens_and_closes_at_the_days_first_and_last_snapshot(market, data):
    keys = ["FETCH_DATE", "VS_CURRENCY", "COIN_ID"]
    expected = (data.groupby(keys).apply(_daily_row, include_groups=False).reset_index())[
        COLUMNS["DAILY_ROLLUP"]
    ]
    assert_same(view(market, "DAILY_ROLLUP"), expected, keys)
    # The day's last price of coin-07 is NULL: the close is NULL, not an earlier price.
    (row,) = frame(
        market.conn,
        "SELECT CLOSE_PRICE IS NULL AS NO_CLOSE, OPEN_PRICE, HIGH_PRICE, SNAPSHOTS"
        " FROM DAILY_ROLLUP WHERE COIN_ID = 'coin-07' AND FETCH_DATE = '2026-11-26'"
        " AND VS_CURRENCY = 'usd'",
    ).itertuples(index=False)
    assert row.NO_CLOSE and row.SNAPSHOTS == 2 and row.OPEN_PRICE == row.HIGH_PRICE > 0


def test_top_movers_are_the_latest_snapshots_biggest_moves_per_currency(market, data):
    latest = latest_rows(data)
    pct = latest["PRICE_CHANGE_PERCENTAGE_24H"]
    movers = latest[pct.notna() & (pct != 0) & (latest["MARKET_CAP_RANK"] <= 250)].copy()
    movers["DIRECTION"] = (
        movers["PRICE_CHANGE_PERCENTAGE_24H"].gt(0).map({True: "GAINER", False: "LOSER"})
    )
    movers["ABS"] = movers["PRICE_CHANGE_PERCENTAGE_24H"].abs()
    movers = movers.sort_values(
        ["VS_CURRENCY", "DIRECTION", "ABS", "MARKET_CAP_RANK", "COIN_ID"],
        ascending=[True, True, False, True, True],
    )
    movers["MOVE_RANK"] = movers.groupby(["VS_CURRENCY", "DIRECTION"]).cumcount() + 1
    expected = movers[movers["MOVE_RANK"] <= sql.TOP_MOVERS_PER_SIDE]
    expected = expected[COLUMNS["TOP_MOVERS"]]
    actual = view(market, "TOP_MOVERS")
    assert_same(actual, expected, ["VS_CURRENCY", "DIRECTION", "MOVE_RANK"])
    counts = actual.groupby(["VS_CURRENCY", "DIRECTION"]).size().to_dict()
    assert counts[("usd", "GAINER")] == sql.TOP_MOVERS_PER_SIDE  # the cut-off is exercised
    assert set(actual["SNAPSHOT_ID"]) == set(LATEST.values())


def test_date_dim_has_each_fetch_date_of_each_currency(market, data):
    pairs = data[["FETCH_DATE", "VS_CURRENCY"]].dropna().drop_duplicates()
    rows = []
    for day, cur in pairs.itertuples(index=False):
        iso = day.isocalendar()
        rows.append(
            {
                "DATE_KEY": day,
                "VS_CURRENCY": cur,
                "CALENDAR_YEAR": day.year,
                "CALENDAR_QUARTER": (day.month - 1) // 3 + 1,
                "MONTH_NUMBER": day.month,
                "MONTH_NAME": day.strftime("%b"),
                "MONTH_START": day.replace(day=1),
                "ISO_WEEK": iso.week,
                "WEEK_START": day - timedelta(days=day.weekday()),
                "DAY_OF_MONTH": day.day,
                "DAY_OF_YEAR": day.timetuple().tm_yday,
                "ISO_DAY_OF_WEEK": iso.weekday,
                "DAY_NAME": day.strftime("%a"),
                "IS_WEEKEND": iso.weekday >= 6,
            }
        )
    expected = pd.DataFrame(rows, columns=COLUMNS["DATE_DIM"])
    actual = view(market, "DATE_DIM")
    assert_same(actual, expected, ["DATE_KEY", "VS_CURRENCY"])
    assert {(d, c) for d, c in zip(actual["DATE_KEY"], actual["VS_CURRENCY"], strict=True)} >= {
        (date(2026, 11, 27), "eur"),
        (date(2026, 11, 25), "usd"),
    }


def test_recreating_the_views_is_idempotent(market):
    before = {name: view(market, name) for name in VIEW_KEYS}
    ensure_objects(market.conn, Names())
    ensure_objects(market.conn, Names())
    for name in VIEW_KEYS:
        assert_same(view(market, name), before[name], VIEW_KEYS[name])


# --- COIN_PRICE_SERIES: history, then the snapshots' daily close --------------------------------

# Backfilled usd history: bitcoin and coin-03 from 2026-11-19 to 2026-11-26 (the snapshots have
# 2026-11-25..27), ethereum one day only (2026-11-26), with NULLs; no eur history.
HISTORY_DAYS = [date(2026, 11, 19) + timedelta(days=i) for i in range(8)]
HISTORY = {
    "bitcoin": HISTORY_DAYS,
    "coin-03": HISTORY_DAYS,
    "ethereum": [date(2026, 11, 26)],
}


def history_rows(coin_id: str, days: Sequence[date]) -> list[Any]:
    from functions.load.history import HistoryRow

    base = 1000.0 * (1 + len(coin_id))
    return [
        HistoryRow(d, base + i, None if coin_id == "ethereum" else (base + i) * 1e6, 5e8 + i)
        for i, d in enumerate(days)
    ]


@pytest.fixture(scope="module")
def series(market: Market, tmp_path_factory: pytest.TempPathFactory) -> pd.DataFrame:
    """Loads HISTORY through the backfill's load (real COPY + transaction); the series view."""
    import gzip

    from functions.load.history import history_csv_header, history_csv_lines, load_history_file

    path = tmp_path_factory.mktemp("history") / "history.csv.gz"
    lines = [history_csv_lines(c, "usd", history_rows(c, days)) for c, days in HISTORY.items()]
    path.write_bytes(gzip.compress((history_csv_header() + "".join(lines)).encode()))
    rows = sum(len(d) for d in HISTORY.values())
    result = load_history_file(market.conn, local_file=path, row_count=rows, names=Names(),
                               label="views")  # fmt: skip
    assert result.rows_inserted == rows
    return view(market, "COIN_PRICE_SERIES")


def test_coin_price_series_is_history_then_the_snapshots_daily_close(market, data, series):
    stored = frame(market.conn, "SELECT * FROM CRYPTO_PRICE_HISTORY")
    hist = stored[COLUMNS["COIN_PRICE_SERIES"]]
    keys = ["FETCH_DATE", "VS_CURRENCY", "COIN_ID"]
    close = (
        data.sort_values(["FETCHED_AT", "LOADED_AT", "SNAPSHOT_ID"], kind="stable")
        .groupby(keys)
        .tail(1)
    )
    snap = pd.DataFrame(
        {
            "COIN_ID": close["COIN_ID"],
            "DATE": close["FETCH_DATE"],
            "VS_CURRENCY": close["VS_CURRENCY"],
            "PRICE": close["CURRENT_PRICE"],
            "MARKET_CAP": close["MARKET_CAP"],
            "TOTAL_VOLUME": close["TOTAL_VOLUME"],
            "SOURCE": "snapshot",
        }
    )
    covered = set(zip(hist["COIN_ID"], hist["DATE"], hist["VS_CURRENCY"], strict=True))
    snap = snap[
        [k not in covered for k in zip(snap["COIN_ID"], snap["DATE"], snap["VS_CURRENCY"],
                                       strict=True)]
    ]  # fmt: skip
    expected = pd.concat([hist, snap], ignore_index=True)
    assert_same(series, expected, VIEW_KEYS["COIN_PRICE_SERIES"])

    # One series per coin and currency: history first, then the snapshot days after it.
    btc = series[(series["COIN_ID"] == "bitcoin") & (series["VS_CURRENCY"] == "usd")]
    btc = btc.sort_values("DATE")
    assert list(btc["DATE"]) == [*HISTORY_DAYS, date(2026, 11, 27)]
    assert list(btc["SOURCE"]) == ["market_chart"] * len(HISTORY_DAYS) + ["snapshot"]
    # A history day wins over that day's snapshots; its NULL stays NULL.
    eth = series.set_index(["COIN_ID", "VS_CURRENCY", "DATE"]).loc[
        ("ethereum", "usd", date(2026, 11, 26))
    ]
    assert eth["SOURCE"] == "market_chart" and pd.isna(eth["MARKET_CAP"])
    # Without history (eur) the series is the snapshots' close: DAILY_ROLLUP's CLOSE_PRICE.
    eur = series[series["VS_CURRENCY"] == "eur"]
    assert set(eur["SOURCE"]) == {"snapshot"}
    rollup = view(market, "DAILY_ROLLUP")
    rollup = rollup[rollup["VS_CURRENCY"] == "eur"].rename(
        columns={"FETCH_DATE": "DATE", "CLOSE_PRICE": "PRICE"}
    )
    merged = eur.merge(rollup, on=["COIN_ID", "DATE", "VS_CURRENCY"], suffixes=("", "_R"))
    assert len(merged) == len(eur) == len(rollup)
    assert ((merged["PRICE"] == merged["PRICE_R"]) | merged["PRICE"].isna()).all()
