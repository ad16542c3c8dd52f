"""The warehouse fault proxy over real HTTP: a tiny upstream server stands in for fakesnow (the
connector against the real emulator is in tests/integration/test_warehouse_faults.py)."""

from __future__ import annotations

import gzip
import http.client
import json
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from local_mode.warehouse_faults import (
    LOGIN_PATH,
    QUERY_PATH,
    Rule,
    WarehouseFaultProxy,
    cut_response,
    drop_after,
    drop_before,
    endpoint_of,
    fail_statement,
    refuse_login,
    sql_text,
)


class _Upstream:
    """Answers every request with JSON naming what it received; records the requests."""

    def __init__(self) -> None:
        self.received: list[dict[str, Any]] = []
        upstream = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                seen = {
                    "method": self.command,
                    "path": self.path,
                    "host": self.headers.get("Host"),
                    "body": body.decode("latin-1"),
                }
                upstream.received.append(seen)
                out = json.dumps({"success": True, "data": {"echo": seen}}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

            do_PUT = do_POST

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        ).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def upstream() -> Iterator[_Upstream]:
    server = _Upstream()
    yield server
    server.close()


def _query_body(sql: str, *, gzipped: bool = True) -> tuple[bytes, dict[str, str]]:
    body = json.dumps({"sqlText": sql, "asyncExec": False}).encode()
    if gzipped:
        return gzip.compress(body), {"Content-Encoding": "gzip"}
    return body, {}


def _post(port: int, path: str, body: bytes, headers: dict[str, str] | None = None) -> Any:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    conn.request("POST", path, body=body, headers=headers or {})
    resp = conn.getresponse()
    return resp.status, resp.read()


def _query(port: int, sql: str) -> tuple[int, dict[str, Any]]:
    body, headers = _query_body(sql)
    status, data = _post(port, f"{QUERY_PATH}?requestId=1", body, headers)
    return status, json.loads(data)


def test_endpoint_and_sql_text_of_connector_requests():
    assert endpoint_of(f"{LOGIN_PATH}?request_id=x") == "login"
    assert endpoint_of(f"{QUERY_PATH}?requestId=1&retryCount=1") == "query"
    assert endpoint_of("/fs_bucket/stage/file.csv.gz") == "upload"
    assert endpoint_of("/session?delete=true") == "session"
    assert endpoint_of("/monitoring/queries/1") == "any"
    body, headers = _query_body("COMMIT")
    assert sql_text(body, headers["Content-Encoding"]) == "COMMIT"
    assert sql_text(json.dumps({"sqlText": "SELECT 1"}).encode(), None) == "SELECT 1"
    assert sql_text(b"not json", None) is None
    assert sql_text(b"\x1f\x8b broken gzip", "gzip") is None
    assert sql_text(b'{"other": 1}', None) is None


def test_rule_counts_nth_and_times():
    rule = drop_before(r"^COPY", nth=2, times=2)
    assert not rule.matches("query", "SELECT 1")
    assert not rule.matches("login", None)
    assert rule.matches("query", "copy into t")  # case-insensitive
    assert [rule.take() for _ in range(5)] == [False, True, True, False, False]
    assert (rule.matched, rule.fired) == (5, 2)
    forever = drop_after("^COMMIT$", times=None)
    assert all(forever.take() for _ in range(10))
    login = refuse_login(nth=2)
    assert login.matches("login", None) and not login.matches("query", "SELECT 1")


@pytest.mark.parametrize(
    "kwargs",
    [{"action": "explode"}, {"action": "drop_before", "nth": 0}, {"action": "error", "times": 0}],
)
def test_rule_refuses_bad_settings(kwargs):
    with pytest.raises(ValueError):
        Rule(**kwargs)


def test_forwards_requests_and_responses_unchanged(upstream):
    with WarehouseFaultProxy(upstream.port) as proxy:
        status, doc = _query(proxy.port, "SELECT 1")
        assert status == 200
        echo = doc["data"]["echo"]
        assert echo["path"] == f"{QUERY_PATH}?requestId=1"
        # The Host header is the proxy's: fakesnow builds the PUT upload URL from it.
        assert echo["host"] == f"127.0.0.1:{proxy.port}"
        assert (
            gzip.decompress(echo["body"].encode("latin-1"))
            == json.dumps({"sqlText": "SELECT 1", "asyncExec": False}).encode()
        )
        assert [(r.endpoint, r.sql, r.action, r.status) for r in proxy.requests] == [
            ("query", "SELECT 1", None, 200)
        ]


