"""The local warehouse: a real fakesnow server subprocess on 127.0.0.1."""

from __future__ import annotations

import gzip
import json
import os
import signal
import socket
import subprocess
import sys
import time
from datetime import UTC, date, datetime
from pathlib import Path

import pytest
from snowflake.connector.errors import ProgrammingError

from functions.load import sql
from functions.load.config import SnowflakeConfig
from local_mode.warehouse import LocalWarehouse, LocalWarehouseError


def _count(wh: LocalWarehouse, table: str = "T") -> int:
    conn = wh.connect()
    try:
        with conn.cursor() as cur:
            cur.execute(f"SELECT COUNT(*) FROM {table}")
            return cur.fetchone()[0]
    finally:
        conn.close()


def _exec(wh: LocalWarehouse, *statements: str) -> None:
    conn = wh.connect()
    try:
        with conn.cursor() as cur:
            for statement in statements:
                cur.execute(statement)
    finally:
        conn.close()


def test_env_is_what_the_load_config_reads(tmp_path: Path):
    with LocalWarehouse(tmp_path / "wh") as wh:
        env = wh.env()
        cfg = SnowflakeConfig.from_env(env)
        assert (cfg.account, cfg.host, cfg.port, cfg.protocol) == (
            "fakesnow",
            "127.0.0.1",
            wh.port,
            "http",
        )
        assert cfg.database == "CRYPTO_ETL_DB" and cfg.schema == "PUBLIC"
        assert cfg.network_timeout and cfg.network_timeout <= 10
        params = json.loads(env["SNOWFLAKE_SESSION_PARAMETERS"])
        assert params["FAKESNOW_DB_PATH"] == str((tmp_path / "wh").resolve())
        # Variables a developer's shell may hold for a real account are blanked out.
        assert env["SNOWFLAKE_SECRET_ARN"] == "" and env["SNOWFLAKE_PRIVATE_KEY"] == ""
        with socket.create_connection(("127.0.0.1", wh.port), timeout=2):
            pass


def test_many_connections_sequential_and_concurrent(tmp_path: Path):
    """Plain `fakesnow -s` allows one connection per database file; ours allows any number."""
    with LocalWarehouse(tmp_path / "wh") as wh:
        _exec(wh, "CREATE TABLE T (A INT)", "INSERT INTO T VALUES (1)")
        a, b = wh.connect(), wh.connect()
        try:
            a.cursor().execute("INSERT INTO T VALUES (2)")
            assert b.cursor().execute("SELECT COUNT(*) FROM T").fetchone()[0] == 2
        finally:
            a.close()
            b.close()
        assert _count(wh) == 2
        assert _count(wh) == 2


def test_data_persists_across_restarts_and_a_hard_kill(tmp_path: Path):
    data_dir = tmp_path / "wh"
    with LocalWarehouse(data_dir) as wh:
        _exec(wh, "CREATE TABLE T (A INT)", "INSERT INTO T VALUES (1), (2)")
    assert (data_dir / "CRYPTO_ETL_DB.db").is_file()
    with LocalWarehouse(data_dir) as wh:
        assert _count(wh) == 2
        _exec(wh, "INSERT INTO T VALUES (3)")
        # A committed row survives the server dying without any shutdown.
        os.kill(wh.pid, signal.SIGKILL)
        wh._proc.wait(timeout=10)
    with LocalWarehouse(data_dir) as wh:
        assert _count(wh) == 3


def test_stop_ends_the_server_process_and_removes_its_temp_files(tmp_path: Path):
    wh = LocalWarehouse(tmp_path / "wh")
    with wh:
        proc = wh._proc
        tmp = wh._tmp
        assert proc.poll() is None and tmp.is_dir()
        port = wh.port
    assert proc.poll() is not None
    assert not tmp.exists()
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
        pass
    with pytest.raises(LocalWarehouseError, match="not started"):
        wh.env()


