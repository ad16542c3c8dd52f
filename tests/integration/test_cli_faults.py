"""``crypto-etl run --offline --faults SPEC`` through the real CLI: each fault ends as defined."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

# Small retry budget and timeout so every case is fast (as tests/integration/test_pipeline.py).
FAST_ENV = {
    "COINGECKO_MAX_RETRIES": "2",
    "COINGECKO_MAX_RETRY_WAIT_SECONDS": "3",
    "COINGECKO_BACKOFF_BASE_SECONDS": "0.05",
    "COINGECKO_TIMEOUT_SECONDS": "1",
}
CASES = {
    # bursts within the retry budget (2) and a response slower than the timeout: retried
    "retried": "markets:page=2:503x2,markets:page=3:slow=2,global:429:retry-after=0",
    # a burst longer than the budget: Extract fails, named
    "burst_over": "markets:page=2:503x3",
    # data-shape faults and /global as HTML: the run succeeds, every loss counted or flagged
    "data": "markets:page=2:rank-shift,markets:page=3:missing=id,global:html:always",
}


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("crypto-etl", path=str(Path(sys.executable).parent))
    assert exe, "the crypto-etl console script is not installed in this venv"
    return subprocess.run(
        [exe, *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **FAST_ENV, **(env or {})},
        check=False,
    )


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, subprocess.CompletedProcess[str]]:
    """Every case run once, two at a time (each starts its own server and warehouse)."""
    root = tmp_path_factory.mktemp("faults")

    def run(name: str) -> subprocess.CompletedProcess[str]:
        local = str(root / name)
        args = ("--local-dir", local, "run", "--offline", "--coins", "600", "--faults")
        return _cli(*args, CASES[name], "--snapshot-id", f"it-{name.replace('_', '-')}")

    with ThreadPoolExecutor(max_workers=2) as pool:
        return dict(zip(CASES, pool.map(run, CASES), strict=True))


def _line(stdout: str, label: str) -> str:
    return next(line for line in stdout.splitlines() if line.strip().startswith(label))


def test_bursts_and_a_slow_answer_within_the_budget_are_retried_and_counted(runs):
    proc = runs["retried"]
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (
        "Faults: markets:page=2:503:x2, markets:page=3:slow=2, global:429:retry-after=0"
        in proc.stdout
    )
    assert "Read timed out" in proc.stdout
    # /global 2 calls, page 1: 1, page 2: 3, page 3: 2
    assert "coins fetched 600 (3 pages, 8 API calls, 4 retries, 1 HTTP 429)" in proc.stdout
    assert "600 rows for the snapshot (new); 0 rejected, 0 duplicates" in proc.stdout
    assert "dominance     global basis" in proc.stdout


def test_a_burst_past_the_budget_fails_extract_by_name(runs):
    proc = runs["burst_over"]
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert _line(proc.stdout, "failed state").split() == ["failed", "state", "Extract"]
    error = _line(proc.stdout, "error ")
    assert "SourceUnavailableError" in error and "HTTP 503" in error and "page=2" in error
    assert "after 3 attempts" in error
    assert "alerts sent   1" in proc.stdout


def test_data_shape_faults_are_counted_and_global_degrades(runs):
    proc = runs["data"]
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # 600 served: one coin twice (rank shift), one on no page, page 3's 100 coins without id
    assert "499 rows for the snapshot (new); 100 rejected, 1 duplicate" in proc.stdout
    assert "rejected      missing_id 100" in proc.stdout
    dominance = _line(proc.stdout, "dominance")
    assert "! fetched basis" in dominance and "not JSON" in dominance


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--faults", "markets:503"], "invalid --faults: injects faults into the local replay"),
        (["--offline", "--faults", "markets:teapot"], "invalid --faults: 'teapot' in"),
        (["--offline", "--faults", "markets:page=1:rank-shift"], "needs a previous page"),
    ],
)
def test_faults_are_refused_in_one_line_before_anything_starts(tmp_path, args, message):
    proc = _cli("--local-dir", str(tmp_path / "local"), "run", *args)
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and message in proc.stderr
    assert proc.stderr.startswith("error: ValidationError: ")
    assert not (tmp_path / "local").exists()  # checked before the folders are made
