"""The local Snowflake: a fakesnow server on 127.0.0.1 with its databases in a folder.

``LocalWarehouse(data_dir)`` starts the server as a subprocess, waits until it accepts
connections, hands out the ``SNOWFLAKE_*`` environment the Load Lambda reads (``env()``) or a
connection (``connect()``), and stops the server on exit. Data persists in ``data_dir``
(one DuckDB file per database) across restarts.

Why not plain ``python -m fakesnow -s``: with ``FAKESNOW_DB_PATH`` its server opens a fresh
DuckDB instance per login and never releases it, so a second connection to the same database
file fails ("Unique file handle conflict ... already attached"). This module's ``serve`` runs the
same fakesnow server app (uvicorn) with one shared instance per database path, so any number of
sequential or concurrent connections work, and closes DuckDB cleanly on SIGINT/SIGTERM.

Two more fixes to the emulator, made in the server process only (``_patch_fakesnow``):

* fakesnow serialises a timestamp column as Snowflake's Arrow struct without a validity mask,
  so the connector reads a NULL TIMESTAMP_TZ/NTZ/LTZ as 1970-01-01. Here a NULL stays NULL (and
  a real 1970-01-01 still reads as 1970-01-01).
* fakesnow's COPY refuses the CSV options ``TIMESTAMP_FORMAT`` / ``DATE_FORMAT``, which the load
  sends to pin how real Snowflake reads the file. DuckDB's CSV reader reads ISO-8601 by itself,
  so the values the load sends (``functions.load.sql.COPY_*_FORMAT``) and ``AUTO`` are accepted
  and dropped; any other value is refused with an error naming it.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Self

from functions.common.errors import CryptoEtlError
from functions.load.config import DEFAULT_DATABASE, DEFAULT_SCHEMA, SnowflakeConfig
from functions.load.sql import COPY_DATE_FORMAT, COPY_TIMESTAMP_FORMAT

REPO_ROOT = Path(__file__).resolve().parents[1]
FAKE_USER = "fake"
FAKE_PASSWORD = "snow"  # noqa: S105 - fakesnow's fixed local credentials
FAKE_ACCOUNT = "fakesnow"
LOCAL_HOST = "127.0.0.1"
LOG_NAME = "fakesnow-server.log"
LOCK_NAME = ".warehouse.lock"
_OWNED_TMP_ENV = "CRYPTO_ETL_WAREHOUSE_TMP"  # the server removes this folder when it exits


class LocalWarehouseError(CryptoEtlError):
    """The local warehouse server could not be started (or its folder is in use)."""


def free_port(host: str = LOCAL_HOST) -> int:
    """A TCP port that was free on ``host`` a moment ago."""
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _answers_http(host: str, port: int) -> bool:
    """True once an HTTP server answers on host:port (any status: the app is up)."""
    try:
        with urllib.request.urlopen(f"http://{host}:{port}/", timeout=1):
            return True
    except urllib.error.HTTPError:
        return True
    except (OSError, ValueError):
        return False


def _tail(path: Path, lines: int = 25) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no server log)"
    # DuckDB's bindings print reference-leak reports at interpreter exit: not the cause.
    useful = [
        line
        for line in text.splitlines()
        if not line.startswith(("nanobind:", " - leaked", " - ... skipped", "See https://nanobind"))
    ]
    return "\n".join(useful[-lines:]) or "(server log is empty)"


class LocalWarehouse:
    """A fakesnow server subprocess bound to 127.0.0.1, persisting into ``data_dir``."""

    def __init__(
        self,
        data_dir: Path,
        *,
        database: str = DEFAULT_DATABASE,
        schema: str = DEFAULT_SCHEMA,
        port: int | None = None,
        startup_timeout: float = 30.0,
        network_timeout: int = 5,
        login_timeout: int = 10,
    ) -> None:
        self.data_dir = Path(data_dir).resolve()
        self.database = database
        self.schema = schema
        self.host = LOCAL_HOST
        self._requested_port = port
        self.port: int | None = None
        self.startup_timeout = startup_timeout
        self.network_timeout = network_timeout
        self.login_timeout = login_timeout
        self.log_path = self.data_dir / LOG_NAME
        self._proc: subprocess.Popen[bytes] | None = None
        self._tmp: Path | None = None
        self._lock: IO[str] | None = None

    # -- lifecycle ------------------------------------------------------------------------------

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def start(self) -> None:
        """Start the server and wait until it accepts connections.

        Raises LocalWarehouseError (one line naming the folder and the OS error) when
        ``data_dir`` is not a writable directory or cannot be created, when another process
        holds it, or when the server does not come up.
        """
        if self.running:
            return
        if "'" in str(self.data_dir):
            # fakesnow ATTACHes each database as '<path>' without escaping: the server would
            # fail with a parser error only its log shows.
            raise LocalWarehouseError(
                f"the warehouse folder {self.data_dir} contains a single quote, which the local"
                " emulator cannot open: use a --local-dir (or a clone) without one"
            )
        try:
            self._check_dir()
            self._acquire_lock()
        except OSError as exc:
            raise LocalWarehouseError(
                f"cannot use {self.data_dir} as the local warehouse folder (it must be a"
                f" writable directory): {type(exc).__name__}: {exc.strerror or exc}"
            ) from exc
        try:
            attempts = 1 if self._requested_port else 3
            for attempt in range(attempts):
                port = self._requested_port or free_port(self.host)
                if self._launch(port, last_attempt=attempt == attempts - 1):
                    self.port = port
                    return
        except OSError as exc:  # the log file, the temp folder, the subprocess itself
            self.stop()
            raise LocalWarehouseError(
                f"cannot start the local warehouse in {self.data_dir}: {type(exc).__name__}: {exc}"
            ) from exc
        except BaseException:
            self.stop()
            raise

    def _check_dir(self) -> None:
        """Create ``data_dir`` and prove it writable (OSError if not).

        DuckDB writes a WAL file beside each database: in a folder it cannot write, the server
        would start and fail only at the first statement, with an opaque HTTP 500.
        """
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=self.data_dir, prefix=".write-check-"):
            pass

    def _launch(self, port: int, *, last_attempt: bool) -> bool:
        """One start attempt; False when the port was taken (the caller picks another)."""
        self._tmp = Path(tempfile.mkdtemp(prefix="crypto-etl-fakesnow-"))
        env = {
            **os.environ,
            # fakesnow keeps staged (PUT) files under a temp dir: keep them in ours.
            "TMPDIR": str(self._tmp),
            _OWNED_TMP_ENV: str(self._tmp),
            "PYTHONPATH": os.pathsep.join(
                p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH", "")) if p
            ),
        }
        cmd = [sys.executable, "-m", "local_mode.warehouse", "--host", self.host]
        cmd += ["--port", str(port), "--parent-pid", str(os.getpid())]
        with self.log_path.open("wb") as log:
            self._proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
            )
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                log_tail = _tail(self.log_path)
                self._cleanup_tmp()
                if "address already in use" in log_tail.lower() and not last_attempt:
                    return False
                raise LocalWarehouseError(
                    f"the fakesnow server exited with code {self._proc.returncode} before"
                    f" accepting connections on {self.host}:{port}. Server log"
                    f" ({self.log_path}):\n{log_tail}"
                )
            if _answers_http(self.host, port):
                return True
            time.sleep(0.05)
        log_tail = _tail(self.log_path)
        self.stop()
        raise LocalWarehouseError(
            f"the fakesnow server did not accept connections on {self.host}:{port} within"
            f" {self.startup_timeout:.0f}s. Server log ({self.log_path}):\n{log_tail}"
        )

    def stop(self) -> None:
        """Stop the server: SIGINT (clean DuckDB close), then terminate, then kill."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.terminate()
                try:
                    proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=5)
        self.port = None
        self._cleanup_tmp()
        self._release_lock()

    def _cleanup_tmp(self) -> None:
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None

    def _acquire_lock(self) -> None:
        lock = (self.data_dir / LOCK_NAME).open("a+")
        try:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            lock.seek(0)
            holder = lock.read().strip() or "another process"
            lock.close()
            raise LocalWarehouseError(
                f"the local warehouse {self.data_dir} is in use by {holder}; stop it first"
                " (DuckDB lets one process open a database file)"
            ) from None
        lock.seek(0)
        lock.truncate()
        lock.write(f"pid {os.getpid()}\n")
        lock.flush()
        self._lock = lock

    def _release_lock(self) -> None:
        if self._lock is not None:
            with contextlib.suppress(OSError):
                self._lock.truncate(0)
                fcntl.flock(self._lock.fileno(), fcntl.LOCK_UN)
            self._lock.close()
            self._lock = None

    # -- clients ----------------------------------------------------------------------------------

    def env(self) -> dict[str, str]:
        """The ``SNOWFLAKE_*`` variables that point the Load Lambda's config at this server."""
        if self.port is None:
            raise LocalWarehouseError("the local warehouse is not started")
        return {
            "SNOWFLAKE_ACCOUNT": FAKE_ACCOUNT,
            "SNOWFLAKE_USER": FAKE_USER,
            "SNOWFLAKE_PASSWORD": FAKE_PASSWORD,
            # Blank out settings a developer's shell may carry for a real account.
            "SNOWFLAKE_PRIVATE_KEY": "",
            "SNOWFLAKE_PRIVATE_KEY_PASSPHRASE": "",
            "SNOWFLAKE_SECRET_ARN": "",
            "SNOWFLAKE_ROLE": "",
            "SNOWFLAKE_WAREHOUSE": "",
            "SNOWFLAKE_DATABASE": self.database,
            "SNOWFLAKE_SCHEMA": self.schema,
            "SNOWFLAKE_HOST": self.host,
            "SNOWFLAKE_PORT": str(self.port),
            "SNOWFLAKE_PROTOCOL": "http",
            "SNOWFLAKE_NETWORK_TIMEOUT": str(self.network_timeout),
            "SNOWFLAKE_LOGIN_TIMEOUT": str(self.login_timeout),
            "SNOWFLAKE_SESSION_PARAMETERS": json.dumps(
                {
                    "FAKESNOW_DB_PATH": str(self.data_dir),
                    "CLIENT_OUT_OF_BAND_TELEMETRY_ENABLED": False,
                }
            ),
        }

    def config(self) -> SnowflakeConfig:
        """The Load config for this server."""
        return SnowflakeConfig.from_env(self.env())

    def connect(self) -> Any:
        """A ``snowflake.connector`` connection to this server (caller closes it)."""
        from functions.load.connection import connect

        return connect(self.config())


