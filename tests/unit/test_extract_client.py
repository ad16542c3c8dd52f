"""The CoinGecko client against a real local HTTP server (ReplayServer): retries, budget, errors.

Sleeps are recorded by an injected function instead of being slept, so the tests can check the
waits the client chose without waiting them."""

from __future__ import annotations

import http.client
import json
import random
import ssl
import time
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path

import pytest
import requests
import urllib3.exceptions

from functions.common.errors import SourceError, SourceUnavailableError
from functions.extract.client import MIN_RETRY_WAIT, CoinGeckoClient, parse_retry_after
from functions.extract.config import ExtractConfig
from functions.extract.pacing import PLAN_RATE_LIMITS, RateLimit, SlidingWindowLimiter
from local_mode.replay_server import ReplayServer, Scripted

MARKETS = "/coins/markets"


class Sleeps(list):
    """An injectable sleep that records the waits (and may advance a fake clock)."""

    def __init__(self, clock: list[float] | None = None) -> None:
        super().__init__()
        self.clock = clock

    def __call__(self, seconds: float) -> None:
        self.append(seconds)
        if self.clock is not None:
            self.clock[0] += seconds


@pytest.fixture
def server():
    with ReplayServer.synthetic(coins=600, seed=3) as srv:
        yield srv


@pytest.fixture
def sleeps() -> Sleeps:
    return Sleeps()


def make_client(server: ReplayServer, sleeps: Sleeps, **overrides) -> CoinGeckoClient:
    settings = {
        "timeout": 5.0,
        "max_retries": 4,
        "max_retry_wait": 60.0,
        "backoff_base": 1.0,
        "sleep": sleeps,
        "rng": random.Random(1),
    }
    settings.update(overrides)
    return CoinGeckoClient(server.base_url, **settings)


def page_bytes(server: ReplayServer, page: int, per_page: int = 250) -> bytes:
    """The body the server sends for a page, fetched independently of the client."""
    resp = requests.get(
        f"{server.base_url}{MARKETS}",
        params={"vs_currency": "usd", "per_page": per_page, "page": page},
        timeout=5,
    )
    assert resp.status_code == 200
    return resp.content


def test_a_page_comes_back_with_its_raw_bytes(server, sleeps):
    with make_client(server, sleeps) as client:
        resp = client.markets_page("usd", 2, 250)
    [req] = server.requests_to(MARKETS)
    assert resp.status == 200
    assert resp.body == page_bytes(server, 2)
    assert [c["market_cap_rank"] for c in resp.data[:2]] == [251, 252]
    assert (client.api_calls, client.retries, sleeps) == (1, 0, [])
    assert req.query == {
        "vs_currency": "usd",
        "order": "market_cap_desc",
        "per_page": "250",
        "page": "2",
        "sparkline": "false",
    }


def test_429_with_retry_after_seconds_waits_that_long(server, sleeps):
    server.script(MARKETS, Scripted.error(429, "Rate limited", retry_after=7), page=1)
    client = make_client(server, sleeps)
    resp = client.markets_page("usd", 1, 250)
    assert sleeps == [7.0]
    assert (client.api_calls, client.retries) == (2, 1)
    assert [r.status for r in server.requests_to(MARKETS)] == [429, 200]
    assert len(resp.data) == 250


def test_429_with_retry_after_http_date_waits_until_then(server, sleeps):
    now = datetime(2024, 1, 1, 12, 0, 0, tzinfo=UTC)
    header = format_datetime(now + timedelta(seconds=12), usegmt=True)
    server.script(MARKETS, Scripted.error(429, retry_after=header))
    client = make_client(server, sleeps, wall_clock=now.timestamp)
    client.markets_page("usd", 1, 250)
    assert sleeps == [12.0]


def test_429_without_retry_after_backs_off_exponentially_with_jitter(server, sleeps):
    server.script(MARKETS, Scripted.error(429), Scripted.error(429), Scripted.error(429))
    client = make_client(server, sleeps, backoff_base=2.0)
    client.markets_page("usd", 1, 250)
    assert len(sleeps) == 3
    for n, wait in enumerate(sleeps, start=1):
        step = 2.0 * 2 ** (n - 1)
        assert step / 2 <= wait <= step, (n, wait)
    assert (client.api_calls, client.retries) == (4, 3)


