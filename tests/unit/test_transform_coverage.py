"""Coverage against /global in the Transform output, and ``max_coins: "all"``, through the real
handler on a folder lake. Expected figures are computed here from the raw rows by hand."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from functions.common.errors import ConfigError, ValidationError
from functions.common.storage import LocalStorage, put_json
from functions.transform.coverage import DEFAULT_MIN_PCT, min_pct_from_env
from functions.transform.handler import handler, parse_event, run
from tests.unit.test_transform_handler import BUCKET, lay_out, log_lines  # noqa: F401
from tests.unit.test_transform_rules import coin

# 6 rows: 4 valid coins (one of them twice: a rank shift), one refused (negative volume, its id
# still a coin that was fetched), one with no id (no coin at all).
PAGE_1 = [
    coin("alpha", 1, market_cap=600.0),
    coin("beta", 2, market_cap=250.5),
    coin("gamma", 3, market_cap=None),
]
PAGE_2 = [
    coin("gamma", 3, market_cap=None),  # a duplicate: counted once
    coin("delta", 4, market_cap=49.5),
    coin("bad", 5, market_cap=10.0, total_volume=-1),  # rejected, but fetched
    coin("   ", 6, market_cap=5.0),  # missing_id: no coin
]
FETCHED_COINS = 5  # alpha, beta, gamma, delta, bad
FETCHED_CAP = 600.0 + 250.5 + 49.5  # the processed rows only; gamma's is NULL


def _global(active: object = 10, cap: object = 1000.0) -> dict:
    return {
        "data": {
            "active_cryptocurrencies": active,
            "total_market_cap": {"usd": cap, "eur": 1.0},
            "total_volume": {"usd": 10_000.0},
        }
    }


@pytest.fixture
def lake(tmp_path: Path) -> LocalStorage:
    return LocalStorage(tmp_path / "lake", bucket=BUCKET)


def test_coverage_figures_for_a_known_input(lake: LocalStorage) -> None:
    event = lay_out(lake, [PAGE_1, PAGE_2], _global(active=8, cap=1000.0), max_coins="all")
    out = run(event, storage=lake, min_pct=50.0)
    assert out["row_count"] == 4 and out["rejected_count"] == 2 and out["duplicate_count"] == 1
    assert out["coverage"] == {
        "coins_fetched": FETCHED_COINS,
        "active_cryptocurrencies": 8,
        "coin_pct": 62.5,  # 5 / 8
        "market_cap_fetched": FETCHED_CAP,
        "total_market_cap": 1000.0,
        "market_cap_pct": 90.0,  # 900 / 1000
        "min_pct": 50.0,
        "whole_market": True,
        "warning": None,
    }
    assert out["max_coins"] == "all"


def test_percentages_are_rounded_to_two_decimals(lake: LocalStorage) -> None:
    event = lay_out(lake, [PAGE_1, PAGE_2], _global(active=7, cap=3000.0))
    cov = run(event, storage=lake, min_pct=0.0)["coverage"]
    assert cov["coin_pct"] == 71.43  # 5 / 7 = 71.428...
    assert cov["market_cap_pct"] == 30.0
    assert cov["whole_market"] is False and cov["warning"] is None  # 0 %: nothing is below


def test_a_top_n_run_warns_on_market_cap_only(lake: LocalStorage, log_lines) -> None:  # noqa: F811
    # 5 of 1,000 coins is by design for a top-N run; 90 % of the market cap is below 95 %.
    event = lay_out(lake, [PAGE_1, PAGE_2], _global(active=1000, cap=1000.0), max_coins=1000)
    cov = run(event, storage=lake, min_pct=95.0)["coverage"]
    assert cov["coin_pct"] == 0.5 and cov["whole_market"] is False
    assert (
        cov["warning"] == "market cap fetched 90 % of /global's total_market_cap[usd], below 95 %"
    )
    warned = [r for r in log_lines if r["level"] == "WARNING" and "coverage" in r["message"]]
    assert [r["message"] for r in warned] == [f"coverage: {cov['warning']}"]
    assert warned[0]["coverage"] == cov


def test_a_top_n_run_covering_the_market_cap_does_not_warn(lake: LocalStorage) -> None:
    event = lay_out(lake, [PAGE_1, PAGE_2], _global(active=1000, cap=900.0), max_coins=1000)
    cov = run(event, storage=lake, min_pct=95.0)["coverage"]
    assert cov["coin_pct"] == 0.5 and cov["market_cap_pct"] == 100.0 and cov["warning"] is None


def test_a_whole_market_run_warns_on_coins_too(lake: LocalStorage) -> None:
    event = lay_out(lake, [PAGE_1, PAGE_2], _global(active=1000, cap=1000.0), max_coins="all")
    cov = run(event, storage=lake, min_pct=95.0)["coverage"]
    assert cov["whole_market"] is True
    assert cov["warning"] == (
        "market cap fetched 90 % of /global's total_market_cap[usd] and coins fetched 0.5 % of"
        " /global's active_cryptocurrencies, below 95 %"
    )


def test_a_whole_market_run_short_of_coins_only(lake: LocalStorage) -> None:
    event = lay_out(lake, [PAGE_1, PAGE_2], _global(active=6, cap=900.0), max_coins="all")
    cov = run(event, storage=lake, min_pct=90.0)["coverage"]
    assert cov["coin_pct"] == 83.33 and cov["market_cap_pct"] == 100.0
    assert (
        cov["warning"] == "coins fetched 83.33 % of /global's active_cryptocurrencies, below 90 %"
    )


def test_without_global_its_fields_are_null_and_nothing_warns(
    lake: LocalStorage,
    log_lines,  # noqa: F811
) -> None:
    event = lay_out(lake, [PAGE_1, PAGE_2], None, max_coins="all", global_error="HTTP 403: no")
    out = run(event, storage=lake, min_pct=99.0)
    assert out["coverage"] == {
        "coins_fetched": FETCHED_COINS,
        "active_cryptocurrencies": None,
        "coin_pct": None,
        "market_cap_fetched": FETCHED_CAP,
        "total_market_cap": None,
        "market_cap_pct": None,
        "min_pct": 99.0,
        "whole_market": True,
        "warning": None,
    }
    assert not [r for r in log_lines if "coverage" in r["message"]]


@pytest.mark.parametrize(
    ("active", "cap"),
    [(None, None), ("many", "n/a"), (0, 0.0), (True, -5.0), (12.5, float("inf")), ({}, [])],
)
def test_global_values_that_are_not_positive_numbers_count_as_absent(
    lake: LocalStorage, active: object, cap: object
) -> None:
    event = lay_out(lake, [PAGE_1, PAGE_2], _global(active=active, cap=cap), max_coins="all")
    cov = run(event, storage=lake, min_pct=90.0)["coverage"]
    assert cov["active_cryptocurrencies"] is None and cov["coin_pct"] is None
    assert cov["total_market_cap"] is None and cov["market_cap_pct"] is None
    assert cov["warning"] is None


def test_numeric_text_in_global_is_read_as_the_transform_reads_it(lake: LocalStorage) -> None:
    event = lay_out(lake, [PAGE_1, PAGE_2], _global(active="10", cap="1.8e3"), max_coins="all")
    cov = run(event, storage=lake, min_pct=40.0)["coverage"]
    assert (cov["active_cryptocurrencies"], cov["coin_pct"]) == (10, 50.0)
    assert (cov["total_market_cap"], cov["market_cap_pct"]) == (1800.0, 50.0)


def test_min_pct_comes_from_the_environment(lake: LocalStorage, monkeypatch) -> None:
    monkeypatch.setenv("LAKE_LOCAL_DIR", str(lake.root))
    monkeypatch.setenv("LAKE_BUCKET", BUCKET)
    monkeypatch.setenv("COVERAGE_MIN_PCT", "99.5")
    event = lay_out(lake, [PAGE_1, PAGE_2], _global(active=5, cap=900.0), max_coins="all")
    cov = handler(event, None)["coverage"]
    assert cov["min_pct"] == 99.5 and cov["coin_pct"] == 100.0 and cov["warning"] is None
    monkeypatch.delenv("COVERAGE_MIN_PCT")
    assert run(event, storage=lake)["coverage"]["min_pct"] == DEFAULT_MIN_PCT == 90.0


@pytest.mark.parametrize("value", ["ninety", "-1", "100.5", "nan", "inf", "1e3"])
def test_a_bad_min_pct_is_a_config_error(lake: LocalStorage, monkeypatch, value: str) -> None:
    with pytest.raises(ConfigError, match="COVERAGE_MIN_PCT"):
        min_pct_from_env({"COVERAGE_MIN_PCT": value})
    monkeypatch.setenv("COVERAGE_MIN_PCT", value)
    event = lay_out(lake, [PAGE_1], _global())
    with pytest.raises(ConfigError, match="COVERAGE_MIN_PCT"):
        run(event, storage=lake)


@pytest.mark.parametrize(("value", "expected"), [("0", 0.0), ("100", 100.0), (" 95 ", 95.0)])
def test_min_pct_bounds_are_inclusive(value: str, expected: float) -> None:
    assert min_pct_from_env({"COVERAGE_MIN_PCT": value}) == expected
    assert min_pct_from_env({}) == min_pct_from_env({"COVERAGE_MIN_PCT": ""}) == 90.0


def test_max_coins_all_means_no_cap(lake: LocalStorage) -> None:
    # The manifest's own cap is ignored too when the event says "all".
    pages = [[coin(f"c{i}", i, market_cap=10.0) for i in range(1, 6)]]
    event = lay_out(lake, pages, _global(active=5, cap=50.0), max_coins="all")
    manifest = json.loads(lake.get_bytes(event["manifest_key"]))
    put_json(lake, event["manifest_key"], {**manifest, "max_coins": 3})
    request = parse_event(event, bucket=BUCKET)
    assert request.max_coins is None and request.whole_market is True
    out = run(event, storage=lake, min_pct=90.0)
    assert out["row_count"] == 5 and out["quality"]["rows_trimmed"] == 0
    assert out["coverage"]["coin_pct"] == 100.0 and out["coverage"]["market_cap_pct"] == 100.0


def test_an_integer_max_coins_still_cuts(lake: LocalStorage) -> None:
    pages = [[coin(f"c{i}", i) for i in range(1, 6)]]
    event = lay_out(lake, pages, _global(), max_coins=3)
    out = run(event, storage=lake, min_pct=0.0)
    assert out["row_count"] == 3 and out["quality"]["rows_trimmed"] == 2
    assert out["coverage"]["whole_market"] is False and out["coverage"]["coins_fetched"] == 3


@pytest.mark.parametrize("value", ["ALL", "All", "", "10", 2.5, True, 0, [], {"all": 1}])
def test_any_other_max_coins_is_refused_naming_the_field(lake: LocalStorage, value) -> None:
    event = lay_out(lake, [PAGE_1], _global())
    with pytest.raises(ValidationError, match="max_coins") as err:
        parse_event({**event, "max_coins": value}, bucket=BUCKET)
    assert err.value.field == "max_coins" and "'all'" in str(err.value)
