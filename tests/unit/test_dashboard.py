"""The dashboard's data -> figures logic, number formatting, the page, and the empty warehouse.

Figures are checked against values computed here from the same rows (sums, orders, shares);
the empty-warehouse cases run the real CLI against a real fakesnow server.
"""

from __future__ import annotations

import json
import math
import re
from datetime import UTC, datetime, timedelta
from io import StringIO
from pathlib import Path

import pytest

from local_mode import dashboard as d
from local_mode.cli import main
from local_mode.warehouse import LocalWarehouse

T0 = datetime(2026, 11, 27, 6, 0, tzinfo=UTC)


def snap(
    snapshot_id: str = "s1",
    currency: str = "usd",
    fetched_at: datetime | None = T0,
    *,
    is_latest: bool = True,
    global_cap: float | None = None,
    loaded_cap: float | None = 0.0,
    global_volume: float | None = None,
    loaded_volume: float | None = 0.0,
    btc: float | None = None,
    eth: float | None = None,
    coin_count: int = 0,
) -> d.Snapshot:
    return d.Snapshot(
        snapshot_id=snapshot_id,
        vs_currency=currency,
        fetch_date=fetched_at.date() if fetched_at else None,
        fetched_at=fetched_at,
        label=f"{fetched_at:%Y-%m-%d %H:%M} UTC · {currency} · {snapshot_id}"
        if fetched_at
        else snapshot_id,
        is_latest=is_latest,
        coin_count=coin_count,
        loaded_market_cap=loaded_cap,
        loaded_volume=loaded_volume,
        global_market_cap=global_cap,
        global_volume=global_volume,
        dominance_basis="global" if global_cap is not None else "fetched",
        btc_dominance_pct=btc,
        eth_dominance_pct=eth,
        gainers_24h=0,
        losers_24h=0,
    )


def coin(
    coin_id: str,
    cap: float | None,
    *,
    snapshot_id: str = "s1",
    currency: str = "usd",
    volume: float | None = None,
    change: float | None = None,
    name: str | None = None,
    symbol: str | None = None,
    price: float | None = 1.0,
    dominance: float | None = None,
    rank: int | None = None,
) -> d.CoinRow:
    return d.CoinRow(
        snapshot_id=snapshot_id,
        vs_currency=currency,
        coin_id=coin_id,
        symbol=symbol if symbol is not None else coin_id[:3],
        name=name if name is not None else coin_id.title(),
        market_cap_rank=rank,
        current_price=price,
        market_cap=cap,
        dominance_pct=dominance,
        total_volume=volume,
        volume_pct=None,
        change_24h_pct=change,
        cap_pos=0,  # set by positioned()
        vol_pos=0,
    )


def positioned(coins: list[d.CoinRow]) -> list[d.CoinRow]:
    """CAP_POS / VOL_POS as coins_sql computes them: per snapshot, NULLs last, ties by id."""
    out = []
    by_key: dict[str, list[d.CoinRow]] = {}
    for c in coins:
        by_key.setdefault(c.key, []).append(c)
    for group in by_key.values():
        cap = sorted(group, key=lambda c: (c.market_cap is None, -(c.market_cap or 0), c.coin_id))
        vol = sorted(
            group, key=lambda c: (c.total_volume is None, -(c.total_volume or 0), c.coin_id)
        )
        for c in group:
            out.append(
                d.CoinRow(
                    **{**c.__dict__, "cap_pos": cap.index(c) + 1, "vol_pos": vol.index(c) + 1}
                )
            )
    return out