def test_jitter_differs_between_clients():
    waits = {CoinGeckoClient("http://x", rng=random.Random(seed)).backoff(3) for seed in range(5)}
    assert len(waits) == 5
    assert all(2.0 <= w <= 4.0 for w in waits)


def test_500_then_success(server, sleeps):
    server.script(MARKETS, Scripted.error(500, "Internal server error"), page=1)
    client = make_client(server, sleeps)
    resp = client.markets_page("usd", 1, 250)
    assert resp.body == page_bytes(server, 1)
    assert (client.api_calls, client.retries, len(sleeps)) == (2, 1, 1)


@pytest.mark.parametrize("status", [502, 503, 504])
def test_other_5xx_are_retried(server, sleeps, status):
    server.script("/global", Scripted(status=status, body="<html>Bad gateway</html>"))
    client = make_client(server, sleeps)
    resp = client.global_data()
    assert "total_market_cap" in resp.data["data"]
    assert client.retries == 1


def test_timeout_then_success(server, sleeps):
    server.script(MARKETS, Scripted.slow(3.0), page=1)
    client = make_client(server, sleeps, timeout=0.3)
    resp = client.markets_page("usd", 1, 250)
    assert len(resp.data) == 250
    assert (client.api_calls, client.retries, len(sleeps)) == (2, 1, 1)


def test_dropped_connection_then_success(server, sleeps):
    server.script(MARKETS, Scripted.drop(), page=1)
    client = make_client(server, sleeps)
    resp = client.markets_page("usd", 1, 250)
    assert len(resp.data) == 250
    assert [r.status for r in server.requests_to(MARKETS)] == [None, 200]
    assert client.retries == 1


def test_401_fails_fast_with_the_api_message(server, sleeps):
    server.script(MARKETS, Scripted.error(401, "Invalid API Key"))
    client = make_client(server, sleeps)
    with pytest.raises(SourceError) as info:
        client.markets_page("usd", 1, 250)
    err = info.value
    assert not isinstance(err, SourceUnavailableError)
    assert err.status == 401
    assert err.api_message == "Invalid API Key"
    assert "Invalid API Key" in str(err) and "HTTP 401" in str(err)
    assert f"{server.base_url}{MARKETS}?vs_currency=usd" in str(err)
    assert (client.api_calls, client.retries, sleeps) == (1, 0, [])
    assert len(server.requests) == 1


def test_404_fails_fast_with_the_api_message(server, sleeps):
    client = make_client(server, sleeps)
    with pytest.raises(SourceError) as info:
        client.get_json("/coins/no-such-endpoint")
    assert info.value.status == 404
    assert "Incorrect path" in info.value.api_message
    assert (client.api_calls, sleeps) == (1, [])


def test_422_missing_parameter_fails_fast(server, sleeps):
    client = make_client(server, sleeps)
    with pytest.raises(SourceError, match="Missing parameter vs_currency") as info:
        client.get_json(MARKETS, {"page": "1"})
    assert info.value.status == 422


def test_recorded_401_body_is_reported(server, sleeps, shared_coingecko_dir: Path):
    body = (shared_coingecko_dir / "errors_khooihzhz_coingecko-python_1.json").read_bytes()
    server.script("/ping", Scripted(status=401, body=body))
    with pytest.raises(SourceError, match="API Key Missing"):
        make_client(server, sleeps).ping()


def test_max_retries_reached_raises_source_unavailable(server, sleeps):
    server.script(MARKETS, *[Scripted.error(500, "Internal server error")] * 5, page=1)
    client = make_client(server, sleeps, max_retries=2, backoff_base=0.01)
    with pytest.raises(SourceUnavailableError) as info:
        client.markets_page("usd", 1, 250)
    err = info.value
    assert err.status == 500
    assert "after 3 attempts" in str(err) and "HTTP 500" in str(err)
    assert "max retries (2)" in str(err)
    assert err.url in str(err) and "page=1" in err.url
    assert (client.api_calls, client.retries, len(sleeps)) == (3, 2, 2)
    assert server.pending_scripts() == 2


def test_retry_budget_exhausted_stops_before_waiting_past_it(server, sleeps):
    server.script(MARKETS, *[Scripted.error(503, "busy")] * 20)
    client = make_client(server, sleeps, max_retries=20, max_retry_wait=5.0, backoff_base=1.0)
    with pytest.raises(SourceUnavailableError) as info:
        client.markets_page("usd", 1, 250)
    assert "retry-wait budget" in str(info.value)
    assert "HTTP 503" in str(info.value)
    assert sum(sleeps) <= 5.0
    assert len(sleeps) >= 2  # it did retry, then stopped at the budget
    assert client.api_calls == len(server.requests) == len(sleeps) + 1


