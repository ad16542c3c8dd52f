"""Inputs from public bug reports of other CoinGecko/Snowflake/Step Functions projects, run
through the whole local pipeline: the replay server over HTTP, the same ASL under moto, the
real handlers, the lake folder and real SQL on the fakesnow server. Each expectation is the
right value, not today's."""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path
from typing import Any

import pytest

from local_mode.run_command import RunOptions, RunReport, print_summary, run_pipeline
from local_mode.synthetic import generate_global, generate_markets
from local_mode.warehouse_commands import query
from tests.integration.test_pipeline import FAST_RETRY_ENV, _cli

pytestmark = pytest.mark.integration

UNAVAILABLE_403 = {
    "status": {"error_code": 403, "error_message": "This endpoint is temporarily unavailable"}
}


def _replay(root: Path, pages: list[Any], global_body: Any = None, name: str = "replay") -> Path:
    folder = root / name
    folder.mkdir()
    for n, body in enumerate(pages, start=1):
        text = body if isinstance(body, str) else json.dumps(body)
        (folder / f"markets-page-{n:04d}.json").write_text(text, encoding="utf-8")
    if global_body is not None:
        (folder / "global.json").write_text(json.dumps(global_body), encoding="utf-8")
    return folder


def _run(local_dir: Path, replay: Path, snapshot_id: str, **kwargs: Any) -> tuple[RunReport, str]:
    report = run_pipeline(
        RunOptions(
            local_dir=local_dir,
            replay_dir=replay,
            snapshot_id=snapshot_id,
            extra_env=FAST_RETRY_ENV,
            **kwargs,
        ),
        out=io.StringIO(),
    )
    out = io.StringIO()
    print_summary(report, out)
    return report, out.getvalue()


def _rows(local_dir: Path, sql: str) -> list[dict[str, Any]]:
    columns, rows = query(local_dir, sql)
    return [dict(zip(columns, row, strict=True)) for row in rows]


def _coins(n: int, seed: int = 3) -> list[dict[str, Any]]:
    return generate_markets(n, seed=seed)


def _lake_files(lake: Path) -> dict[str, str]:
    return {
        p.relative_to(lake).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(lake.rglob("*"))
        if p.is_file()
    }


# --- 2. /global is auxiliary ---------------------------------------------------------------


def test_global_403_loads_the_snapshot_on_the_fetched_basis(tmp_path: Path):
    replay = _replay(tmp_path, [_coins(3)], UNAVAILABLE_403)
    report, summary = _run(tmp_path / "local", replay, "g403")

    assert report.status == "SUCCEEDED", summary
    rows = _rows(
        tmp_path / "local",
        "SELECT COIN_ID, DOMINANCE_BASIS, MARKET_CAP_DOMINANCE_PCT FROM CRYPTO_DATA"
        " WHERE SNAPSHOT_ID = 'g403' ORDER BY COIN_ID",
    )
    assert len(rows) == 3
    assert {r["DOMINANCE_BASIS"] for r in rows} == {"fetched"}
    assert sum(r["MARKET_CAP_DOMINANCE_PCT"] for r in rows) == pytest.approx(100.0)
    out = report.output or {}
    assert out["global_key"] is None
    assert "403" in out["global_error"]
    assert "temporarily unavailable" in out["global_error"]
    manifest = json.loads((tmp_path / "local" / "lake" / out["manifest_key"]).read_text())
    assert manifest["global_key"] is None and "403" in manifest["global_error"]
    assert "temporarily unavailable" in out["quality"]["dominance_basis_reason"]
    assert "fetched basis" in summary and "403" in summary


# --- 3. one bad character never fails the snapshot -------------------------------------------