# --- formatting ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "currency", "expected"),
    [
        (1.234e12, "usd", "$1.23T"),
        (456.7e9, "usd", "$456.7B"),
        (12.345e6, "eur", "€12.35M"),
        (999.996e9, "usd", "$1.00T"),  # rounds up into the next unit, not "$1000.0B"
        (99.996e9, "usd", "$100.0B"),
        (999_999.996, "usd", "$1.00M"),
        (67_890.123, "usd", "$67,890.12"),
        (0.5, "usd", "$0.50"),
        (0.0001234, "gbp", "£0.0001234"),
        (1.83e-6, "usd", "$0.00000183"),  # never exponent notation
        (0, "usd", "$0.00"),
        (-2.5e9, "usd", "-$2.50B"),
        (3.2e9, "chf", "3.20B CHF"),  # no symbol: the code after the amount
        (None, "usd", "n/a"),
        (float("nan"), "usd", "n/a"),
    ],
)
def test_format_money_reads_like_people_write_it(value, currency, expected):
    assert d.format_money(value, currency) == expected


def test_percentages_changes_counts_and_ages():
    assert d.format_pct(54.2345) == "54.2 %"
    assert d.format_pct(None) == "n/a"
    assert d.format_change(3.44) == "+3.4 %"
    assert d.format_change(-2.06) == "-2.1 %"
    assert d.format_change(-0.04) == "0.0 %"  # no "-0.0 %"
    assert d.format_change(float("inf")) == "n/a"
    assert d.format_count(1234567) == "1,234,567"
    assert d.format_age(42) == "42 s"
    assert d.format_age(5 * 60 + 59) == "5 min"
    assert d.format_age(3 * 3600 + 10 * 60) == "3 h 10 min"
    assert d.format_age(2 * 3600) == "2 h"
    assert d.format_age(3 * 86400 + 5) == "3 d"
    assert d.format_age(-5) == "just now"


# --- figures ------------------------------------------------------------------------------------


def test_top20_is_the_20_largest_caps_in_order_with_unique_labels():
    caps = [(f"c{i:02d}", float((i * 37) % 29 + 1) * 1e9) for i in range(25)]
    rows = positioned(
        [coin(cid, cap, name="Same Name", symbol="dup") for cid, cap in caps]
        + [coin("nocap", None)]
    )
    fig = d.top_coins_figure(snap(), rows)
    (trace,) = fig["data"]
    expected = sorted(caps, key=lambda p: (-p[1], p[0]))[:20]
    assert trace["x"] == [cap for _, cap in expected]
    assert len(set(trace["y"])) == 20  # same name and symbol: still 20 bars
    assert trace["y"][0] == "1. Same Name (DUP)"
    assert trace["text"][0] == d.format_money(expected[0][1], "usd")
    assert fig["layout"]["yaxis"]["autorange"] == "reversed"  # largest on top


def test_dominance_share_is_top10_plus_others_of_the_global_total():
    caps = {f"c{i:02d}": (20 - i) * 1e10 for i in range(15)}
    rows = positioned([coin(cid, cap) for cid, cap in caps.items()])
    total = 5e12  # /global total: larger than the loaded coins
    fig = d.share_figure(snap(global_cap=total, loaded_cap=sum(caps.values())), rows, "market_cap")
    (trace,) = fig["data"]
    top10 = sorted(caps.values(), reverse=True)[:10]
    assert trace["values"][:10] == top10
    assert trace["labels"][-1] == "Others"
    assert math.isclose(trace["values"][-1], total - sum(top10))
    assert math.isclose(sum(trace["values"]), total)
    assert trace["text"][0] == d.format_pct(top10[0] / total * 100)
    assert "/global total" in trace["hovertext"][0]


def test_share_falls_back_to_the_loaded_sum_and_never_draws_negative_others():
    rows = positioned([coin("a", 6.0, volume=3.0), coin("b", 4.0, volume=1.0)])
    fetched = snap(loaded_cap=10.0, loaded_volume=4.0)
    cap = d.share_figure(fetched, rows, "market_cap")["data"][0]
    assert cap["labels"] == ["A (A)", "B (B)"]  # top 10 = everything: no Others
    assert cap["text"] == ["60.0 %", "40.0 %"]
    assert "loaded coins' total" in cap["hovertext"][0]
    # A total below the named slices (inconsistent inputs): no negative Others slice.
    low = d.share_figure(snap(loaded_cap=8.0), rows, "market_cap")["data"][0]
    assert "Others" not in low["labels"] and min(low["values"]) > 0