def test_the_budget_spans_requests(server, sleeps):
    server.script(MARKETS, Scripted.error(429, retry_after=3), page=1)
    server.script(MARKETS, Scripted.error(429, retry_after=3), page=2)
    client = make_client(server, sleeps, max_retry_wait=5.0)
    client.markets_page("usd", 1, 250)
    with pytest.raises(SourceUnavailableError, match=r"only 2\.0s"):
        client.markets_page("usd", 2, 250)
    assert sleeps == [3.0]


def test_retry_after_beyond_the_budget_fails_without_waiting(server, sleeps):
    server.script(MARKETS, Scripted.error(429, retry_after=3600))
    client = make_client(server, sleeps, max_retry_wait=120.0)
    with pytest.raises(SourceUnavailableError, match=r"Retry-After asks for 3600\.0s") as info:
        client.markets_page("usd", 1, 250)
    assert info.value.status == 429
    assert sleeps == []


def test_no_wait_may_run_past_the_deadline(server, sleeps):
    server.script(MARKETS, Scripted.error(429, retry_after=5))
    client = make_client(server, sleeps, deadline=lambda: 8.0, deadline_reserve=4.0)
    with pytest.raises(SourceUnavailableError, match="deadline"):
        client.markets_page("usd", 1, 250)
    assert sleeps == []


def test_server_rate_limit_is_honoured(sleeps):
    clock = [0.0]
    sleeps = Sleeps(clock)
    with ReplayServer.synthetic(coins=600, seed=3, clock=lambda: clock[0]) as srv:
        srv.rate_limit(2, window_seconds=30)
        client = make_client(srv, sleeps)
        for page in (1, 2, 3):
            client.markets_page("usd", page, 250)
        statuses = [r.status for r in srv.requests_to(MARKETS)]
    assert statuses == [200, 200, 429, 200]
    assert sleeps == [30.0]
    assert (client.api_calls, client.retries) == (4, 1)


def test_a_non_json_200_is_retried_and_named_with_a_snippet_when_it_persists(server, sleeps):
    # A proxy's HTML page or a body cut off mid-way is transient, like a 5xx.
    html = Scripted(status=200, body="<html><body>Cloudflare</body></html>")
    server.script(MARKETS, html)
    client = make_client(server, sleeps)
    assert len(client.markets_page("usd", 1, 250).data) == 250  # the retry got the page
    assert (client.api_calls, client.retries) == (2, 1)

    server.script(MARKETS, *[html] * 5)
    client = make_client(server, sleeps)
    with pytest.raises(SourceUnavailableError) as info:
        client.markets_page("usd", 1, 250)
    assert "not JSON" in str(info.value)
    assert "<html><body>Cloudflare" in str(info.value)
    assert f"{server.base_url}{MARKETS}" in str(info.value)
    assert client.retries == 4


def test_a_body_trickling_past_the_timeout_is_cut_and_retried(server, sleeps):
    # One byte every 20 ms: each read is quick, so only a bound on the whole response stops it.
    server.inject("markets:page=1:trickle:every=0.02")
    client = make_client(server, sleeps, timeout=0.5)
    started = time.monotonic()
    page = client.markets_page("usd", 1, 250)
    assert time.monotonic() - started < 5  # the whole body would take minutes at that pace
    assert len(page.data) == 250
    assert client.retries == 1
    [first, _] = server.requests_to(MARKETS)
    assert first.fault


def test_error_object_with_200_where_a_list_was_expected(server, sleeps):
    body = {"status": {"error_code": 403, "error_message": "This endpoint is temporarily down"}}
    server.script(MARKETS, Scripted(status=200, body=body))
    client = make_client(server, sleeps)
    with pytest.raises(SourceError) as info:
        client.markets_page("usd", 1, 250)
    assert not isinstance(info.value, SourceUnavailableError)
    assert info.value.api_message == "This endpoint is temporarily down"
    assert "with an error object instead of data (not retried)" in str(info.value)
    assert '"error_code":403' in str(info.value)
    assert (client.api_calls, client.retries, sleeps) == (1, 0, [])