def test_carriage_return_and_lone_surrogate_in_names(tmp_path: Path):
    coins = _coins(4)
    coins[0]["name"] = "Carriage\rReturn Coin"
    coins[1]["name"] = 'Quote "and" comma, back\\slash\\'
    coins[2]["name"] = "\ud83d"  # json.dumps writes the lone surrogate as the escape \ud83d
    report, summary = _run(tmp_path / "local", _replay(tmp_path, [coins]), "text")

    assert report.status == "SUCCEEDED", summary
    rows = _rows(
        tmp_path / "local", "SELECT COIN_ID, NAME FROM CRYPTO_DATA WHERE SNAPSHOT_ID = 'text'"
    )
    names = {r["COIN_ID"]: r["NAME"] for r in rows}
    assert names == {c["id"]: c["name"] for c in (coins[0], coins[1], coins[3])}
    out = report.output or {}
    assert out["rejected_count"] == 1
    assert any(
        code.startswith("invalid_text:name") for code in out["quality"]["rejected_by_reason"]
    )
    assert "invalid_text:name" in summary and coins[2]["id"] in summary


# --- 4. a short page is not proof of the end of the market -----------------------------------


def test_pages_shorter_than_asked_are_followed_to_the_empty_page(tmp_path: Path):
    coins = _coins(8)
    replay = _replay(tmp_path, [coins[:3], coins[3:6], coins[6:]], generate_global(coins))
    report, summary = _run(tmp_path / "local", replay, "short", per_page=5)

    assert report.status == "SUCCEEDED", summary
    out = report.output or {}
    assert out["coin_count"] == 8
    assert out["pages"] == 4  # 3 + 3 + 2 and the empty page 4 that confirms the end
    assert out["stop_reason"] == "empty_page" and out["end_confirmed"] is True
    assert "3" in (out["paging_warning"] or "")  # the server served 3 rows per page
    rows = _rows(
        tmp_path / "local", "SELECT COUNT(*) AS N FROM CRYPTO_DATA WHERE SNAPSHOT_ID = 'short'"
    )
    assert rows == [{"N": 8}]


# --- 5. impossible derived values are not published as facts ---------------------------------


def test_a_coin_worth_more_than_the_whole_market_is_rejected_and_named(tmp_path: Path):
    coins = _coins(5)
    spam = dict(coins[4], id="spam-token", symbol="spam", name="Spam", market_cap=3e27)
    spam["total_volume"] = 1e22
    replay = _replay(tmp_path, [[*coins[:4], spam]], generate_global(coins[:4]))
    report, summary = _run(tmp_path / "local", replay, "spam")

    assert report.status == "SUCCEEDED", summary
    rows = _rows(
        tmp_path / "local",
        "SELECT COUNT(*) AS N, MAX(MARKET_CAP_DOMINANCE_PCT) AS DOM, MAX(VOLUME_PCT) AS VOL,"
        " COUNT_IF(COIN_ID = 'spam-token') AS SPAM FROM CRYPTO_DATA WHERE SNAPSHOT_ID = 'spam'",
    )
    assert rows[0]["N"] == 4 and rows[0]["SPAM"] == 0
    assert rows[0]["DOM"] <= 100 and rows[0]["VOL"] <= 100
    quality = (report.output or {})["quality"]
    assert quality["rejected_by_reason"].get("exceeds_global_total:market_cap") == 1
    assert "spam-token" in summary and "exceeds_global_total:market_cap" in summary


# --- 6. the lake stays consistent with the warehouse ------------------------------------------