# --- the server process (python -m local_mode.warehouse --port N) ------------------------------

# COPY FILE_FORMAT options the emulator lacks -> the values it can honour (DuckDB's CSV reader
# detects ISO-8601 timestamps with an offset and ISO dates, which is what these formats denote).
EMULATED_COPY_FORMATS: dict[str, frozenset[str]] = {
    "TIMESTAMP_FORMAT": frozenset({COPY_TIMESTAMP_FORMAT, "AUTO"}),
    "DATE_FORMAT": frozenset({COPY_DATE_FORMAT, "AUTO"}),
}


def _timestamps_keep_nulls(to_struct: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """Wrap fakesnow's ``timestamp_to_sf_struct`` so NULL rows are NULL structs.

    Snowflake sends a timestamp as a struct (epoch, fraction[, timezone]); fakesnow builds it
    without a validity mask, so a NULL row arrives as epoch 0 and the connector returns
    1970-01-01. The struct is rebuilt with the input's nulls as its mask (children 0-filled, as
    their fields are declared non-nullable).
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    def timestamp_to_sf_struct(ts: Any) -> Any:
        struct = to_struct(ts)
        if isinstance(ts, pa.ChunkedArray):
            ts = ts.combine_chunks()
        if ts.null_count == 0:
            return struct
        children = [pc.fill_null(struct.field(i), 0) for i in range(struct.type.num_fields)]
        return pa.StructArray.from_arrays(children, fields=list(struct.type), mask=ts.is_null())

    return timestamp_to_sf_struct


def _csv_accepts_pinned_formats(handle_csv: Callable[[dict], Any]) -> Callable[[dict], Any]:
    """Wrap fakesnow's ``handle_csv`` to accept ``EMULATED_COPY_FORMATS`` (and refuse others)."""
    from snowflake.connector.errors import ProgrammingError

    def accepting_handle_csv(options: dict[str, Any]) -> Any:
        options = dict(options)
        for name, accepted in EMULATED_COPY_FORMATS.items():
            if name not in options:
                continue
            value = str(options.pop(name))
            if value not in accepted and value.upper() != "AUTO":
                raise ProgrammingError(
                    msg=f"local warehouse: COPY FILE_FORMAT option {name} = '{value}' is not"
                    f" emulated (DuckDB detects the text's format itself); accepted:"
                    f" {sorted(accepted)}",
                    errno=1008,
                    sqlstate="22023",
                )
        return handle_csv(options)

    return accepting_handle_csv


def _patch_fakesnow() -> None:
    """Apply the emulator fixes described in the module docstring (idempotent)."""
    import fakesnow.arrow as fakesnow_arrow
    import fakesnow.copy_into as fakesnow_copy

    if getattr(fakesnow_arrow, "_crypto_etl_patched", False):
        return
    # Both are looked up as module globals by their callers (to_sf, _params).
    fakesnow_arrow.timestamp_to_sf_struct = _timestamps_keep_nulls(
        fakesnow_arrow.timestamp_to_sf_struct
    )
    fakesnow_copy.handle_csv = _csv_accepts_pinned_formats(fakesnow_copy.handle_csv)
    fakesnow_arrow._crypto_etl_patched = True  # type: ignore[attr-defined]


def serve(host: str, port: int, parent_pid: int | None = None) -> int:
    """Run fakesnow's server app with one shared DuckDB instance per ``FAKESNOW_DB_PATH``.

    With ``parent_pid``, the server also stops when that process is gone (no orphan keeps the
    database files locked if the parent is killed).
    """
    import fakesnow.server as fakesnow_server
    import uvicorn
    from fakesnow.instance import FakeSnow

    _patch_fakesnow()
    instances: dict[str, FakeSnow] = {}
    lock = threading.Lock()

    def shared_instance(*args: Any, **kwargs: Any) -> FakeSnow:
        db_path = kwargs.get("db_path")
        if args or db_path in (None, ":isolated:"):
            return FakeSnow(*args, **kwargs)
        key = str(Path(db_path).resolve())
        with lock:
            if key not in instances:
                instances[key] = FakeSnow(**kwargs)
            return instances[key]

    fakesnow_server.FakeSnow = shared_instance  # login_request creates instances through this

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)
    server = uvicorn.Server(
        uvicorn.Config(fakesnow_server.app, host=host, port=port, log_level="warning")
    )

    def watch_parent() -> None:
        while not server.should_exit:
            if os.getppid() != parent_pid:
                server.should_exit = True
                return
            time.sleep(0.5)

    if parent_pid is not None:
        threading.Thread(target=watch_parent, name="parent-watch", daemon=True).start()
    try:
        server.run()
    except KeyboardInterrupt:
        pass
    finally:
        for instance in instances.values():
            with contextlib.suppress(Exception):
                instance.duck_conn.close()
        if owned_tmp := os.environ.get(_OWNED_TMP_ENV):
            shutil.rmtree(owned_tmp, ignore_errors=True)
    return 0 if server.started else 1


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the server subprocess."""
    parser = argparse.ArgumentParser(description="crypto-etl local warehouse (fakesnow server)")
    parser.add_argument("--host", default=LOCAL_HOST)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--parent-pid", type=int, help="exit when this process is gone")
    args = parser.parse_args(argv)
    return serve(args.host, args.port, args.parent_pid)


if __name__ == "__main__":
    sys.exit(main())
