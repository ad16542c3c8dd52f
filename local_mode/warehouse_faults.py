"""A fault-injecting HTTP proxy between the Snowflake connector and the local warehouse.

``WarehouseFaultProxy(upstream_port)`` listens on 127.0.0.1 (a free port, or the one given),
forwards every request to the fakesnow server at ``127.0.0.1:upstream_port`` and answers with
its response, except where a :class:`Rule` says otherwise. Use it as a context manager (it stops
itself) and point the Load at it with :meth:`WarehouseFaultProxy.env` (the warehouse's
``SNOWFLAKE_*`` with ``SNOWFLAKE_PORT`` replaced). Its requests are recorded
(:attr:`WarehouseFaultProxy.requests`) so a test can say what the connector sent and re-sent.

What the connector sends (``snowflake-connector-python`` 4.x against fakesnow, read through
this proxy): ``POST /session/v1/login-request`` (JSON body; the password and session
parameters are in ``data``), then one ``POST /queries/v1/query-request?requestId=…`` per
statement, its body gzip'd JSON with the statement in ``sqlText`` (a re-sent request carries
``retryCount=N`` in the query string), and ``PUT /fs_bucket/…`` for a PUT's file upload
(fakesnow tells the connector to upload to the host it was asked on, i.e. through this proxy).
A PUT statement is sent twice (the second, ``PUT 'file://<name>' …``, asks for the upload URL).
The ``Host`` header is passed through unchanged.

Rules (the first rule that fires decides; each counts the requests it matches):

* ``drop_before``: close the connection without forwarding (the statement never ran);
* ``drop_after``: forward, let the statement run, then close without answering (the reply is
  lost: the client cannot tell whether it ran);
* ``cut_response``: forward, then send the status line, the headers and half the body, and close
  (a response dropped mid-way);
* ``error``: answer as Snowflake answers a failed statement, HTTP 200 and
  ``{"success": false, "code": C, "message": M, "data": {"errorCode": C, "sqlState": S}}``
  (the connector raises ``ProgrammingError`` with ``errno`` C);
* ``refuse_login``: answer a login request as Snowflake answers a wrong password,
  ``{"success": false, "code": "390100", "message": "Incorrect username or password was
  specified."}`` (the connector raises ``DatabaseError`` errno 390100; source: the connector's
  ``auth/_auth.py`` and Snowflake's error 390100 "Incorrect username or password").

What the connector does with each (4.x, measured through this proxy): a request that gets no
answer is re-sent (``retryCount=N``) until ``network_timeout`` seconds have passed, and fakesnow
runs a re-sent statement again (real Snowflake would recognise the request id); a response cut
mid-body is not re-sent (``IncompleteRead``); an error answer and a refused login are raised at
once (``ProgrammingError``, ``DatabaseError``).

For the fault matrix (tests and ``benchmarks/faults.py``): :class:`FaultBench` runs the real
state machine under moto over a synthetic replay server, a folder lake and the warehouse behind
the proxy; :data:`CASES` lists every lake and warehouse fault with its defined outcome (the lake
faults are handler wrappers that delete or change an object after the state that wrote it),
:data:`API_CASES` every CoinGecko fault of :data:`local_mode.faults.CATALOGUE` on
``/coins/markets`` and ``/global`` (injected into the replay server with a SPEC), and
:data:`MATRIX` both; :func:`run_case` runs one and returns a :class:`FaultOutcome`.
:func:`run_load_with_faults` runs only the Load handler through a proxy with given rules.

The bench's CoinGecko client runs with a small retry budget and short timeouts
(:data:`BENCH_SOURCE_ENV`: 2 retries, 10 s of retry waits, 0.05 s backoff, 1 s timeout), so a
burst of 2 is inside the budget, a burst of 3 past it, and ``slow=2`` is past the timeout.
"""

from __future__ import annotations

import contextlib
import gzip
import http.client
import json
import math
import re
import socket
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Self

LOCAL_HOST = "127.0.0.1"
LOGIN_PATH = "/session/v1/login-request"
QUERY_PATH = "/queries/v1/query-request"

Action = Literal["drop_before", "drop_after", "cut_response", "error", "refuse_login"]
Endpoint = Literal["query", "login", "upload", "session", "any"]
ACTIONS: tuple[str, ...] = ("drop_before", "drop_after", "cut_response", "error", "refuse_login")

# Headers that belong to one hop (RFC 9110 7.6.1) and are not forwarded.
_HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
# Snowflake's answer to a wrong password (error 390100), as the connector reads it.
LOGIN_REFUSED_CODE = "390100"
LOGIN_REFUSED_MESSAGE = "Incorrect username or password was specified."


def endpoint_of(path: str) -> Endpoint:
    """Which connector endpoint a request path is (``any`` for the rest)."""
    base = path.split("?", 1)[0]
    if base == LOGIN_PATH:
        return "login"
    if base == QUERY_PATH:
        return "query"
    if base.startswith("/fs_bucket/"):
        return "upload"
    if base.startswith("/session"):
        return "session"
    return "any"


def sql_text(body: bytes, content_encoding: str | None) -> str | None:
    """The ``sqlText`` of a query-request body (gzip'd or plain JSON); None if it has none."""
    try:
        if (content_encoding or "").lower() == "gzip":
            body = gzip.decompress(body)
        doc = json.loads(body)
    except (OSError, EOFError, ValueError):
        return None
    text = doc.get("sqlText") if isinstance(doc, dict) else None
    return text if isinstance(text, str) else None


@dataclass
class Rule:
    """One fault: ``action`` on the ``nth`` request (1-based) of ``endpoint`` whose SQL matches
    ``sql`` (a regex searched case-insensitively; None matches any request of the endpoint),
    and on the ``times - 1`` matching requests after it (``times=None``: every one from the
    ``nth`` on). ``error`` rules answer ``code``/``message``/``sql_state``.

    ``matched`` counts the requests that matched, ``fired`` those the fault was applied to.
    Raises ValueError for an unknown action, a bad regex, ``nth`` < 1 or ``times`` < 1.
    """

    action: Action
    sql: str | None = None
    endpoint: Endpoint = "query"
    nth: int = 1
    times: int | None = 1
    code: str = "000603"
    message: str = "SQL execution internal error: injected by the warehouse fault proxy."
    sql_state: str = "XX000"
    matched: int = 0
    fired: int = 0

    def __post_init__(self) -> None:
        if self.action not in ACTIONS:
            raise ValueError(f"unknown action {self.action!r}; expected one of {ACTIONS}")
        if self.nth < 1 or (self.times is not None and self.times < 1):
            raise ValueError(f"nth and times must be >= 1, got {self.nth} and {self.times}")
        self._pattern = re.compile(self.sql, re.IGNORECASE) if self.sql is not None else None

    def matches(self, endpoint: Endpoint, sql: str | None) -> bool:
        """Whether a request of ``endpoint`` with statement ``sql`` is one this rule counts."""
        if self.endpoint != "any" and endpoint != self.endpoint:
            return False
        return self._pattern is None or (sql is not None and bool(self._pattern.search(sql)))

    def take(self) -> bool:
        """Count one matching request; True when the fault applies to it."""
        self.matched += 1
        if self.matched < self.nth:
            return False
        if self.times is not None and self.fired >= self.times:
            return False
        self.fired += 1
        return True


