"""The whole pipeline, locally: the real CLI, the real state-machine definition under moto,
a real replay server over HTTP, the real handlers, and real SQL on the fakesnow server."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from local_mode.run_command import RunOptions, run_pipeline
from local_mode.warehouse_commands import query

pytestmark = pytest.mark.integration

# Keep the extract's retry budget tiny so a permanent failure surfaces in seconds.
FAST_RETRY_ENV = {
    "COINGECKO_MAX_RETRIES": "2",
    "COINGECKO_MAX_RETRY_WAIT_SECONDS": "1",
    "COINGECKO_BACKOFF_BASE_SECONDS": "0.05",
    "COINGECKO_TIMEOUT_SECONDS": "5",
}


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("crypto-etl", path=str(Path(sys.executable).parent))
    assert exe, "the crypto-etl console script is not installed in this venv"
    return subprocess.run(
        [exe, *args],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, **(env or {})},
        check=False,
    )


def _sql_json(local_dir: Path, statement: str) -> list[dict[str, Any]]:
    proc = _cli("--local-dir", str(local_dir), "sql", statement, "--json")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


@pytest.fixture(scope="module")
def offline_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    local_dir = tmp_path_factory.mktemp("local")
    proc = _cli(
        "--local-dir", str(local_dir), "run", "--offline", "--coins", "600",
        "--snapshot-id", "it-600",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return local_dir, proc.stdout


def test_offline_run_loads_600_rows_from_three_pages(offline_run):
    local_dir, stdout = offline_run
    for state in ("Extract", "Transform", "Load"):
        assert f"▶ {state}" in stdout and f"✓ {state}" in stdout
    assert "Execution SUCCEEDED" in stdout
    assert "coins fetched 600 (3 pages" in stdout
    rows = _sql_json(
        local_dir,
        "SELECT COUNT(*) AS N, COUNT(DISTINCT COIN_ID) AS IDS,"
        " SUM(MARKET_CAP_DOMINANCE_PCT) AS DOM,"
        " MIN(DOMINANCE_BASIS) AS B1, MAX(DOMINANCE_BASIS) AS B2"
        " FROM CRYPTO_DATA WHERE SNAPSHOT_ID = 'it-600'",
    )
    assert rows[0]["N"] == 600
    assert rows[0]["IDS"] == 600
    assert 0 < rows[0]["DOM"] <= 100
    assert rows[0]["B1"] == rows[0]["B2"] == "global"
    runs = _sql_json(
        local_dir,
        "SELECT STATUS, ROWS_INSERTED FROM ETL_RUNS WHERE SNAPSHOT_ID = 'it-600'",
    )
    assert runs == [{"STATUS": "SUCCEEDED", "ROWS_INSERTED": 600}]
    # The raw pages and the processed file are in the local lake.
    raw = sorted((local_dir / "lake" / "raw").rglob("page-*.json"))
    assert [p.name for p in raw] == ["page-0001.json", "page-0002.json", "page-0003.json"]
    assert list((local_dir / "lake" / "processed").rglob("crypto_data.csv.gz"))


def test_show_prints_the_top_10(offline_run):
    local_dir, _ = offline_run
    proc = _cli("--local-dir", str(local_dir), "show")
    assert proc.returncode == 0, proc.stderr
    body = [line for line in proc.stdout.splitlines() if line.strip()]
    header = next(i for i, line in enumerate(body) if line.startswith("RANK"))  # after a title
    assert body[header].split()[:3] == ["RANK", "NAME", "SYMBOL"]
    assert body[-1] == "(10 rows)"
    ranks = [int(line.split()[0]) for line in body[header + 2 : -1]]
    assert ranks == list(range(1, 11))


def test_rerunning_the_same_snapshot_adds_no_rows(offline_run):
    local_dir, _ = offline_run
    proc = _cli(
        "--local-dir", str(local_dir), "run", "--offline", "--coins", "600",
        "--snapshot-id", "it-600",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # What the table holds afterwards, not only what this load did.
    assert "600 rows for the snapshot (replacing 600; 0 coins new to it)" in proc.stdout
    rows = _sql_json(
        local_dir, "SELECT COUNT(*) AS N FROM CRYPTO_DATA WHERE SNAPSHOT_ID = 'it-600'"
    )
    assert rows[0]["N"] == 600


def test_permanent_500_on_page_2_fails_alerts_and_loads_nothing(tmp_path: Path):
    from local_mode.synthetic import generate_markets

    replay = tmp_path / "replay"
    replay.mkdir()
    coins = generate_markets(250, seed=7)
    (replay / "markets-page-0001.json").write_text(json.dumps(coins))
    (replay / "markets-page-0002.json").write_text(
        json.dumps({"status": {"error_code": 500, "error_message": "Internal server error"}})
    )
    local_dir = tmp_path / "local"
    report = run_pipeline(
        RunOptions(
            local_dir=local_dir,
            replay_dir=replay,
            snapshot_id="it-fail",
            extra_env=FAST_RETRY_ENV,
        )
    )
    assert report.status == "FAILED"
    assert report.failed_state == "Extract"
    assert report.error == "SourceUnavailableError"
    assert "500" in (report.error_message or "")
    assert len(report.alerts) == 1
    assert report.alerts[0]["failed_state"] == "Extract"
    assert report.alerts[0]["error"] == "SourceUnavailableError"
    # Nothing reached the processed zone or the warehouse.
    assert not (local_dir / "lake" / "processed").exists()
    tables = query(
        local_dir,
        "SELECT COUNT(*) FROM INFORMATION_SCHEMA.TABLES WHERE TABLE_NAME = 'CRYPTO_DATA'",
    )[1]
    if tables[0][0]:
        count = query(local_dir, "SELECT COUNT(*) FROM CRYPTO_DATA")[1]
        assert count[0][0] == 0


def test_failed_execution_exits_non_zero_and_names_the_state(tmp_path: Path):
    replay = tmp_path / "replay"
    replay.mkdir()
    (replay / "markets-page-0001.json").write_text(
        json.dumps({"status": {"error_code": 401, "error_message": "Invalid API Key"}})
    )
    proc = _cli("--local-dir", str(tmp_path / "local"), "run", "--replay", str(replay))
    assert proc.returncode == 1
    assert "Execution FAILED" in proc.stdout
    assert "failed state  Extract" in proc.stdout
    assert "Invalid API Key" in proc.stdout


def test_replay_of_recorded_bodies(tmp_path: Path, shared_coingecko_dir: Path):
    """Two recorded 100-coin pages (a month apart, so mostly the same coins): both pages are
    fetched at the recording's page size, the repeats are removed and counted."""
    replay = tmp_path / "replay"
    replay.mkdir()
    for n, name in ((1, "markets_madjin_daily-crypto_14.json"),
                    (2, "markets_madjin_daily-crypto_15.json")):  # fmt: skip
        shutil.copy(shared_coingecko_dir / name, replay / f"markets-page-{n:04d}.json")
    shutil.copy(shared_coingecko_dir / "global_JKorf_CoinGecko.Net_2.json", replay / "global.json")
    local_dir = tmp_path / "local"
    proc = _cli(
        "--local-dir", str(local_dir), "run", "--replay", str(replay),
        "--snapshot-id", "recorded",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    page1 = json.loads((replay / "markets-page-0001.json").read_text())
    page2 = json.loads((replay / "markets-page-0002.json").read_text())
    unique = {c["id"] for c in page1} | {c["id"] for c in page2}
    assert "coins fetched 200 (3 pages" in proc.stdout  # 100 + 100 + the empty page 3
    assert f"{len(page1) + len(page2) - len(unique)} duplicates" in proc.stdout
    rows = _sql_json(
        local_dir,
        "SELECT COIN_ID, MARKET_CAP, MARKET_CAP_DOMINANCE_PCT, DOMINANCE_BASIS FROM CRYPTO_DATA"
        " WHERE SNAPSHOT_ID = 'recorded' ORDER BY MARKET_CAP DESC NULLS LAST",
    )
    assert len(rows) == len(unique)
    # The first page's copy of a repeated coin is the one kept.
    top = max(page1, key=lambda c: c["market_cap"] or 0)
    assert rows[0]["COIN_ID"] == top["id"]
    assert rows[0]["MARKET_CAP"] == pytest.approx(top["market_cap"])
    global_body = json.loads((replay / "global.json").read_text())
    total = global_body["data"]["total_market_cap"]["usd"]
    assert rows[0]["DOMINANCE_BASIS"] == "global"
    assert rows[0]["MARKET_CAP_DOMINANCE_PCT"] == pytest.approx(top["market_cap"] / total * 100)


def test_cli_refuses_bad_flags_before_starting_anything(tmp_path: Path):
    local_dir = tmp_path / "local"
    for args in (["--per-page", "300"], ["--max-coins", "0"], ["--offline", "--coins", "0"],
                 ["--replay", str(tmp_path / "missing")], ["--snapshot-id", "a/../b"]):  # fmt: skip
        proc = _cli("--local-dir", str(local_dir), "run", *args)
        assert proc.returncode == 2, (args, proc.stdout, proc.stderr)
        assert "Traceback" not in proc.stderr
    assert not (local_dir / "warehouse").exists()
