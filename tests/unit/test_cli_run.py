"""``crypto-etl run`` refuses bad arguments, paths and settings before starting anything, and
says what happened in words a user can trust (plurals, what the table holds, how to query it).

These run the real CLI entry point in-process (``local_mode.cli.main``); a refused run must not
create the local folders, start a warehouse or a replay server.
"""

from __future__ import annotations

import io
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from local_mode.cli import main
from local_mode.run_command import (
    RunReport,
    check_request_timeout,
    default_local_dir,
    print_summary,
)

REPO_ROOT = Path(__file__).resolve().parents[2]


def refused(capsys: pytest.CaptureFixture[str], local_dir: Path, *args: str) -> str:
    """Run ``crypto-etl --local-dir DIR run ARGS``; assert exit 2 and one line; return it."""
    code = main(["--local-dir", str(local_dir), "run", *args], out=io.StringIO())
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err


@pytest.fixture
def local_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    # A live run would call CoinGecko: make sure a test that fails to refuse cannot.
    monkeypatch.setenv("COINGECKO_BASE_URL", "http://127.0.0.1:9/api/v3")
    monkeypatch.setenv("COINGECKO_MAX_RETRIES", "0")
    return tmp_path / "local"


@pytest.mark.parametrize("value", ["us d", "", "a" * 17, " usd", "usd\t", "€"])
def test_a_bad_vs_currency_is_refused_before_anything_starts(capsys, local_dir, value):
    err = refused(capsys, local_dir, "--offline", "--vs-currency", value)
    assert f"invalid --vs-currency: {value!r}" in err
    assert not local_dir.exists()


def test_an_empty_snapshot_id_is_refused_not_replaced_by_a_timestamp(capsys, local_dir):
    err = refused(capsys, local_dir, "--offline", "--snapshot-id", "")
    assert "invalid --snapshot-id: ''" in err
    assert not local_dir.exists()


@pytest.mark.parametrize(
    ("args", "ignored_with"),
    [
        (["--coins", "5"], "the live API"),
        (["--coins", "5", "--max-coins", "5"], "the live API"),
        (["--replay", "{replay}", "--coins", "5"], "--replay"),
    ],
)
def test_coins_without_offline_is_refused(capsys, local_dir, tmp_path, args, ignored_with):
    replay = tmp_path / "replay"
    replay.mkdir()
    (replay / "markets-page-0001.json").write_text("[]")
    err = refused(capsys, local_dir, *[a.format(replay=replay) for a in args])
    assert "invalid --coins" in err and "needs --offline" in err and ignored_with in err
    assert not local_dir.exists()


