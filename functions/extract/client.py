"""The CoinGecko API v3 client: a ``requests.Session`` with retries, a wait budget and counters.

Retried (each counts as a retry against the limits below):

* HTTP 429, waiting ``Retry-After`` seconds or until its HTTP-date when the header is usable
  (:func:`parse_retry_after`: a negative or unparseable value is ignored, 0 or a past date waits
  :data:`MIN_RETRY_WAIT`), else exponential backoff;
* HTTP 408 and any 5xx;
* a 2xx whose body is not JSON (cut off mid-way, or a proxy's HTML page): transient, like a 5xx;
* a response that takes more than ``timeout`` seconds in all (a body trickling in: the read
  timeout alone bounds each read, not the whole body);
* a 2xx whose body is a CoinGecko error object (``{"status": {"error_code": 429, ...}}``) with a
  retryable ``error_code`` (408, 429, 5xx): CoinGecko sometimes answers a rate limit with 200,
  so it is retried exactly as that status would be (``Retry-After`` included);
* transport failures: connect/read timeouts, refused or reset connections, a body cut off
  mid-way (``ChunkedEncodingError``, urllib3 ``ProtocolError``), a body that fails to decode
  (``ContentDecodingError``: e.g. ``Content-Encoding: gzip`` over bytes that are not gzip), a
  TLS connection closed without ``close_notify`` (``SSLEOFError``, "UNEXPECTED_EOF_WHILE_READING",
  "EOF occurred in violation of protocol"), and a urllib3 ``RetryError`` from a mounted adapter.
  A host name that does not resolve (urllib3 ``NameResolutionError``, ``socket.gaierror``) is
  retried once only, after at most :data:`DNS_RETRY_WAIT` seconds: a resolver hiccup clears at
  once, while a wrong or unreachable host would otherwise burn the whole backoff (~55 s).

Backoff is exponential with jitter: ``base * 2**(n-1)`` seconds for retry n, capped at
:data:`MAX_SINGLE_WAIT`, drawn uniformly from the upper half of that step ("equal jitter", so
concurrent clients spread out but never retry instantly). Two limits apply, whichever comes
first: ``max_retries`` per request, and ``max_retry_wait`` seconds of sleeping in total for the
client's lifetime (one Lambda invocation). When the next wait would not fit in what is left of
the budget (or of the optional ``deadline``), the client stops at once, without sleeping, and
raises :class:`SourceUnavailableError` naming the URL, the last status or cause and the attempts.

Not retried, raised at once as :class:`SourceError` naming the URL: any other 4xx (and 3xx:
redirects are not followed, so the key header never leaves the configured host) with the API's
own message; a 2xx carrying any other error object; other TLS errors (a certificate will not
heal); and every other ``requests``/urllib3 failure (invalid URL, missing CA bundle, too many
redirects...). No ``requests`` or urllib3 exception leaves :meth:`CoinGeckoClient.get` untyped.

Why an explicit loop rather than urllib3's ``Retry`` on an ``HTTPAdapter``: ``Retry`` covers
status/connect/read retries, ``Retry-After`` and jittered backoff, but a total wait budget needs
a subclass overriding ``increment`` *and* ``sleep``; its exhaustion surfaces as
``requests.ConnectionError``/``RetryError`` wrapping ``MaxRetryError`` where the last response
(status, CoinGecko's message) is lost; sleeps cannot be injected without patching; and counting
the requests actually sent means reading ``Retry.history`` off a response that a failure never
returns. The loop below is shorter than that subclass and keeps every decision in one place.

Pacing (optional ``limiter``, a :class:`~functions.extract.pacing.SlidingWindowLimiter`): every
attempt (markets pages, ``/global``, each retry) waits for the limiter before it is sent, so the
client never sends more than the configured N calls in any W seconds. Pacing waits are planned,
not retries: they do not count against ``max_retry_wait``, but one that would run past the
``deadline`` (less ``deadline_reserve``) raises :class:`SourceUnavailableError` without sleeping
(the handler checks :meth:`CoinGeckoClient.pacing_delay` before each page; this is a last
resort). Every 429 received (HTTP 429, or a 2xx carrying ``error_code`` 429) is counted in
``rate_limited`` and reported to the limiter, which turns more conservative for the rest of the
run; its ``Retry-After`` is still waited by the retry loop.

The raw body of every successful response is kept as bytes (``ApiResponse.body``) so the
extract stores it exactly as received.
"""