def test_error_object_with_200_on_global_names_the_message(server, sleeps):
    body = {"error": "coin not found"}
    server.script("/global", Scripted(status=200, body=body))
    with pytest.raises(SourceError, match="coin not found") as info:
        make_client(server, sleeps).global_data()
    assert info.value.api_message == "coin not found"


def test_200_with_error_code_429_is_a_rate_limit(server, sleeps):
    body = {"status": {"error_code": 429, "error_message": "You've exceeded the Rate Limit"}}
    server.script(MARKETS, Scripted(status=200, body=body, headers={"Retry-After": "4"}), page=1)
    client = make_client(server, sleeps)
    resp = client.markets_page("usd", 1, 250)
    assert resp.body == page_bytes(server, 1)
    assert sleeps == [4.0]  # its Retry-After honoured, as for a real 429
    assert (client.api_calls, client.retries) == (2, 1)


def test_200_with_error_code_503_gives_up_as_unavailable(server, sleeps):
    body = {"status": {"error_code": 503, "error_message": "Service busy"}}
    server.script(MARKETS, *[Scripted(status=200, body=body)] * 3)
    client = make_client(server, sleeps, max_retries=2, backoff_base=0.01)
    with pytest.raises(SourceUnavailableError) as info:
        client.markets_page("usd", 1, 250)
    err = info.value
    assert err.status == 503
    assert err.api_message == "Service busy"
    assert "after 3 attempts" in str(err) and "HTTP 200 with error_code 503" in str(err)
    assert (client.api_calls, client.retries, len(sleeps)) == (3, 2, 2)


def test_408_is_retried_like_a_5xx(server, sleeps):
    server.script(MARKETS, Scripted.error(408, "Request Timeout"), page=1)
    client = make_client(server, sleeps)
    resp = client.markets_page("usd", 1, 250)
    assert len(resp.data) == 250
    assert [r.status for r in server.requests_to(MARKETS)] == [408, 200]
    assert (client.api_calls, client.retries, len(sleeps)) == (2, 1, 1)


def test_recorded_error_object_body(server, sleeps, shared_coingecko_dir: Path):
    body = (shared_coingecko_dir / "errors_madjin_daily-crypto_1.json").read_bytes()
    server.script(MARKETS, Scripted(status=200, body=body))
    with pytest.raises(SourceError, match="temporarily unavailable"):
        make_client(server, sleeps).markets_page("usd", 1, 250)


def test_global_without_data_is_a_source_error(server, sleeps):
    server.script("/global", Scripted(status=200, body={"something": "else"}))
    with pytest.raises(SourceError, match="without a 'data' object"):
        make_client(server, sleeps).global_data()


def test_redirects_are_not_followed(server, sleeps):
    server.script(
        MARKETS,
        Scripted(status=302, headers={"Location": "http://example.invalid/steal?token=x"}),
    )
    client = make_client(server, sleeps)
    with pytest.raises(SourceError, match="HTTP 302") as info:
        client.markets_page("usd", 1, 250)
    assert client.api_calls == 1
    assert str(info.value).endswith("-> http://example.invalid/steal")  # no query string


def test_a_connection_failure_names_its_real_cause(sleeps):
    client = CoinGeckoClient("http://127.0.0.1:9/api/v3", max_retries=1, backoff_base=0.01,
                             sleep=sleeps.append)  # fmt: skip
    with pytest.raises(SourceUnavailableError, match="NewConnectionError") as info:
        client.ping()
    assert "Connection refused" in str(info.value)
    assert client.api_calls == 2 and len(sleeps) == 1


def test_an_unresolvable_host_is_retried_once_quickly(sleeps):
    """RFC 2606's .invalid never resolves (the local resolver answers at once): one short
    retry, not the whole backoff (~55 s with the defaults)."""
    # The default retries (6) and budget (120 s): only the DNS rule can stop it after one.
    client = CoinGeckoClient(
        "http://nonexistent.invalid/api/v3", sleep=sleeps, rng=random.Random(1)
    )
    with pytest.raises(SourceUnavailableError, match="NameResolutionError") as info:
        client.ping()
    assert (client.api_calls, client.retries) == (2, 1)
    assert len(sleeps) == 1 and 0 < sleeps[0] <= 1.0
    assert "did not resolve 2 times" in str(info.value)
    assert "nonexistent.invalid" in str(info.value)