def test_volume_share_uses_the_volume_ranking_not_the_cap_ranking():
    rows = positioned([coin(f"c{i:02d}", 1e9 * (30 - i), volume=1e6 * (i + 1)) for i in range(15)])
    fig = d.share_figure(snap(loaded_cap=1.0, global_volume=1e9), rows, "total_volume")
    (trace,) = fig["data"]
    assert trace["values"][:10] == [1e6 * (i + 1) for i in range(14, 4, -1)]
    assert math.isclose(trace["values"][-1], 1e9 - sum(1e6 * (i + 1) for i in range(5, 15)))


def test_movers_are_ranked_among_the_top_coins_only_and_split_by_sign():
    rows = [coin(f"c{i:03d}", 1e9 * (200 - i), change=((i * 7) % 23) - 11.0) for i in range(120)]
    rows.append(coin("tiny", 1.0, change=900.0))  # cap position 121: outside the top 100
    rows = positioned(rows)
    fig = d.movers_figure(snap(), rows)
    gainers, losers = fig["data"]
    pool = [r for r in rows if r.cap_pos <= d.TOP_COINS]
    best = sorted((r for r in pool if r.change_24h_pct > 0),
                  key=lambda r: (-r.change_24h_pct, r.cap_pos))[:10]  # fmt: skip
    worst = sorted((r for r in pool if r.change_24h_pct < 0),
                   key=lambda r: (r.change_24h_pct, r.cap_pos))[:10]  # fmt: skip
    assert gainers["x"] == [r.change_24h_pct for r in best]
    assert losers["x"] == [r.change_24h_pct for r in reversed(worst)]  # biggest loss at the bottom
    assert 900.0 not in gainers["x"]
    assert all(x > 0 for x in gainers["x"]) and all(x < 0 for x in losers["x"])
    assert gainers["text"][0] == d.format_change(best[0].change_24h_pct)
    assert fig["layout"]["xaxis"]["range"][0] < min(losers["x"])  # room for the labels


def test_a_snapshot_without_changes_gets_a_note_not_an_empty_axis():
    fig = d.movers_figure(snap(), positioned([coin("a", 1.0), coin("b", 2.0)]))
    assert fig["data"] == []
    assert "No 24h price change" in fig["layout"]["annotations"][0]["text"]


def test_names_from_the_data_are_escaped_in_plotly_labels():
    rows = positioned([coin("evil", 5.0, name='<a href="javascript:alert(1)">x</a>', symbol="<b>")])
    fig = d.top_coins_figure(snap(), rows)
    label = fig["data"][0]["y"][0]
    assert "<a" not in label and "<b>" not in label
    assert "&lt;a href=" in label


def test_scorecards():
    s = snap(global_cap=2.5e12, loaded_cap=2.2e12, global_volume=None, loaded_volume=9.9e10,
             btc=54.23, coin_count=1200)  # fmt: skip
    cards = d.scorecards(s, generated_at=T0 + timedelta(hours=3, minutes=10))
    assert cards["market_cap"]["value"] == "$2.50T"
    assert "/global" in cards["market_cap"]["note"] and "$2.20T" in cards["market_cap"]["note"]
    assert cards["volume"]["value"] == "$99.00B"
    assert "sum of the 1,200 loaded coins" in cards["volume"]["note"]
    assert cards["coins"]["value"] == "1,200"
    assert cards["btc"]["value"] == "54.2 %"
    assert cards["eth"] == {"value": "n/a", "note": "ethereum is not in this snapshot"}
    assert cards["freshness"]["value"] == "3 h 10 min old"
    assert "2026-11-27 06:00 UTC" in cards["freshness"]["note"]
    assert "snapshot s1" in cards["freshness"]["note"]