from __future__ import annotations

import builtins
import http.client
import json
import logging
import random
import socket
import ssl
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import urlencode, urlsplit

import requests
import urllib3.exceptions

from functions.common.errors import SourceError, SourceUnavailableError
from functions.extract.api_errors import error_from_bytes, parse_error_body, snippet
from functions.extract.config import ExtractConfig
from functions.extract.history import market_chart_path, market_chart_query
from functions.extract.pacing import SlidingWindowLimiter
from functions.extract.paging import MARKETS_PATH, markets_query

MAX_SINGLE_WAIT = 60.0
# The shortest wait a usable Retry-After can ask for: "Retry-After: 0" or a date already past
# would otherwise fire every retry within milliseconds and burn the retry budget at once.
MIN_RETRY_WAIT = 1.0
USER_AGENT = "crypto-etl/0.1 (+requests)"
# A name-resolution failure is retried this many times, after at most DNS_RETRY_WAIT seconds.
DNS_MAX_RETRIES = 1
DNS_RETRY_WAIT = 1.0
# Bytes asked of the socket per read while a body arrives (read1 returns what is there).
BODY_READ_SIZE = 65536

# Transient transport failures: connect/read timeouts, refused or reset connections, a body cut
# off mid-way or failing to decode. (requests.Timeout covers ConnectTimeout and ReadTimeout;
# the urllib3, http.client and builtin ones only escape requests unwrapped on odd paths.)
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    requests.Timeout,
    requests.ConnectionError,
    requests.exceptions.ChunkedEncodingError,
    requests.exceptions.ContentDecodingError,
    requests.exceptions.RetryError,
    urllib3.exceptions.ProtocolError,
    urllib3.exceptions.DecodeError,
    urllib3.exceptions.TimeoutError,
    urllib3.exceptions.NewConnectionError,
    http.client.HTTPException,
    builtins.ConnectionError,
    builtins.TimeoutError,
)
# TLS failures: transient only when the peer closed the connection mid-handshake or mid-body.
TLS_ERRORS: tuple[type[BaseException], ...] = (
    requests.exceptions.SSLError,
    urllib3.exceptions.SSLError,
    ssl.SSLError,
)
_TLS_EOF_MARKERS = ("UNEXPECTED_EOF_WHILE_READING", "EOF occurred in violation of protocol")
# Whatever else requests or urllib3 may raise (InvalidURL, TooManyRedirects, InvalidJSONError,
# a missing CA bundle's OSError...): a setup or protocol problem that retrying will not fix.
OTHER_REQUEST_ERRORS: tuple[type[BaseException], ...] = (
    requests.RequestException,
    urllib3.exceptions.HTTPError,
    OSError,
)


def is_retryable_status(status: int) -> bool:
    """408, 429 and every 5xx are worth retrying; nothing else is."""
    return status in (408, 429) or 500 <= status <= 599