@pytest.mark.parametrize(
    ("plan", "header"), [("demo", "x-cg-demo-api-key"), ("pro", "x-cg-pro-api-key")]
)
def test_the_plan_key_header_is_sent(server, sleeps, plan, header):
    config = ExtractConfig.from_env(
        {
            "COINGECKO_BASE_URL": server.base_url,
            "COINGECKO_API_PLAN": plan,
            "COINGECKO_API_KEY": "CG-test-key",
        }
    )
    with CoinGeckoClient.from_config(config, sleep=sleeps) as client:
        client.ping()
    [req] = server.requests
    assert req.headers[header] == "CG-test-key"
    other = {"x-cg-demo-api-key", "x-cg-pro-api-key"} - {header}
    assert not other & set(req.headers)


def test_public_plan_sends_no_key(server, sleeps):
    config = ExtractConfig.from_env({"COINGECKO_BASE_URL": server.base_url})
    with CoinGeckoClient.from_config(config, sleep=sleeps) as client:
        assert client.ping().data == {"gecko_says": "(V3) To the Moon!"}
    assert not {h for h in server.requests[0].headers if h.startswith("x-cg-")}


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("7", 7.0),
        (" 0 ", MIN_RETRY_WAIT),
        ("0.2", MIN_RETRY_WAIT),
        ("1.5", 1.5),
        ("-3", None),
        ("-30", None),
        ("Mon, 01 Jan 2024 12:00:30 GMT", 30.0),
        ("Mon, 01 Jan 2024 11:00:00 GMT", MIN_RETRY_WAIT),
        ("soon", None),
        ("", None),
        (None, None),
        ("nan", None),
        ("-inf", None),
    ],
)
def test_parse_retry_after(value, expected):
    now = datetime(2024, 1, 1, 12, 0, 0, tzinfo=UTC).timestamp()
    assert parse_retry_after(value, now) == expected


def test_negative_retry_after_is_ignored_and_backs_off(server, sleeps):
    server.script(MARKETS, *[Scripted.error(429, retry_after=-30)] * 2, page=1)
    client = make_client(server, sleeps, backoff_base=2.0)
    client.markets_page("usd", 1, 250)
    assert len(sleeps) == 2
    for n, wait in enumerate(sleeps, start=1):
        step = 2.0 * 2 ** (n - 1)
        assert step / 2 <= wait <= step, (n, wait)


def test_zero_retry_after_waits_the_floor(server, sleeps):
    server.script(MARKETS, Scripted.error(429, retry_after=0), page=1)
    client = make_client(server, sleeps)
    client.markets_page("usd", 1, 250)
    assert sleeps == [MIN_RETRY_WAIT]


def test_past_retry_after_date_waits_the_floor(server, sleeps):
    now = datetime(2024, 1, 1, 12, 0, 0, tzinfo=UTC)
    header = format_datetime(now - timedelta(minutes=5), usegmt=True)
    server.script(MARKETS, Scripted.error(429, retry_after=header), page=1)
    client = make_client(server, sleeps, wall_clock=now.timestamp)
    client.markets_page("usd", 1, 250)
    assert sleeps == [MIN_RETRY_WAIT]


# -- transport failures: every requests/urllib3 exception comes out typed -------------------

NOT_GZIP = Scripted(status=200, body=b'[{"id": "bitcoin"}]', headers={"Content-Encoding": "gzip"})


def test_a_body_that_fails_to_decode_is_retried(server, sleeps):
    server.script(MARKETS, NOT_GZIP, page=1)
    client = make_client(server, sleeps)
    resp = client.markets_page("usd", 1, 250)
    assert resp.body == page_bytes(server, 1)
    assert (client.api_calls, client.retries, len(sleeps)) == (2, 1, 1)


def test_a_body_that_never_decodes_surfaces_as_unavailable(server, sleeps):
    server.script(MARKETS, *[NOT_GZIP] * 3)
    client = make_client(server, sleeps, max_retries=2, backoff_base=0.01)
    with pytest.raises(SourceUnavailableError) as info:
        client.markets_page("usd", 1, 250)
    err = info.value
    assert err.url in str(err) and "page=1" in err.url
    assert "DecodeError" in str(err) and "content-encoding: gzip" in str(err)
    assert "after 3 attempts" in str(err)
    assert client.api_calls == len(server.requests_to(MARKETS)) == 3