def test_history_figures_follow_the_snapshots_in_time_and_leave_a_mark_trace():
    snaps = [
        snap("a", fetched_at=T0, global_cap=3e12, loaded_cap=2e12, is_latest=False),
        snap("b", fetched_at=T0 + timedelta(days=1), global_cap=None, loaded_cap=2.1e12),
    ]
    fig = d.cap_history_figure(snaps)
    total, loaded, mark = fig["data"]
    assert total["y"] == [3e12, None]  # fetched basis: a gap, not a zero
    assert loaded["y"] == [2e12, 2.1e12]
    assert total["x"] == ["2026-11-27 06:00:00.000000", "2026-11-28 06:00:00.000000"]
    assert mark["name"] == "Selected snapshot" and mark["x"] == []
    coins = {
        "usd|a": positioned([coin("x", 7.0, snapshot_id="a", dominance=60.0),
                             coin("y", 3.0, snapshot_id="a", dominance=25.0)]),
        "usd|b": positioned([coin("y", 5.0, snapshot_id="b", dominance=50.0)]),
    }  # fmt: skip
    dom = d.dominance_history_figure(snaps, coins)
    names = [t["name"] for t in dom["data"]]
    assert names == ["Top 10 combined", "Largest coin", "Selected snapshot"]  # no BTC/ETH data
    assert dom["data"][0]["y"] == [85.0, 50.0]
    assert dom["data"][1]["y"] == [60.0, 50.0]
    one = d.cap_history_figure(snaps[:1])
    assert one["layout"]["xaxis"]["range"] == [
        "2026-11-26 18:00:00.000000",
        "2026-11-27 18:00:00.000000",
    ]


def test_rank_axis_has_whole_number_ticks_with_rank_1_on_top():
    axis = d.rank_axis([1, 1, 1])
    assert axis["dtick"] == 1 and axis["range"][0] > axis["range"][1]
    assert d.rank_axis([3, 40, None])["dtick"] == 8


def _data(*snapshots: d.Snapshot, coins: list[d.CoinRow] = ()) -> d.DashboardData:
    return d.DashboardData(
        snapshots=list(snapshots),
        coins=positioned(list(coins)),
        source="test",
        generated_at=T0 + timedelta(hours=1),
    )


def test_payload_selectors_default_and_marks():
    a = snap("a", fetched_at=T0, is_latest=False, loaded_cap=10.0)
    b = snap("b", fetched_at=T0 + timedelta(hours=6), loaded_cap=20.0)
    c = snap("c", fetched_at=T0 + timedelta(days=1), loaded_cap=30.0)
    e = snap("e", "eur", fetched_at=T0 + timedelta(days=2), loaded_cap=40.0)
    b = d.Snapshot(**{**b.__dict__, "is_latest": False})
    rows = [coin("x", 10.0, snapshot_id="a", dominance=100.0),
            coin("x", 20.0, snapshot_id="b"), coin("x", 30.0, snapshot_id="c"),
            coin("z", 40.0, snapshot_id="e", currency="eur")]  # fmt: skip
    payload = d.build_payload(_data(e, c, a, b, coins=rows))
    assert payload["default"] == "usd|c"  # usd first, its latest snapshot
    usd = payload["currencies"]["usd"]
    assert usd["dates"] == [["2026-11-28", ["usd|c"]], ["2026-11-27", ["usd|b", "usd|a"]]]
    assert payload["snapshots"]["usd|a"]["marks"] == {
        "cap_history": 10.0,
        "dominance_history": 100.0,
    }
    assert payload["snapshots"]["usd|b"]["coins"] == [["x", "1. X (X)"]]
    assert set(payload["coin_history"]["usd"]) == {"x"}
    assert payload["coin_history"]["usd"]["x"]["data"][0]["y"] == [1.0, 1.0, 1.0]
    assert payload["bounds"]["shown"] == {"eur": 1, "usd": 3}
    assert d.build_payload(_data(e, c, coins=rows), "EUR")["default"] == "eur|e"
    only_eur = d.build_payload(_data(e, coins=rows))
    assert only_eur["default"] == "eur|e"
    with pytest.raises(d.DashboardEmpty, match=r"no snapshot in 'gbp'.*eur, usd"):
        d.build_payload(_data(e, c, coins=rows), "gbp")
    with pytest.raises(d.DashboardEmpty, match="No snapshot loaded"):
        d.build_payload(_data())


