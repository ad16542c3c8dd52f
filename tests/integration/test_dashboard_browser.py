"""The dashboard end to end: the offline pipeline loads four snapshots (three in USD with
different coin counts, one in EUR) into a real local warehouse, ``crypto-etl dashboard`` writes
the page through the reporting views, and a real headless Chromium (Selenium) opens it.

The browser tests skip only where Chromium or its driver is not installed (Debian packages
``chromium`` and ``chromium-driver``); the data tests run everywhere.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from io import StringIO
from pathlib import Path
from typing import Any

import pytest

from local_mode import dashboard as d
from local_mode.cli import main
from local_mode.run_command import RunOptions, run_pipeline
from local_mode.warehouse_commands import warehouse_connection
from tests.conftest import REPO_ROOT

pytestmark = pytest.mark.integration

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
SCREENSHOT = REPO_ROOT / ".local" / "dashboard-screenshot.png"
# (snapshot id, coins, currency), loaded in this order: snap-c is the latest USD snapshot.
SNAPSHOTS = (("snap-a", 40, "usd"), ("snap-b", 80, "usd"), ("snap-c", 150, "usd"),
             ("snap-e", 60, "eur"))  # fmt: skip


@pytest.fixture(scope="module")
def local_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    local = tmp_path_factory.mktemp("dashboard")
    for snapshot_id, coins, currency in SNAPSHOTS:
        report = run_pipeline(
            RunOptions(
                local_dir=local,
                offline=True,
                coins=coins,
                snapshot_id=snapshot_id,
                vs_currency=currency,
            ),
            StringIO(),
        )
        assert report.status == "SUCCEEDED", (snapshot_id, report.error, report.error_message)
    return local


@pytest.fixture(scope="module")
def page(local_dir: Path) -> Path:
    out = StringIO()
    assert main(["--local-dir", str(local_dir), "dashboard"], out=out) == 0, out.getvalue()
    path = local_dir / "dashboard.html"
    assert out.getvalue().startswith(f"Dashboard: {path.resolve()} (4 snapshots")
    return path


def _sql(local_dir: Path, statement: str) -> list[dict[str, Any]]:
    with warehouse_connection(local_dir) as conn, conn.cursor() as cur:
        cur.execute(statement)
        names = [c[0] for c in cur.description]
        return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]


# --- the data behind the page (no browser needed) ---------------------------------------------


def _ordered(rows: list[dict[str, Any]], column: str) -> list[str]:
    """Coin ids by ``column`` descending, NULLs last, ties by id (as coins_sql orders them)."""
    ranked = sorted(rows, key=lambda r: (r[column] is None, -(r[column] or 0), r["COIN_ID"]))
    return [r["COIN_ID"] for r in ranked]


@pytest.mark.parametrize(
    ("snapshot_limit", "top_coins"), [(2, 10), (d.SNAPSHOT_LIMIT, d.TOP_COINS)]
)
def test_embedded_rows_are_exactly_the_stated_bounds(
    local_dir: Path, page, snapshot_limit, top_coins
):
    with warehouse_connection(local_dir) as conn:
        data = d.fetch_dashboard_data(
            conn, "test", snapshot_limit=snapshot_limit, top_coins=top_coins
        )
    rows = _sql(
        local_dir,
        "SELECT SNAPSHOT_ID, VS_CURRENCY, FETCHED_AT, COIN_ID, MARKET_CAP, TOTAL_VOLUME"
        " FROM CRYPTO_DATA",
    )
    # The latest `snapshot_limit` snapshots of each currency, computed from the table.
    expected_snaps: dict[str, list[str]] = {}
    for sid, _, cur in SNAPSHOTS:
        expected_snaps.setdefault(cur, []).append(sid)  # loaded oldest first
    expected_snaps = {cur: sids[-snapshot_limit:] for cur, sids in expected_snaps.items()}
    got = {}
    for s in data.snapshots:
        got.setdefault(s.vs_currency, []).append(s.snapshot_id)
    assert got == expected_snaps
    assert {s.snapshot_id: s.snapshots_in_currency for s in data.snapshots}["snap-c"] == 3
    assert {s.snapshot_id for s in data.snapshots if s.is_latest} == {"snap-c", "snap-e"}

    by_snapshot: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        by_snapshot.setdefault(r["SNAPSHOT_ID"], []).append(r)
    # Coins kept for their history: in some embedded snapshot's top `top_coins` by market cap.
    history_coins = {
        cur: {cid for sid in sids for cid in _ordered(by_snapshot[sid], "MARKET_CAP")[:top_coins]}
        for cur, sids in expected_snaps.items()
    }
    embedded: dict[str, set[str]] = {}
    for c in data.coins:
        embedded.setdefault(c.snapshot_id, set()).add(c.coin_id)
    for cur, sids in expected_snaps.items():
        for sid in sids:
            mine = by_snapshot[sid]
            by_cap = _ordered(mine, "MARKET_CAP")
            expected = (
                set(by_cap[:top_coins])
                | set(_ordered(mine, "TOTAL_VOLUME")[: d.SHARE_SLICES])
                | ({r["COIN_ID"] for r in mine} & history_coins[cur])
            )
            assert embedded[sid] == expected, sid
            positions = {c.coin_id: c.cap_pos for c in data.coins if c.snapshot_id == sid}
            assert sorted(positions, key=positions.__getitem__) == [
                cid for cid in by_cap if cid in positions
            ]
    if top_coins == 10:
        assert len(embedded["snap-c"]) < 150  # the bound cut the 150-coin snapshot


def test_scorecards_equal_the_warehouse_figures(local_dir: Path, page):
    with warehouse_connection(local_dir) as conn:
        payload = d.build_payload(d.fetch_dashboard_data(conn, "test"))
    (sums,) = _sql(
        local_dir,
        "SELECT COUNT(*) AS N, SUM(MARKET_CAP) AS CAP, SUM(TOTAL_VOLUME) AS VOL,"
        " SUM(MARKET_CAP) / SUM(MARKET_CAP_DOMINANCE_PCT) * 100 AS GLOBAL_CAP,"
        " SUM(TOTAL_VOLUME) / SUM(VOLUME_PCT) * 100 AS GLOBAL_VOL,"
        " MIN(DOMINANCE_BASIS) AS LOW, MAX(DOMINANCE_BASIS) AS HIGH,"
        " MAX(CASE WHEN COIN_ID = 'bitcoin' THEN MARKET_CAP_DOMINANCE_PCT END) AS BTC"
        " FROM CRYPTO_DATA WHERE SNAPSHOT_ID = 'snap-b'",
    )
    assert sums["LOW"] == sums["HIGH"] == "global"  # the replay server answers /global
    cards = payload["snapshots"]["usd|snap-b"]["cards"]
    assert cards["coins"]["value"] == "80" == d.format_count(sums["N"])
    assert cards["market_cap"]["value"] == d.format_money(sums["GLOBAL_CAP"], "usd")
    assert d.format_money(sums["CAP"], "usd") in cards["market_cap"]["note"]
    assert cards["volume"]["value"] == d.format_money(sums["GLOBAL_VOL"], "usd")
    assert cards["btc"]["value"] == d.format_pct(sums["BTC"])  # "n/a" without a bitcoin row
    assert cards["freshness"]["note"].startswith("fetched ")
    assert "snapshot snap-b · a newer snapshot exists" in cards["freshness"]["note"]


def test_unknown_currency_exits_1_and_writes_nothing(local_dir: Path, page, tmp_path: Path):
    out = StringIO()
    target = tmp_path / "x.html"
    args = ["--local-dir", str(local_dir), "dashboard", "--out", str(target), "--vs-currency"]
    assert main([*args, "gbp"], out=out) == 1
    assert "no snapshot in 'gbp'" in out.getvalue() and "eur, usd" in out.getvalue()
    assert not target.exists()
    assert main([*args, "EUR"], out=StringIO()) == 0
    assert target.stat().st_size > 1_000_000  # plotly.js inlined


# --- the page in a real browser ----------------------------------------------------------------


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
    if missing:
        pytest.skip(
            f"no headless browser here ({', '.join(missing)} missing):"
            " apt-get install -y chromium chromium-driver"
        )
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed")
    from selenium.webdriver.chrome.service import Service

    os.environ.setdefault("SE_OFFLINE", "true")  # Selenium Manager must not download a driver
    logs = tmp_path_factory.mktemp("chromium")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--no-first-run",
                "--window-size=1400,2300",
                f"--user-data-dir={tempfile.mkdtemp(dir=logs)}"):  # fmt: skip
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    with (logs / "chromedriver.log").open("w") as log:
        # Chromium's stderr (dbus noise) goes to this file, not the test output.
        service = Service(str(CHROMEDRIVER), log_output=log)
        driver = webdriver.Chrome(options=options, service=service)
        try:
            driver.set_page_load_timeout(60)
            yield driver
        finally:
            driver.quit()


CHART_POINTS = """
return Array.from(document.querySelectorAll('.chart')).map(function (gd) {
  return [gd.id.slice(6), (gd._fullData || []).map(function (t) { return t._length || 0; })];
});
"""
TRACE = """
var gd = document.getElementById(arguments[0]);
return gd.data.map(function (t) {
  return {x: Array.from(t.x || []), y: Array.from(t.y || []), text: Array.from(t.text || [])};
});
"""


def _open(browser: Any, page: Path) -> None:
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(page.resolve().as_uri())
    WebDriverWait(browser, 30).until(
        lambda drv: drv.execute_script("return document.body.dataset.ready") == "1"
    )


def _select(browser: Any, element_id: str, value: str) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    Select(browser.find_element(By.ID, element_id)).select_by_value(value)


def _severe(browser: Any) -> list[dict[str, Any]]:
    return [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]


def test_every_chart_renders_points_without_errors_or_network(browser, page: Path):
    _open(browser, page)
    points = dict(browser.execute_script(CHART_POINTS))
    assert set(points) == set(d.CHART_IDS)
    for chart, lengths in points.items():
        data_traces = lengths[:-1] if chart in (*d.HISTORY_CHARTS, d.COIN_CHART) else lengths
        assert data_traces and all(n > 0 for n in data_traces), (chart, lengths)
    assert points["top20"] == [20]
    assert points["dominance"] == [d.SHARE_SLICES + 1]  # top 10 + Others
    assert points["cap_history"][:2] == [3, 3]  # three USD snapshots
    assert points["cap_history"][-1] == 1  # the selected snapshot is marked
    assert _severe(browser) == []
    # Self-contained: the page loaded nothing (no script, style, font or data request).
    assert browser.execute_script("return performance.getEntriesByType('resource').length") == 0
    card = browser.execute_script(
        "return ['market_cap','coins','btc','freshness'].map(function (k) {"
        " return document.getElementById('card-' + k + '-value').textContent; });"
    )
    assert card[0].startswith("$") and card[0][-1] in "TB"
    assert card[1] == "150"  # snap-c, the latest USD snapshot
    (btc,) = _sql(
        page.parent,
        "SELECT MAX(MARKET_CAP_DOMINANCE_PCT) AS PCT FROM CRYPTO_DATA"
        " WHERE SNAPSHOT_ID = 'snap-c' AND COIN_ID = 'bitcoin'",
    )
    assert card[2] == d.format_pct(btc["PCT"])  # "n/a" when the market has no 'bitcoin' id
    assert card[3].endswith(" old")


def test_choosing_another_snapshot_changes_every_snapshot_chart(browser, page: Path):
    _open(browser, page)
    assert browser.execute_script("return document.body.dataset.snapshot") == "usd|snap-c"
    before = {c: browser.execute_script(TRACE, f"chart-{c}") for c in d.SNAPSHOT_CHARTS}
    mark_before = browser.execute_script(TRACE, "chart-cap_history")[-1]
    _select(browser, "snapshot-select", "usd|snap-a")
    assert browser.execute_script("return document.body.dataset.snapshot") == "usd|snap-a"
    after = {c: browser.execute_script(TRACE, f"chart-{c}") for c in d.SNAPSHOT_CHARTS}
    top_before, top_after = before["top20"][0], after["top20"][0]
    assert top_after["x"] != top_before["x"]  # the bars' market caps changed
    assert len(top_after["x"]) == 20
    assert top_after["x"] == sorted(top_after["x"], reverse=True)
    for chart in d.SNAPSHOT_CHARTS:
        assert after[chart] != before[chart], chart
    mark_after = browser.execute_script(TRACE, "chart-cap_history")[-1]
    assert mark_after["x"] != mark_before["x"]
    coins = browser.execute_script("return document.getElementById('card-coins-value').textContent")
    assert coins == "40"
    assert _severe(browser) == []


def test_currency_and_coin_pickers(browser, page: Path):
    _open(browser, page)
    _select(browser, "currency-select", "eur")
    assert browser.execute_script("return document.body.dataset.snapshot") == "eur|snap-e"
    top = browser.execute_script(TRACE, "chart-top20")[0]
    assert all(t.startswith("€") for t in top["text"])
    history = browser.execute_script(TRACE, "chart-cap_history")
    assert len(history[1]["x"]) == 1  # EUR has one snapshot
    options = browser.execute_script(
        "return Array.from(document.getElementById('coin-select').options).map(o => o.value)"
    )
    assert len(options) == 60
    first = browser.execute_script(TRACE, "chart-coin_history")
    _select(browser, "coin-select", options[5])
    second = browser.execute_script(TRACE, "chart-coin_history")
    assert second[0]["y"] != first[0]["y"]  # another coin's price
    _select(browser, "currency-select", "usd")
    assert browser.execute_script("return document.body.dataset.snapshot") == "usd|snap-c"
    assert _severe(browser) == []


def test_screenshot_for_a_person_to_look_at(browser, page: Path):
    _open(browser, page)
    height = browser.execute_script("return document.documentElement.scrollHeight")
    browser.set_window_size(1400, height + 40)  # the whole page in one picture
    browser.execute_script("window.dispatchEvent(new Event('resize'))")
    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    assert browser.save_screenshot(str(SCREENSHOT))
    assert SCREENSHOT.stat().st_size > 50_000