def test_a_body_cut_off_mid_way_is_retried(server, sleeps):
    cut = Scripted(status=200, body=b'[{"id": "bitc', headers={"Content-Length": "5000"})
    server.script(MARKETS, cut, page=1)
    client = make_client(server, sleeps)
    resp = client.markets_page("usd", 1, 250)
    assert resp.body == page_bytes(server, 1)
    assert (client.api_calls, client.retries) == (2, 1)


class FlakySession(requests.Session):
    """A real session that raises the queued exceptions first, one per request."""

    def __init__(self, *errors: BaseException) -> None:
        super().__init__()
        self.errors = list(errors)

    def get(self, url, **kwargs):  # type: ignore[override]
        if self.errors:
            raise self.errors.pop(0)
        return super().get(url, **kwargs)


def _tls_eof_wrapped() -> requests.exceptions.SSLError:
    """How requests reports a TLS EOF in the wild: SSLError(MaxRetryError(SSLError(SSLEOF)))."""
    eof = ssl.SSLEOFError(
        8, "[SSL: UNEXPECTED_EOF_WHILE_READING] EOF occurred in violation of protocol (_ssl.c:1006)"
    )
    inner = urllib3.exceptions.SSLError(eof)
    return requests.exceptions.SSLError(
        urllib3.exceptions.MaxRetryError(None, "/api/v3/coins/markets", inner)  # type: ignore[arg-type]
    )


def test_tls_eof_is_transient(server, sleeps):
    session = FlakySession(
        requests.exceptions.SSLError(ssl.SSLEOFError(8, "EOF occurred in violation of protocol")),
        _tls_eof_wrapped(),
    )
    client = make_client(server, sleeps, session=session)
    resp = client.markets_page("usd", 1, 250)
    assert len(server.requests_to(MARKETS)) == 1  # the two failures never reached it
    assert resp.body == page_bytes(server, 1)
    assert (client.api_calls, client.retries, len(sleeps)) == (3, 2, 2)


def test_tls_eof_past_the_budget_is_unavailable(server, sleeps):
    session = FlakySession(*[_tls_eof_wrapped() for _ in range(3)])
    client = make_client(server, sleeps, session=session, max_retries=2, backoff_base=0.01)
    with pytest.raises(SourceUnavailableError, match="UNEXPECTED_EOF_WHILE_READING"):
        client.markets_page("usd", 1, 250)
    assert client.api_calls == 3


def test_a_certificate_error_is_not_retried(server, sleeps):
    cert = ssl.SSLCertVerificationError(
        1, "[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: self-signed certificate"
    )
    session = FlakySession(requests.exceptions.SSLError(urllib3.exceptions.SSLError(cert)))
    client = make_client(server, sleeps, session=session)
    with pytest.raises(SourceError, match="CERTIFICATE_VERIFY_FAILED") as info:
        client.markets_page("usd", 1, 250)
    assert not isinstance(info.value, SourceUnavailableError)
    assert (client.api_calls, sleeps) == (1, [])


@pytest.mark.parametrize(
    "error",
    [
        urllib3.exceptions.ProtocolError(
            "Connection aborted.", http.client.RemoteDisconnected("closed")
        ),
        urllib3.exceptions.DecodeError("Received response with content-encoding: br"),
        requests.exceptions.RetryError("too many 500 error responses"),
        http.client.IncompleteRead(b"[", 10),
        ConnectionResetError(104, "Connection reset by peer"),
        TimeoutError("timed out"),
    ],
    ids=lambda e: type(e).__name__,
)
def test_other_transient_transport_errors_are_retried(server, sleeps, error):
    client = make_client(server, sleeps, session=FlakySession(error))
    resp = client.markets_page("usd", 1, 250)
    assert resp.body == page_bytes(server, 1)
    assert (client.api_calls, client.retries) == (2, 1)