def test_the_page_is_self_contained_and_its_data_cannot_close_the_script():
    hostile = coin("x", 5.0, name="</script><script>alert(1)</script>", dominance=1.0)
    payload = d.build_payload(_data(snap(loaded_cap=5.0), coins=[hostile]))
    page = d.render_html(payload, plotly_js="/* plotly stub */")
    assert page.count("</script>") == 3  # plotly, the JSON, the app: nothing from the data
    assert not re.search(r"<(script|link|img)[^>]+(src|href)=", page)  # nothing to fetch
    for chart in d.CHART_IDS:
        assert f'id="chart-{chart}"' in page
    for card, _ in d.CARDS:
        assert f'id="card-{card}-value"' in page
    embedded = re.search(
        r'<script type="application/json" id="dashboard-data">(.*?)</script>', page, re.S
    ).group(1)
    assert json.loads(embedded) == json.loads(json.dumps(payload))
    assert "latest 60 snapshots" in page and "top 100 coins" in page


def test_the_real_page_inlines_plotly_js():
    payload = d.build_payload(_data(snap(loaded_cap=5.0), coins=[coin("x", 5.0)]))
    page = d.render_html(payload)
    assert "plotly.js v" in page[:200_000]
    assert page.count("plotly.js v") == 1  # inlined once for every chart
    assert not re.search(r"<script[^>]+src=", page)


def test_rows_from_the_warehouse_decimal_nan_and_naive_times():
    from decimal import Decimal

    row = {
        "SNAPSHOT_ID": "s1", "VS_CURRENCY": None, "COIN_ID": "x", "SYMBOL": "x", "NAME": "X",
        "MARKET_CAP_RANK": Decimal("3"), "CURRENT_PRICE": Decimal("1.25"),
        "MARKET_CAP": float("nan"), "MARKET_CAP_DOMINANCE_PCT": float("inf"),
        "TOTAL_VOLUME": 7, "VOLUME_PCT": None, "PRICE_CHANGE_PERCENTAGE_24H": -1.5,
        "CAP_POS": 1, "VOL_POS": 2,
    }  # fmt: skip
    c = d.coin_from_row(row)
    assert (c.market_cap_rank, c.current_price, c.total_volume) == (3, 1.25, 7.0)
    assert c.market_cap is None and c.dominance_pct is None  # never NaN in the page's JSON
    assert c.vs_currency == d.UNKNOWN_CURRENCY
    s = d.snapshot_from_row({
        "SNAPSHOT_ID": "s1", "VS_CURRENCY": "usd", "FETCH_DATE": T0.date(),
        "FETCHED_AT": T0.replace(tzinfo=None), "SNAPSHOT_LABEL": None, "IS_LATEST": True,
        "COIN_COUNT": Decimal("12"), "LOADED_MARKET_CAP": Decimal("1e12"), "LOADED_VOLUME": None,
        "GLOBAL_MARKET_CAP": None, "GLOBAL_VOLUME": None, "DOMINANCE_BASIS": "fetched",
        "BTC_DOMINANCE_PCT": None, "ETH_DOMINANCE_PCT": None, "GAINERS_24H": 5, "LOSERS_24H": 6,
        "SNAPSHOTS_IN_CURRENCY": 1,
    })  # fmt: skip
    assert s.fetched_at == T0 and s.label == "s1" and s.total_market_cap == 1e12
    assert d.scorecards(s, T0)["volume"]["value"] == "n/a"


# --- CLI on an empty warehouse (real fakesnow server) ---------------------------------------------