def drop_before(sql: str, *, nth: int = 1, times: int | None = 1) -> Rule:
    """Close the connection before forwarding the ``nth`` statement matching ``sql``."""
    return Rule("drop_before", sql, nth=nth, times=times)


def drop_after(sql: str, *, nth: int = 1, times: int | None = 1) -> Rule:
    """Forward the statement (it runs), then close without returning its reply."""
    return Rule("drop_after", sql, nth=nth, times=times)


def cut_response(sql: str, *, nth: int = 1, times: int | None = 1) -> Rule:
    """Forward the statement, then return only half of its response and close."""
    return Rule("cut_response", sql, nth=nth, times=times)


def fail_statement(
    sql: str,
    *,
    nth: int = 1,
    times: int | None = 1,
    code: str = "000603",
    message: str = "SQL execution internal error: injected by the warehouse fault proxy.",
) -> Rule:
    """Answer the statement with a Snowflake error (not forwarded: it never runs)."""
    return Rule("error", sql, nth=nth, times=times, code=code, message=message)


def refuse_login(*, nth: int = 1, times: int | None = None) -> Rule:
    """Answer login requests from the ``nth`` on with Snowflake's wrong-password error."""
    return Rule("refuse_login", None, endpoint="login", nth=nth, times=times)


@dataclass(frozen=True)
class ProxiedRequest:
    """One request the proxy received: its method, path, endpoint, statement (query requests),
    the fault applied (None: forwarded and answered), the status sent (None: none sent) and
    when it arrived."""

    method: str
    path: str
    endpoint: Endpoint
    sql: str | None
    action: str | None
    status: int | None
    received_at: float = 0.0  # time.monotonic() when the request arrived (seconds)


class WarehouseFaultProxy:
    """An HTTP proxy on 127.0.0.1 in front of the fakesnow server at ``upstream_port``."""

    def __init__(
        self,
        upstream_port: int,
        rules: Iterable[Rule] = (),
        *,
        upstream_host: str = LOCAL_HOST,
        port: int = 0,
        upstream_timeout: float = 120.0,
    ) -> None:
        """``upstream_timeout`` (seconds) bounds one forwarded request."""
        self.upstream_host = upstream_host
        self.upstream_port = int(upstream_port)
        self.upstream_timeout = upstream_timeout
        self.rules: list[Rule] = list(rules)
        self.requests: list[ProxiedRequest] = []
        self._lock = threading.Lock()
        self._requested_port = port
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle --------------------------------------------------------------------------------

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

    def start(self) -> None:
        """Bind 127.0.0.1 and serve from a daemon thread (OSError if the port is taken)."""
        if self._server is not None:
            return
        server = ThreadingHTTPServer((LOCAL_HOST, self._requested_port), _make_handler(self))
        server.daemon_threads = True
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.05},  # seconds; stop() waits for one poll
            name="warehouse-fault-proxy",
            daemon=True,
        )
        self._thread.start()

    def stop(self) -> None:
        """Stop serving and close the listening socket (idempotent)."""
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    @property
    def port(self) -> int:
        """The port the proxy listens on (RuntimeError before ``start``)."""
        if self._server is None:
            raise RuntimeError("the warehouse fault proxy is not started")
        return int(self._server.server_address[1])

    def env(self, warehouse_env: Mapping[str, str]) -> dict[str, str]:
        """``warehouse_env`` (``LocalWarehouse.env()``) pointed at this proxy instead."""
        return {**warehouse_env, "SNOWFLAKE_HOST": LOCAL_HOST, "SNOWFLAKE_PORT": str(self.port)}

    # -- rules and records ------------------------------------------------------------------------

    def add(self, *rules: Rule) -> None:
        """Add rules (they apply to requests from now on)."""
        with self._lock:
            self.rules.extend(rules)

    def clear(self) -> None:
        """Remove every rule (the proxy then forwards everything)."""
        with self._lock:
            self.rules.clear()

    def statements(self, pattern: str | None = None) -> list[ProxiedRequest]:
        """The query requests received (re-sends included), optionally those whose SQL matches
        ``pattern`` (regex, case-insensitive)."""
        rx = re.compile(pattern, re.IGNORECASE) if pattern else None
        with self._lock:
            found = [r for r in self.requests if r.endpoint == "query"]
        return [r for r in found if rx is None or (r.sql and rx.search(r.sql))]

    def faults_fired(self) -> int:
        """How many requests a rule was applied to."""
        with self._lock:
            return sum(r.fired for r in self.rules)

    def _decide(self, endpoint: Endpoint, sql: str | None) -> Rule | None:
        with self._lock:
            for rule in self.rules:
                if rule.matches(endpoint, sql) and rule.take():
                    return rule
        return None

    def _record(self, entry: ProxiedRequest) -> None:
        with self._lock:
            self.requests.append(entry)

    # -- forwarding -----------------------------------------------------------------------------

    def forward(
        self, method: str, path: str, headers: list[tuple[str, str]], body: bytes
    ) -> tuple[int, str, list[tuple[str, str]], bytes]:
        """Send one request upstream; return (status, reason, headers, whole body)."""
        conn = http.client.HTTPConnection(
            self.upstream_host, self.upstream_port, timeout=self.upstream_timeout
        )
        try:
            conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
            for name, value in headers:
                if name.lower() not in _HOP_BY_HOP and name.lower() != "content-length":
                    conn.putheader(name, value)
            conn.putheader("Content-Length", str(len(body)))
            conn.endheaders(body)
            resp = conn.getresponse()
            data = resp.read()
            out = [(k, v) for k, v in resp.getheaders() if k.lower() not in _HOP_BY_HOP]
            return resp.status, resp.reason, out, data
        finally:
            conn.close()