@pytest.mark.parametrize(
    "error",
    [
        requests.exceptions.InvalidJSONError("Out of range float values are not JSON compliant"),
        requests.exceptions.TooManyRedirects("Exceeded 30 redirects."),
        requests.exceptions.InvalidURL("Failed to parse: http://[::1"),
        requests.exceptions.InvalidHeader("Invalid leading whitespace in header value"),
        urllib3.exceptions.LocationParseError("http://[::1"),
        urllib3.exceptions.HeaderParsingError([], b"junk"),
        OSError("Could not find a suitable TLS CA certificate bundle, invalid path: /nope"),
    ],
    ids=lambda e: type(e).__name__,
)
def test_other_request_errors_are_typed_and_not_retried(server, sleeps, error):
    client = make_client(server, sleeps, session=FlakySession(error))
    with pytest.raises(SourceError) as info:
        client.markets_page("usd", 1, 250)
    err = info.value
    assert not isinstance(err, SourceUnavailableError)
    assert type(error).__name__ in str(err) and "not retried" in str(err)
    assert err.url in str(err) and err.url.startswith(server.base_url)
    assert err.__cause__ is error
    assert (client.api_calls, sleeps) == (1, [])
    assert server.requests == []


def test_client_counts_match_the_server_log(server, sleeps):
    server.script(MARKETS, Scripted.error(500), Scripted.error(429, retry_after=0), page=2)
    client = make_client(server, sleeps, backoff_base=0.01)
    for page in (1, 2, 3):
        client.markets_page("usd", page, 250)
    client.global_data()
    assert client.api_calls == len(server.requests) == 6
    assert client.retries == 2
    assert json.loads(page_bytes(server, 3)) == client.markets_page("usd", 3, 250).data


# -- pacing (client-side rate limiting) ---------------------------------------------------------

T0 = 1_800_000_000.0  # the fake clock's start, a Unix time


def paced_run(srv: ReplayServer, client: CoinGeckoClient, pages: int) -> None:
    """An extract's calls: ``pages`` markets pages then /global."""
    for page in range(1, pages + 1):
        client.markets_page("usd", page, 250)
    client.global_data()


def fake_clock_server(coins: int = 2000) -> tuple[list[float], Sleeps, ReplayServer]:
    """A server and a client sleep sharing one fake clock (sleeping advances it)."""
    clock = [T0]
    return clock, Sleeps(clock), ReplayServer.synthetic(coins=coins, clock=lambda: clock[0])


def paced_client(srv: ReplayServer, clock, sleeps, rate_limit: str, **kwargs) -> CoinGeckoClient:
    env = {"COINGECKO_BASE_URL": srv.base_url, "COINGECKO_RATE_LIMIT": rate_limit}
    return CoinGeckoClient.from_config(
        ExtractConfig.from_env(env),
        sleep=sleeps,
        wall_clock=lambda: clock[0],
        rng=random.Random(1),
        **kwargs,
    )


def test_pacing_matching_a_fixed_window_server_provokes_no_429():
    clock, sleeps, srv = fake_clock_server()
    with srv:
        srv.rate_limit(3, window_seconds=1, mode="fixed")
        client = paced_client(srv, clock, sleeps, "3/1")
        paced_run(srv, client, pages=9)  # 8 full pages, the empty 9th, then /global: 10 calls
        statuses = [r.status for r in srv.requests]
    assert srv.rate_limited == 0 and client.rate_limited == 0
    assert statuses == [200] * 10
    assert client.api_calls == 10 and client.retries == 0
    # Bursts of 3, then one window (plus the 20 ms jitter margin) each: calls 4, 7 and 10
    # (/global) waited; a window's worth, not more.
    assert sleeps == [pytest.approx(1.02)] * 3
    assert (client.pacing_waits, client.pacing_wait_seconds) == (3, pytest.approx(3.06))
    assert client.limiter is not None and client.limiter.waits == 3


def test_without_pacing_the_same_server_answers_429_once_per_window():
    """The baseline the pacing removes: a burst, a 429, Retry-After, per window."""
    clock, sleeps, srv = fake_clock_server()
    with srv:
        srv.rate_limit(3, window_seconds=1, mode="fixed")
        client = paced_client(srv, clock, sleeps, "off")
        paced_run(srv, client, pages=9)
    assert client.limiter is None
    assert srv.rate_limited == client.rate_limited == client.retries == 3
    assert client.api_calls == 13 and client.pacing_waits == 0