def _causes(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and every exception requests and urllib3 wrap around it (``args[0]``,
    ``.reason``, ``__cause__``, ``__context__``), each once."""
    seen: set[int] = set()
    todo: list[BaseException] = [exc]
    while todo:
        inner = todo.pop()
        if id(inner) in seen:
            continue
        seen.add(id(inner))
        yield inner
        for nested in (
            getattr(inner, "reason", None),
            inner.args[0] if inner.args else None,
            inner.__cause__,
            inner.__context__,
        ):
            if isinstance(nested, BaseException):
                todo.append(nested)


def is_tls_eof(exc: BaseException) -> bool:
    """True when a TLS error is the peer closing the connection early (transient): among its
    causes, ``ssl.SSLEOFError`` or OpenSSL's texts for it."""
    return any(
        isinstance(inner, ssl.SSLEOFError)
        or any(marker in str(inner) for marker in _TLS_EOF_MARKERS)
        for inner in _causes(exc)
    )


def is_name_resolution_error(exc: BaseException) -> bool:
    """True when a connection failed because the host name did not resolve (DNS): among its
    causes, urllib3's ``NameResolutionError`` or ``socket.gaierror``."""
    return any(
        isinstance(inner, urllib3.exceptions.NameResolutionError | socket.gaierror)
        for inner in _causes(exc)
    )


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Seconds to wait per a ``Retry-After`` header (delay-seconds or HTTP-date), or None.

    ``now`` is the current Unix time (for the HTTP-date form). None (the caller then backs off
    exponentially) for an absent, unparseable, infinite/NaN or negative value; a usable value
    is at least :data:`MIN_RETRY_WAIT` (so 0 or a date in the past gives that floor).
    Source: RFC 9110 section 10.2.3 (``Retry-After = HTTP-date / delay-seconds``).
    """
    if value is None or not value.strip():
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = max(0.0, when.timestamp() - now)  # a past date: the server says "now"
    if seconds != seconds or seconds in (float("inf"), float("-inf")) or seconds < 0:
        return None
    return max(MIN_RETRY_WAIT, seconds)


@dataclass(frozen=True)
class ApiResponse:
    """A successful (2xx) response: the body exactly as received plus its parsed JSON.

    ``data`` is set by :meth:`CoinGeckoClient.get_json`; :meth:`CoinGeckoClient.get` sets it
    only when it had to parse the body (a JSON object, checked for an error object), else None.
    """

    url: str
    status: int
    body: bytes = field(repr=False)
    headers: Mapping[str, str] = field(repr=False)  # case-insensitive
    attempts: int
    data: Any = field(default=None, repr=False)


class CoinGeckoClient:
    """GET requests to the CoinGecko API v3 with retries and optional pacing.

    Counters: ``api_calls`` (requests sent), ``retries``, ``waited_seconds`` (retry waits),
    ``rate_limited`` (429s received), ``pacing_waits`` and ``pacing_wait_seconds`` (requests
    that waited for the ``limiter``, and the seconds they waited).
    ``sleep``, ``wall_clock`` (Unix time, for HTTP-date ``Retry-After``) and ``rng`` are
    injectable for tests. ``deadline`` returns the seconds left
    to the caller (e.g. the Lambda's remaining time); no retry or pacing wait may eat into the
    last ``deadline_reserve`` seconds of it. ``limiter`` paces every attempt (None: no pacing).
    """

    def __init__(
        self,
        base_url: str,
        *,
        headers: Mapping[str, str] | None = None,
        timeout: float = 30.0,
        max_retries: int = 6,
        max_retry_wait: float = 120.0,
        backoff_base: float = 1.0,
        session: requests.Session | None = None,
        sleep: Callable[[float], None] = time.sleep,
        wall_clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
        deadline: Callable[[], float] | None = None,
        deadline_reserve: float = 0.0,
        logger: Any = None,
        limiter: SlidingWindowLimiter | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.max_retries = max_retries
        self.max_retry_wait = max_retry_wait
        self.backoff_base = backoff_base
        self._session = session or requests.Session()
        self._session.headers.update(
            {"Accept": "application/json", "User-Agent": USER_AGENT, **(headers or {})}
        )
        self._sleep = sleep
        self._wall_clock = wall_clock
        self._rng = rng or random.Random()
        self._deadline = deadline
        self._deadline_reserve = deadline_reserve
        self._log = logger or logging.getLogger(__name__)
        self.limiter = limiter
        self.api_calls = 0
        self.retries = 0
        self.waited_seconds = 0.0
        self.rate_limited = 0
        self.pacing_waits = 0
        self.pacing_wait_seconds = 0.0

    @classmethod
    def from_config(cls, config: ExtractConfig, **kwargs: Any) -> CoinGeckoClient:
        """A client for ``config`` (base URL, plan's key header, timeouts, retry budget, pacing).

        Unless a ``limiter=`` keyword is given (e.g. one restored from the previous invocation's
        state; ``limiter=None`` turns pacing off), a limiter is built from ``config.rate_limit``
        with the client's ``wall_clock`` and ``sleep``.
        """
        if "limiter" not in kwargs and config.rate_limit is not None:
            kwargs["limiter"] = SlidingWindowLimiter(
                config.rate_limit,
                clock=kwargs.get("wall_clock", time.time),
                sleep=kwargs.get("sleep", time.sleep),
            )
        return cls(
            config.base_url,
            headers=config.auth_headers,
            timeout=config.timeout_seconds,
            max_retries=config.max_retries,
            max_retry_wait=config.max_retry_wait_seconds,
            backoff_base=config.backoff_base_seconds,
            **kwargs,
        )

    def __enter__(self) -> CoinGeckoClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._session.close()

    def pacing_delay(self) -> float:
        """Seconds the next request would wait for the limiter before it is sent (0 without)."""
        return self.limiter.delay() if self.limiter is not None else 0.0

    # -- endpoints ---------------------------------------------------------------------------

    def markets_page(self, vs_currency: str, page: int, per_page: int) -> ApiResponse:
        """One page of ``/coins/markets`` by market cap; ``data`` is the list of coins."""
        return self.get_json(MARKETS_PATH, markets_query(vs_currency, page, per_page), expect=list)

    def global_data(self) -> ApiResponse:
        """``/global``; ``data`` is the parsed body, whose ``data`` member is an object."""
        resp = self.get_json("/global", expect=dict)
        if not isinstance(resp.data.get("data"), dict):
            raise SourceError(
                f"CoinGecko GET {resp.url} returned HTTP {resp.status} without a 'data' object: "
                f"{snippet(resp.body)!r}",
                url=resp.url,
                status=resp.status,
            )
        return resp

    def market_chart(self, coin_id: str, vs_currency: str, days: int | str) -> ApiResponse:
        """``/coins/{id}/market_chart?vs_currency=..&days=D&interval=daily``; ``data`` is the
        parsed object (``prices``, ``market_caps``, ``total_volumes``: ``[ms, value]`` pairs).
        An unknown id is HTTP 404 (SourceError, not retried)."""
        return self.get_json(
            market_chart_path(coin_id), market_chart_query(vs_currency, days), expect=dict
        )

    def ping(self) -> ApiResponse:
        """``/ping`` (``{"gecko_says": ...}``)."""
        return self.get_json("/ping", expect=dict)

    # -- plumbing ----------------------------------------------------------------------------

    def url(self, path: str, params: Mapping[str, str] | None = None) -> str:
        """The full URL of ``path`` (relative to the base URL) with ``params``."""
        query = f"?{urlencode(params)}" if params else ""
        return f"{self.base_url}/{path.lstrip('/')}{query}"

    def get_json(
        self,
        path: str,
        params: Mapping[str, str] | None = None,
        *,
        expect: type = object,
    ) -> ApiResponse:
        """:meth:`get`, then parse the body as JSON of type ``expect`` (else SourceError)."""
        resp = self.get(path, params)
        try:
            data = resp.data if resp.data is not None else json.loads(resp.body)
        except (ValueError, UnicodeDecodeError) as exc:
            raise SourceError(
                f"CoinGecko GET {resp.url} returned HTTP {resp.status} but the body is not JSON "
                f"({exc}): {snippet(resp.body)!r}",
                url=resp.url,
                status=resp.status,
            ) from exc
        if not isinstance(data, expect):
            error = parse_error_body(data)
            what = f"an error object ({error.message})" if error else f"a {type(data).__name__}"
            raise SourceError(
                f"CoinGecko GET {resp.url} returned HTTP {resp.status} with {what} where a JSON "
                f"{expect.__name__} was expected: {snippet(resp.body)!r}",
                url=resp.url,
                status=resp.status,
                api_message=error.message if error else "",
            )
        return ApiResponse(resp.url, resp.status, resp.body, resp.headers, resp.attempts, data)

    def get(self, path: str, params: Mapping[str, str] | None = None) -> ApiResponse:
        """GET ``path``; return the first 2xx response, retrying transient failures.

        Raises SourceUnavailableError when the retries or their budget run out and SourceError
        for a failure not worth retrying (see the module docstring for which is which).
        """
        url = self.url(path, params)
        attempts = 0
        dns_failures = 0
        while True:
            attempts += 1
            self._pace(url)
            self.api_calls += 1
            status: int | None = None
            retry_after: float | None = None
            api_message = ""
            dns_failed = False
            try:
                started = time.monotonic()
                resp = self._session.get(
                    url, timeout=self.timeout, allow_redirects=False, stream=True
                )
                body = self._read_body(resp, started)
            except TLS_ERRORS as exc:
                if not is_tls_eof(exc):  # a certificate problem will not heal
                    raise SourceError(
                        f"CoinGecko GET {url} failed: TLS error {_short(exc)}", url=url
                    ) from exc
                problem = f"TLS connection closed early: {_network_problem(exc)}"
            except TRANSIENT_ERRORS as exc:
                problem = _network_problem(exc)
                dns_failed = is_name_resolution_error(exc)
            except OTHER_REQUEST_ERRORS as exc:
                raise SourceError(
                    f"CoinGecko GET {url} failed (not retried): {type(exc).__name__}: "
                    f"{_short(exc)}",
                    url=url,
                ) from exc
            else:
                status = resp.status_code
                if 200 <= status <= 299:
                    try:
                        parsed = json.loads(body)
                    except (ValueError, UnicodeDecodeError) as exc:
                        # A cut-off body or a proxy's HTML page: transient, like a 5xx.
                        problem = f"HTTP {status} with a body that is not JSON ({_short(exc)}): "
                        problem += repr(snippet(body))
                    else:
                        error = parse_error_body(parsed)
                        if error is None:
                            return ApiResponse(url, status, body, resp.headers, attempts, parsed)
                        if error.code is None or not is_retryable_status(error.code):
                            code = f"error_code {error.code}: " if error.code is not None else ""
                            raise SourceError(
                                f"CoinGecko GET {url} returned HTTP {status} with an error "
                                f"object instead of data (not retried): {code}{error.message}: "
                                f"{snippet(body)!r}",
                                url=url,
                                status=status,
                                api_message=error.message,
                            )
                        # Retried as the status it names; the error's status is that code.
                        problem = f"HTTP {status} with error_code {error.code}: {error.message}"
                        status = error.code
                        api_message = error.message
                else:
                    error = error_from_bytes(body)
                    message = error.message if error else snippet(body)
                    if not is_retryable_status(status):
                        if 300 <= status <= 399 and resp.headers.get("Location"):
                            # Not followed (the key header must not travel), but say where to.
                            target = urlsplit(resp.headers["Location"])
                            message = f"{message or resp.reason} -> {target.scheme}://"
                            message += f"{target.netloc}{target.path}"
                        raise SourceError(
                            f"CoinGecko GET {url} failed with HTTP {status} (not retried): "
                            f"{message or resp.reason}",
                            url=url,
                            status=status,
                            api_message=error.message if error else "",
                        )
                    problem = f"HTTP {status}: {message or resp.reason}"
                    api_message = error.message if error else ""
                if status == 429:
                    retry_after = parse_retry_after(
                        resp.headers.get("Retry-After"), self._wall_clock()
                    )
                    self.rate_limited += 1
                    if self.limiter is not None:
                        self.limiter.on_rate_limited(retry_after)
            dns_failures += dns_failed
            wait = self._next_wait(
                attempts,
                retry_after,
                url,
                status,
                problem,
                api_message,
                dns_failures=dns_failures if dns_failed else 0,
            )
            self._log.warning(
                "CoinGecko request failed, retrying",
                extra={
                    "url": url,
                    "problem": problem,
                    "attempt": attempts,
                    "wait_seconds": round(wait, 3),
                    "retry_after": retry_after,
                },
            )
            self.retries += 1
            self.waited_seconds += wait
            if wait > 0:
                self._sleep(wait)

    def _pace(self, url: str) -> None:
        """Wait for the limiter (if any) before sending; SourceUnavailableError when that wait
        would run past the deadline (less its reserve)."""
        if self.limiter is None:
            return
        wait = self.limiter.delay()
        limit = self.limiter.limit
        if wait > 0 and self._deadline is not None:
            left = self._deadline() - self._deadline_reserve
            if wait > left:
                raise SourceUnavailableError(
                    f"CoinGecko GET {url} not sent: the rate limit ({limit.calls} calls per"
                    f" {limit.window_seconds:g}s) asks to wait {wait:.1f}s but only"
                    f" {max(left, 0):.1f}s are left before the deadline",
                    url=url,
                )
        slept = self.limiter.acquire()
        if slept > 0:
            self.pacing_waits += 1
            self.pacing_wait_seconds += slept
            self._log.debug("paced", extra={"url": url, "wait_seconds": round(slept, 3)})

    def _read_body(self, resp: requests.Response, started: float) -> bytes:
        """The whole body (decoded), or ``requests.Timeout`` when the response takes more than
        ``timeout`` seconds in all: the read timeout bounds each read, so a body trickling in
        a byte at a time would otherwise hold the extract until its Lambda deadline."""
        raw = resp.raw
        if not hasattr(raw, "read1"):  # not urllib3 (a test adapter): no trickle to bound
            return resp.content
        parts: list[bytes] = []
        try:
            while chunk := raw.read1(BODY_READ_SIZE, decode_content=True):
                parts.append(chunk)
                if time.monotonic() - started > self.timeout:
                    raise requests.Timeout(
                        f"the response took more than {self.timeout:g}s in all"
                        f" ({sum(map(len, parts))} bytes so far)"
                    )
        finally:
            resp.close()
        return b"".join(parts)

    def backoff(self, retry: int) -> float:
        """The jittered exponential wait before retry number ``retry`` (1-based)."""
        step = min(MAX_SINGLE_WAIT, self.backoff_base * 2 ** (retry - 1))
        return step / 2 + self._rng.uniform(0, step / 2)

    def _next_wait(
        self,
        attempts: int,
        retry_after: float | None,
        url: str,
        status: int | None,
        problem: str,
        api_message: str,
        *,
        dns_failures: int = 0,
    ) -> float:
        """How long to sleep before the next attempt, or raise SourceUnavailableError.

        ``dns_failures`` is 0 unless the last attempt failed to resolve the host name; then it
        counts this request's name-resolution failures so far: past :data:`DNS_MAX_RETRIES` the
        client gives up, and the wait is at most :data:`DNS_RETRY_WAIT`.
        """
        last = f"last {problem}"

        def give_up(reason: str) -> SourceUnavailableError:
            return SourceUnavailableError(
                f"CoinGecko GET {url} still failing after {attempts} attempt"
                f"{'s' if attempts != 1 else ''} ({last}); gave up: {reason}",
                url=url,
                status=status,
                api_message=api_message,
            )

        if attempts > self.max_retries:
            raise give_up(f"max retries ({self.max_retries}) reached")
        wait = retry_after if retry_after is not None else self.backoff(attempts)
        if dns_failures > DNS_MAX_RETRIES:
            raise give_up(
                f"the host name did not resolve {dns_failures} times (DNS failures are retried"
                f" {DNS_MAX_RETRIES} time{'s' if DNS_MAX_RETRIES != 1 else ''}; check the host"
                " in COINGECKO_BASE_URL and the network)"
            )
        if dns_failures and retry_after is None:
            wait = min(wait, DNS_RETRY_WAIT)
        remaining = self.max_retry_wait - self.waited_seconds
        if wait > remaining:
            source = "Retry-After asks for" if retry_after is not None else "the next backoff is"
            raise give_up(
                f"{source} {wait:.1f}s but only {max(remaining, 0):.1f}s of the "
                f"{self.max_retry_wait:g}s retry-wait budget are left"
            )
        if self._deadline is not None:
            left = self._deadline() - self._deadline_reserve
            if wait > left:
                raise give_up(f"waiting {wait:.1f}s would run past the deadline ({left:.1f}s left)")
        return wait


def _network_problem(exc: BaseException) -> str:
    """The innermost cause of a connection failure (e.g. NameResolutionError), not the URL."""
    inner: BaseException = exc
    for _ in range(5):  # requests -> urllib3 MaxRetryError -> .reason -> the real cause
        nested = getattr(inner, "reason", None)
        if not isinstance(nested, BaseException) and inner.args:
            nested = inner.args[0]
        if not isinstance(nested, BaseException):
            break
        inner = nested
    return f"{type(inner).__name__}: {_short_text(str(inner))}"


def _short_text(text: str, limit: int = 200) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _short(exc: BaseException, limit: int = 200) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"