def test_dashboard_on_an_empty_warehouse_says_so_exits_1_and_writes_nothing(tmp_path: Path):
    out = StringIO()
    code = main(["--local-dir", str(tmp_path), "dashboard"], out=out)
    assert code == 1
    assert out.getvalue().strip() == d.EMPTY_WAREHOUSE
    assert not (tmp_path / "dashboard.html").exists()
    # CRYPTO_DATA without rows: the same.
    with LocalWarehouse(tmp_path / "warehouse") as wh:
        conn = wh.connect()
        try:
            with conn.cursor() as cur:
                cur.execute("CREATE TABLE CRYPTO_DATA (SNAPSHOT_ID VARCHAR, COIN_ID VARCHAR)")
        finally:
            conn.close()
    out = StringIO()
    assert main(["--local-dir", str(tmp_path), "dashboard"], out=out) == 1
    assert out.getvalue().strip() == d.EMPTY_WAREHOUSE
    # Rows but no reporting views (a warehouse loaded by an older version).
    with LocalWarehouse(tmp_path / "warehouse") as wh:
        conn = wh.connect()
        try:
            with conn.cursor() as cur:
                cur.execute("INSERT INTO CRYPTO_DATA VALUES ('s1', 'bitcoin')")
        finally:
            conn.close()
    out = StringIO()
    assert main(["--local-dir", str(tmp_path), "dashboard"], out=out) == 1
    assert "reporting views" in out.getvalue() and "\n" not in out.getvalue().strip()
    assert not (tmp_path / "dashboard.html").exists()


def test_out_in_a_missing_folder_is_refused_before_querying(tmp_path: Path, capsys):
    code = main(
        ["--local-dir", str(tmp_path), "dashboard", "--out", str(tmp_path / "no" / "x.html")]
    )
    assert code == 2
    assert "--out" in capsys.readouterr().err
    assert not (tmp_path / "warehouse").exists()  # refused before starting the warehouse


@pytest.mark.parametrize("name", ["passwd", "page.txt", "dir.html"])
def test_out_never_replaces_anything_but_an_html_file(tmp_path: Path, capsys, name):
    target = tmp_path / name
    if name == "dir.html":
        target.mkdir()
    else:
        target.write_text("keep me")
    code = main(["--local-dir", str(tmp_path), "dashboard", "--out", str(target)])
    assert code == 2
    assert "--out" in capsys.readouterr().err
    assert name == "dir.html" or target.read_text() == "keep me"
    assert not (tmp_path / "warehouse").exists()


# --- last success / last failure (ETL_RUNS) -------------------------------------------------------


def test_the_page_shows_the_last_success_and_the_last_failure_escaped():
    ok = d.RunStatus("SUCCEEDED", T0, "s-ok", "run-1")
    bad = d.RunStatus(
        "FAILED", T0 + timedelta(hours=1), "s-bad", "run-2", "Extract",
        "SourceUnavailableError", "page 2: <b>HTTP 500</b> " + "x" * 400,
    )  # fmt: skip
    data = d.DashboardData(
        snapshots=[snap(loaded_cap=5.0)],
        coins=positioned([coin("x", 5.0)]),
        source="test",
        generated_at=T0 + timedelta(hours=2),
        last_success=ok,
        last_failure=bad,
    )
    payload = d.build_payload(data)
    runs = payload["runs"]
    assert runs["success"] == "2026-11-27 06:00 UTC · snapshot s-ok"
    assert runs["failure"].startswith(
        "2026-11-27 07:00 UTC · snapshot s-bad · failed at Extract: SourceUnavailableError:"
        " page 2: <b>HTTP 500</b> xxx"
    )
    assert runs["failure"].endswith("…") and "x" * 300 not in runs["failure"]
    assert runs["failing"] == "yes"  # the failure is newer than the success
    page = d.render_html(payload, plotly_js="/* stub */")
    assert 'class="meta failing" id="run-status"' in page
    assert (
        "&lt;b&gt;HTTP 500&lt;/b&gt;" in page and "<b>HTTP 500</b>" not in page.split("<script")[0]
    )
    # A success after the failure: not failing any more; none at all: said so.
    later = d.RunStatus("SUCCEEDED", T0 + timedelta(hours=3), "s-ok2")
    assert d.run_status_text(later, bad)["failing"] == "no"
    assert d.run_status_text(None, None) == {
        "success": "none recorded in ETL_RUNS",
        "failure": "none recorded in ETL_RUNS",
        "failing": "no",
    }