def test_a_stricter_server_than_configured_makes_the_limiter_conservative():
    clock, sleeps, srv = fake_clock_server()
    with srv:
        srv.rate_limit(2, window_seconds=1, mode="fixed")  # configured: 4 per second
        client = paced_client(srv, clock, sleeps, "4/1")
        paced_run(srv, client, pages=9)
        recorded = srv.requests
    limited = [i for i, r in enumerate(recorded) if r.rate_limited]
    assert limited and client.rate_limited == srv.rate_limited == len(limited)
    assert client.limiter is not None and client.limiter.level == len(limited)
    assert client.limiter.spacing > 0  # no more bursts
    # Retry-After (1 s here) was waited after each 429, as retries; the run completed.
    assert client.retries == len(limited) and client.waited_seconds == 1.0 * len(limited)
    assert [r.status for r in recorded[limited[-1] + 1 :]] == [200] * (
        len(recorded) - 1 - limited[-1]
    )
    assert recorded[-1].endpoint == "/global"
    assert len(limited) <= 2  # it settles: later windows provoke nothing


def test_a_pacing_wait_past_the_deadline_fails_without_sleeping(server, sleeps):
    clock = [T0]
    lim = SlidingWindowLimiter(RateLimit(1, 60.0), clock=lambda: clock[0], sleep=sleeps)
    client = make_client(server, sleeps, limiter=lim, deadline=lambda: 40.0, deadline_reserve=5)
    client.markets_page("usd", 1, 250)
    assert client.pacing_delay() == pytest.approx(60.5)  # the window plus its 0.5 s margin
    with pytest.raises(SourceUnavailableError, match="not sent: the rate limit") as info:
        client.markets_page("usd", 2, 250)
    assert "(1 calls per 60s) asks to wait 60.5s but only 35.0s are left" in str(info.value)
    assert sleeps == [] and client.api_calls == 1 and len(server.requests) == 1


def test_pacing_waits_do_not_count_against_the_retry_budget(server):
    clock = [T0]
    sleeps = Sleeps(clock)
    lim = SlidingWindowLimiter(RateLimit(1, 30.0), clock=lambda: clock[0], sleep=sleeps)
    client = make_client(server, sleeps, limiter=lim, max_retry_wait=5.0)
    for page in (1, 2, 3):
        client.markets_page("usd", page, 250)
    assert client.pacing_waits == 2 and client.pacing_wait_seconds == pytest.approx(61.0)
    assert client.waited_seconds == 0.0


def test_a_200_carrying_error_code_429_counts_as_rate_limited(server, sleeps):
    body = {"status": {"error_code": 429, "error_message": "You've exceeded the Rate Limit"}}
    server.script(MARKETS, Scripted(status=200, body=body, headers={"Retry-After": "4"}), page=1)
    lim = SlidingWindowLimiter(RateLimit(10, 10.0), sleep=sleeps)
    client = make_client(server, sleeps, limiter=lim)
    client.markets_page("usd", 1, 250)
    assert client.rate_limited == 1 and lim.level == 1


def test_from_config_builds_the_plan_limiter_or_takes_the_one_given():
    given = SlidingWindowLimiter(RateLimit(7, 7.0))
    local = ExtractConfig.from_env({"COINGECKO_BASE_URL": "http://127.0.0.1:9/api/v3"})
    with (
        CoinGeckoClient.from_config(ExtractConfig.from_env({})) as public,
        CoinGeckoClient.from_config(local) as unpaced,
        CoinGeckoClient.from_config(ExtractConfig(), limiter=given) as restored,
        CoinGeckoClient.from_config(ExtractConfig.from_env({}), limiter=None) as off,
    ):
        assert public.limiter is not None and public.limiter.limit == PLAN_RATE_LIMITS["public"]
        assert unpaced.limiter is None and unpaced.pacing_delay() == 0.0
        assert restored.limiter is given
        assert off.limiter is None


def test_a_restored_limiter_continues_the_previous_invocations_window():
    clock, sleeps, srv = fake_clock_server()
    with srv:
        srv.rate_limit(3, window_seconds=1, mode="fixed")
        first = paced_client(srv, clock, sleeps, "3/1")
        for page in (1, 2, 3):
            first.markets_page("usd", page, 250)
        assert first.limiter is not None
        state = json.loads(json.dumps(first.limiter.state()))
        lim = SlidingWindowLimiter(
            RateLimit(3, 1.0), clock=lambda: clock[0], sleep=sleeps, state=state
        )
        second = paced_client(srv, clock, sleeps, "3/1", limiter=lim)
        assert second.pacing_delay() == pytest.approx(1.02)
        for page in (4, 5):
            second.markets_page("usd", page, 250)
    assert srv.rate_limited == 0 and second.pacing_waits == 1
