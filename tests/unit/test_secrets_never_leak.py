"""No secret value ever leaves through logs, errors, state output, alerts or the lake.

The real local pipeline (``run_pipeline``: the ASL under moto, the real handlers, the fakesnow
server) runs with known, distinctive secret values — the CoinGecko API key, the Snowflake
password, private key and passphrase — against a replay server on 127.0.0.1, once succeeding
and in three failing ways (CoinGecko 401, an unusable private key, an unreachable warehouse).
Everything the run leaves behind is captured and scanned for each secret and simple encodings
of it (base64, URL-encoding, JSON escaping): every log line (the handlers' JSON logs at DEBUG
on stderr, every other Python logger at DEBUG, the progress lines), the execution history
(every state's input and output, errors and causes), the alerts, the RunReport and every file
under the local folder (lake objects, gzip members included; the warehouse's files and server
log). The API key must still reach the API: the replay server sees it in its header.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import gzip
import io
import json
import logging
import socket
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, quote_plus

import pytest

# Imported here, at collection, so the handlers' loggers are made with the session's streams
# (run_and_scan swaps them for the run and puts them back).
import functions.extract.handler
import functions.load.handler
import functions.transform.handler  # noqa: F401
from local_mode.replay_server import ReplayServer, Scripted
from local_mode.run_command import RunOptions, RunReport, run_pipeline
from state_machine import local_runner

# Distinctive values with characters that encodings change ('/', '+', '=', '&', '"').
API_KEY = "CG-leakcheck-7f3a9Q/k+e=y"
PASSWORD = 'pw-leakcheck-Zq81!x@y#"s&'  # a test value, never a real credential
PASSPHRASE = "pp-leakcheck-Lm42&w?/+="
KEY_BODY = "LEAKCHECKPRIVATEKEYBODYq8Zr2Vt6Nw4Xy0"
PRIVATE_KEY = (
    "-----BEGIN ENCRYPTED PRIVATE KEY-----\n"  # a shape, not a key: it cannot be loaded
    + KEY_BODY
    + "\n-----END ENCRYPTED PRIVATE KEY-----\n"
)
SECRETS = {"api key": API_KEY, "password": PASSWORD, "passphrase": PASSPHRASE, "key": KEY_BODY}

BASE_ENV = {
    "COINGECKO_API_KEY": API_KEY,
    "COINGECKO_API_PLAN": "demo",
    "COINGECKO_RATE_LIMIT": "off",
    "COINGECKO_MAX_RETRIES": "1",
    "COINGECKO_MAX_RETRY_WAIT_SECONDS": "1",
    "COINGECKO_BACKOFF_BASE_SECONDS": "0.01",
    "COINGECKO_TIMEOUT_SECONDS": "5",
    "SNOWFLAKE_PASSWORD": PASSWORD,  # the emulator accepts any password
    "SNOWFLAKE_PRIVATE_KEY_PASSPHRASE": PASSPHRASE,
    "POWERTOOLS_LOG_LEVEL": "DEBUG",
}


def encodings(secret: str) -> dict[str, str]:
    """The secret and the simple transformations a leak could take."""
    raw = secret.encode()
    forms = {
        "plain": secret,
        "base64": base64.b64encode(raw).decode(),
        "base64url": base64.urlsafe_b64encode(raw).decode(),
        "url": quote(secret, safe=""),
        "url+": quote_plus(secret),
        "json": json.dumps(secret)[1:-1],
        "json-in-json": json.dumps(json.dumps(secret)[1:-1])[1:-1],
        "repr": repr(secret)[1:-1],
    }
    # base64 without its padding (a secret inside a longer base64 text keeps no '=').
    forms["base64-unpadded"] = forms["base64"].rstrip("=")
    return forms


def find_leaks(texts: dict[str, str]) -> list[str]:
    """Every (where, secret, encoding) at which a secret appears."""
    leaks = []
    for where, text in texts.items():
        for name, secret in SECRETS.items():
            for form, value in encodings(secret).items():
                if value and value in text:
                    leaks.append(f"{where}: {name} ({form})")
    return sorted(set(leaks))


class _AllRecords(logging.Handler):
    """Every record of every logger that propagates to the root, formatted with tracebacks."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []
        self.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.lines.append(self.format(record))
        except Exception as exc:  # a record that cannot format is still evidence
            self.lines.append(f"{record.name} unformattable {record.msg!r} {exc!r}")


@pytest.fixture
def everything_logged() -> Iterator[_AllRecords]:
    root = logging.getLogger()
    handler = _AllRecords()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        yield handler
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


@pytest.fixture
def histories(monkeypatch: pytest.MonkeyPatch) -> list[local_runner.ExecutionResult]:
    """The ExecutionResult (with its full history) of every execution the runner completes."""
    results: list[local_runner.ExecutionResult] = []
    real = local_runner.LocalStepFunctions.execute

    def execute(self: Any, *args: Any, **kwargs: Any) -> local_runner.ExecutionResult:
        result = real(self, *args, **kwargs)
        results.append(result)
        return result

    monkeypatch.setattr(local_runner.LocalStepFunctions, "execute", execute)
    return results


def _files(root: Path) -> dict[str, str]:
    """Every file under ``root`` as text (bytes decoded leniently; gzip members expanded)."""
    out: dict[str, str] = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        data = path.read_bytes()
        if data[:2] == b"\x1f\x8b":
            with contextlib.suppress(OSError, EOFError):  # not gzip after all: scan as is
                data = gzip.GzipFile(fileobj=io.BytesIO(data)).read()
        out[f"file {path.relative_to(root)}"] = data.decode("utf-8", errors="replace")
    return out