def _make_handler(proxy: WarehouseFaultProxy) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as the connector's session expects

        def log_message(self, format: str, *args: Any) -> None:
            pass  # quiet: the records say what happened

        def do_GET(self) -> None:
            self._handle()

        def do_POST(self) -> None:
            self._handle()

        def do_PUT(self) -> None:
            self._handle()

        def _drop(self) -> None:
            # No reply: close at once (the client sees the connection end without a response).
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.wfile.flush()
                self.connection.shutdown(socket.SHUT_RDWR)

        def setup(self) -> None:
            super().setup()
            # Small replies: no Nagle delay waiting for the client's delayed ACK (~40 ms each).
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

        def _head(
            self, status: int, reason: str, headers: list[tuple[str, str]], size: int
        ) -> bytes:
            self.send_response_only(status, reason)
            for name, value in headers:
                if name.lower() != "content-length":
                    self.send_header(name, value)
            self.send_header("Content-Length", str(size))
            head = b"".join(self._headers_buffer) + b"\r\n"
            self._headers_buffer = []
            return head

        def _send(
            self, status: int, reason: str, headers: list[tuple[str, str]], body: bytes
        ) -> None:
            # One write for the head and the body (two small writes stall on Nagle).
            self.wfile.write(self._head(status, reason, headers, len(body)) + body)
            self.wfile.flush()

        def _json(self, doc: Mapping[str, Any]) -> None:
            body = json.dumps(doc).encode()
            self._send(200, "OK", [("Content-Type", "application/json")], body)

        def _handle(self) -> None:
            received_at = time.monotonic()
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            endpoint = endpoint_of(self.path)
            encoding = self.headers.get("Content-Encoding")
            sql = sql_text(body, encoding) if endpoint == "query" else None
            rule = proxy._decide(endpoint, sql)
            action = rule.action if rule else None

            def record(status: int | None) -> None:
                # Before replying: a client that has its reply finds the request recorded.
                proxy._record(
                    ProxiedRequest(
                        self.command, self.path, endpoint, sql, action, status, received_at
                    )
                )

            if action in ("drop_before", "refuse_login", "error"):
                record(None if action == "drop_before" else 200)
                if action == "drop_before":
                    self._drop()
                elif action == "refuse_login":
                    self._json(
                        {
                            "data": {"nextAction": None, "authnMethod": "USERNAME_PASSWORD"},
                            "code": LOGIN_REFUSED_CODE,
                            "message": LOGIN_REFUSED_MESSAGE,
                            "success": False,
                            "headers": None,
                        }
                    )
                else:
                    assert rule is not None
                    self._json(
                        {
                            "data": {"errorCode": rule.code, "sqlState": rule.sql_state},
                            "code": rule.code,
                            "message": rule.message,
                            "success": False,
                            "headers": None,
                        }
                    )
                return
            try:
                up_status, reason, headers, data = proxy.forward(
                    self.command, self.path, list(self.headers.items()), body
                )
            except OSError:
                record(None)
                self._drop()  # the server is gone: the client sees what it would see
                return
            if action == "drop_after":
                record(None)
                self._drop()
                return
            record(up_status)
            if action == "cut_response":
                # The full Content-Length, then half the body: the client reads a short body.
                head = self._head(up_status, reason, headers, len(data))
                self.wfile.write(head + data[: len(data) // 2])
                self._drop()
                return
            self._send(up_status, reason, headers, data)

    return Handler


# -- one load through the proxy (tests and benchmarks/faults.py) ---------------------------------


@dataclass
class LoadOutcome:
    """What one Load handler invocation through the proxy did.

    ``error_type``/``error`` are the handler's exception class name and message (None on
    success); ``output`` its result; ``faults_fired`` how many requests a rule hit;
    ``resent`` how many query requests carried the connector's ``retryCount`` (re-sends);
    ``statements`` the SQL of every query request, in order.
    """

    output: dict[str, Any] | None
    error_type: str | None
    error: str | None
    faults_fired: int
    resent: int
    statements: list[str] = field(default_factory=list)

    @property
    def succeeded(self) -> bool:
        return self.error_type is None


def run_load_with_faults(
    load_handler: Any,
    event: Mapping[str, Any],
    *,
    warehouse_env: Mapping[str, str],
    upstream_port: int,
    rules: Iterable[Rule],
    extra_env: Mapping[str, str] | None = None,
    context: Any = None,
) -> LoadOutcome:
    """Invoke ``load_handler(event, context)`` with the ``SNOWFLAKE_*`` environment pointed at a
    fresh proxy holding ``rules`` (plus ``extra_env``, e.g. ``LAKE_LOCAL_DIR``); the proxy is
    stopped afterwards. The handler's exception is caught and reported, not raised."""
    import os
    from unittest import mock

    with WarehouseFaultProxy(upstream_port, rules) as proxy:
        env = {**proxy.env(warehouse_env), **(extra_env or {})}
        output: dict[str, Any] | None = None
        error_type = error = None
        with mock.patch.dict(os.environ, env):
            try:
                output = load_handler(dict(event), context)
            except Exception as exc:  # reported to the caller: the outcome is the point
                error_type, error = type(exc).__name__, str(exc)
        queries = proxy.statements()
        return LoadOutcome(
            output=output,
            error_type=error_type,
            error=error,
            faults_fired=proxy.faults_fired(),
            resent=sum(1 for r in queries if "retryCount=" in r.path),
            statements=[r.sql or "" for r in queries],
        )


# -- the fault bench: the whole pipeline under the local runner, the warehouse behind the proxy --

LAKE_BUCKET = "crypto-etl-local"  # local_mode.run_command.LOCAL_BUCKET
# The bench's CoinGecko client settings (functions/extract/config.py): a retry budget of 2 so
# "x2" bursts are inside it and "x3" past it; 1 s timeout so a 2 s delay or trickle is past it;
# 10 s of retry waits in all (a Retry-After waits at least 1 s: client.MIN_RETRY_WAIT).
BENCH_MAX_RETRIES = 2
BENCH_TIMEOUT_SECONDS = 1.0
BENCH_SOURCE_ENV: dict[str, str] = {
    "COINGECKO_MAX_RETRIES": str(BENCH_MAX_RETRIES),
    "COINGECKO_MAX_RETRY_WAIT_SECONDS": "10",
    "COINGECKO_BACKOFF_BASE_SECONDS": "0.05",
    "COINGECKO_TIMEOUT_SECONDS": str(BENCH_TIMEOUT_SECONDS),
}
Wrapper = Callable[[Any], Any]  # a Lambda handler -> a handler wrapping it


@dataclass(frozen=True)
class WarehouseState:
    """The warehouse tables a failed execution must leave as they were: every CRYPTO_DATA and
    CRYPTO_ASSET_DIM row, and the SUCCEEDED rows of ETL_RUNS (a failed execution may add its
    own FAILED row, counted in ``failed_runs``). Rows are sorted tuples of every column."""

    crypto_data: tuple[tuple[Any, ...], ...]
    asset_dim: tuple[tuple[Any, ...], ...]
    succeeded_runs: tuple[tuple[Any, ...], ...]
    failed_runs: int

    def same_data(self, other: WarehouseState) -> bool:
        """Equal apart from FAILED run-log rows."""
        return (self.crypto_data, self.asset_dim, self.succeeded_runs) == (
            other.crypto_data,
            other.asset_dim,
            other.succeeded_runs,
        )


class FaultBench:
    """A synthetic replay server, a folder lake, the local warehouse behind a
    :class:`WarehouseFaultProxy`, and executions of the real state machine over them.

    ``coins`` coins are fetched ``per_page`` a page. ``network_timeout`` (seconds) bounds how
    long the connector re-sends a request that got no answer (short, so a persistent fault
    surfaces in seconds). Rules set on :attr:`proxy` apply to the Load task; while the Load
    function records a failure (``action: record_failure``) they are suspended unless
    ``rules_during_record`` is set (a warehouse that is down for everything). ``extra_env`` is
    laid over the handlers' environment, :data:`BENCH_SOURCE_ENV` included (e.g.
    ``POWERTOOLS_LOG_LEVEL``).
    """

    def __init__(
        self,
        root: Path,
        *,
        coins: int = 150,
        per_page: int = 50,
        network_timeout: int = 1,
        extra_env: Mapping[str, str] | None = None,
    ) -> None:
        self.root = Path(root)
        self.extra_env = dict(extra_env or {})
        self.lake_dir = self.root / "lake"
        self.coins = coins
        self.per_page = per_page
        self.network_timeout = network_timeout
        self.rules_during_record = False
        self._stack = contextlib.ExitStack()
        self._runs = 0
        self.warehouse: Any = None
        self.proxy: WarehouseFaultProxy | None = None
        self._conn: Any = None
        self._current: dict[str, Any] = {}

    def __enter__(self) -> Self:
        from local_mode.replay_server import ReplayServer
        from local_mode.warehouse import LocalWarehouse
        from state_machine.local_runner import FUNCTIONS, LocalStepFunctions

        try:
            self.replay = self._stack.enter_context(ReplayServer.synthetic(self.coins))
            self.warehouse = self._stack.enter_context(
                LocalWarehouse(self.root / "warehouse", network_timeout=self.network_timeout)
            )
            self.proxy = self._stack.enter_context(WarehouseFaultProxy(self.warehouse.port))
            # One deployment for every execution: each dispatches to this run's handlers.
            self._current = self.handlers()
            dispatch = {name: self._dispatcher(name) for name in FUNCTIONS}
            self.sfn = self._stack.enter_context(
                LocalStepFunctions(handlers=dispatch, env=self.env, retry_sleep=lambda _s: None)
            )
            self._stack.callback(self._close_connection)
        except BaseException:
            self._stack.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()

    def _dispatcher(self, name: str) -> Any:
        def dispatch(event: dict[str, Any], context: Any) -> dict[str, Any]:
            return self._current[name](event, context)

        return dispatch

    @property
    def env(self) -> dict[str, str]:
        """The handlers' environment: lake folder, replay server, warehouse through the proxy."""
        assert self.proxy is not None and self.warehouse is not None, "use FaultBench in a with"
        return {
            "LAKE_LOCAL_DIR": str(self.lake_dir),
            "LAKE_BUCKET": LAKE_BUCKET,
            "COINGECKO_BASE_URL": self.replay.base_url,
            "COINGECKO_API_PLAN": "public",
            "COINGECKO_API_KEY": "",
            "COINGECKO_API_KEY_SECRET_ARN": "",
            "POWERTOOLS_LOG_LEVEL": "WARNING",
            **BENCH_SOURCE_ENV,
            **self.proxy.env(self.warehouse.env()),
            **self.extra_env,
        }

    def execution_input(self, snapshot_id: str) -> dict[str, Any]:
        """The execution input for ``snapshot_id`` (the whole synthetic market)."""
        return {"snapshot_id": snapshot_id, "max_coins": self.coins, "per_page": self.per_page}

    def handlers(self, wrap: Mapping[str, Wrapper] | None = None) -> dict[str, Any]:
        """The real handlers, each of ``wrap`` wrapped, the load's record_failure scoped."""
        from state_machine.local_runner import default_handlers

        handlers = default_handlers()
        for name, wrapper in (wrap or {}).items():
            handlers[name] = wrapper(handlers[name])
        handlers["load"] = self._scope_rules(handlers["load"])
        return handlers

    def _scope_rules(self, load: Any) -> Any:
        def scoped(event: dict[str, Any], context: Any) -> dict[str, Any]:
            proxy = self.proxy
            assert proxy is not None
            if event.get("action") != "record_failure" or self.rules_during_record:
                return load(event, context)
            with proxy._lock:
                saved, proxy.rules = proxy.rules, []
            try:
                return load(event, context)
            finally:
                with proxy._lock:
                    proxy.rules = saved + proxy.rules

        return scoped

    def execute(
        self,
        snapshot_id: str,
        *,
        wrap: Mapping[str, Wrapper] | None = None,
        name: str | None = None,
    ) -> Any:
        """Run one execution of the state machine for ``snapshot_id``; its ExecutionResult.

        Each execution gets a new name (so a new run id in the lake) unless ``name`` is given.
        Step Functions' Retry intervals are not slept.
        """
        self._runs += 1
        name = name or f"{snapshot_id}-x{self._runs:03d}"
        self._current = self.handlers(wrap)
        try:
            return self.sfn.execute(self.execution_input(snapshot_id), name=name)
        finally:
            self._current = self.handlers()

    def connect(self) -> Any:
        """A connection straight to the warehouse (not through the proxy; caller closes)."""
        return self.warehouse.connect()

    def query(self, statement: str) -> list[tuple[Any, ...]]:
        """Rows of one statement run straight on the warehouse; [] when a table is missing."""
        from snowflake.connector.errors import ProgrammingError

        if self._conn is None:
            self._conn = self.connect()
        with self._conn.cursor() as cur:
            try:
                cur.execute(statement)
            except ProgrammingError as exc:
                if exc.errno == 2003:  # the table does not exist yet
                    return []
                raise
            return [tuple(r) for r in cur.fetchall()]

    def _close_connection(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()

    def state(self) -> WarehouseState:
        """The warehouse's tables now (see :class:`WarehouseState`)."""
        runs = self.query("SELECT * FROM ETL_RUNS ORDER BY SNAPSHOT_ID, LOADED_AT, EXECUTION_ID")
        status = self._column_index("ETL_RUNS", "STATUS")
        return WarehouseState(
            crypto_data=tuple(
                self.query("SELECT * FROM CRYPTO_DATA ORDER BY SNAPSHOT_ID, COIN_ID")
            ),
            asset_dim=tuple(self.query("SELECT * FROM CRYPTO_ASSET_DIM ORDER BY COIN_ID")),
            succeeded_runs=tuple(r for r in runs if r[status] == "SUCCEEDED"),
            failed_runs=sum(1 for r in runs if r[status] != "SUCCEEDED"),
        )

    def _column_index(self, table: str, column: str) -> int:
        cols = self.query(
            "SELECT COLUMN_NAME FROM INFORMATION_SCHEMA.COLUMNS"
            f" WHERE TABLE_NAME = '{table}' ORDER BY ORDINAL_POSITION"
        )
        names = [c[0].upper() for c in cols]
        return names.index(column) if column in names else 0

    def snapshot_rows(self, snapshot_id: str) -> tuple[int, int]:
        """(rows, distinct coin ids) of ``snapshot_id`` in CRYPTO_DATA."""
        validate = re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,79}", snapshot_id)
        if not validate:
            raise ValueError(f"not a snapshot id: {snapshot_id!r}")
        rows = self.query(
            "SELECT COUNT(*), COUNT(DISTINCT COIN_ID) FROM CRYPTO_DATA"
            f" WHERE SNAPSHOT_ID = '{snapshot_id}'"
        )
        return (int(rows[0][0]), int(rows[0][1])) if rows else (0, 0)

    def snapshot_index(self, snapshot_id: str) -> dict[str, Any] | None:
        """The lake's snapshot index ``snapshots/<id>.json``, or None."""
        path = self.lake_dir / "snapshots" / f"{snapshot_id}.json"
        return json.loads(path.read_bytes()) if path.is_file() else None


# -- lake faults: handler wrappers that change the lake after a state wrote it ------------------


def _after_done_extract(bench: FaultBench, act: Callable[[Path], None]) -> Wrapper:
    """Wrap the Extract: once it reports done, ``act`` on the second raw page's file."""

    def wrapper(extract: Any) -> Any:
        def wrapped(event: dict[str, Any], context: Any) -> dict[str, Any]:
            out = extract(event, context)
            if out.get("done") is True:
                manifest = json.loads((bench.lake_dir / out["manifest_key"]).read_bytes())
                pages = manifest["pages"]
                act(bench.lake_dir / pages[min(1, len(pages) - 1)]["key"])
            return out

        return wrapped

    return wrapper


def _delete(path: Path) -> None:
    path.unlink()


def _corrupt(path: Path) -> None:
    # Change bytes but keep valid JSON: only the manifest's SHA-256 can tell.
    body = path.read_bytes()
    changed = body.replace(b"0", b"1", 1) if b"0" in body else body + b" "
    path.write_bytes(changed)


def raw_page_missing(bench: FaultBench) -> dict[str, Wrapper]:
    """Delete the second raw page after the Extract wrote it (before the Transform)."""
    return {"extract": _after_done_extract(bench, _delete)}


def raw_page_corrupted(bench: FaultBench) -> dict[str, Wrapper]:
    """Change the second raw page's bytes after the Extract wrote it and its SHA-256."""
    return {"extract": _after_done_extract(bench, _corrupt)}


def processed_missing(bench: FaultBench) -> dict[str, Wrapper]:
    """Delete the processed file after the Transform wrote it (before the Load)."""

    def wrapper(transform: Any) -> Any:
        def wrapped(event: dict[str, Any], context: Any) -> dict[str, Any]:
            out = transform(event, context)
            (bench.lake_dir / out["processed_key"]).unlink()
            return out

        return wrapped

    return {"transform": wrapper}


# -- the cases: each ends as defined, and a re-run of the same snapshot then loads once -----------


@dataclass(frozen=True)
class FaultCase:
    """One fault and its defined outcome.

    ``rules`` builds the proxy rules (warehouse faults); ``wrap`` the handler wrappers (lake
    faults); ``spec`` the replay server's faults (API faults: a :mod:`local_mode.faults` SPEC,
    on ``endpoint``). ``status`` is the execution's expected status; for a failure, ``state``
    the state that fails, ``error`` the error name, ``message`` a regex the cause must match
    (searched) and ``not_message`` one it must not match (a cause mis-named). ``unchanged``: the
    failed execution leaves the warehouse as it was (False where the outcome is knowingly
    UNKNOWN); ``run_logged``: the Catch path adds exactly one FAILED ``ETL_RUNS`` row (False
    when the warehouse itself refuses it: the alert still goes out). For a success:
    ``coins_missing`` coins the fault puts on no page (rows expected = the bench's coins minus
    these), ``nulls`` the columns every row must hold NULL, and every other checked value must
    equal what the source served; ``dominance_basis`` the basis every row must carry
    (``global``, or ``fetched`` when /global was unusable); ``retried``: the
    pipeline's own retry count must be > 0. ``fast``: part of ``make test``
    (tests/integration/test_fault_matrix.py); the slower ones run in ``benchmarks/faults.py``.
    """

    name: str
    layer: Literal["lake", "warehouse", "api"]
    description: str
    status: Literal["SUCCEEDED", "FAILED"]
    state: str | None = None
    error: str | None = None
    message: str | None = None
    not_message: str | None = None
    rules: Callable[[], list[Rule]] = list
    wrap: Callable[[FaultBench], dict[str, Wrapper]] | None = None
    unchanged: bool = True
    rules_during_record: bool = False
    run_logged: bool = True
    spec: str | None = None
    endpoint: Literal["markets", "global"] | None = None
    coins_missing: int = 0
    nulls: tuple[str, ...] = ()
    dominance_basis: Literal["global", "fetched"] | None = None
    retried: bool = False
    fast: bool = True

    def rows_expected(self, coins: int) -> int:
        """Rows the snapshot must hold after the case (after the re-run when it failed)."""
        return coins - self.coins_missing if self.status == "SUCCEEDED" else coins

    def defined_outcome(self) -> str:
        """The defined outcome in one line (the README's reliability table)."""
        if self.status == "FAILED":
            kept = "warehouse as before" if self.unchanged else "warehouse state UNKNOWN"
            logged = "1 FAILED run-log row" if self.run_logged else "no run-log row (refused)"
            return (
                f"FAILED at {self.state}: {self.error}; alert; {kept}; {logged}; re-run loads once"
            )
        rows = "every row" if not self.coins_missing else f"coins - {self.coins_missing} rows"
        nulls = f", {', '.join(self.nulls)} NULL" if self.nulls else ""
        parts = [f"SUCCEEDED: {rows} as served{nulls}"]
        if self.retried:
            parts.append("retries counted")
        if self.dominance_basis:
            parts.append(f"{self.dominance_basis} basis")
        return "; ".join(parts)


_COPY = r"^COPY INTO CRYPTO_DATA_STAGING_"
_COMMIT = r"^COMMIT$"
_INSERT_DATA = r"^INSERT INTO \S+\.CRYPTO_DATA\b"
# The load's message for a COPY that failed on the network must not blame the file's contents.
_BLAMES_FILE = r"does not fit CRYPTO_DATA"

CASES: tuple[FaultCase, ...] = (
    FaultCase(
        "raw page missing",
        "lake",
        "the second raw page deleted between Extract and Transform",
        "FAILED",
        "Transform",
        "ValidationError",
        r"page-0002\.json' does not exist",
        wrap=raw_page_missing,
    ),
    FaultCase(
        "raw page corrupted",
        "lake",
        "the second raw page's bytes changed between Extract and Transform",
        "FAILED",
        "Transform",
        "ValidationError",
        r"page-0002\.json: SHA-256 \w+ does not match the manifest",
        wrap=raw_page_corrupted,
    ),
    FaultCase(
        "processed file missing",
        "lake",
        "the processed file deleted between Transform and Load",
        "FAILED",
        "Load",
        "ValidationError",
        r"invalid processed_key: .*crypto_data\.csv\.gz' does not exist",
        wrap=processed_missing,
    ),
    FaultCase(
        "connection dropped before COPY (once)",
        "warehouse",
        "the COPY request dropped once before it reached the server; the connector re-sends it",
        "SUCCEEDED",
        rules=lambda: [drop_before(_COPY)],
    ),
    FaultCase(
        "connection dropped before COPY",
        "warehouse",
        "every COPY request dropped before it reaches the server",
        "FAILED",
        "Load",
        "LoadError",
        r"'copy into staging' failed for snapshot .*Connection aborted",
        not_message=_BLAMES_FILE,
        rules=lambda: [drop_before(_COPY, times=None)],
    ),
    FaultCase(
        "connection dropped during COPY",
        "warehouse",
        "the COPY's response cut off half-way (the connector does not re-send it)",
        "FAILED",
        "Load",
        "LoadError",
        r"'copy into staging' failed for snapshot .*IncompleteRead",
        not_message=_BLAMES_FILE,
        rules=lambda: [cut_response(_COPY)],
    ),
    FaultCase(
        "connection dropped after COPY",
        "warehouse",
        "the COPY ran but its reply was lost; the connector re-sends it and the emulator runs it"
        " again, so staging holds the rows twice and the load refuses them",
        "FAILED",
        "Load",
        "LoadError",
        r"staging holds \d+ rows, expected \d+",
        rules=lambda: [drop_after(_COPY)],
    ),
    FaultCase(
        "connection dropped at COMMIT (reply lost)",
        "warehouse",
        "every COMMIT's reply lost after it ran: a new session finds the load committed",
        "SUCCEEDED",
        rules=lambda: [drop_after(_COMMIT, times=None)],
    ),
    FaultCase(
        "connection dropped at COMMIT (not sent)",
        "warehouse",
        "every COMMIT dropped before the server: a new session finds nothing committed",
        "FAILED",
        "Load",
        "LoadError",
        r"COMMIT failed .* did not commit .*CRYPTO_DATA and ETL_RUNS unchanged",
        rules=lambda: [drop_before(_COMMIT, times=None)],
    ),
    FaultCase(
        "connection dropped at COMMIT, no new session",
        "warehouse",
        "COMMIT's reply lost and the check's login refused: the outcome is UNKNOWN (it did"
        " commit), and the re-run converges",
        "FAILED",
        "Load",
        "LoadError",
        r"COMMIT failed .* outcome is UNKNOWN",
        rules=lambda: [drop_after(_COMMIT, times=None), refuse_login(nth=2)],
        unchanged=False,
    ),
    FaultCase(
        "statement fails mid-transaction",
        "warehouse",
        "the INSERT INTO CRYPTO_DATA answered with a Snowflake error inside the transaction",
        "FAILED",
        "Load",
        "LoadError",
        r"'insert snapshot' failed .*000603.*rolled back \(CRYPTO_DATA and ETL_RUNS unchanged\)",
        rules=lambda: [fail_statement(_INSERT_DATA)],
    ),
    FaultCase(
        "login refused",
        "warehouse",
        "every login answered with Snowflake's wrong-password error (recording the failure too)",
        "FAILED",
        "Load",
        "LoadError",
        r"cannot connect to Snowflake .*390100.*Incorrect username or password",
        rules=lambda: [refuse_login()],
        rules_during_record=True,
        run_logged=False,
    ),
)

# -- CoinGecko API faults: every fault of local_mode.faults.CATALOGUE, on both endpoints --------

_PAST = BENCH_MAX_RETRIES + 1  # a burst one longer than the bench's retry budget
_GAVE_UP = rf"still failing after {_PAST} attempts \(last {{}}.*max retries \({BENCH_MAX_RETRIES}\)"


def _retried_ok(name: str, spec: str, description: str, *, fast: bool = True) -> FaultCase:
    """A /coins/markets fault the client retries: the run succeeds whole, retries counted."""
    return FaultCase(
        name, "api", description, "SUCCEEDED", spec=spec, endpoint="markets", retried=True,
        dominance_basis="global", fast=fast,
    )  # fmt: skip


def _gives_up(name: str, spec: str, description: str, last: str, **kw: Any) -> FaultCase:
    """A /coins/markets fault past the retry budget: Extract fails, naming the last answer."""
    return FaultCase(
        name, "api", description, "FAILED", "Extract", "SourceUnavailableError",
        _GAVE_UP.format(last), spec=spec, endpoint="markets", **kw,
    )  # fmt: skip


def _global(
    name: str, spec: str, description: str, basis: Literal["global", "fetched"], **kw: Any
) -> FaultCase:
    """A /global fault: /global is auxiliary, so the run succeeds whole on ``basis``."""
    return FaultCase(
        name, "api", description, "SUCCEEDED", spec=spec, endpoint="global",
        dominance_basis=basis, **kw,
    )  # fmt: skip


_STATUS_CODES = ("500", "502", "503", "504")
_NOT_JSON = r"HTTP 200 with a body that is not JSON"

# fmt: off
API_CASES: tuple[FaultCase, ...] = (
    # /coins/markets (page 2 of 3: a fault after a page already landed in the lake)
    _retried_ok("markets 429, Retry-After seconds", "markets:page=2:429:retry-after=1",
                "HTTP 429 with Retry-After: 1"),
    _retried_ok("markets 429, Retry-After HTTP date", "markets:page=2:429:retry-after=date",
                "HTTP 429 with Retry-After: an HTTP date 1 s ahead"),
    _retried_ok("markets 429, Retry-After 0", "markets:page=2:429:retry-after=0",
                "HTTP 429 with Retry-After: 0 (waited as 1 s)"),
    _retried_ok("markets 429, no Retry-After", "markets:page=2:429",
                "HTTP 429 without Retry-After (backoff)"),
    _gives_up("markets 429 past the budget", f"markets:page=2:429x{_PAST}",
              f"{_PAST} HTTP 429s in a row", "HTTP 429"),
    *(
        _retried_ok(f"markets {code} burst within the budget",
                    f"markets:page=2:{code}x{BENCH_MAX_RETRIES}",
                    f"{BENCH_MAX_RETRIES} HTTP {code}s, then the page", fast=code == "503")
        for code in _STATUS_CODES
    ),
    *(
        _gives_up(f"markets {code} burst past the budget", f"markets:page=2:{code}x{_PAST}",
                  f"{_PAST} HTTP {code}s in a row", f"HTTP {code}", fast=code == "503")
        for code in _STATUS_CODES
    ),
    _retried_ok("markets slower than the timeout", "markets:page=2:slow=2",
                "the answer after 2 s (timeout 1 s)"),
    _retried_ok("markets body trickling past the timeout",
                "markets:page=2:trickle=2:every=0.05",
                "one body byte every 0.05 s for 2 s (each read in time, the whole not)"),
    _retried_ok("markets connection reset before the answer", "markets:page=2:reset",
                "TCP RST, no status line"),
    _retried_ok("markets connection reset mid-body", "markets:page=2:reset=mid-body",
                "TCP RST after the headers and half the body"),
    _retried_ok("markets truncated JSON", "markets:page=2:truncated",
                "HTTP 200, the first half of the JSON body"),
    _gives_up("markets truncated JSON, every attempt", "markets:page=2:truncated:always",
              "HTTP 200, half the body, on every attempt", _NOT_JSON),
    _retried_ok("markets corrupt gzip", "markets:page=2:gzip-corrupt",
                "Content-Encoding: gzip over bytes that are not gzip"),
    _retried_ok("markets HTML page", "markets:page=2:html",
                "HTTP 200 with a Cloudflare-like HTML page"),
    _gives_up("markets HTML page, every attempt", "markets:page=2:html:always",
              "HTTP 200 with HTML on every attempt", _NOT_JSON),
    _retried_ok("markets error object 429", "markets:page=2:error-object=429",
                'HTTP 200 with {"status": {"error_code": 429}}'),
    FaultCase(
        "markets error object, not retryable", "api",
        'HTTP 200 with {"status": {"error_code": 10002}} (a bad key)', "FAILED", "Extract",
        "SourceError", r"HTTP 200 with an error object instead of data \(not retried\): "
        r"error_code 10002", spec="markets:page=2:error-object=10002", endpoint="markets",
    ),
    FaultCase(
        "markets empty page mid-market, once", "api",
        "page 2 is [] once (fewer than 90 % of /global's coins so far): asked for again",
        "SUCCEEDED", spec="markets:page=2:empty:once", endpoint="markets",
        dominance_basis="global",
    ),
    FaultCase(
        "markets empty page mid-market, always", "api",
        "page 2 is always []: paging ends early (end not confirmed) with page 1 only; the"
        " quality gate refuses 1/3 of the previous snapshot's rows", "FAILED", "Transform",
        "DataQualityError", r"gate_row_count_vs_previous: \d+ rows",
        spec="markets:page=2:empty", endpoint="markets",
    ),
    FaultCase(
        "markets rank shift", "api",
        "page 2 starts with page 1's last coin and drops its own last coin (on no page)",
        "SUCCEEDED", spec="markets:page=2:rank-shift", endpoint="markets", coins_missing=1,
        dominance_basis="global",
    ),
    FaultCase(
        "markets extra field", "api", 'every coin gains unexpected_field = "injected"',
        "SUCCEEDED", spec="markets:extra-field", endpoint="markets", dominance_basis="global",
    ),
    FaultCase(
        "markets missing optional field", "api", "every coin loses max_supply", "SUCCEEDED",
        spec="markets:missing=max_supply", endpoint="markets", nulls=("MAX_SUPPLY",),
        dominance_basis="global",
    ),
    FaultCase(
        "markets numbers as strings", "api", 'every number of every coin as text ("123.4")',
        "SUCCEEDED", spec="markets:numbers-as-strings", endpoint="markets",
        dominance_basis="global",
    ),
    # /global: auxiliary. Retried like /coins/markets; when it stays unusable the run
    # degrades to the fetched basis (DOMINANCE_BASIS 'fetched') and still loads every row.
    _global("global 429, Retry-After seconds", "global:429:retry-after=1",
            "HTTP 429 with Retry-After: 1", "global", retried=True),
    _global("global 429, Retry-After HTTP date", "global:429:retry-after=date",
            "HTTP 429 with Retry-After: an HTTP date 1 s ahead", "global", retried=True,
            fast=False),
    _global("global 429, Retry-After 0", "global:429:retry-after=0",
            "HTTP 429 with Retry-After: 0", "global", retried=True, fast=False),
    _global("global 429, no Retry-After", "global:429", "HTTP 429 without Retry-After",
            "global", retried=True),
    _global("global 429 past the budget", f"global:429x{_PAST}",
            f"{_PAST} HTTP 429s in a row", "fetched", retried=True),
    *(
        _global(f"global {code} burst within the budget",
                f"global:{code}x{BENCH_MAX_RETRIES}",
                f"{BENCH_MAX_RETRIES} HTTP {code}s, then /global", "global", retried=True,
                fast=code == "503")
        for code in _STATUS_CODES
    ),
    *(
        _global(f"global {code} burst past the budget", f"global:{code}x{_PAST}",
                f"{_PAST} HTTP {code}s in a row", "fetched", retried=True, fast=code == "503")
        for code in _STATUS_CODES
    ),
    _global("global slower than the timeout", "global:slow=2",
            "the answer after 2 s (timeout 1 s)", "global", retried=True),
    _global("global body trickling past the timeout", "global:trickle=2:every=0.05",
            "one body byte every 0.05 s for 2 s", "global", retried=True),
    _global("global connection reset before the answer", "global:reset", "TCP RST",
            "global", retried=True),
    _global("global connection reset mid-body", "global:reset=mid-body",
            "TCP RST after half the body", "global", retried=True),
    _global("global truncated JSON", "global:truncated", "HTTP 200, half the JSON body",
            "global", retried=True),
    _global("global truncated JSON, every attempt", "global:truncated:always",
            "HTTP 200, half the body, on every attempt", "fetched", retried=True),
    _global("global corrupt gzip", "global:gzip-corrupt",
            "Content-Encoding: gzip over bytes that are not gzip", "global", retried=True),
    _global("global HTML page", "global:html", "HTTP 200 with an HTML page", "global",
            retried=True),
    _global("global HTML page, every attempt", "global:html:always",
            "HTTP 200 with HTML on every attempt", "fetched", retried=True),
    _global("global error object 429", "global:error-object=429",
            'HTTP 200 with {"status": {"error_code": 429}}', "global", retried=True),
    _global("global error object, not retryable", "global:error-object=10002",
            'HTTP 200 with {"status": {"error_code": 10002}}', "fetched"),
    _global("global empty object", "global:empty", "HTTP 200 with {}", "fetched"),
    _global("global extra field", "global:extra-field", 'data gains unexpected_field',
            "global"),
    _global("global missing field", "global:missing=total_market_cap",
            "data loses total_market_cap", "fetched"),
    _global("global numbers as strings", "global:numbers-as-strings",
            'every number of data as text ("123.4")', "global"),
)
# fmt: on

MATRIX: tuple[FaultCase, ...] = CASES + API_CASES
BASE_SNAPSHOT = "fault-base"
# Values compared with what the replay server served (a fault must not change one).
CHECKED_COLUMNS: tuple[str, ...] = (
    "CURRENT_PRICE",
    "MARKET_CAP",
    "MARKET_CAP_RANK",
    "TOTAL_VOLUME",
    "HIGH_24H",
    "LOW_24H",
    "CIRCULATING_SUPPLY",
    "TOTAL_SUPPLY",
    "MAX_SUPPLY",
    "ATH",
    "ATL",
)


@dataclass
class FaultOutcome:
    """What one case did, and whether that is its defined outcome (``problems`` empty).

    ``status``/``state``/``error``/``message``: the faulty execution's; ``retries``: the
    pipeline's CoinGecko retries (its own count when it succeeded; re-requests the replay
    server saw when it failed) plus requests the connector re-sent plus Lambda task retries;
    ``rows_loaded``/``distinct_coins``/``rows_expected``: the snapshot's rows and distinct coin
    ids after the case (after the re-run when it failed) and the rows its definition expects;
    ``warehouse_unchanged``: the failed execution left CRYPTO_DATA, CRYPTO_ASSET_DIM and the
    SUCCEEDED ETL_RUNS rows as they were (None when it succeeded); ``rerun_status``: the
    re-run's; ``seconds``: the case's wall time (re-run included).
    """

    case: FaultCase
    status: str
    state: str | None
    error: str | None
    message: str | None
    alerts: list[dict[str, Any]]
    retries: int
    rows_loaded: int
    rows_expected: int
    warehouse_unchanged: bool | None
    rerun_status: str | None
    seconds: float
    problems: list[str] = field(default_factory=list)
    distinct_coins: int = 0

    @property
    def passed(self) -> bool:
        return not self.problems


def _task_retries(history: list[dict[str, Any]]) -> int:
    """Task attempts beyond the first per state entry (Step Functions Retry)."""
    scheduled = sum(1 for e in history if e["type"] == "TaskScheduled")
    entered = sum(1 for e in history if e["type"] == "TaskStateEntered")
    return max(0, scheduled - entered)


def _api_rerequests(requests: list[Any]) -> int:
    """Requests to the same endpoint and page beyond the first (what the server saw retried)."""
    seen = {(r.endpoint, r.page) for r in requests if r.endpoint in ENDPOINT_PATHS}
    return sum(1 for r in requests if r.endpoint in ENDPOINT_PATHS) - len(seen)


ENDPOINT_PATHS = ("/coins/markets", "/global")


def _same(a: Any, b: Any) -> bool:
    if a is None or b is None:
        return a is None and b is None
    if isinstance(a, int | float) and isinstance(b, int | float):
        return math.isclose(float(a), float(b), rel_tol=1e-12, abs_tol=0.0)
    return bool(a == b)


def data_problems(bench: FaultBench, snapshot_id: str, case: FaultCase) -> list[str]:
    """How the snapshot's rows differ from what the replay server served (``[]``: none).

    Every coin must be one the source served, its :data:`CHECKED_COLUMNS` equal to the source's
    values (``case.nulls`` NULL instead), and its ``DOMINANCE_BASIS`` ``case.dominance_basis``
    (when set). The row count is checked by :func:`run_case`.
    """
    served = {c["id"]: c for c in bench.replay.source.market("usd")[: bench.coins]}
    cols = ", ".join(CHECKED_COLUMNS)
    rows = bench.query(
        f"SELECT COIN_ID, DOMINANCE_BASIS, {cols} FROM CRYPTO_DATA"
        f" WHERE SNAPSHOT_ID = '{snapshot_id}'"  # validated by snapshot_rows (run_case)
    )
    problems: list[str] = []
    unknown = [r[0] for r in rows if r[0] not in served]
    if unknown:
        problems.append(f"{len(unknown)} coins the source never served: {unknown[:3]}")
    bases = sorted({str(r[1]) for r in rows})
    if case.dominance_basis and rows and bases != [case.dominance_basis]:
        problems.append(f"DOMINANCE_BASIS {bases}, expected {case.dominance_basis!r}")
    wrong: list[str] = []
    for row in rows:
        coin = served.get(row[0])
        if coin is None:
            continue
        for column, value in zip(CHECKED_COLUMNS, row[2:], strict=True):
            want = None if column in case.nulls else coin.get(column.lower())
            if not _same(value, want):
                wrong.append(f"{row[0]}.{column} = {value!r}, served {want!r}")
    if wrong:
        problems.append(f"{len(wrong)} values differ from the source's: {wrong[:3]}")
    return problems


def run_case(bench: FaultBench, case: FaultCase, snapshot_id: str = BASE_SNAPSHOT) -> FaultOutcome:
    """Run ``case`` on ``bench``: make sure ``snapshot_id`` is loaded, run an execution of it
    with the fault, check the defined outcome, and, when it failed, re-run the same input
    without the fault and check the snapshot then holds each coin once. Never raises for a
    case that misbehaves: ``problems`` says what differs from the definition."""
    assert bench.proxy is not None
    started = time.perf_counter()
    problems: list[str] = []
    if bench.snapshot_rows(snapshot_id)[0] == 0:
        base = bench.execute(snapshot_id)
        if base.status != "SUCCEEDED":
            raise RuntimeError(f"the baseline run of {snapshot_id} failed: {base.cause}")
    before, index_before = bench.state(), bench.snapshot_index(snapshot_id)
    sent_before = len(bench.proxy.statements())
    api_before = len(bench.replay.requests)
    bench.proxy.clear()
    bench.proxy.add(*case.rules())
    bench.rules_during_record = case.rules_during_record
    bench.replay.clear_faults()
    try:
        if case.spec:
            bench.replay.inject(case.spec)
        result = bench.execute(snapshot_id, wrap=case.wrap(bench) if case.wrap else None)
    finally:
        bench.proxy.clear()
        bench.rules_during_record = False
        bench.replay.clear_faults()
    resent = sum(1 for r in bench.proxy.statements()[sent_before:] if "retryCount=" in r.path)
    api_retries = _api_rerequests(bench.replay.requests[api_before:])
    after = bench.state()
    message = result.cause or ""
    with contextlib.suppress(ValueError, TypeError):
        message = json.loads(message).get("errorMessage", message)
    if result.status != case.status:
        problems.append(f"status {result.status} (expected {case.status}): {message[:300]}")
    unchanged: bool | None = None
    rerun_status: str | None = None
    if result.status == "SUCCEEDED":
        api_retries = int((result.output or {}).get("retries") or 0)
        if case.retried and api_retries < 1:
            problems.append("succeeded but counted no retries (expected > 0)")
        if after.failed_runs != before.failed_runs:
            problems.append("a successful execution added a FAILED run-log row")
        if len(after.succeeded_runs) != len(before.succeeded_runs) + 1:
            problems.append("the execution did not add exactly one SUCCEEDED run-log row")
    if result.status == "FAILED":
        unchanged = before.same_data(after) and bench.snapshot_index(snapshot_id) == index_before
        if case.unchanged and not unchanged:
            problems.append("the failed execution changed the warehouse or the snapshot index")
        added, logged = after.failed_runs - before.failed_runs, int(case.run_logged)
        if added != logged:
            problems.append(f"{added} FAILED run-log rows added (expected {logged})")
        if case.state and result.failed_state != case.state:
            problems.append(f"failed in {result.failed_state}, expected {case.state}")
        if case.error and result.error != case.error:
            problems.append(f"error {result.error}, expected {case.error}")
        if case.message and not re.search(case.message, message, re.DOTALL):
            problems.append(f"cause does not match {case.message!r}: {message[:300]}")
        if case.not_message and re.search(case.not_message, message):
            problems.append(f"cause mis-names the fault ({case.not_message!r}): {message[:300]}")
        if not any(a.get("error") == result.error for a in result.alerts):
            problems.append(f"no alert carries {result.error}: {result.alerts}")
        runs_before = len(bench.state().succeeded_runs)
        rerun = bench.execute(snapshot_id)
        rerun_status = rerun.status
        if rerun.status != "SUCCEEDED":
            problems.append(f"the re-run {rerun.status}: {rerun.cause}")
        elif len(bench.state().succeeded_runs) != runs_before + 1:
            problems.append("the re-run did not add exactly one SUCCEEDED run-log row")
        index = bench.snapshot_index(snapshot_id) or {}
        if rerun.status == "SUCCEEDED" and index.get("current", {}).get("execution_id") != (
            rerun.output or {}
        ).get("execution_id"):
            problems.append("the snapshot index does not point at the re-run")
    rows, distinct = bench.snapshot_rows(snapshot_id)
    expected = case.rows_expected(bench.coins)
    if rows != expected or distinct != rows:
        problems.append(f"snapshot holds {rows} rows ({distinct} coins), expected {expected}")
    # What the snapshot holds now (the re-run's after a failure) is what the source served.
    loaded = case if result.status == "SUCCEEDED" else FaultCase("re-run", "api", "", "SUCCEEDED")
    problems.extend(data_problems(bench, snapshot_id, loaded))
    return FaultOutcome(
        case=case,
        status=result.status,
        state=result.failed_state,
        error=result.error,
        message=message or None,
        alerts=result.alerts,
        retries=api_retries + resent + _task_retries(result.history),
        rows_loaded=rows,
        rows_expected=expected,
        warehouse_unchanged=unchanged,
        rerun_status=rerun_status,
        seconds=time.perf_counter() - started,
        problems=problems,
        distinct_coins=distinct,
    )