def test_run_status_is_read_from_etl_runs_old_or_new(tmp_path: Path):
    """Real fakesnow: the latest row of each status (failures recorded by the load's
    record_failure action), and an ETL_RUNS from before failures were recorded."""
    from functions.load import sql
    from functions.load.handler import record_failure_run

    def failure(name: str, state: str) -> dict:
        return {
            "action": "record_failure",
            "failed_state": state,
            "error": {"Error": "LoadError", "Cause": f"{state} said no"},
            "execution": {"name": name, "id": f"arn:aws:states:::execution:m:{name}"},
            "state_input": {"snapshot_id": f"s-{name}"},
        }

    with LocalWarehouse(tmp_path / "warehouse") as wh:
        conn = wh.connect()
        try:
            with conn.cursor() as cur:
                assert d.fetch_run_status(cur) == (None, None)  # no ETL_RUNS yet
                # ETL_RUNS as its first release created it (no coverage, no failure columns).
                added = sql.ADDED_COLUMNS[sql.ETL_RUNS]
                cols = ", ".join(f"{c} {t}" for c, t in sql.ETL_RUN_COLUMNS if c not in added)
                cur.execute(f"CREATE TABLE ETL_RUNS ({cols})")
                cur.execute(
                    "INSERT INTO ETL_RUNS (SNAPSHOT_ID, EXECUTION_ID, STATUS, LOADED_AT) VALUES"
                    " ('s-old', 'arn:x:e-old', 'SUCCEEDED',"
                    " CAST('2026-11-27T06:00:00+00:00' AS TIMESTAMP_TZ))"
                )
                success, failed = d.fetch_run_status(cur)
                assert (success.snapshot_id, success.execution, failed) == ("s-old", "e-old", None)
                assert success.at == T0
            # The load adds the failure columns to the older table, then records.
            record_failure_run(failure("e1", "Transform"), config=wh.config())
            record_failure_run(failure("e2", "Load"), config=wh.config())
            with conn.cursor() as cur:
                success, failed = d.fetch_run_status(cur)
        finally:
            conn.close()
    assert success.snapshot_id == "s-old"
    assert (failed.snapshot_id, failed.execution, failed.failed_state) == ("s-e2", "e2", "Load")
    assert (failed.error, failed.message) == ("LoadError", "Load said no")
    assert failed.at > success.at


# --- The daily price series (COIN_PRICE_SERIES, once a backfill loaded history) ---------------


def point(coin_id: str, day: int, price: float, source: str = "market_chart", pos: int = 1,
          currency: str = "usd") -> d.SeriesPoint:  # fmt: skip
    return d.SeriesPoint(currency, coin_id, T0.date() + timedelta(days=day), price, price * 10,
                         source, pos)  # fmt: skip


def test_price_series_draws_history_solid_then_snapshots_dotted_per_coin():
    points = [
        point("ethereum", -2, 3000.0, pos=2),
        point("bitcoin", 0, 60500.0, "snapshot"),
        point("bitcoin", -2, 59000.0),
        point("bitcoin", -1, 60000.0),
        point("tether", -1, 1.0, "snapshot", pos=3),
    ]
    fig = d.price_series_figure("usd", points)
    traces = [(t["name"], t["line"]["dash"], t["x"], t["y"], t["showlegend"]) for t in fig["data"]]
    day = [str(T0.date() + timedelta(days=i)) for i in (-2, -1, 0)]
    assert (
        traces
        == [
            ("bitcoin", "solid", day[:2], [59000.0, 60000.0], True),
            ("bitcoin", "dot", day[2:], [60500.0], False),  # same legend entry as its history
            ("ethereum", "solid", day[:1], [3000.0], True),
            ("tether", "dot", day[1:2], [1.0], True),  # no history: its snapshots carry the legend
        ]
    )
    assert fig["data"][0]["line"]["color"] == fig["data"][1]["line"]["color"]
    assert fig["layout"]["yaxis"]["type"] == "log"
    assert "snapshot" in fig["data"][1]["hovertext"][0]