@contextlib.contextmanager
def _closed_port() -> Iterator[int]:
    """A port that refuses connections while the block runs (bound, never listening: the
    run's own warehouse cannot take it meanwhile)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        yield int(s.getsockname()[1])


def run_and_scan(
    tmp_path: Path,
    server: ReplayServer,
    env: dict[str, str],
    capfd: pytest.CaptureFixture[str],
    everything_logged: _AllRecords,
    histories: list[local_runner.ExecutionResult],
) -> tuple[RunReport, list[str]]:
    """Run the pipeline once; return its report and every leak found in what it left."""
    local_dir = tmp_path / "local"
    progress = io.StringIO()
    # The handlers' loggers keep the stream of the test that imported them (maybe an earlier
    # test's capture, closed by now), and run_pipeline flushes it before pointing it at stderr:
    # point it at this test's stderr without a flush, and put the original back afterwards.
    handlers = [
        h
        for name in ("extract", "transform", "load")
        for h in logging.getLogger(name).handlers
        if isinstance(h, logging.StreamHandler)
    ]
    streams = [h.stream for h in handlers]
    for h in handlers:
        h.stream = sys.stderr
    try:
        report = run_pipeline(
            RunOptions(
                local_dir=local_dir,
                snapshot_id="leak-check",
                max_coins=30,
                per_page=10,
                verbose=True,
                extra_env={**BASE_ENV, "COINGECKO_BASE_URL": server.base_url, **env},
            ),
            out=progress,
        )
    finally:
        for h, stream in zip(handlers, streams, strict=True):
            h.stream = stream
    captured = capfd.readouterr()
    (result,) = histories
    texts = {
        "stdout": captured.out,
        "stderr": captured.err,
        "progress": progress.getvalue(),
        "python logs": "\n".join(everything_logged.lines),
        "history": json.dumps(result.history, default=str),
        "execution result": json.dumps(dataclasses.asdict(result), default=str),
        "alerts": json.dumps(report.alerts, default=str),
        "report": json.dumps(dataclasses.asdict(report), default=str),
        **_files(local_dir),
    }
    # The scan saw real material: the handlers' JSON logs (their loggers at DEBUG) and a
    # history with each state's input and output.
    assert '"level":"INFO"' in captured.err.replace(" ", "")
    assert logging.getLogger("extract").getEffectiveLevel() == logging.DEBUG
    assert any(e.get("type") == "TaskStateEntered" for e in result.history)
    # The key reached the API, in the demo plan's header and nowhere in the URL.
    markets = server.requests_to("/coins/markets")
    assert markets, "the extract sent no request"
    for request in markets:
        assert request.headers.get("x-cg-demo-api-key") == API_KEY
        assert API_KEY not in request.path and API_KEY not in json.dumps(request.query)
    return report, find_leaks(texts)


@pytest.fixture
def server() -> Iterator[ReplayServer]:
    with ReplayServer.synthetic(coins=30) as srv:
        yield srv


def test_encodings_are_found_when_present():
    """The scanner itself: each form of each secret is reported where it appears."""
    for name, secret in SECRETS.items():
        for form, value in encodings(secret).items():
            assert find_leaks({"x": f"..{value}.."}) != [], (name, form)
    assert find_leaks({"x": "nothing to see"}) == []


def test_a_succeeding_run_leaks_no_secret(tmp_path, server, capfd, everything_logged, histories):
    report, leaks = run_and_scan(tmp_path, server, {}, capfd, everything_logged, histories)
    assert report.status == "SUCCEEDED", (report.error, report.error_message)
    assert report.output and report.output["rows_inserted"] == 30
    assert leaks == []


def test_a_401_from_the_api_leaks_no_secret(tmp_path, server, capfd, everything_logged, histories):
    server.script("/coins/markets", Scripted.error(401, "Invalid API Key"))
    report, leaks = run_and_scan(tmp_path, server, {}, capfd, everything_logged, histories)
    assert report.status == "FAILED"
    assert (report.failed_state, report.error) == ("Extract", "SourceError")
    assert "401" in (report.error_message or "")
    assert len(report.alerts) == 1
    assert leaks == []


def test_an_unusable_private_key_leaks_neither_key_nor_passphrase(
    tmp_path, server, capfd, everything_logged, histories
):
    env = {"SNOWFLAKE_PRIVATE_KEY": PRIVATE_KEY}
    report, leaks = run_and_scan(tmp_path, server, env, capfd, everything_logged, histories)
    assert report.status == "FAILED"
    assert report.failed_state == "Load"
    assert "SNOWFLAKE_PRIVATE_KEY" in (report.error_message or "")
    assert len(report.alerts) == 1
    assert leaks == []


def test_an_unreachable_warehouse_leaks_no_password(
    tmp_path, server, capfd, everything_logged, histories
):
    with _closed_port() as port:
        env = {
            "SNOWFLAKE_PORT": str(port),
            "SNOWFLAKE_LOGIN_TIMEOUT": "2",
            "SNOWFLAKE_NETWORK_TIMEOUT": "2",
        }
        report, leaks = run_and_scan(tmp_path, server, env, capfd, everything_logged, histories)
    assert report.status == "FAILED"
    assert report.failed_state == "Load"
    assert len(report.alerts) == 1
    assert leaks == []