def test_drop_before_closes_without_forwarding(upstream):
    with WarehouseFaultProxy(upstream.port, [drop_before("^COPY")]) as proxy:
        with pytest.raises(http.client.RemoteDisconnected):
            _query(proxy.port, "COPY INTO T FROM @S")
        assert upstream.received == []
        # Fired once: the connector's re-send goes through.
        assert _query(proxy.port, "COPY INTO T FROM @S")[0] == 200
        assert len(upstream.received) == 1
        assert [r.action for r in proxy.statements("^COPY")] == ["drop_before", None]
        assert proxy.faults_fired() == 1


def test_drop_after_runs_the_statement_but_loses_the_reply(upstream):
    with WarehouseFaultProxy(upstream.port, [drop_after("^COMMIT$")]) as proxy:
        with pytest.raises(http.client.RemoteDisconnected):
            _query(proxy.port, "COMMIT")
        assert [json.loads(gzip.decompress(r["body"].encode("latin-1")))["sqlText"]
                for r in upstream.received] == ["COMMIT"]  # fmt: skip


def test_cut_response_sends_half_the_body(upstream):
    with WarehouseFaultProxy(upstream.port, [cut_response("^COPY")]) as proxy:
        with pytest.raises(http.client.IncompleteRead):
            _query(proxy.port, "COPY INTO T FROM @S")
        assert len(upstream.received) == 1


def test_error_answers_as_snowflake_without_forwarding(upstream):
    rule = fail_statement(r"^INSERT INTO \S+\.CRYPTO_DATA\b", code="000630", message="boom")
    with WarehouseFaultProxy(upstream.port, [rule]) as proxy:
        status, doc = _query(proxy.port, "INSERT INTO DB.S.CRYPTO_DATA SELECT 1")
        assert status == 200
        assert doc["success"] is False
        assert (doc["code"], doc["message"]) == ("000630", "boom")
        assert doc["data"]["errorCode"] == "000630"
        assert upstream.received == []
        # Another statement is not matched.
        assert _query(proxy.port, "INSERT INTO DB.S.ETL_RUNS SELECT 1")[0] == 200


def test_refuse_login_answers_the_wrong_password_error(upstream):
    with WarehouseFaultProxy(upstream.port, [refuse_login()]) as proxy:
        for _ in range(2):  # every login from the first on
            status, data = _post(proxy.port, f"{LOGIN_PATH}?request_id=1", b"{}")
            doc = json.loads(data)
            assert (status, doc["success"], doc["code"]) == (200, False, "390100")
            assert "Incorrect username or password" in doc["message"]
        assert upstream.received == []
        assert _query(proxy.port, "SELECT 1")[0] == 200  # queries are not refused


def test_rules_added_and_cleared_while_running(upstream):
    with WarehouseFaultProxy(upstream.port) as proxy:
        proxy.add(fail_statement("^SELECT"))
        assert _query(proxy.port, "SELECT 1")[1]["success"] is False
        proxy.add(fail_statement("^SELECT", times=None))
        proxy.clear()
        assert _query(proxy.port, "SELECT 1")[1]["success"] is True


def test_binds_loopback_and_stops(upstream):
    proxy = WarehouseFaultProxy(upstream.port)
    with pytest.raises(RuntimeError):
        _ = proxy.port
    with proxy:
        port = proxy.port
        assert proxy._server is not None
        assert proxy._server.server_address[0] == "127.0.0.1"
        env = proxy.env({"SNOWFLAKE_HOST": "example.invalid", "SNOWFLAKE_PORT": "1", "X": "y"})
        assert env == {"SNOWFLAKE_HOST": "127.0.0.1", "SNOWFLAKE_PORT": str(port), "X": "y"}
    with socket.socket() as sock, pytest.raises(OSError):
        sock.settimeout(2)
        sock.connect(("127.0.0.1", port))


def test_upstream_gone_looks_like_a_dropped_connection():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        dead_port = sock.getsockname()[1]  # nothing listens once closed
    with WarehouseFaultProxy(dead_port) as proxy:
        with pytest.raises(http.client.RemoteDisconnected):
            _query(proxy.port, "SELECT 1")
        assert proxy.requests[0].status is None