def test_the_series_panel_is_on_the_page_only_with_backfilled_history():
    usd, eur = snap("u", "usd", loaded_cap=5.0), snap("e", "eur", loaded_cap=5.0)
    rows = [coin("x", 5.0, snapshot_id="u"), coin("x", 5.0, snapshot_id="e", currency="eur")]
    without = d.build_payload(_data(usd, eur, coins=rows))
    assert without["price_series"] == {}
    assert f'id="chart-{d.SERIES_CHART}"' not in d.render_html(without, plotly_js="/**/")

    data = _data(usd, eur, coins=rows)
    data.series = [point("<b>x</b>", -1, 2.0)]
    payload = d.build_payload(data)
    assert set(payload["price_series"]) == {"usd", "eur"}
    assert payload["price_series"]["usd"]["data"][0]["name"] == "&lt;b&gt;x&lt;/b&gt;"
    note = payload["price_series"]["eur"]["layout"]["annotations"][0]["text"]
    assert note == "No backfilled history in EUR"
    page = d.render_html(payload, plotly_js="/**/")
    assert f'id="chart-{d.SERIES_CHART}"' in page and "COIN_PRICE_SERIES" in page


def test_series_is_read_from_the_view_for_the_top_coins_with_history(tmp_path: Path):
    """Real fakesnow: two usd snapshots loaded, then history for three coins; the series is
    the top coins with history by latest market cap, history then the snapshot days."""
    import gzip

    from functions.load.history import (
        HistoryRow,
        history_csv_header,
        history_csv_lines,
        load_history_file,
    )
    from functions.load.loader import ensure_objects
    from functions.load.sql import Names
    from tests.unit.test_reporting_views import SNAPSHOTS, load

    with LocalWarehouse(tmp_path / "warehouse") as wh:
        conn = wh.connect()
        try:
            with conn.cursor() as cur:
                assert d.fetch_series(cur) == []  # no table at all
            ensure_objects(conn, Names())
            with conn.cursor() as cur:
                assert d.fetch_series(cur) == []  # an empty table: no chart
            for snapshot in SNAPSHOTS[:3]:  # usd-a, usd-b (2026-11-26), usd-c (2026-11-27)
                load(conn, snapshot, tmp_path)
            days = [T0.date() - timedelta(days=i) for i in range(10, 0, -1)]  # to 2026-11-26
            caps = {"bitcoin": 3e12, "ethereum": 1e12, "coin-05": 1e9}
            text = history_csv_header() + "".join(
                history_csv_lines(c, "usd", [HistoryRow(x, 1.0 + i, cap, 1.0)
                                             for i, x in enumerate(days)])
                for c, cap in caps.items()
            )  # fmt: skip
            path = tmp_path / "h.csv.gz"
            path.write_bytes(gzip.compress(text.encode()))
            load_history_file(conn, local_file=path, row_count=30, names=Names(), label="t")
            with conn.cursor() as cur:
                series = d.fetch_series(cur, top=2)
            data = d.fetch_dashboard_data(conn, "test")
        finally:
            conn.close()
    # Ranked by the latest day's market cap (the 2026-11-27 snapshot), history coins only.
    assert next(p.coin_id for p in series if p.coin_pos == 1) == "bitcoin"
    assert {p.coin_id for p in series} == {"bitcoin", "ethereum"}
    btc = [p for p in series if p.coin_id == "bitcoin"]
    assert [p.day for p in btc] == [*days, T0.date()]
    assert [p.source for p in btc] == ["market_chart"] * 10 + ["snapshot"]
    assert {p.coin_id for p in data.series} == set(caps)
    fig = d.build_payload(data)["price_series"]["usd"]
    assert [t["name"] for t in fig["data"] if t["showlegend"]] == ["bitcoin", "ethereum",
                                                                    "coin-05"]  # fmt: skip