def test_a_failed_rerun_leaves_the_loaded_runs_lake_copy_intact(tmp_path: Path):
    local_dir = tmp_path / "local"
    lake = local_dir / "lake"
    market = _coins(260, seed=5)
    good = _replay(tmp_path, [market[:250], market[250:]], generate_global(market))
    first, summary = _run(local_dir, good, "s")
    assert first.status == "SUCCEEDED", summary
    index_before = json.loads((lake / "snapshots" / "s.json").read_text())
    loaded_run = index_before["current"]["run_id"]
    files_before = _lake_files(lake)

    # Re-run: page 2 is a permanent 500 (Extract fails).
    broken = _replay(
        tmp_path,
        [market[:250], {"status": {"error_code": 500, "error_message": "boom"}}],
        generate_global(market),
        name="broken",
    )
    second, summary = _run(local_dir, broken, "s")
    assert second.status == "FAILED" and second.failed_state == "Extract", summary

    # Re-run: every row invalid (Transform fails).
    bad_rows = [dict(c, current_price="abc") for c in _coins(3)]
    third, summary = _run(local_dir, _replay(tmp_path, [bad_rows], name="bad"), "s")
    assert third.status == "FAILED" and third.failed_state == "Transform", summary

    files_after = _lake_files(lake)
    for key, digest in files_before.items():
        assert files_after.get(key) == digest, f"{key} changed by a failed re-run"
    assert json.loads((lake / "snapshots" / "s.json").read_text()) == index_before
    manifest = json.loads((lake / index_before["current"]["manifest_key"]).read_text())
    assert manifest["run_id"] == loaded_run and manifest["coin_count"] == 260
    count = _rows(local_dir, "SELECT COUNT(*) AS N FROM CRYPTO_DATA WHERE SNAPSHOT_ID = 's'")
    assert count == [{"N": 260}]


# --- 7. smaller faults of the same family -------------------------------------------------------


def test_nan_literal_rejects_the_row_and_extreme_valid_dates_load(tmp_path: Path):
    coins = _coins(3)
    coins[1]["atl_date"] = "1600-01-01T00:00:00.000Z"
    coins[1]["ath_date"] = "9999-12-31T23:59:59.999Z"
    coins[2]["ath_date"] = None
    text = json.dumps(coins).replace(
        json.dumps(coins[0]["current_price"]), "NaN", 1
    )  # a bare NaN literal, as some JSON encoders emit
    assert "NaN" in text
    report, summary = _run(tmp_path / "local", _replay(tmp_path, [text]), "nan")

    assert report.status == "SUCCEEDED", summary
    out = report.output or {}
    assert out["quality"]["rejected_by_reason"] == {"invalid_number:current_price": 1}
    rows = _rows(
        tmp_path / "local",
        "SELECT COIN_ID, YEAR(ATL_DATE) AS ATL_Y, MONTH(ATL_DATE) AS ATL_M, DAY(ATL_DATE) AS ATL_D,"
        " YEAR(ATH_DATE) AS ATH_Y, MONTH(ATH_DATE) AS ATH_M, DAY(ATH_DATE) AS ATH_D,"
        " ATH_DATE IS NULL AS ATH_NULL"
        " FROM CRYPTO_DATA WHERE SNAPSHOT_ID = 'nan' ORDER BY COIN_ID",
    )
    by_id = {r["COIN_ID"]: r for r in rows}
    assert set(by_id) == {coins[1]["id"], coins[2]["id"]}
    got = by_id[coins[1]["id"]]
    assert (got["ATL_Y"], got["ATL_M"], got["ATL_D"]) == (1600, 1, 1)
    assert (got["ATH_Y"], got["ATH_M"], got["ATH_D"]) == (9999, 12, 31)
    assert by_id[coins[2]["id"]]["ATH_NULL"] is True


def test_null_timestamp_reads_back_as_null_through_the_cli(tmp_path: Path):
    coins = _coins(2)
    coins[0]["ath_date"] = None
    local_dir = tmp_path / "local"
    report, summary = _run(local_dir, _replay(tmp_path, [coins], generate_global(coins)), "nulls")
    assert report.status == "SUCCEEDED", summary
    proc = _cli(
        "--local-dir", str(local_dir), "sql",
        f"SELECT COIN_ID, ATH_DATE FROM CRYPTO_DATA WHERE SNAPSHOT_ID = 'nulls'"
        f" AND COIN_ID = '{coins[0]['id']}'", "--json",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == [{"COIN_ID": coins[0]["id"], "ATH_DATE": None}]


def test_snapshot_id_with_a_trailing_newline_is_refused(tmp_path: Path):
    proc = _cli("--local-dir", str(tmp_path / "local"), "run", "--offline", "--snapshot-id", "s\n")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "snapshot" in (proc.stdout + proc.stderr).lower()
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "local" / "lake").exists()
