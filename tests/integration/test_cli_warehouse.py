"""The warehouse commands of the CLI (`sql`, `show`, `runs`, `rebuild`) on real local services:
pipeline runs through the real CLI, real SQL on the fakesnow server, the real lake folder."""

from __future__ import annotations

import gzip
import io
import json
import os
import shutil
import subprocess
import sys
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

# Powertools loggers keep the stdout they were created with: create them now, not inside a
# test's capsys (closed after that test), where a later in-process run would write to them.
import functions.extract.handler
import functions.load.handler
import functions.transform.handler  # noqa: F401
from local_mode.cli import main
from local_mode.warehouse import LocalWarehouse

pytestmark = pytest.mark.integration

REPO_ROOT = Path(__file__).resolve().parents[2]


def _pipeline(local_dir: Path, *args: str) -> str:
    """`crypto-etl run ...` in a subprocess of this checkout's code."""
    proc = subprocess.run(
        [sys.executable, "-m", "local_mode.cli", "--local-dir", str(local_dir), "run", *args],
        cwd=REPO_ROOT,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def _cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """The CLI in-process: (exit code, stdout, stderr). Argparse errors are exit codes too."""
    out = io.StringIO()
    capsys.readouterr()
    try:
        code = main(list(argv), out=out)
    except SystemExit as exc:
        code = int(exc.code or 0)
    captured = capsys.readouterr()
    return code, out.getvalue() + captured.out, captured.err


def _rows(local_dir: Path, sql: str) -> list[tuple[Any, ...]]:
    """One statement straight on the warehouse through the real connector (not the CLI)."""
    with LocalWarehouse(local_dir / "warehouse") as wh:
        conn = wh.connect()
        try:
            with conn.cursor() as cur:
                cur.execute(sql)
                return [tuple(r) for r in cur.fetchall()] if cur.description else []
        finally:
            conn.close()


def _strict_json(text: str) -> Any:
    """json.loads that refuses NaN/Infinity (Python accepts them; JSON does not) and keeps
    numbers exact."""

    def refuse(name: str) -> Any:
        raise ValueError(f"{name} is not JSON")

    return json.loads(text, parse_constant=refuse, parse_float=Decimal)


@pytest.fixture(scope="module")
def two_currencies(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A local dir with a usd snapshot, then (newer) an eur snapshot."""
    local_dir = tmp_path_factory.mktemp("cli-wh")
    _pipeline(local_dir, "--offline", "--coins", "300", "--snapshot-id", "cw-usd")
    _pipeline(
        local_dir, "--offline", "--coins", "200", "--snapshot-id", "cw-eur", "--vs-currency", "eur"
    )
    return local_dir


@pytest.fixture
def copy_of(two_currencies: Path, tmp_path: Path) -> Path:
    """An independent copy of the two-snapshot local dir (lake and warehouse)."""
    target = tmp_path / "local"
    shutil.copytree(two_currencies, target, ignore=shutil.ignore_patterns(".warehouse.lock"))
    return target


# --- sql: read-only by default -----------------------------------------------------------------


def test_sql_refuses_writes_several_statements_and_empty_text(capsys, tmp_path: Path):
    local = ["--local-dir", str(tmp_path)]
    _rows(tmp_path, "CREATE TABLE T (A INT)")
    _rows(tmp_path, "INSERT INTO T VALUES (1), (2)")
    for statement, says in [
        ("DROP TABLE T", "DROP TABLE is not a read-only statement"),
        ("DELETE FROM T", "DELETE is not a read-only statement"),
        ("delete from T where A = 1", "DELETE is not a read-only statement"),
        ("WITH x AS (SELECT 1) INSERT INTO T SELECT * FROM x", "WITH … INSERT"),
        ("SELECT 1; DROP TABLE T", "found 2 statements (SELECT 1; DROP TABLE …)"),
        ("SELECT 1 /* ; */; DELETE FROM T", "found 2 statements"),
        ("", "no SQL statement found"),
        (" ; -- nothing", "no SQL statement found"),
        ("SELEC * FROM T", "cannot parse"),
    ]:
        code, out, err = _cli(capsys, *local, "sql", statement)
        assert code == 2, (statement, out, err)
        assert says in err and "Traceback" not in err, (statement, err)
        assert len(err.strip().splitlines()) == 1, err
    # Several statements stay refused with --write.
    code, _, err = _cli(capsys, *local, "sql", "--write", "DELETE FROM T; DROP TABLE T")
    assert code == 2 and "found 2 statements" in err
    # Nothing above changed the table; a ';' inside a literal or comment is no boundary.
    code, out, err = _cli(
        capsys, *local, "sql", "--json", "SELECT COUNT(*) AS N, ';' AS S FROM T -- ; DROP TABLE T"
    )
    assert code == 0, err
    assert _strict_json(out) == [{"N": 2, "S": ";"}]
    # With --write, it runs.
    assert _cli(capsys, *local, "sql", "--write", "INSERT INTO T VALUES (3)")[0] == 0
    assert _rows(tmp_path, "SELECT COUNT(*) FROM T") == [(3,)]
    assert _cli(capsys, *local, "sql", "--write", "DROP TABLE T")[0] == 0
    count = _rows(tmp_path, "SELECT COUNT(*) FROM INFORMATION_SCHEMA.TABLES WHERE TABLE_NAME = 'T'")
    assert count == [(0,)]


class _Terminal(io.StringIO):
    """A stdin that says it is a terminal, with the user's typed answer."""

    def isatty(self) -> bool:
        return True


def test_remote_write_needs_confirmation_or_yes(capsys, monkeypatch, tmp_path: Path):
    """--remote against a real server (the fakesnow one, through SNOWFLAKE_* variables)."""
    with LocalWarehouse(tmp_path / "remote") as remote:
        for name, value in remote.env().items():
            monkeypatch.setenv(name, value)
        account = remote.env()["SNOWFLAKE_ACCOUNT"]

        def tables() -> list[str]:
            conn = remote.connect()
            try:
                with conn.cursor() as cur:
                    cur.execute(
                        "SELECT TABLE_NAME FROM INFORMATION_SCHEMA.TABLES"
                        " WHERE TABLE_SCHEMA = 'PUBLIC' ORDER BY 1"
                    )
                    return [r[0] for r in cur.fetchall()]
            finally:
                conn.close()

        create = ["sql", "--remote", "--write", "CREATE TABLE {} (A INT)"]

        def run(table: str, stdin: io.StringIO, *extra: str) -> tuple[int, str, str]:
            monkeypatch.setattr(sys, "stdin", stdin)
            argv = [a.format(table) for a in create]
            return _cli(capsys, *argv, *extra)

        # Not a terminal, no --yes: refused, nothing run.
        code, _, err = run("NOT_A_TTY", io.StringIO("yes\n"))
        assert code == 2 and "--yes" in err and "not a terminal" in err
        # A terminal, another answer (or none): refused, nothing run.
        code, _, err = run("ANSWERED_NO", _Terminal("no\n"))
        assert code == 2 and "'no' is neither the account name" in err
        assert f"on the Snowflake account {account}" in err  # the prompt names it
        assert run("NO_ANSWER", _Terminal(""))[0] == 2
        assert tables() == []
        # Confirmed: by the account name (any case), by "yes", by --yes.
        assert run("BY_NAME", _Terminal(account.upper() + "\n"))[0] == 0
        assert run("BY_YES", _Terminal("yes\n"))[0] == 0
        assert run("BY_FLAG", io.StringIO(""), "--yes")[0] == 0
        assert tables() == ["BY_FLAG", "BY_NAME", "BY_YES"]
        # A read-only statement runs on the remote without a question.
        monkeypatch.setattr(sys, "stdin", io.StringIO(""))
        code, out, err = _cli(
            capsys, "sql", "--remote", "--json", "SELECT COUNT(*) AS N FROM BY_YES"
        )
        assert code == 0, err
        assert _strict_json(out) == [{"N": 0}]
        # Several statements or a write without --write never reach the account.
        assert _cli(capsys, "sql", "--remote", "--yes", "DROP TABLE BY_YES")[0] == 2
        assert tables() == ["BY_FLAG", "BY_NAME", "BY_YES"]


# --- sql --json ----------------------------------------------------------------------------------


def test_sql_json_is_valid_json_with_exact_numbers_and_names_as_written(capsys, tmp_path: Path):
    code, out, err = _cli(
        capsys,
        "--local-dir", str(tmp_path), "sql", "--json",
        "SELECT CAST('nan' AS FLOAT) AS F_NAN, CAST('inf' AS FLOAT) AS F_INF,"
        " CAST('-inf' AS FLOAT) AS F_NINF, CAST(0.1 AS FLOAT) AS F,"
        " CAST(12345678901234567.89 AS NUMBER(38, 2)) AS D, CAST(1.50 AS NUMBER(10, 2)) AS d2,"
        " CAST(NULL AS NUMBER) AS NOTHING, TRUE AS B, 'x\"y' AS S,"
        " DATE '2024-05-01' AS DT, CAST('2024-05-01 12:30:00+00:00' AS TIMESTAMP_TZ) AS TS,"
        " 7 AS n, 8 AS \"Mixed\"",
    )  # fmt: skip
    assert code == 0, err
    (row,) = _strict_json(out)
    assert row == {
        "F_NAN": None,
        "F_INF": None,
        "F_NINF": None,
        "F": Decimal("0.1"),
        "D": Decimal("12345678901234567.89"),
        "D2": Decimal("1.50"),
        "NOTHING": None,
        "B": True,
        "S": 'x"y',
        "DT": "2024-05-01",
        "TS": "2024-05-01T12:30:00+00:00",
        "N": 7,
        "Mixed": 8,
    }
    assert list(row) == ["F_NAN", "F_INF", "F_NINF", "F", "D", "D2", "NOTHING", "B", "S", "DT",
                         "TS", "N", "Mixed"]  # fmt: skip
    assert datetime.fromisoformat(row["TS"]) == datetime(2024, 5, 1, 12, 30, tzinfo=UTC)


def test_sql_json_refuses_repeated_column_names_instead_of_dropping_one(capsys, tmp_path):
    code, out, err = _cli(
        capsys, "--local-dir", str(tmp_path), "sql", "--json", "SELECT 1 AS A, 2 AS A"
    )
    assert code == 2 and out == ""
    assert "several columns named A" in err


# --- show ----------------------------------------------------------------------------------------


def _top(local_dir: Path, snapshot: str, n: int) -> list[tuple[Any, ...]]:
    return _rows(
        local_dir,
        "SELECT MARKET_CAP_RANK, NAME, UPPER(SYMBOL), CURRENT_PRICE, MARKET_CAP,"
        " MARKET_CAP_DOMINANCE_PCT, VOLUME_PCT, PRICE_CHANGE_PERCENTAGE_24H, FETCHED_AT"
        f" FROM CRYPTO_DATA WHERE SNAPSHOT_ID = '{snapshot}'"
        f" ORDER BY MARKET_CAP DESC NULLS LAST LIMIT {n}",
    )


def test_show_names_snapshot_currency_and_time_and_puts_units_in_headers(capsys, two_currencies):
    local = ["--local-dir", str(two_currencies)]
    top = _top(two_currencies, "cw-usd", 5)
    fetched = top[0][-1].astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    # cw-eur is newer, but "latest" is the latest usd snapshot.
    code, out, err = _cli(capsys, *local, "show", "--limit", "5")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0] == (
        f"Snapshot cw-usd · vs_currency usd · fetched at {fetched} ·"
        " top 5 of 300 coins by market cap"
    )
    assert lines[1].split() == [
        "RANK", "NAME", "SYMBOL", "PRICE_USD", "MARKET_CAP_USD", "DOMINANCE_%", "VOLUME_%",
        "CHANGE_24H_%",
    ]  # fmt: skip
    assert lines[-1] == "(5 rows)"
    shown = [line.split()[0] for line in lines[3:-1]]
    assert shown == [str(r[0]) for r in top]
    for line, row in zip(lines[3:-1], top, strict=True):
        assert row[1] in line and row[2] in line

    code, out, err = _cli(capsys, *local, "show", "--vs-currency", "EUR", "--limit", "3")
    assert code == 0, err
    assert out.startswith("Snapshot cw-eur · vs_currency eur · fetched at ")
    assert "PRICE_EUR" in out.splitlines()[1] and "MARKET_CAP_EUR" in out.splitlines()[1]


def test_show_json_and_snapshot_option(capsys, two_currencies):
    local = ["--local-dir", str(two_currencies)]
    code, out, err = _cli(capsys, *local, "show", "--snapshot", "cw-eur", "--limit", "3", "--json")
    assert code == 0, err
    rows = _strict_json(out)
    expected = _top(two_currencies, "cw-eur", 3)
    assert [list(r) for r in rows] == [[
        "SNAPSHOT_ID", "VS_CURRENCY", "FETCHED_AT", "RANK", "NAME", "SYMBOL", "PRICE_EUR",
        "MARKET_CAP_EUR", "DOMINANCE_PCT", "VOLUME_PCT", "CHANGE_24H_PCT",
    ]] * 3  # fmt: skip
    for got, want in zip(rows, expected, strict=True):
        assert (got["SNAPSHOT_ID"], got["VS_CURRENCY"]) == ("cw-eur", "eur")
        assert datetime.fromisoformat(got["FETCHED_AT"]) == want[-1]
        assert (got["RANK"], got["NAME"], got["SYMBOL"]) == want[:3]
        assert float(got["PRICE_EUR"]) == want[3] and float(got["MARKET_CAP_EUR"]) == want[4]


def test_show_says_why_there_is_nothing_to_show(capsys, two_currencies, tmp_path):
    local = ["--local-dir", str(two_currencies)]
    code, out, _ = _cli(capsys, *local, "show", "--snapshot", "nope")
    assert code == 1 and "Snapshot 'nope' is not in CRYPTO_DATA" in out
    code, out, _ = _cli(capsys, *local, "show", "--vs-currency", "gbp")
    assert code == 1 and "No snapshot with vs_currency 'gbp' is loaded (loaded: eur, usd)" in out
    code, out, _ = _cli(capsys, *local, "show", "--snapshot", "cw-usd", "--vs-currency", "eur")
    assert code == 1 and "quoted in 'usd', not 'eur'" in out
    code, out, err = _cli(capsys, *local, "show", "--snapshot", "nope", "--json")
    assert (code, out.strip()) == (1, "[]") and "not in CRYPTO_DATA" in err
    code, out, _ = _cli(capsys, "--local-dir", str(tmp_path), "show")
    assert code == 1 and "No snapshot loaded yet" in out
    for bad in (["--vs-currency", "us d"], ["--vs-currency", ""], ["--snapshot", "a/b"]):
        code, _, err = _cli(capsys, *local, "show", *bad)
        assert code == 2 and "Traceback" not in err


# --- runs ----------------------------------------------------------------------------------------


def test_runs_lists_executions_newest_first(capsys, two_currencies):
    local = ["--local-dir", str(two_currencies)]
    log = _rows(
        two_currencies,
        "SELECT SNAPSHOT_ID, STATUS, VS_CURRENCY, COIN_COUNT, ROWS_LOADED, ROWS_INSERTED,"
        " ROWS_REPLACED, FETCHED_AT, LOADED_AT, EXECUTION_ID FROM ETL_RUNS ORDER BY LOADED_AT DESC",
    )
    assert [r[0] for r in log] == ["cw-eur", "cw-usd"]
    code, out, err = _cli(capsys, *local, "runs", "--json")
    assert code == 0, err
    runs = _strict_json(out)
    assert [r["SNAPSHOT_ID"] for r in runs] == ["cw-eur", "cw-usd"]
    for got, want in zip(runs, log, strict=True):
        snap, status, cur, coins, n, ins, rep, fetched, loaded, execution = want
        assert (got["STATUS"], got["VS_CURRENCY"], got["COINS"], got["ROWS"]) == (
            status, cur, coins, n,
        )  # fmt: skip
        assert (got["INSERTED"], got["REPLACED"]) == (ins, rep)
        assert datetime.fromisoformat(got["LOADED_AT"]) == loaded
        assert float(got["DURATION_S"]) == round((loaded - fetched).total_seconds(), 1)
        assert execution.endswith(":" + got["EXECUTION"]) and got["EXECUTION"].startswith(snap)
    code, out, _ = _cli(capsys, *local, "runs", "--limit", "1")
    lines = out.splitlines()
    assert code == 0 and lines[-1] == "(1 row)"
    assert lines[0].split()[:4] == ["LOADED_AT", "STATUS", "SNAPSHOT_ID", "VS_CURRENCY"]
    assert " cw-eur " in lines[2] and "SUCCEEDED" in lines[2]


def test_runs_lists_a_failed_execution_with_its_state_and_error(capsys, tmp_path):
    """A FAILED row (written by the load's record_failure action, as the state machine's
    Catch path does) is listed with the failed state, the error and its message."""
    from functions.load.handler import record_failure_run

    name = "cw-failed"
    message = "page 2 of /coins/markets kept failing: HTTP 500 " + "x" * 300
    event = {
        "action": "record_failure",
        "failed_state": "Extract",
        "error": {
            "Error": "SourceUnavailableError",
            "Cause": json.dumps({"errorType": "SourceUnavailableError", "errorMessage": message}),
        },
        "execution": {"name": name, "id": f"arn:aws:states:::execution:m:{name}"},
        "state_input": {"snapshot_id": "cw-f", "pages": 1, "coin_count": 250},
    }
    with LocalWarehouse(tmp_path / "warehouse") as wh:
        record_failure_run(event, config=wh.config())
    local = ["--local-dir", str(tmp_path)]
    code, out, err = _cli(capsys, *local, "runs", "--json")
    assert code == 0, err
    [run] = _strict_json(out)
    assert (run["STATUS"], run["SNAPSHOT_ID"], run["EXECUTION"]) == ("FAILED", "cw-f", name)
    assert (run["COINS"], run["ROWS"], run["INSERTED"]) == (250, None, None)
    assert run["NOTE"] == f"failed at Extract: SourceUnavailableError: {message}"
    code, out, _ = _cli(capsys, *local, "runs")
    assert code == 0
    [line] = [x for x in out.splitlines() if " cw-f " in x]
    assert "FAILED" in line and "failed at Extract: SourceUnavailableError: page 2" in line
    assert "x" * 300 not in line  # the message is cut in the table


def test_runs_reads_an_etl_runs_from_an_older_version(capsys, tmp_path):
    """An ETL_RUNS from the first release (no coverage, no failure columns): `runs` asks for
    fewer columns (each fallback in turn) and lists it the same."""
    from functions.load import sql

    skip = set(sql.FAILURE_COLUMNS) | set(sql.COVERAGE_COLUMNS)
    cols = ", ".join(f"{c} {t}" for c, t in sql.ETL_RUN_COLUMNS if c not in skip)
    with LocalWarehouse(tmp_path / "warehouse") as wh:
        conn = wh.connect()
        try:
            with conn.cursor() as cur:
                cur.execute(f"CREATE TABLE ETL_RUNS ({cols})")
                cur.execute(
                    "INSERT INTO ETL_RUNS (SNAPSHOT_ID, EXECUTION_ID, STATUS, LOADED_AT) VALUES"
                    " ('old', 'arn:x:e-old', 'SUCCEEDED',"
                    " CAST('2026-11-27T06:00:00+00:00' AS TIMESTAMP_TZ))"
                )
        finally:
            conn.close()
    code, out, err = _cli(capsys, "--local-dir", str(tmp_path), "runs", "--json")
    assert code == 0, err
    [run] = _strict_json(out)
    assert (run["STATUS"], run["SNAPSHOT_ID"], run["EXECUTION"], run["NOTE"]) == (
        "SUCCEEDED",
        "old",
        "e-old",
        "",
    )


def test_runs_on_an_empty_warehouse(capsys, tmp_path):
    code, out, _ = _cli(capsys, "--local-dir", str(tmp_path), "runs")
    assert code == 1 and "No load recorded in ETL_RUNS yet" in out


# --- bad local dirs: one line, exit 2 ------------------------------------------------------------


def test_a_local_dir_that_is_not_a_directory_is_one_line_and_exit_2(capsys, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    for local_dir in (blocker, tmp_path):
        if local_dir == tmp_path:
            (tmp_path / "warehouse").write_text("a file where the warehouse folder goes")
        commands = [["show"], ["sql", "SELECT 1"], ["runs"]]
        for argv in commands + ([["rebuild"]] if local_dir == blocker else []):
            code, out, err = _cli(capsys, "--local-dir", str(local_dir), *argv)
            assert code == 2, (argv, out, err)
            assert "Traceback" not in out + err
            assert len(err.strip().splitlines()) == 1 and err.startswith("error: "), err
            assert "directory" in err


# --- rebuild -------------------------------------------------------------------------------------

ALL_ROWS = "SELECT * FROM CRYPTO_DATA ORDER BY SNAPSHOT_ID, COIN_ID"


def test_rebuild_restores_the_warehouse_from_the_lake_idempotently(capsys, copy_of: Path):
    local = ["--local-dir", str(copy_of)]
    before = _rows(copy_of, ALL_ROWS)
    assert len(before) == 500
    shutil.rmtree(copy_of / "warehouse")

    code, out, err = _cli(capsys, *local, "rebuild", "--dry-run")
    assert code == 0, out + err
    assert "cw-usd (run cw-usd-" in out and "would load 300 rows" in out
    assert "would load 200 rows" in out
    assert "would load 2 snapshots, 500 rows" in out and "Nothing was changed" in out
    assert not (copy_of / "warehouse").exists()

    code, out, err = _cli(capsys, *local, "rebuild")
    assert code == 0, out + err
    assert "[1/2] cw-usd" in out and "[2/2] cw-eur" in out  # in original load order
    assert "300 rows (300 new, 0 replaced)" in out
    assert "Rebuilt 2 snapshots, 500 rows (replacing 0 rows already there)" in out
    assert _rows(copy_of, ALL_ROWS) == before  # every column, LOADED_AT included

    code, out, err = _cli(capsys, *local, "rebuild")
    assert code == 0, out + err
    assert "300 rows (0 new, 300 replaced)" in out
    assert "Rebuilt 2 snapshots, 500 rows (replacing 500 rows already there)" in out
    assert _rows(copy_of, ALL_ROWS) == before
    runs = _rows(
        copy_of, "SELECT SNAPSHOT_ID, EXECUTION_ID, ROWS_LOADED, QUALITY FROM ETL_RUNS ORDER BY 1"
    )
    assert [(r[0], r[2]) for r in runs] == [("cw-eur", 200), ("cw-usd", 300)]
    assert all(r[1].endswith("#rebuild") for r in runs)
    assert all("rebuilt_from_lake" in json.loads(r[3]) for r in runs)
    assert _rows(copy_of, "SELECT COUNT(*) FROM CRYPTO_ASSET_DIM") == _rows(
        copy_of, "SELECT COUNT(DISTINCT COIN_ID) FROM CRYPTO_DATA"
    )
    code, out, _ = _cli(capsys, *local, "runs")
    assert code == 0 and out.count("rebuilt from the lake") == 2


def test_rebuild_reports_every_file_it_does_not_load(capsys, copy_of: Path):
    lake = copy_of / "lake"
    (current,) = (lake / "processed").glob("dt=*/snapshot=cw-usd/run=*/crypto_data.csv.gz")
    dt = current.parts[-4]
    older = lake / "processed" / dt / "snapshot=old" / "crypto_data.csv.gz"
    superseded = lake / "processed" / dt / "snapshot=cw-usd" / "run=failed-rerun" / current.name
    never = lake / "processed" / dt / "snapshot=cw-none" / "run=r1" / current.name
    for path in (older, superseded, never):
        path.parent.mkdir(parents=True)
        shutil.copyfile(current, path)
    (lake / "snapshots" / "cw-none.json").write_text(
        json.dumps({"snapshot_id": "cw-none", "partition_date": dt[3:], "current": None})
    )
    (lake / "snapshots" / "cw-bad.json").write_text("{not json")
    code, out, err = _cli(capsys, "--local-dir", str(copy_of), "rebuild", "--dry-run")
    assert code == 1, out + err  # the invalid index is a problem
    key = lambda p: p.relative_to(lake).as_posix()  # noqa: E731
    assert f"not loaded: {key(older)}: not in the layout" in out
    assert (
        f"not loaded: {key(superseded)}: superseded: the index of snapshot cw-usd names run" in out
    )
    assert f"not loaded: {key(never)}: the index of snapshot cw-none names no loaded run" in out
    assert "problem: snapshots/cw-bad.json" in out and "not valid JSON" in out
    assert "would load 2 snapshots, 500 rows" in out
    assert "3 processed files not loaded, 1 problem" in out

    # A current file that vanished: the other snapshot still loads, the run says so (exit 1).
    (lake / "snapshots" / "cw-bad.json").unlink()
    (eur,) = (lake / "processed").glob("dt=*/snapshot=cw-eur/run=*/crypto_data.csv.gz")
    eur.unlink()
    code, out, _ = _cli(capsys, "--local-dir", str(copy_of), "rebuild")
    assert code == 1
    assert f"problem: snapshots/cw-eur.json: its current run's processed file {key(eur)}" in out
    assert "Rebuilt 1 snapshot, 300 rows" in out and "1 problem" in out


def test_rebuild_counts_records_not_lines(tmp_path: Path):
    """A quoted newline inside a name is one row (the load checks the count exactly)."""
    import csv

    from functions.common.schema import COLUMN_NAMES
    from local_mode.rebuild import read_processed_file

    rows = [dict.fromkeys(COLUMN_NAMES, "") for _ in range(3)]
    for i, row in enumerate(rows):
        row.update(coin_id=f"c{i}", vs_currency="eur", fetched_at="2026-11-01 00:00:00+00:00")
    rows[0]["name"] = "two\nlines"
    rows[1]["name"] = 'quote " and, comma'
    buf = io.StringIO(newline="")
    writer = csv.DictWriter(buf, COLUMN_NAMES, quoting=csv.QUOTE_NONNUMERIC, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    path = tmp_path / "crypto_data.csv.gz"
    path.write_bytes(gzip.compress(buf.getvalue().encode()))
    assert buf.getvalue().count("\n") == 5  # header + 3 rows + the newline inside a name
    facts = read_processed_file(path)
    assert (facts.rows, facts.vs_currency, facts.fetched_at) == (
        3, "eur", "2026-11-01 00:00:00+00:00",
    )  # fmt: skip
