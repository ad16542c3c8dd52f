"""``crypto-etl run`` as a user meets it: real subprocesses of the CLI, the replay server over
real HTTP, the fakesnow warehouse; output that scripts can read and a Ctrl-C that stays quiet."""

from __future__ import annotations

import fcntl
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from local_mode.run_command import RunOptions, run_pipeline
from local_mode.synthetic import generate_markets
from local_mode.warehouse import LOCK_NAME
from local_mode.warehouse_commands import query

pytestmark = pytest.mark.integration

REPO_ROOT = Path(__file__).resolve().parents[2]
TASKS = ("Extract", "Transform", "Load")


def _env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), **(extra or {})}
    for name in ("POWERTOOLS_LOG_LEVEL", "LOG_LEVEL", "CRYPTO_ETL_LOCAL_DIR"):
        if name not in (extra or {}):
            env.pop(name, None)
    return env


def _cli(
    *args: str, cwd: Path = REPO_ROOT, env: dict[str, str] | None = None, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    """``python -m local_mode.cli ARGS`` (the code of this checkout), stdout and stderr piped."""
    return subprocess.run(
        [sys.executable, "-m", "local_mode.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
        env=_env(env),
        check=False,
    )


def _count(local_dir: Path, snapshot_id: str) -> int:
    sql = f"SELECT COUNT(*) FROM CRYPTO_DATA WHERE SNAPSHOT_ID = '{snapshot_id}'"
    return int(query(local_dir, sql)[1][0][0])


# -- scriptable output ----------------------------------------------------------------------------


def test_json_prints_one_summary_object_and_progress_goes_to_stderr(tmp_path: Path):
    local_dir = tmp_path / "local"
    proc = _cli(
        "--local-dir", str(local_dir), "run", "--offline", "--coins", "300",
        "--snapshot-id", "json-1", "--json",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    summary = json.loads(proc.stdout)  # the whole of stdout is one JSON document
    assert isinstance(summary, dict)
    assert summary["status"] == "SUCCEEDED"
    assert summary["snapshot_id"] == "json-1"
    assert summary["execution"].startswith("arn:aws:states:")
    assert summary["counts"] == {
        "coins_fetched": 300,
        "pages": 2,
        "api_calls": 3,  # 2 pages + /global
        "retries": 0,
        "rate_limited": 0,
        "rate_limit_waits": 0,
        "rate_limit_wait_seconds": 0.0,
        "extract_invocations": 1,
        "rows": 300,
        "rows_inserted": 300,
        "rows_replaced": 0,
        "rejected": 0,
        "duplicates": 0,
    }
    assert set(summary["state_durations_seconds"]) == set(TASKS)
    assert all(
        0 < s < summary["duration_seconds"] for s in summary["state_durations_seconds"].values()
    )
    assert (summary["failed_state"], summary["error"], summary["error_message"]) == (None,) * 3
    assert summary["paging"]["stop_reason"] == "max_coins"
    assert summary["dominance"]["basis"] == "global"
    assert summary["extract_invocation_seconds"][0] > 0
    assert summary["rate_limit"] is None  # the local server is not paced unless asked
    coverage = summary["coverage"]
    assert (coverage["coins_fetched"], coverage["whole_market"]) == (300, False)
    assert summary["lake"] == str((local_dir / "lake").resolve())
    assert summary["warehouse"] == str((local_dir / "warehouse").resolve())
    assert (Path(summary["lake"]) / summary["processed_key"]).is_file()
    # Progress went to stderr, in order.
    for state in TASKS:
        assert f"▶ {state}" in proc.stderr and f"✓ {state}" in proc.stderr
    assert _count(local_dir, "json-1") == 300


def test_a_failed_run_in_json_names_the_state_and_error(tmp_path: Path):
    replay = tmp_path / "replay"
    replay.mkdir()
    (replay / "markets-page-0001.json").write_text(
        json.dumps({"status": {"error_code": 401, "error_message": "Invalid API Key"}})
    )
    proc = _cli("--local-dir", str(tmp_path / "local"), "run", "--replay", str(replay), "--json")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["status"] == "FAILED"
    assert (summary["failed_state"], summary["error"]) == ("Extract", "SourceError")
    assert "Invalid API Key" in summary["error_message"]
    assert summary["alerts_sent"] == 1
    assert summary["counts"]["rows"] is None
    assert summary["replay"] == {"recorded_pages": [1], "served_pages": [1], "unserved_pages": []}


def test_verbose_logs_go_to_stderr_and_a_debug_level_is_honoured(tmp_path: Path):
    """The load logs "warehouse objects ensured" at DEBUG: it shows only when DEBUG is kept."""
    proc = _cli(
        "--local-dir", str(tmp_path / "local"), "run", "--offline", "--coins", "10", "-v",
        env={"POWERTOOLS_LOG_LEVEL": "DEBUG"},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert not [line for line in proc.stdout.splitlines() if line.startswith("{")]
    objects = [json.loads(line) for line in proc.stderr.splitlines() if line.startswith("{")]
    logs = [o for o in objects if "_aws" not in o]  # the others are the EMF metric objects
    assert any("_aws" in o for o in objects)
    assert {log["service"] for log in logs} >= {"extract", "transform", "load"}
    debug = [log for log in logs if log["level"] == "DEBUG"]
    assert [log["message"] for log in debug] == ["warehouse objects ensured"]
    assert "Execution SUCCEEDED" in proc.stdout


def test_an_empty_crypto_etl_local_dir_means_the_default(tmp_path: Path):
    proc = _cli(
        "run", "--offline", "--coins", "5", "--snapshot-id", "env-1",
        cwd=tmp_path, env={"CRYPTO_ETL_LOCAL_DIR": ""},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert _count(tmp_path / ".local", "env-1") == 5
    assert not (tmp_path / "warehouse").exists() and not (tmp_path / "lake").exists()
    assert 'query it      crypto-etl sql "SELECT' in proc.stdout


# -- honest output ------------------------------------------------------------------------------


def test_a_rerun_says_what_the_table_holds_afterwards(tmp_path: Path):
    local_dir = tmp_path / "my local"
    for coins in ("600", "300"):
        proc = _cli(
            "--local-dir", str(local_dir), "run", "--offline", "--coins", coins,
            "--snapshot-id", "again",
        )  # fmt: skip
        assert proc.returncode == 0, proc.stdout + proc.stderr
    assert _count(local_dir, "again") == 300
    assert "300 rows for the snapshot (replacing 600;" in proc.stdout
    assert f"crypto-etl --local-dir '{local_dir}' sql" in proc.stdout


class _FlushRecorder(io.StringIO):
    """A stream that notes which lines had been flushed when the next write came."""

    def __init__(self) -> None:
        super().__init__()
        self.unflushed_at_write: list[str] = []
        self._pending = ""

    def write(self, text: str) -> int:
        if self._pending.strip() and text.strip():
            self.unflushed_at_write.append(self._pending.strip())
        self._pending += text
        return super().write(text)

    def flush(self) -> None:
        self._pending = ""
        super().flush()


def test_progress_lines_come_in_order_and_flushed_even_when_the_history_is_polled_slowly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """A handler's own lines must not overtake the previous state's ✓ (which comes from the
    polled history), and each line must be flushed as it is written (stdout piped)."""
    from state_machine import local_runner

    original = local_runner.LocalStepFunctions.execute

    def slow_poll(self: Any, *args: Any, **kwargs: Any) -> Any:
        kwargs["poll_seconds"] = 5.0
        return original(self, *args, **kwargs)

    monkeypatch.setattr(local_runner.LocalStepFunctions, "execute", slow_poll)
    out = _FlushRecorder()
    report = run_pipeline(
        RunOptions(local_dir=tmp_path / "local", offline=True, coins=600, snapshot_id="order"),
        out,
    )
    assert report.status == "SUCCEEDED"
    lines = out.getvalue().splitlines()
    marks = [line.split(" ")[0] + " " + line.split(" ")[1] for line in lines if line[:1] in "▶✓"]
    assert marks == ["▶ Extract", "✓ Extract", "▶ Transform", "✓ Transform", "▶ Load", "✓ Load"]
    pages = [i for i, line in enumerate(lines) if line.startswith("    page ")]
    assert len(pages) == 3
    assert lines.index("▶ Extract …") < pages[0] and pages[-1] < _index(lines, "✓ Extract")
    assert out.unflushed_at_write == []


def _index(lines: list[str], prefix: str) -> int:
    return next(i for i, line in enumerate(lines) if line.startswith(prefix))


def test_a_replay_gap_names_the_recorded_pages_never_served(tmp_path: Path):
    """Pages 1 and 3 recorded: page 2 is served empty, paging ends there, page 3 is lost."""
    coins = generate_markets(500, seed=5)
    replay = tmp_path / "replay"
    replay.mkdir()
    (replay / "markets-page-0001.json").write_text(json.dumps(coins[:250]))
    (replay / "markets-page-0003.json").write_text(json.dumps(coins[250:]))
    local_dir = tmp_path / "local"
    proc = _cli(
        "--local-dir", str(local_dir), "run", "--replay", str(replay), "--snapshot-id", "gap"
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "! 1 of 2 recorded pages not served (page 3)" in proc.stdout
    assert _count(local_dir, "gap") == 250
    proc = _cli(
        "--local-dir", str(local_dir), "run", "--replay", str(replay), "--snapshot-id", "gap",
        "--json",
    )  # fmt: skip
    replay_info = json.loads(proc.stdout)["replay"]
    assert replay_info == {"recorded_pages": [1, 3], "served_pages": [1, 2], "unserved_pages": [3]}


def test_an_unresolvable_api_host_fails_after_one_short_retry(tmp_path: Path):
    """No --offline: the live path, pointed at RFC 2606's .invalid (resolved locally, never
    reaches the network). The defaults (6 retries, 120 s budget) would take ~55 s."""
    started = time.monotonic()
    proc = _cli(
        "--local-dir", str(tmp_path / "local"), "run", "--snapshot-id", "dns",
        env={"COINGECKO_BASE_URL": "http://nonexistent.invalid/api/v3"},
    )  # fmt: skip
    took = time.monotonic() - started
    assert proc.returncode == 1, proc.stdout + proc.stderr
    # one short retry per request: /global (first; auxiliary, so the run goes on) and page 1
    assert proc.stdout.count("↻ NameResolutionError") == 2
    assert took < 40, f"took {took:.0f}s"
    assert "failed state  Extract" in proc.stdout
    assert "did not resolve 2 times" in proc.stdout
    assert "CoinGecko: live API at http://nonexistent.invalid/api/v3" in proc.stdout


# -- Ctrl-C -------------------------------------------------------------------------------------


def _fakesnow_children(parent_pid: int) -> list[int]:
    """Warehouse server processes started by ``parent_pid`` and still alive."""
    marker = f"--parent-pid\0{parent_pid}\0".encode()
    found = []
    for proc_dir in Path("/proc").iterdir():
        if proc_dir.name.isdigit():
            try:
                if marker in (proc_dir / "cmdline").read_bytes():
                    found.append(int(proc_dir.name))
            except OSError:
                continue
    return found


def _interrupted_run(local_dir: Path, wait_for: str | None, delay: float) -> tuple[int, str, str]:
    """Start a run, send SIGINT to its process group (as a terminal's Ctrl-C does) after
    ``wait_for`` appeared on stdout (None: at once) and ``delay`` seconds."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "local_mode.cli", "--local-dir", str(local_dir), "run",
         "--offline", "--coins", "50"],
        cwd=REPO_ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, start_new_session=True,
    )  # fmt: skip
    seen = ""
    try:
        if wait_for is not None:
            assert proc.stdout is not None
            for line in proc.stdout:
                seen += line
                if wait_for in line:
                    break
        time.sleep(delay)
        os.killpg(proc.pid, signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    deadline = time.monotonic() + 10
    while _fakesnow_children(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _fakesnow_children(proc.pid) == [], "the warehouse server was left running"
    return proc.returncode, seen + out, err


def _assert_quiet_130(code: int, out: str, err: str) -> None:
    # -SIGINT: CPython ends with SIGINT after main() returned 130 when the KeyboardInterrupt
    # hit code it ran through PyRun_* (an extension module's import); a shell reports 130 too.
    assert code in (130, -signal.SIGINT), out + err
    assert "Traceback" not in err and "Error" not in err, err
    assert err.strip().splitlines()[-1] == "interrupted (local services stopped)", err


@pytest.mark.parametrize("delay", [0.3, 0.8])
def test_ctrl_c_while_the_cli_starts_exits_130_quietly(tmp_path: Path, delay: float):
    """Ctrl-C in the first second: the imports (snowflake connector, pandas) are running."""
    code, out, err = _interrupted_run(tmp_path / "local", None, delay)
    _assert_quiet_130(code, out, err)


def test_ctrl_c_while_the_warehouse_starts_stops_it_and_exits_130_quietly(tmp_path: Path):
    local_dir = tmp_path / "local"
    code, out, err = _interrupted_run(local_dir, "Starting local warehouse", 0.2)
    _assert_quiet_130(code, out, err)
    assert "Execution input" not in out  # it was interrupted during start-up
    # The warehouse lock was released: another run could start at once.
    with (local_dir / "warehouse" / LOCK_NAME).open("a+") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)


def test_as_of_simulates_the_fetch_day_and_the_market_moves(tmp_path: Path):
    """`make demo` loads three simulated days: FETCHED_AT, FETCH_DATE and the lake partition are
    the simulated time's, and the synthetic market has drifted between them."""
    from datetime import UTC, datetime

    local_dir = tmp_path / "local"
    days = [datetime(2026, 11, d, 6, 0, tzinfo=UTC) for d in (27, 28)]
    for at in days:
        opts = RunOptions(
            local_dir=local_dir, offline=True, coins=300, as_of=at, snapshot_id=f"d{at.day}"
        )
        assert run_pipeline(opts, out=io.StringIO()).status == "SUCCEEDED"
    columns, rows = query(
        local_dir,
        "SELECT SNAPSHOT_ID, FETCHED_AT, FETCH_DATE, LOADED_MARKET_CAP FROM MARKET_SNAPSHOTS"
        " ORDER BY SNAPSHOT_ID",
    )
    got = [dict(zip(columns, r, strict=True)) for r in rows]
    assert [r["SNAPSHOT_ID"] for r in got] == ["d27", "d28"]
    assert [r["FETCHED_AT"] for r in got] == days
    assert [str(r["FETCH_DATE"]) for r in got] == ["2026-11-27", "2026-11-28"]
    assert got[0]["LOADED_MARKET_CAP"] != got[1]["LOADED_MARKET_CAP"]
    assert sorted(p.name for p in (local_dir / "lake" / "raw").iterdir()) == [
        "dt=2026-11-27",
        "dt=2026-11-28",
    ]


def test_as_of_needs_offline(tmp_path: Path):
    from datetime import UTC, datetime

    from functions.common.errors import ValidationError

    opts = RunOptions(local_dir=tmp_path, as_of=datetime(2026, 11, 27, tzinfo=UTC))
    with pytest.raises(ValidationError, match="--as-of"):
        run_pipeline(opts, out=io.StringIO())