def test_local_dir_that_is_a_file_is_refused(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    a_file = tmp_path / "data.txt"
    a_file.write_text("not a folder")
    err = refused(capsys, a_file, "--offline")
    assert f"invalid --local-dir: {a_file} exists and is not a directory" in err
    err = refused(capsys, a_file / "sub", "--offline")
    assert "invalid --local-dir" in err and "not a writable directory" in err


def test_local_dir_that_cannot_be_written_is_refused(capsys, tmp_path, monkeypatch):
    """sysfs refuses to create files even for root: a real unwritable directory here."""
    monkeypatch.chdir(tmp_path)
    target = Path("/sys/kernel")
    if not target.is_dir():
        pytest.skip("no /sys/kernel on this machine")
    err = refused(capsys, target, "--offline")
    assert "invalid --local-dir: /sys/kernel/lake is not a writable directory" in err


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes whatever the mode")
def test_local_dir_without_write_permission_is_refused(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    err = refused(capsys, locked, "--offline")
    assert "not a writable directory" in err and "Permission denied" in err


def test_an_unreadable_replay_file_is_refused(capsys, local_dir, tmp_path):
    replay = tmp_path / "replay"
    replay.mkdir()
    (replay / "markets-page-0001.json").write_text("[]")
    (replay / "markets-page-0002.json").symlink_to(replay / "deleted.json")
    err = refused(capsys, local_dir, "--replay", str(replay))
    assert "invalid --replay" in err and "markets-page-0002.json is a broken link" in err
    assert not local_dir.exists()


def test_a_request_timeout_longer_than_the_extract_can_wait_is_refused(
    capsys, local_dir, monkeypatch
):
    """900 s function timeout - 10 s margin: 891 could never fetch a page."""
    monkeypatch.setenv("COINGECKO_TIMEOUT_SECONDS", "891")
    err = refused(capsys, local_dir, "--offline")
    assert "ConfigError" in err and "COINGECKO_TIMEOUT_SECONDS: 891s" in err
    assert "(900s)" in err and "890s" in err
    assert not local_dir.exists()


def test_the_timeout_limit_is_the_function_timeout_minus_the_margin():
    assert check_request_timeout({"COINGECKO_TIMEOUT_SECONDS": "890"}) == 890.0
    assert check_request_timeout({}) == 30.0


def test_an_unknown_log_level_is_refused(capsys, local_dir, monkeypatch):
    monkeypatch.setenv("POWERTOOLS_LOG_LEVEL", "LOUD")
    err = refused(capsys, local_dir, "--offline")
    assert "POWERTOOLS_LOG_LEVEL: 'LOUD'" in err
    assert not local_dir.exists()


@pytest.mark.parametrize(("value", "expected"), [("", ".local"), ("  ", ".local"), ("d", "d")])
def test_an_empty_crypto_etl_local_dir_is_unset(value, expected):
    assert default_local_dir({"CRYPTO_ETL_LOCAL_DIR": value}) == Path(expected)
    assert default_local_dir({}) == Path(".local")


def test_run_help_says_it_calls_the_live_api_by_default():
    proc = subprocess.run(
        [sys.executable, "-m", "local_mode.cli", "run", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO_ROOT,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    text = " ".join(proc.stdout.split())
    assert "without --offline or --replay, run calls the LIVE CoinGecko API" in text
    assert "--json" in text and "CRYPTO_ETL_LOCAL_DIR" in text


# -- the summary ------------------------------------------------------------------------------


def report(output: dict, **extra) -> RunReport:
    return RunReport(
        status="SUCCEEDED",
        snapshot_id="s1",
        execution_arn="arn:aws:states:us-east-1:123456789012:execution:p:s1-x",
        duration_s=1.0,
        output=output,
        failed_state=None,
        error=None,
        error_message=None,
        alerts=[],
        lake_dir=Path("/tmp/l/lake"),
        warehouse_dir=Path("/tmp/l/warehouse"),
        state_outputs={},
        **extra,
    )


LOAD_OUTPUT = {
    "coin_count": 1,
    "pages": 1,
    "api_calls": 1,
    "retries": 1,
    "row_count": 300,
    "rejected_count": 0,
    "duplicate_count": 1,
    "rows_inserted": 1,
    "rows_replaced": 600,
    "table": "CRYPTO_ETL_DB.PUBLIC.CRYPTO_DATA",
    "stop_reason": "empty_page",
    "end_confirmed": True,
    "raw_prefix": "raw/x/",
    "processed_key": "processed/x/crypto_data.csv.gz",
}


def test_the_summary_says_what_the_table_holds_with_plurals_right():
    out = io.StringIO()
    print_summary(report(LOAD_OUTPUT), out)
    text = out.getvalue()
    assert "coins fetched 1 (1 page, 1 API call, 1 retry)" in text
    assert "300 rows for the snapshot (replacing 600; 1 coin new to it)" in text
    assert "1 duplicate" in text and "1 duplicates" not in text


def test_the_query_hint_keeps_the_local_dir_quoted_for_the_shell():
    out = io.StringIO()
    print_summary(report(LOAD_OUTPUT, local_dir=Path("my data/it's")), out)
    hint = next(line for line in out.getvalue().splitlines() if "query it" in line)
    command = hint.split("query it", 1)[1].strip()
    # What a POSIX shell makes of the line: the same folder, one argument.
    assert shlex.split(command) == [
        "crypto-etl",
        "--local-dir",
        "my data/it's",
        "sql",
        "SELECT COUNT(*) FROM CRYPTO_DATA",
    ]
    out = io.StringIO()
    print_summary(report(LOAD_OUTPUT, local_dir=Path(".local")), out)
    assert 'query it      crypto-etl sql "SELECT' in out.getvalue()


def test_offline_refuses_a_currency_the_synthetic_market_does_not_quote(capsys, local_dir):
    from local_mode import synthetic

    assert "xyz" not in synthetic.FX_RATES
    err = refused(capsys, local_dir, "--offline", "--vs-currency", "xyz")
    assert "invalid --vs-currency: 'xyz': the synthetic market (--offline) is quoted in" in err
    assert not local_dir.exists()


def test_execution_names_fit_step_functions_80_characters():
    from local_mode.run_command import execution_name

    stamp = "20261129T220016Z"
    assert execution_name("daily", stamp) == f"daily-{stamp}"
    long_id = "a" * 80
    name = execution_name(long_id, stamp)
    assert len(name) == 80 and name.endswith(f"-{stamp}") and name.startswith("a" * 63)


def test_runs_does_not_report_a_simulated_fetch_time_as_a_duration():
    from datetime import UTC, datetime, timedelta

    from local_mode.warehouse_commands import runs_rows

    loaded = datetime(2026, 11, 29, 22, 0, tzinfo=UTC)
    row = ("SUCCEEDED", "s", "usd", 10, 10, 10, 0, 0)
    real = (loaded, *row, loaded - timedelta(seconds=12), "arn:x:exec-1", None)
    simulated = (loaded, *row, loaded - timedelta(days=2), "arn:x:exec-2", None)
    got = runs_rows([real, simulated])
    assert got[0][11] == 12.0 and got[0][13] == ""
    assert got[1][11] is None and "simulated" in got[1][13]


def test_runs_shows_coverage_and_its_warning():
    from datetime import UTC, datetime, timedelta

    from local_mode.warehouse_commands import RUNS_HEADERS, runs_rows

    loaded = datetime(2026, 11, 29, 22, 0, tzinfo=UTC)
    row = (loaded, "SUCCEEDED", "s", "usd", 10, 10, 10, 0, 0, loaded - timedelta(seconds=3))
    [got] = runs_rows([(*row, "arn:x:e", None, 98.04, 88.9, "market cap 88.9% < 90%")])
    shown = dict(zip(RUNS_HEADERS, got, strict=True))
    assert (shown["COIN_COV_PCT"], shown["MCAP_COV_PCT"]) == (98.04, 88.9)
    assert shown["NOTE"] == "! market cap 88.9% < 90%"
    # A run log from before coverage (12 columns): the coverage cells are empty.
    [old] = runs_rows([(*row, "arn:x:e", None)])
    assert dict(zip(RUNS_HEADERS, old, strict=True))["COIN_COV_PCT"] is None


def test_the_summary_says_what_a_failure_left_in_the_warehouse():
    from local_mode.run_command import warehouse_after_failure

    assert warehouse_after_failure("Extract", "boom") == "unchanged (the load is all-or-nothing)"
    assert "unknown" in warehouse_after_failure("Load", "its outcome is UNKNOWN …")
    committed = "the warehouse COMMITTED snapshot s (run r, 3 rows), but the snapshot index …"
    assert warehouse_after_failure("Load", committed).startswith("committed")
    assert warehouse_after_failure(None, None) is None


# -- the whole market, pacing and coverage ------------------------------------------------------


@pytest.mark.parametrize("value", ["30 per minute", "0/60", "30/0", "thirty/60"])
def test_a_bad_rate_limit_is_refused_before_anything_starts(capsys, local_dir, value):
    err = refused(capsys, local_dir, "--offline", "--rate-limit", value)
    assert "--rate-limit" in err
    assert not local_dir.exists()


@pytest.mark.parametrize("value", ["everything", "0", "100001"])
def test_max_coins_is_an_integer_or_all(capsys, local_dir, value):
    with pytest.raises(SystemExit) as info:
        main(["--local-dir", str(local_dir), "run", "--offline", "--max-coins", value])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "argument --max-coins" in err and "or 'all'" in err


def test_the_summary_reports_the_loop_pacing_and_coverage():
    out = io.StringIO()
    output = {
        **LOAD_OUTPUT,
        "coin_count": 2000,
        "pages": 21,
        "api_calls": 22,
        "retries": 0,
        "invocations": 3,
        "pacing_waits": 13,
        "pacing_wait_seconds": 4.66,
        "rate_limited": 1,
        "coverage": {
            "coins_fetched": 2000,
            "active_cryptocurrencies": 2040,
            "coin_pct": 98.04,
            "market_cap_pct": 88.9,
            "min_pct": 90.0,
            "whole_market": True,
            "warning": "the fetched market cap is 88.9% of /global's total (below 90%)",
        },
    }
    print_summary(report(output), out)
    text = out.getvalue()
    assert (
        "coins fetched 2000 (21 pages, 22 API calls, 0 retries, 3 invocations,"
        " 13 rate-limit waits (4.7s), 1 HTTP 429)"
    ) in text
    assert (
        "coverage      ! 98.0% of /global's 2,040 active coins (2,000), 88.9% of its total"
        " market cap: the fetched market cap is 88.9% of /global's total (below 90%)"
    ) in text


def test_coverage_without_global_says_it_is_unknown():
    from local_mode.run_command import coverage_line

    assert coverage_line({}) is None
    line = coverage_line({"coins_fetched": 5, "active_cryptocurrencies": None})
    assert line == "5 coins; /global unavailable, coverage unknown"


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_pages_are_a_progress_bar_on_a_terminal_and_lines_when_piped():
    from local_mode.run_command import _Progress

    extra = {
        "page": 3,
        "rows": 250,
        "kept": 250,
        "pages_so_far": 3,
        "expected_pages": 81,
        "coins_so_far": 750,
        "api_calls": 4,
        "pacing_waits": 1,
        "pacing_wait_seconds": 2.0,
    }
    piped = io.StringIO()
    _Progress(piped).page("page 3: 250 coins", extra)
    assert piped.getvalue() == (
        "    page 3: 250 coins (250 kept); 750 coins, 4 calls, 1 rate-limit wait (2.0s) so far\n"
    )
    terminal = _Terminal()
    progress = _Progress(terminal)
    progress.page("page 3: 250 coins", extra)
    progress.line("a line while the bar is up")
    progress.close_bar()
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", terminal.getvalue())  # no colours, cursor moves
    assert "pages" in text and "3/81" in text and "750 coins 4 calls 1 wait 2s" in text
    assert "a line while the bar is up" in text


def test_a_failed_run_says_whether_etl_runs_recorded_it():
    failed = report({}, run_log={"recorded": True, "table": "ETL_RUNS"})
    failed.status, failed.failed_state, failed.error = "FAILED", "Extract", "SourceError"
    out = io.StringIO()
    print_summary(failed, out)
    assert "run log       a FAILED row in ETL_RUNS" in out.getvalue()
    failed.run_log = {"recorded": False, "error": {"Error": "LoadError"}}
    out = io.StringIO()
    print_summary(failed, out)
    assert "run log       ! not recorded in ETL_RUNS" in out.getvalue()


def test_the_record_failure_steps_show_in_the_progress():
    from local_mode.run_command import _Progress
    from state_machine.local_runner import StateEvent

    out = io.StringIO()
    progress = _Progress(out)
    progress.on_event(StateEvent("entered", "Record failure"))
    cause = '{"errorMessage": "warehouse down", "errorType": "LoadError"}'
    detail = {"run_log": {"recorded": False, "error": {"Error": "LoadError", "Cause": cause}}}
    progress.on_event(StateEvent("exited", "Failure not recorded", detail))
    assert out.getvalue().splitlines() == [
        "  → recording the failure in ETL_RUNS",
        "  ! not recorded in ETL_RUNS: LoadError: warehouse down",
    ]


def test_duplicates_warn_that_as_many_coins_may_be_missing():
    out = io.StringIO()
    print_summary(report({**LOAD_OUTPUT, "duplicate_count": 2}), out)
    assert "2 coins on two pages (ranks shifted while paging)" in out.getvalue()


def _emf(**metrics: float) -> dict:
    return {
        "_aws": {
            "Timestamp": 0,
            "CloudWatchMetrics": [
                {
                    "Namespace": "CryptoEtl",
                    "Dimensions": [["Pipeline", "VsCurrency"]],
                    "Metrics": [{"Name": n, "Unit": "Count"} for n in metrics],
                }
            ],
        },
        "Pipeline": "crypto-etl",
        "VsCurrency": "usd",
        **{n: [v] for n, v in metrics.items()},
    }


def test_the_summary_shows_the_key_metric_figures():
    blobs = [_emf(ExtractCoins=300, ApiCalls=3), _emf(RowsOut=300, RowsInserted=300)]
    out = io.StringIO()
    print_summary(report(LOAD_OUTPUT, metrics=blobs), out)
    (line,) = [x for x in out.getvalue().splitlines() if x.startswith("  metrics ")]
    assert line == (
        "  metrics       CryptoEtl: 300 coins, 3 calls, 300 rows out, 300 inserted"
        " (2 EMF objects; -v prints them)"
    )
    out = io.StringIO()
    print_summary(report(LOAD_OUTPUT), out)  # none emitted (metrics disabled): no line
    assert "  metrics " not in out.getvalue()


def test_verbose_prints_the_emf_lines_on_stderr_and_stdout_stays_the_summary(capsys, local_dir):
    out = io.StringIO()
    code = main(["--local-dir", str(local_dir), "run", "--offline", "--coins", "60", "-v"], out=out)
    err = capsys.readouterr()
    assert code == 0, err.err[-2000:]
    emf = [json.loads(x) for x in err.err.splitlines() if x.startswith('{"_aws"')]
    names = {m["Name"] for b in emf for d in b["_aws"]["CloudWatchMetrics"] for m in d["Metrics"]}
    assert {"ExtractCoins", "RowsOut", "RowsInserted", "ExecutionSucceeded"} <= names
    assert '"_aws"' not in out.getvalue() and '"_aws"' not in err.out
    assert "  metrics       CryptoEtl: 60 coins," in out.getvalue()


def test_without_verbose_no_emf_line_is_printed(capsys, local_dir):
    out = io.StringIO()
    code = main(["--local-dir", str(local_dir), "run", "--offline", "--coins", "20"], out=out)
    err = capsys.readouterr()
    assert code == 0
    assert '"_aws"' not in err.err + err.out + out.getvalue()
    assert "  metrics       CryptoEtl: 20 coins," in out.getvalue()


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("COVERAGE_MIN_PCT", "abc"),
        ("QUALITY_MIN_ROW_FRACTION", "2"),
        ("QUALITY_GATE", "maybe"),
        ("EXTRACT_DEADLINE_MARGIN_SECONDS", "5000"),
    ],
)
def test_transform_and_deadline_settings_are_checked_before_anything_starts(
    capsys, local_dir, monkeypatch, name, value
):
    monkeypatch.setenv(name, value)
    err = refused(capsys, local_dir, "--offline")
    assert f"configuration {name}:" in err  # the setting at fault, not another one
    assert not local_dir.exists()


def test_a_record_failure_step_is_not_announced_as_the_load():
    import logging

    from local_mode.run_command import _Progress, _ProgressLines
    from state_machine.local_runner import StateEvent

    out = io.StringIO()
    progress = _Progress(out)
    lines = _ProgressLines(progress)
    progress.on_event(StateEvent("entered", "Record failure"))
    record = logging.LogRecord("load", logging.INFO, __file__, 1, "recorded", None, None)
    lines.emit(record)
    assert "▶ Load" not in out.getvalue()
    assert "recording the failure in ETL_RUNS" in out.getvalue()