def test_a_second_warehouse_on_the_same_folder_is_refused_clearly(tmp_path: Path):
    with (
        LocalWarehouse(tmp_path / "wh"),
        pytest.raises(LocalWarehouseError, match=r"in use by pid \d+"),
    ):
        LocalWarehouse(tmp_path / "wh").start()
    # Released on exit: the folder can be opened again.
    with LocalWarehouse(tmp_path / "wh") as wh:
        assert wh.running


def test_a_server_that_cannot_start_reports_its_log(tmp_path: Path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        wh = LocalWarehouse(tmp_path / "wh", port=port, startup_timeout=20)
        # The port accepts TCP connections (ours) but is no HTTP server; fakesnow cannot bind it.
        with pytest.raises(LocalWarehouseError, match="exited with code") as err:
            wh.start()
    assert "address already in use" in str(err.value).lower()
    assert not wh.running


def _alive(pid: int) -> bool:
    """False once the process is gone or a zombie (nobody may reap it in a container)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")
def test_the_server_exits_when_its_parent_is_killed(tmp_path: Path):
    script = (
        "import sys, time\n"
        "from pathlib import Path\n"
        "from local_mode.warehouse import LocalWarehouse\n"
        "wh = LocalWarehouse(Path(sys.argv[1]))\n"
        "wh.start()\n"
        "print(wh.pid, flush=True)\n"
        "time.sleep(300)\n"
    )
    parent = subprocess.Popen(
        [sys.executable, "-c", script, str(tmp_path / "wh")], stdout=subprocess.PIPE, text=True
    )
    try:
        server_pid = int(parent.stdout.readline())
        assert _alive(server_pid)
    finally:
        parent.kill()
        parent.wait(timeout=10)
        parent.stdout.close()
    deadline = time.monotonic() + 30
    while _alive(server_pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(server_pid), "the orphaned server kept running"
    # Its database files are free again.
    with LocalWarehouse(tmp_path / "wh") as wh:
        _exec(wh, "CREATE TABLE T (A INT)")
        assert _count(wh) == 0


def _fetch(wh: LocalWarehouse, statement: str) -> list[tuple]:
    conn = wh.connect()
    try:
        with conn.cursor() as cur:
            cur.execute(statement)
            return [tuple(r) for r in cur.fetchall()]
    finally:
        conn.close()


def test_a_null_timestamp_is_fetched_as_none_and_a_real_epoch_as_1970(tmp_path: Path):
    """The emulator used to send a NULL timestamp as epoch 0, read back as 1970-01-01."""
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    ath = datetime(2021, 11, 10, 14, 24, 11, 849000, tzinfo=UTC)
    with LocalWarehouse(tmp_path / "wh") as wh:
        _exec(
            wh,
            "CREATE TABLE T (N INT, TZ TIMESTAMP_TZ, NTZ TIMESTAMP_NTZ, LTZ TIMESTAMP_LTZ, D DATE)",
            "INSERT INTO T VALUES (1, NULL, NULL, NULL, NULL),"
            " (2, '1970-01-01 00:00:00+00:00', '1970-01-01 00:00:00',"
            " '1970-01-01 00:00:00+00:00', '1970-01-01'),"
            " (3, '2021-11-10 14:24:11.849+00:00', '2021-11-10 14:24:11.849',"
            " '2021-11-10 14:24:11.849+00:00', '2021-11-10')",
        )
        assert _fetch(wh, "SELECT * FROM T ORDER BY N") == [
            (1, None, None, None, None),
            (2, epoch, epoch.replace(tzinfo=None), epoch, date(1970, 1, 1)),
            (3, ath, ath.replace(tzinfo=None), ath, date(2021, 11, 10)),
        ]
        # Computed NULLs too, in any query.
        assert _fetch(wh, "SELECT CAST(NULL AS TIMESTAMP_TZ), MAX(TZ) FROM T WHERE N = 1") == [
            (None, None)
        ]


def test_copy_accepts_the_loads_pinned_formats_and_refuses_others(tmp_path: Path):
    """Real Snowflake gets TIMESTAMP_FORMAT/DATE_FORMAT; the emulator honours exactly those."""
    data = tmp_path / "f.csv.gz"
    data.write_bytes(
        gzip.compress(
            b'ts,d,s\n2024-05-01 12:00:00.123456+00:00,2024-05-01,"quoted, text"\n,,plain\n'
        )
    )
    with LocalWarehouse(tmp_path / "wh") as wh:
        conn = wh.connect()
        try:
            with conn.cursor() as cur:
                cur.execute("CREATE TABLE T (TS TIMESTAMP_TZ, D DATE, S VARCHAR)")
                cur.execute("CREATE TEMPORARY STAGE S1")
                cur.execute(sql.put_file(data, "S1").sql)
                copy = sql.copy_into_staging("T", "S1").sql
                assert f"TIMESTAMP_FORMAT = '{sql.COPY_TIMESTAMP_FORMAT}'" in copy
                cur.execute(copy)
                cur.execute("SELECT TS, D, S FROM T ORDER BY S")
                assert [tuple(r) for r in cur.fetchall()] == [
                    (None, None, "plain"),
                    (datetime(2024, 5, 1, 12, 0, 0, 123456, tzinfo=UTC), date(2024, 5, 1),
                     "quoted, text"),
                ]  # fmt: skip
                other = copy.replace(sql.COPY_TIMESTAMP_FORMAT, "DD/MM/YYYY HH24:MI")
                with pytest.raises(ProgrammingError, match="not emulated") as err:
                    cur.execute(other)
                assert "TIMESTAMP_FORMAT = 'DD/MM/YYYY HH24:MI'" in str(err.value)
        finally:
            conn.close()


@pytest.mark.parametrize("where", ["file", "under_a_file"])
def test_a_folder_that_cannot_be_a_directory_is_refused_in_one_line(tmp_path: Path, where: str):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where a folder should be")
    data_dir = blocker if where == "file" else blocker / "warehouse"
    wh = LocalWarehouse(data_dir)
    with pytest.raises(LocalWarehouseError) as err:
        wh.start()
    message = str(err.value)
    assert str(data_dir) in message and "\n" not in message
    assert ("FileExistsError" if where == "file" else "NotADirectoryError") in message
    assert not wh.running and wh.pid is None
    assert blocker.read_text() == "a file where a folder should be"


def _unwritable_dir(tmp_path: Path) -> Path:
    """A directory this process cannot create files in (permissions; as root, sysfs)."""
    if os.geteuid() != 0:
        folder = tmp_path / "read-only"
        folder.mkdir()
        folder.chmod(0o555)
        return folder
    # Root ignores permission bits; sysfs refuses new entries to everyone.
    probe = Path("/sys/crypto-etl-probe")
    try:
        probe.mkdir()
    except OSError:
        return Path("/sys")
    probe.rmdir()
    pytest.skip("no folder this process cannot write to (root, and /sys accepts mkdir)")


def test_a_folder_it_cannot_write_is_refused_before_the_server_starts(tmp_path: Path):
    parent = _unwritable_dir(tmp_path)
    for data_dir in (parent / "warehouse", parent):  # to create / an existing one
        wh = LocalWarehouse(data_dir)
        with pytest.raises(LocalWarehouseError, match="writable directory") as err:
            wh.start()
        assert str(data_dir) in str(err.value) and "\n" not in str(err.value)
        assert not wh.running


def test_a_folder_with_a_single_quote_is_refused_in_one_line(tmp_path):
    from local_mode.warehouse import LocalWarehouse, LocalWarehouseError

    with pytest.raises(LocalWarehouseError, match="single quote"):
        LocalWarehouse(tmp_path / "o'dir" / "warehouse").start()
