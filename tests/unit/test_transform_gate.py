"""The quality gate: each check on small frames, its message, its configuration, the previous
snapshot found in a folder lake, and the Transform handler refusing to write a failing set."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from functions.common import keys
from functions.common.errors import ConfigError, DataQualityError
from functions.common.storage import LocalStorage, put_json
from functions.transform import gate as gate_module
from functions.transform.gate import (
    CHECK_NAMES,
    CHECK_NON_NEGATIVE,
    CHECK_REQUIRED,
    CHECK_ROW_COUNT,
    CHECK_SHARE,
    CHECK_UNIQUE,
    GateConfig,
    PreviousRows,
    check_non_negative,
    check_required,
    check_row_count,
    check_shares,
    check_unique_ids,
    gate_config_from_env,
    gate_message,
    run_gate,
)
from functions.transform.handler import handler, run
from functions.transform.previous import find_previous, snapshot_days
from functions.transform.transform import transform
from tests.unit.test_transform_handler import BUCKET, GLOBAL, SNAPSHOT, lay_out
from tests.unit.test_transform_rules import coin, manifest_for

# --- frames ----------------------------------------------------------------------------------


def processed(n: int = 4) -> pd.DataFrame:
    """A clean processed frame of ``n`` coins, made by the real transform."""
    rows = [coin(f"c{i:02d}", i) for i in range(1, n + 1)]
    result = transform(
        manifest_for(rows),
        [rows],
        {"data": {"total_market_cap": {"usd": 1e9}, "total_volume": {"usd": 1e9}}},
        snapshot_id="s",
        fetched_at="2026-11-23T08:00:00+00:00",
        fetch_date="2026-11-23",
        vs_currency="usd",
    )
    assert result.row_count == n and result.quality["dominance_basis"] == "global"
    return result.processed.copy()


def test_a_clean_frame_passes_every_check() -> None:
    result = run_gate(processed(), dominance_basis="global", min_row_fraction=0.5, previous=None)
    assert [c["name"] for c in result.checks] == list(CHECK_NAMES)
    assert result.passed and result.failed == []
    for check in result.checks:
        assert check["gate"] is True
        assert check["rows"] == 0 and check["coins"] == [] and check["coin_count"] == 0
        assert check["threshold"]


def test_a_repeated_coin_id_fails_naming_it() -> None:
    df = processed()
    df = pd.concat([df, df.iloc[[1, 1]]], ignore_index=True)
    check = check_unique_ids(df)
    assert not check["passed"]
    assert check["rows"] == 2  # two extra copies of c02
    assert check["coins"] == ["c02"] and check["coin_count"] == 1
    assert check["threshold"] == "each coin_id at most once"


@pytest.mark.parametrize("column", gate_module.NON_NEGATIVE_COLUMNS)
def test_a_negative_quantity_fails_naming_the_column_and_coin(column: str) -> None:
    df = processed()
    df.loc[2, column] = -1
    check = check_non_negative(df)
    assert not check["passed"] and check["rows"] == 1 and check["coins"] == ["c03"]
    assert f"{column} 1" in check["detail"]
    assert check["threshold"].startswith(">= 0 in ")


def test_signed_fields_and_nulls_are_not_negative_quantities() -> None:
    df = processed()
    df["price_change_24h"] = -5.0
    df["ath_change_percentage"] = -90.0
    df["roi_percentage"] = -40.0
    df.loc[0, "max_supply"] = np.nan
    df.loc[1, "market_cap"] = np.nan
    df.loc[2, "current_price"] = 0.0
    assert check_non_negative(df)["passed"]


def test_several_negative_columns_count_rows_once() -> None:
    df = processed()
    df.loc[0, ["market_cap", "total_supply"]] = -1
    df.loc[3, "circulating_supply"] = -2
    check = check_non_negative(df)
    assert check["rows"] == 2 and check["coins"] == ["c01", "c04"]
    assert "market_cap 1" in check["detail"] and "total_supply 1" in check["detail"]
    assert "circulating_supply 1" in check["detail"]


@pytest.mark.parametrize("column", ["market_cap_dominance_pct", "volume_pct"])
@pytest.mark.parametrize("basis", ["global", "fetched"])
def test_a_share_above_100_fails(column: str, basis: str) -> None:
    df = processed()
    df.loc[1, column] = 100.5
    check = check_shares(df, basis)
    assert not check["passed"] and check["rows"] == 1 and check["coins"] == ["c02"]
    assert f"on the {basis} basis" in check["detail"] and "max 100.5%" in check["detail"]
    assert check["threshold"].startswith("<= 100% per coin")


def test_a_share_of_exactly_100_passes() -> None:
    df = processed()
    df.loc[0, "market_cap_dominance_pct"] = 100.0
    df.loc[1, "volume_pct"] = 100.0 + 1e-9  # rounding of cap / total x 100
    df.loc[2, "market_cap_dominance_pct"] = np.nan
    assert check_shares(df, "global")["passed"]


@pytest.mark.parametrize("column", gate_module.REQUIRED_COLUMNS)
def test_a_null_required_value_fails(column: str) -> None:
    df = processed()
    df[column] = df[column].astype(object)
    df.loc[2, column] = None
    check = check_required(df)
    assert not check["passed"] and check["rows"] == 1
    # A null coin id is named by its row position.
    assert check["coins"] == (["#2"] if column == "coin_id" else ["c03"])
    assert f"{column} 1" in check["detail"]


def test_a_missing_required_column_fails_every_row() -> None:
    check = check_required(processed(3).drop(columns=["vs_currency"]))
    assert check["rows"] == 3 and check["coins"] == ["c01", "c02", "c03"]


def test_optional_columns_may_be_null() -> None:
    df = processed()
    for column in ("market_cap", "current_price", "last_updated", "image_url", "ath_date"):
        df[column] = None
    assert check_required(df)["passed"]


PREV = PreviousRows(
    snapshot_id="prev", run_id="prev-run", fetched_at="2026-11-22T08:00:00+00:00", rows=600
)


def test_row_count_below_the_fraction_of_the_previous_fails() -> None:
    check = check_row_count(200, PREV, 0.5)
    assert not check["passed"] and check["rows"] == 200
    assert "200 rows vs 600 in the previous snapshot prev (run prev-run" in check["detail"]
    assert check["threshold"] == ">= 0.5 x the previous snapshot's rows = 300 rows"


def test_row_count_at_the_fraction_passes() -> None:
    assert check_row_count(300, PREV, 0.5)["passed"]
    assert check_row_count(600, PREV, 1.0)["passed"]
    assert not check_row_count(599, PREV, 1.0)["passed"]


def test_row_count_without_a_previous_snapshot_passes_and_says_so() -> None:
    check = check_row_count(5, None, 0.5, "no loaded snapshot in usd")
    assert check["passed"]
    assert (
        check["detail"] == "5 rows; no previous snapshot to compare with: no loaded snapshot in usd"
    )


def test_row_count_fraction_zero_disables_the_check() -> None:
    check = check_row_count(1, PREV, 0.0)
    assert check["passed"] and check["threshold"] == "disabled"
    assert "QUALITY_MIN_ROW_FRACTION=0" in check["detail"]


def test_the_message_names_every_violation() -> None:
    df = processed(30)
    df = pd.concat([df, df.iloc[[0]]], ignore_index=True)  # c01 twice
    df.loc[1:25, "total_supply"] = -1.0  # 25 rows: more than the 20 named
    df.loc[2, "market_cap_dominance_pct"] = 180.0
    df["vs_currency"] = df["vs_currency"].astype(object)
    df.loc[3, "vs_currency"] = None
    result = run_gate(df, dominance_basis="global", min_row_fraction=0.5, previous=PREV)
    assert [c["name"] for c in result.failed] == list(CHECK_NAMES)
    message = gate_message("snap-1", result)
    assert message.startswith(
        "snapshot snap-1: quality gate failed 5 of 5 checks, nothing written to processed/: "
    )
    assert f"{CHECK_UNIQUE}: 1 rows (threshold each coin_id at most once" in message
    assert f"{CHECK_NON_NEGATIVE}: 25 rows (threshold >= 0 in current_price" in message
    assert "total_supply 25" in message and " and 5 more" in message
    assert f"{CHECK_SHARE}: 1 rows (threshold <= 100% per coin" in message
    assert "coins: c03)" in message
    assert f"{CHECK_REQUIRED}: 1 rows (threshold not null: snapshot_id" in message
    assert "coins: c04)" in message
    assert (
        f"{CHECK_ROW_COUNT}: 31 rows (threshold >= 0.5 x the previous snapshot's rows = 300 rows;"
        " 31 rows vs 600 in the previous snapshot prev (run prev-run" in message
    )


# --- configuration ---------------------------------------------------------------------------


def test_config_defaults() -> None:
    assert gate_config_from_env({}) == GateConfig(enabled=True, min_row_fraction=0.5)
    assert gate_config_from_env({"QUALITY_GATE": " ", "QUALITY_MIN_ROW_FRACTION": ""}) == (
        GateConfig(True, 0.5)
    )


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"QUALITY_GATE": "off"}, GateConfig(False, 0.5)),
        ({"QUALITY_GATE": "OFF"}, GateConfig(False, 0.5)),
        ({"QUALITY_GATE": "On"}, GateConfig(True, 0.5)),
        ({"QUALITY_MIN_ROW_FRACTION": "0"}, GateConfig(True, 0.0)),
        ({"QUALITY_MIN_ROW_FRACTION": " 0.8 "}, GateConfig(True, 0.8)),
        ({"QUALITY_MIN_ROW_FRACTION": "1"}, GateConfig(True, 1.0)),
    ],
)
def test_config_values(env: dict[str, str], expected: GateConfig) -> None:
    assert gate_config_from_env(env) == expected


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("QUALITY_GATE", "yes"),
        ("QUALITY_GATE", "0"),
        ("QUALITY_MIN_ROW_FRACTION", "half"),
        ("QUALITY_MIN_ROW_FRACTION", "-0.1"),
        ("QUALITY_MIN_ROW_FRACTION", "1.5"),
        ("QUALITY_MIN_ROW_FRACTION", "nan"),
        ("QUALITY_MIN_ROW_FRACTION", "inf"),
        ("QUALITY_MIN_ROW_FRACTION", "50%"),
    ],
)
def test_bad_config_names_the_variable(name: str, value: str) -> None:
    with pytest.raises(ConfigError, match=f"^configuration {name}: ") as info:
        gate_config_from_env({name: value})
    assert info.value.name == name and repr(value) in str(info.value)


# --- the previous snapshot in a folder lake --------------------------------------------------

OURS = datetime(2026, 11, 23, 8, 0, 1, 250000, tzinfo=UTC)


@pytest.fixture
def lake(tmp_path: Path) -> LocalStorage:
    return LocalStorage(tmp_path / "lake", bucket=BUCKET)


def add_snapshot(
    lake: LocalStorage,
    snapshot_id: str,
    fetched_at: str,
    *,
    rows: int | None = 100,
    coin_count: int = 110,
    vs_currency: str = "usd",
    max_coins: int | str = 1000,
    loaded: bool = True,
    run_id: str | None = None,
    day: str | None = None,
    write_manifest: bool = True,
) -> None:
    """A snapshot as the pipeline leaves it: raw manifest, processed file, index (``current``
    set when ``loaded``). ``day`` is its partition date (default: the fetch day)."""
    run_id = run_id or f"{snapshot_id}-run"
    partition = date.fromisoformat(day or fetched_at[:10])
    prefix = keys.raw_prefix(snapshot_id, partition, run_id)
    manifest_key = keys.manifest_key(prefix)
    if write_manifest:
        put_json(
            lake,
            manifest_key,
            {
                "snapshot_id": snapshot_id,
                "run_id": run_id,
                "fetched_at": fetched_at,
                "vs_currency": vs_currency,
                "max_coins": max_coins,
                "coin_count": coin_count,
                "pages": [],
            },
        )
    processed_key = keys.processed_key(snapshot_id, partition, run_id)
    lake.put_bytes(processed_key, b"", "application/gzip")
    index_key = keys.snapshot_index_key(snapshot_id)
    index = json.loads(lake.get_bytes(index_key)) if lake.exists(index_key) else None
    index = index or {
        "snapshot_id": snapshot_id,
        "partition_date": partition.isoformat(),
        "created_at": fetched_at,
        "created_by_execution": run_id,
        "current": None,
    }
    if loaded:
        current = {"run_id": run_id, "manifest_key": manifest_key, "processed_key": processed_key}
        if rows is not None:
            current["rows"] = rows
        index["current"] = current
    put_json(lake, index_key, index)


def find(lake: LocalStorage, **kw):
    args = {
        "run_id": "ours-run",
        "fetched_at": OURS,
        "vs_currency": "usd",
        "max_coins": 1000,
    } | kw
    return find_previous(lake, **args)


def test_no_snapshot_at_all(lake: LocalStorage) -> None:
    found = find(lake)
    assert found.previous is None
    assert found.note == "no loaded snapshot in usd with max_coins 1000 fetched before this one"
    assert found.snapshots_listed == found.candidates_read == 0


def test_the_latest_earlier_snapshot_with_the_same_currency_and_max_coins(lake) -> None:
    add_snapshot(lake, "a-old", "2026-11-21T08:00:00+00:00", rows=50)
    add_snapshot(lake, "b-prev", "2026-11-22T20:00:00+00:00", rows=600)
    add_snapshot(lake, "c-early", "2026-11-22T02:00:00+00:00", rows=70)
    # Newer than b-prev but not comparable, not loaded, or fetched after this run:
    add_snapshot(lake, "d-eur", "2026-11-23T07:00:00+00:00", vs_currency="eur")
    add_snapshot(lake, "e-top250", "2026-11-23T07:10:00+00:00", max_coins=250)
    add_snapshot(lake, "f-all", "2026-11-23T07:20:00+00:00", max_coins="all")
    add_snapshot(lake, "g-unloaded", "2026-11-23T07:30:00+00:00", loaded=False)
    add_snapshot(lake, "h-later", "2026-11-23T09:00:00+00:00")
    add_snapshot(lake, "i-tomorrow", "2026-11-24T09:00:00+00:00")
    found = find(lake)
    assert found.previous == PreviousRows(
        snapshot_id="b-prev",
        run_id="b-prev-run",
        fetched_at="2026-11-22T20:00:00+00:00",
        rows=600,
    )
    assert found.note == "the latest loaded run in usd with max_coins 1000"
    assert found.snapshots_listed == 9
    # The 23rd (5 snapshots, one each) and the 22nd (2); not the 24th nor the 21st.
    assert found.candidates_read == 7
    assert "g-unloaded: no loaded run" in found.skipped


def test_currency_case_and_other_max_coins(lake: LocalStorage) -> None:
    add_snapshot(lake, "usd-1000", "2026-11-22T08:00:00+00:00", rows=10)
    add_snapshot(lake, "usd-all", "2026-11-22T09:00:00+00:00", rows=17000, max_coins="all")
    add_snapshot(lake, "eur-1000", "2026-11-22T10:00:00+00:00", rows=30, vs_currency="EUR")
    assert find(lake, vs_currency="USD").previous.snapshot_id == "usd-1000"
    assert find(lake, max_coins="all").previous.rows == 17000
    assert find(lake, vs_currency="eur").previous.snapshot_id == "eur-1000"
    assert find(lake, max_coins=250).previous is None
    assert find(lake, vs_currency="gbp").previous is None
    none = find(lake, max_coins=None)
    assert none.previous is None and none.note == "this run has no max_coins to match"


def test_only_unloaded_snapshots_means_none(lake: LocalStorage) -> None:
    add_snapshot(lake, "never-loaded", "2026-11-22T08:00:00+00:00", loaded=False)
    found = find(lake)
    assert found.previous is None and found.skipped == ["never-loaded: no loaded run"]


def test_a_rerun_is_held_to_the_loaded_run_of_its_own_snapshot(lake: LocalStorage) -> None:
    add_snapshot(lake, "daily", "2026-11-20T08:00:00+00:00", rows=900, run_id="daily-1")
    found = find(lake, run_id="daily-2")
    assert found.previous.snapshot_id == "daily" and found.previous.run_id == "daily-1"
    # This very run, already loaded (a Transform retried after the Load), is not its own past.
    assert find(lake, run_id="daily-1").previous is None


def test_rows_fall_back_to_the_manifest_coin_count(lake: LocalStorage) -> None:
    add_snapshot(lake, "old-index", "2026-11-22T08:00:00+00:00", rows=None, coin_count=321)
    assert find(lake).previous.rows == 321


def test_a_snapshot_whose_manifest_expired_is_skipped(lake: LocalStorage) -> None:
    add_snapshot(lake, "kept", "2026-11-21T08:00:00+00:00", rows=5)
    add_snapshot(lake, "expired", "2026-11-22T08:00:00+00:00", write_manifest=False)
    found = find(lake)
    assert found.previous.snapshot_id == "kept"
    assert found.skipped[0].startswith("expired: unreadable manifest")


def test_the_search_stops_at_the_first_day_with_a_match(lake: LocalStorage) -> None:
    for d in range(1, 21):
        add_snapshot(lake, f"s{d:02d}", f"2026-11-{d:02d}T08:00:00+00:00", rows=d)
    found = find(lake)
    assert found.previous.snapshot_id == "s20" and found.candidates_read == 1


def test_the_search_is_bounded(lake: LocalStorage) -> None:
    for d in range(1, 21):
        add_snapshot(lake, f"eur{d:02d}", f"2026-11-{d:02d}T08:00:00+00:00", vs_currency="eur")
    add_snapshot(lake, "usd-old", "2026-10-01T08:00:00+00:00", rows=9)
    found = find(lake, max_candidates=5)
    assert found.previous is None and found.candidates_read == 5
    assert found.note == "none among the 5 newest snapshots in processed/"
    assert find(lake).previous.snapshot_id == "usd-old"  # within the default bound


def test_a_rerun_on_a_later_day_ranks_by_its_first_day(lake: LocalStorage) -> None:
    # The documented approximation: "re-run" has partition day 20 but was fetched on the 22nd.
    add_snapshot(lake, "rerun", "2026-11-22T12:00:00+00:00", day="2026-11-20", rows=1)
    add_snapshot(lake, "plain", "2026-11-21T08:00:00+00:00", rows=2)
    assert find(lake).previous.snapshot_id == "plain"


def test_snapshot_days_reads_processed_keys_only() -> None:
    assert snapshot_days(
        [
            "processed/dt=2026-11-20/snapshot=a/run=r1/crypto_data.csv.gz",
            "processed/dt=2026-11-20/snapshot=a/run=r2/crypto_data.csv.gz",
            "processed/dt=2026-11-21/snapshot=b/run=r/crypto_data.csv.gz",
            "processed/dt=2026-11-21/snapshot=b/run=r/other.txt",
            "processed/dt=2026-13-40/snapshot=c/run=r/crypto_data.csv.gz",
            "processed/dt=2026-11-21/snapshot=..x/run=r/crypto_data.csv.gz",
        ]
    ) == {"a": date(2026, 11, 20), "b": date(2026, 11, 21)}


# --- the handler -----------------------------------------------------------------------------


def _processed_keys(lake: LocalStorage) -> list[str]:
    return lake.list_keys(keys.PROCESSED)


def test_the_handler_refuses_a_failing_set_and_writes_no_processed_file(lake) -> None:
    # The row rules reject a negative supply and let an empty name through, so through the
    # handler only the row count can fail the gate: 3 rows after a snapshot of 10.
    add_snapshot(lake, "prev", "2026-11-22T08:00:00+00:00", rows=10)
    pages = [[coin("a", 1), coin("b", 2, total_supply=-3), coin("c", 3, name=""), coin("d", 4)]]
    event = lay_out(lake, pages, GLOBAL)
    with pytest.raises(DataQualityError) as info:
        run(event, storage=lake, gate=GateConfig())
    message = str(info.value)
    assert f"snapshot {SNAPSHOT}: quality gate failed 1 of 5 checks" in message
    assert "gate_row_count_vs_previous: 3 rows" in message
    assert "set QUALITY_MIN_ROW_FRACTION lower, 0 to skip this check" in message  # the way out
    assert [k for k in _processed_keys(lake) if "snapshot=prev/" not in k] == []
    rejected = keys.rejected_key(SNAPSHOT, date(2026, 11, 23), event["run_id"])
    assert lake.exists(rejected)
    # Off, the same set is written, and the output says the gate was off.
    out = run(event, storage=lake, gate=GateConfig(enabled=False))
    assert out["quality"]["gate"] == {"enabled": False}
    assert [k for k in _processed_keys(lake) if "snapshot=prev/" not in k] == [out["processed_key"]]


def test_the_handler_reports_the_gate_in_quality(lake: LocalStorage) -> None:
    add_snapshot(lake, "prev", "2026-11-22T08:00:00+00:00", rows=4)
    out = run(lay_out(lake, [[coin("a", 1), coin("b", 2)]], GLOBAL), storage=lake)
    quality = out["quality"]
    gate_checks = [c for c in quality["checks"] if c.get("gate")]
    assert [c["name"] for c in gate_checks] == list(CHECK_NAMES)
    assert quality["failed_checks"] == [] and quality["passed"]
    assert quality["gate"] == {
        "enabled": True,
        "passed": True,
        "failed_checks": [],
        "min_row_fraction": 0.5,
        "previous": {
            "snapshot_id": "prev",
            "run_id": "prev-run",
            "fetched_at": "2026-11-22T08:00:00+00:00",
            "rows": 4,
        },
        "note": "the latest loaded run in usd with max_coins 1000",
    }
    assert "2 rows vs 4 in the previous snapshot prev" in gate_checks[-1]["detail"]


def test_the_handler_fails_on_too_few_rows_then_loads_with_fraction_zero(lake) -> None:
    add_snapshot(lake, "prev", "2026-11-22T08:00:00+00:00", rows=10)
    event = lay_out(lake, [[coin("a", 1), coin("b", 2), coin("c", 3)]], GLOBAL)
    with pytest.raises(DataQualityError, match="failed 1 of 5 checks") as info:
        run(event, storage=lake, gate=GateConfig(min_row_fraction=0.5))
    assert "gate_row_count_vs_previous: 3 rows (threshold >= 0.5 x the previous" in str(info.value)
    assert "= 5 rows; 3 rows vs 10 in the previous snapshot prev" in str(info.value)
    assert not lake.exists(keys.processed_key(SNAPSHOT, date(2026, 11, 23), event["run_id"]))
    assert run(event, storage=lake, gate=GateConfig(min_row_fraction=0.3))["row_count"] == 3
    out = run(event, storage=lake, gate=GateConfig(min_row_fraction=0.0))
    assert out["quality"]["gate"]["note"] == "row-count check disabled"


def test_the_lambda_handler_reads_the_gate_from_the_environment(
    lake: LocalStorage, monkeypatch, lambda_context
) -> None:
    add_snapshot(lake, "prev", "2026-11-22T08:00:00+00:00", rows=10)
    event = lay_out(lake, [[coin("a", 1)]], GLOBAL)
    monkeypatch.setenv("LAKE_LOCAL_DIR", str(lake.root))
    monkeypatch.setenv("LAKE_BUCKET", BUCKET)
    with pytest.raises(DataQualityError, match="gate_row_count_vs_previous"):
        handler(event, lambda_context)
    monkeypatch.setenv("QUALITY_MIN_ROW_FRACTION", "0.1")
    assert handler(event, lambda_context)["row_count"] == 1
    monkeypatch.setenv("QUALITY_GATE", "maybe")
    with pytest.raises(ConfigError, match="QUALITY_GATE"):
        handler(event, lambda_context)
