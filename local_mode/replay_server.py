"""A local stand-in for the CoinGecko API v3 on 127.0.0.1, with scripted faults and rate limits.

``ReplayServer`` is a ``ThreadingHTTPServer`` on a free port (or the one given), served from a
daemon thread; use it as a context manager (it stops itself) and point the extract at
``server.base_url`` (``http://127.0.0.1:<port>/api/v3``). Endpoints:

``GET /api/v3/coins/markets``
    CoinGecko's paging: ``vs_currency`` is required (else HTTP 422
    ``{"error": "Missing parameter vs_currency"}``, CoinGecko's recorded answer); ``per_page``
    (default 100, clamped to 1..250) and ``page`` (default 1) select coins
    ``[(page-1)*per_page, page*per_page)``; pages past the end are ``[]``. ``order`` is always
    market cap descending; ``ids`` (comma-separated) filters the synthetic market.
``GET /api/v3/coins/{id}/market_chart``
    a coin's history: ``vs_currency`` is required (else 422, as recorded), ``days`` an integer
    >= 1 or ``max`` (else 400 ``{"error": "invalid days"}``; CoinGecko's default is 1), any
    ``interval`` is answered with the daily series. An unknown id is HTTP 404 ``{"error": "coin
    not found"}`` (CoinGecko's answer). As CoinGecko's public and demo plans, a request without
    a pro key (header ``x-cg-pro-api-key``) for more than the past 365 days (or ``max``) is HTTP
    401 with CoinGecko's ``error_code`` 10012 body (:data:`HISTORY_RANGE_BODY`);
    ``ReplayServer(history_limit_days=None)`` lifts that.
``GET /api/v3/global``, ``GET /api/v3/ping``
    as CoinGecko; anything else is 404 ``{"error": "Incorrect path..."}``.

Two sources:

* **synthetic** (:meth:`ReplayServer.synthetic`): :mod:`local_mode.synthetic`'s deterministic
  market of ``coins`` coins (quoted in any currency of ``synthetic.FX_RATES``; another
  ``vs_currency`` is HTTP 400 ``{"error": "invalid vs_currency"}``) and its ``/global``;
  ``market_chart`` serves :func:`local_mode.synthetic.generate_market_chart`'s deterministic
  daily history of any coin of the market (with ``as_of``, of its whole drifting universe),
  ending at ``as_of`` (or the current time when the source has none) with the coin's current
  price, market cap and volume.
* **recorded directory** (:meth:`ReplayServer.from_directory`): ``DIR/markets-page-0001.json``,
  ``-0002``, … are served byte for byte at their page number whatever ``per_page`` asks; a page
  number with no file (past the last one, or a gap) is ``[]``. Every file is read when the source is
  built: one that cannot be read is a ValidationError, never a silent gap. A file holding a
  CoinGecko error object is served with the status it names: ``{"status": {"error_code": C, ...}}``
  with C the HTTP status when C is 400-599 (429, 500, 403...), CoinGecko's own codes mapped (10002,
  10010, 10011 -> 401; 10005, 1020 -> 403), anything else 400; ``{"error": "..."}`` -> 422 for
  "Missing parameter ...", 404 for "... not found", else 400 (see
  ``functions.extract.api_errors.ApiErrorBody.http_status``). Any other content (even broken JSON or
  HTML, to test such bodies) is served with 200. ``DIR/global.json`` is served as recorded (an error
  object with its status, as above). **Without** ``global.json`` the server answers ``/global`` with
  a minimal, honest body: the right shape with *empty*
  ``total_market_cap``/``total_volume``/``market_cap_percentage`` and the header
  ``X-Replay-Synthesized: global``. It does not invent totals from the pages (that would make the
  fetched coins look like 100% of the market); the transform then falls back to the fetched sums and
  flags ``DOMINANCE_BASIS = 'fetched'``.
  ``DIR/market_chart_<coin id>.json`` is served byte for byte as ``/coins/<coin id>/market_chart``
  whatever the query (``days``, ``vs_currency``: the recording is what it is); an error object
  with its status, as above; a coin without a file is 404 ``{"error": "coin not found"}``. The
  coin id is the whole rest of the name (``market_chart_usd-coin.json`` -> ``usd-coin``). The
  project's shared recordings of ``market_chart`` are all bitcoin: copy one to
  ``DIR/market_chart_bitcoin.json`` to serve it.

Fault injection for tests (checked in this order for every request):

0. scripted responses (1. below) come first; then the faults of :meth:`ReplayServer.inject`
   (:mod:`local_mode.faults`: a SPEC string such as ``"markets:page=2:503x3"`` or ``Fault``
   objects, counted once/N/always per endpoint or page): an error fault (429, 5xx, HTML, an
   error object, a reset) answers instead of the source; a delivery fault (slow, trickle,
   truncated, gzip-corrupt, reset mid-body) and the data-shape faults (empty page, rank shift,
   extra/missing field, numbers as strings) work on the source's real answer, after the rate
   limit let it through. Each recorded request names the faults that shaped it
   (``RecordedRequest.fault``); :meth:`ReplayServer.faults_fired` counts them.

1. scripted responses: :meth:`ReplayServer.script` queues :class:`Scripted` responses for an
   endpoint (optionally one page of ``/coins/markets``); each request pops the first matching
   one (page-specific queue first, then the endpoint's). A ``Scripted`` may set a status,
   headers (``Retry-After``, ``Content-Encoding``...), a body, a ``delay`` before answering
   (with no status it then serves the normal response slowly) or ``close`` (drop the
   connection without answering). Its ``Content-Type``/``Content-Length`` headers replace the
   server's; a scripted ``Content-Length`` also closes the connection after the body, so one
   larger than the body is a body cut off mid-way.
2. rate limit: :meth:`ReplayServer.rate_limit` (N requests per W seconds) answers 429 with
   ``Retry-After`` (whole seconds, at least 1) and CoinGecko's body. Two ways of counting:
   ``mode="sliding"`` (default): at most N in any W seconds, ``Retry-After`` until a slot
   frees; ``mode="fixed"``, as most API gateways count: a window opens at the first request
   (after the previous one ended), admits N requests, and ``Retry-After`` runs until it ends.
   Only requests answered by the source count against the window (not the 429s, not the
   scripted replies), so waiting ``Retry-After`` always gets a request through. The 429s the
   limit sent are counted (:attr:`ReplayServer.rate_limited`) and marked on the recorded
   requests (``RecordedRequest.rate_limited``): "429s provoked".
3. the source.

Every request is recorded (:attr:`ReplayServer.requests`: path, query, headers, page, status,
whether the source answered it); :meth:`ReplayServer.unserved_pages` lists the recorded pages
no request was answered with (after a run: the pages that never reached the pipeline).
An exception while answering (a bug, an odd recording) is answered with HTTP 500 and
``{"error": "replay server: <exception>"}`` instead of dropping the connection.

Run it by hand: ``python -m local_mode.replay_server --coins 1000`` or
``python -m local_mode.replay_server --replay DIR [--port 8080] [--rate-limit 30/60]
[--rate-limit-mode fixed] [--faults SPEC]``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import re
import socket
import struct
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, NoReturn
from urllib.parse import parse_qsl, unquote, urlsplit

from functions.common.errors import ValidationError
from functions.extract.api_errors import error_from_bytes
from local_mode import faults as fault_spec
from local_mode import synthetic

API_PREFIX = "/api/v3"
MAX_PER_PAGE = 250
DEFAULT_PER_PAGE = 100
PAGE_FILE_RE = re.compile(r"^markets-page-(\d+)\.json$")
CHART_FILE_RE = re.compile(r"^market_chart_([a-z0-9][a-z0-9._-]{0,127})\.json$")
CHART_PATH_RE = re.compile(r"^/coins/([^/]+)/market_chart$")
COIN_NOT_FOUND_BODY = {"error": "coin not found"}
# The public and demo plans' history limit and CoinGecko's answer beyond it (HTTP 401; quoted in
# github.com/SixPM-Software/waxtax/pull/8; docs.coingecko.com .../coins-id-market-chart).
HISTORY_LIMIT_DAYS = 365
PRO_KEY_HEADER = "x-cg-pro-api-key"
HISTORY_RANGE_BODY = {
    "error": {
        "status": {
            "timestamp": "2024-04-20T22:00:05.123+00:00",
            "error_code": 10012,
            "error_message": "Your request exceeds the allowed time range. Public API users are "
            "limited to querying historical data within the past 365 days. Upgrade to a paid "
            "plan to enjoy full historical data access: https://www.coingecko.com/en/api/pricing. ",
        }
    }
}
RATE_LIMIT_BODY = {
    "status": {
        "error_code": 429,
        "error_message": "You've exceeded the Rate Limit. Please visit "
        "https://www.coingecko.com/en/api/pricing to subscribe to our API plans for higher "
        "rate limits.",
    }
}
NOT_FOUND_BODY = {"error": "Incorrect path. Please check https://www.coingecko.com/api/"}
PING_BODY = {"gecko_says": "(V3) To the Moon!"}


def _json_bytes(obj: Any) -> bytes:
    """Compact JSON, as CoinGecko sends it."""
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


@dataclass(frozen=True)
class Reply:
    """What the server sends: status, body bytes, extra headers and how (an injected fault's
    delay, trickle or reset; see :mod:`local_mode.faults`)."""

    status: int
    body: bytes
    headers: Mapping[str, str] = field(default_factory=dict)
    delivery: fault_spec.Delivery | None = None


@dataclass(frozen=True)
class Scripted:
    """A scripted response (see the module docstring). ``body`` bytes/str go out as they are;
    any other object is sent as compact JSON."""

    status: int | None = None
    body: Any = None
    headers: Mapping[str, str] = field(default_factory=dict)
    delay: float = 0.0
    close: bool = False

    @classmethod
    def error(
        cls,
        status: int,
        message: str | None = None,
        *,
        retry_after: str | float | None = None,
        style: str = "status",
    ) -> Scripted:
        """An error in CoinGecko's shape: ``{"status": {...}}`` (``style="status"``) or
        ``{"error": ...}`` (``style="error"``), optionally with a ``Retry-After`` header."""
        message = message or f"HTTP {status}"
        body: dict[str, Any] = (
            {"error": message}
            if style == "error"
            else {"status": {"error_code": status, "error_message": message}}
        )
        headers = {} if retry_after is None else {"Retry-After": str(retry_after)}
        return cls(status=status, body=body, headers=headers)

    @classmethod
    def slow(cls, seconds: float) -> Scripted:
        """The normal response, after ``seconds``."""
        return cls(delay=seconds)

    @classmethod
    def drop(cls) -> Scripted:
        """Close the connection without answering."""
        return cls(close=True)


@dataclass(frozen=True)
class RecordedRequest:
    """One request as the server saw it (``status`` None: the connection was dropped)."""

    method: str
    path: str
    endpoint: str  # path below /api/v3, e.g. "/coins/markets"
    query: dict[str, str]
    headers: dict[str, str]  # lower-case names
    page: int | None
    status: int | None
    from_source: bool = False  # answered by the source (not a script, a 429 or a 500 of ours)
    rate_limited: bool = False  # a 429 sent by the rate limit (not a scripted one)
    fault: str | None = None  # the injected faults that shaped the answer (specs, "+"-joined)


class MarketSource:
    """Where the market data comes from (subclassed by the synthetic and recorded sources)."""

    kind = "base"

    def markets(self, query: Mapping[str, str], page: int, per_page: int) -> Reply:
        raise NotImplementedError

    def global_data(self) -> Reply:
        raise NotImplementedError

    def market_chart(self, coin_id: str, vs_currency: str, days: int | str) -> Reply:
        """``/coins/{coin_id}/market_chart``; by default no coin has a history (404)."""
        return Reply(404, _json_bytes(COIN_NOT_FOUND_BODY))


class SyntheticSource(MarketSource):
    """The deterministic synthetic market (generated once per currency, on first use)."""

    kind = "synthetic"

    def __init__(
        self,
        coins: int = 1000,
        seed: int = synthetic.DEFAULT_SEED,
        as_of: datetime | None = None,
        chart_variants: tuple[tuple[int, datetime | None], ...] = (),
    ) -> None:
        """``as_of``: serve the market as it has drifted to that time (see
        :func:`local_mode.synthetic.drifted`); None serves the fixed market.
        ``chart_variants``: more ``(coins, as_of)`` synthetic markets whose coins also have a
        history (``crypto-etl backfill`` adds the one a lake snapshot was taken from, so its
        coins are found even when that market was drifted or of another size)."""
        self.as_of = as_of
        self.chart_variants = tuple(chart_variants)
        self.coins = coins
        self.seed = seed
        self._lock = threading.Lock()
        self._markets: dict[str, list[dict[str, Any]]] = {}
        self._charted: dict[str, dict[str, tuple[dict[str, Any], datetime | None]]] = {}
        self._global: bytes | None = None
        # Histories end at one instant per server, so every request agrees with the others.
        self._started = datetime.now(UTC)

    def market(self, vs_currency: str) -> list[dict[str, Any]]:
        """The whole market quoted in ``vs_currency`` (cached)."""
        with self._lock:
            if vs_currency not in self._markets:
                self._markets[vs_currency] = synthetic.generate_markets(
                    self.coins,
                    seed=self.seed,
                    vs_currency=vs_currency,
                    **({"as_of": self.as_of, "drift": True} if self.as_of else {}),
                )
            return self._markets[vs_currency]

    def markets(self, query: Mapping[str, str], page: int, per_page: int) -> Reply:
        vs = query["vs_currency"].strip().lower()
        if vs not in synthetic.FX_RATES:
            return Reply(400, _json_bytes({"error": "invalid vs_currency"}))
        coins = self.market(vs)
        ids = [i.strip() for i in query.get("ids", "").split(",") if i.strip()]
        if ids:
            wanted = set(ids)
            coins = [c for c in coins if c["id"] in wanted]
        start = (page - 1) * per_page
        return Reply(200, _json_bytes(coins[start : start + per_page]))

    def now(self) -> datetime:
        """The time histories end at: ``as_of``, else when this source was made."""
        return self.as_of or self._started

    def chart_coins(self, vs_currency: str) -> dict[str, dict[str, Any]]:
        """``{id: market row}`` of every coin with a history, quoted in ``vs_currency`` (this
        market's coins first, then those of ``chart_variants``)."""
        return {coin_id: row for coin_id, (row, _) in self._chart_rows(vs_currency).items()}

    def _chart_rows(self, vs_currency: str) -> dict[str, tuple[dict[str, Any], datetime | None]]:
        """``{id: (market row, the as_of its quotes belong to or None: the fixed market)}``."""
        with self._lock:
            if vs_currency not in self._charted:
                found: dict[str, tuple[dict[str, Any], datetime | None]] = {}
                for coins, as_of in ((self.coins, self.as_of), *self.chart_variants):
                    rows = synthetic.chart_universe(
                        coins,
                        seed=self.seed,
                        vs_currency=vs_currency,
                        **({"as_of": as_of, "drift": True} if as_of else {}),
                    )
                    for row in rows:
                        found.setdefault(row["id"], (row, as_of))
                self._charted[vs_currency] = found
            return self._charted[vs_currency]

    def market_chart(self, coin_id: str, vs_currency: str, days: int | str) -> Reply:
        vs = vs_currency.strip().lower()
        if vs not in synthetic.FX_RATES:
            return Reply(400, _json_bytes({"error": "invalid vs_currency"}))
        entry = self._chart_rows(vs).get(coin_id)
        if entry is None:
            return Reply(404, _json_bytes(COIN_NOT_FOUND_BODY))
        coin, quoted_at = entry
        # The fixed market (no as_of) is the market at DEFAULT_AS_OF: anchor its walk there, so
        # a past day's value does not depend on when the history is asked for and re-running a
        # backfill changes no past day (only today's partial point, as on CoinGecko).
        anchor = quoted_at or synthetic.DEFAULT_AS_OF
        chart = synthetic.generate_market_chart(
            coin, now=self.now(), days=days, seed=self.seed, walk_anchor=anchor
        )
        return Reply(200, _json_bytes(chart))

    def global_data(self) -> Reply:
        if self._global is None:
            self._global = _json_bytes(
                synthetic.generate_global(
                    self.market("usd"), seed=self.seed, as_of=self.as_of or synthetic.DEFAULT_AS_OF
                )
            )
        return Reply(200, self._global)


def _recorded_reply(body: bytes) -> Reply:
    """A recorded body: an error object goes out with the status it names, the rest with 200."""
    error = error_from_bytes(body)
    return Reply(error.http_status() if error else 200, body)


class DirectorySource(MarketSource):
    """Recorded bodies: ``markets-page-NNNN.json`` per page number, optional ``global.json``.

    Every body is read here, at construction: a missing directory, a page or ``global.json``
    entry that is not a readable regular file (a directory, a broken link, no permission), or
    two files for one page number (``markets-page-1.json`` beside ``-0001.json``) raise
    ValidationError naming ``field`` and the file, instead of being skipped silently.
    """

    kind = "recorded"

    def __init__(self, directory: str | Path, *, field: str = "replay directory") -> None:
        self.directory = Path(directory)
        if not self.directory.is_dir():
            what = "is not a directory" if self.directory.exists() else "does not exist"
            raise ValidationError(field, f"{self.directory} {what}")
        self.pages: dict[int, bytes] = {}
        self.charts: dict[str, bytes] = {}
        names: dict[int, str] = {}
        try:
            entries = sorted(self.directory.iterdir())
        except OSError as exc:
            raise ValidationError(field, f"cannot list {self.directory}: {exc.strerror}") from exc
        for path in entries:
            chart = CHART_FILE_RE.fullmatch(path.name)
            if chart:
                self.charts[chart.group(1)] = _read_recording(path, field)
                continue
            match = PAGE_FILE_RE.fullmatch(path.name)
            if not match:
                continue
            page = int(match.group(1))
            if page in names:
                raise ValidationError(
                    field, f"{names[page]} and {path.name} in {self.directory} are both page {page}"
                )
            names[page] = path.name
            self.pages[page] = _read_recording(path, field)
        global_path = self.directory / "global.json"
        self.global_body = (
            _read_recording(global_path, field)
            if global_path.exists() or global_path.is_symlink()
            else None
        )

    @property
    def recorded_pages(self) -> list[int]:
        """The page numbers that have a file, ascending."""
        return sorted(self.pages)

    def markets(self, query: Mapping[str, str], page: int, per_page: int) -> Reply:
        body = self.pages.get(page)
        if body is None:
            return Reply(200, b"[]")
        return _recorded_reply(body)

    def market_chart(self, coin_id: str, vs_currency: str, days: int | str) -> Reply:
        body = self.charts.get(coin_id)
        if body is None:
            return Reply(404, _json_bytes(COIN_NOT_FOUND_BODY))
        return _recorded_reply(body)

    def global_data(self) -> Reply:
        if self.global_body is not None:
            return _recorded_reply(self.global_body)
        return Reply(200, _json_bytes(self._minimal_global()), {"X-Replay-Synthesized": "global"})

    def _minimal_global(self) -> dict[str, Any]:
        """/global's shape with no totals (the recording has none): see the module docstring."""
        coins: list[dict[str, Any]] = []
        for body in self.pages.values():
            with contextlib.suppress(ValueError, UnicodeDecodeError):
                parsed = json.loads(body)
                if isinstance(parsed, list):
                    coins.extend(c for c in parsed if isinstance(c, dict))
        # Rows are served as recorded, so anything may be missing or odd here: skip what
        # does not fit rather than fail the request (and kill the handler thread).
        stamps = []
        for coin in coins:
            stamp = coin.get("last_updated")
            if isinstance(stamp, str):
                with contextlib.suppress(ValueError, OverflowError, OSError):
                    stamps.append(datetime.fromisoformat(stamp).timestamp())
        ids = {coin["id"] for coin in coins if isinstance(coin.get("id"), str)}
        return {
            "data": {
                "active_cryptocurrencies": len(ids),
                "upcoming_icos": 0,
                "ongoing_icos": 0,
                "ended_icos": 0,
                "markets": 0,
                "total_market_cap": {},
                "total_volume": {},
                "market_cap_percentage": {},
                "market_cap_change_percentage_24h_usd": 0.0,
                "updated_at": int(max(stamps)) if stamps else 0,
            }
        }


def _read_recording(path: Path, field: str) -> bytes:
    """The bytes of a recorded body; ValidationError when it is not a readable regular file."""
    if not path.is_file():
        what = "a broken link" if path.is_symlink() and not path.exists() else "not a regular file"
        raise ValidationError(field, f"{path} is {what}")
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ValidationError(field, f"cannot read {path}: {exc.strerror or exc}") from exc


RATE_LIMIT_MODES = ("sliding", "fixed")


class _RateLimiter:
    """N served requests per sliding window of ``window`` seconds."""

    def __init__(self, limit: int, window: float, clock: Callable[[], float]) -> None:
        if limit < 1 or window <= 0:
            raise ValueError("rate limit needs limit >= 1 and window > 0")
        self.limit = limit
        self.window = window
        self._clock = clock
        self._served: deque[float] = deque()

    def check(self) -> int | None:
        """None if the request may be served (and count it), else the Retry-After seconds."""
        now = self._clock()
        while self._served and self._served[0] <= now - self.window:
            self._served.popleft()
        if len(self._served) >= self.limit:
            return max(1, math.ceil(self._served[0] + self.window - now))
        self._served.append(now)
        return None


class _FixedWindowLimiter:
    """N served requests per fixed window of ``window`` seconds, opened by the first request
    after the previous window ended (as API gateways count)."""

    def __init__(self, limit: int, window: float, clock: Callable[[], float]) -> None:
        if limit < 1 or window <= 0:
            raise ValueError("rate limit needs limit >= 1 and window > 0")
        self.limit = limit
        self.window = window
        self._clock = clock
        self._start: float | None = None
        self._count = 0

    def check(self) -> int | None:
        """None if the request may be served (and count it), else the Retry-After seconds."""
        now = self._clock()
        if self._start is None or now >= self._start + self.window:
            self._start, self._count = now, 0
        if self._count >= self.limit:
            return max(1, math.ceil(self._start + self.window - now))
        self._count += 1
        return None


def _int_param(query: Mapping[str, str], name: str, default: int) -> int | None:
    raw = query.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        return None


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out in two writes
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the server records requests instead of printing them."""

    def do_GET(self) -> None:
        replay = self.server.replay
        parts = urlsplit(self.path)
        query = dict(parse_qsl(parts.query, keep_blank_values=True))
        endpoint = parts.path[len(API_PREFIX) :] if parts.path.startswith(API_PREFIX) else ""
        endpoint = endpoint.rstrip("/") or endpoint
        page = _int_param(query, "page", 1) if endpoint == "/coins/markets" else None
        from_source = limited = False
        fault: str | None = None
        try:
            reply, from_source, limited, fault = replay._respond(
                endpoint, query, page, {k.lower(): v for k, v in self.headers.items()}
            )
        except Exception as exc:  # a bug or a bad recording: answer, do not drop the connection
            reply = Reply(
                500, _json_bytes({"error": f"replay server: {type(exc).__name__}: {exc}"})
            )
        # Recorded before answering, so a client that got its answer finds its request here.
        replay._record(
            RecordedRequest(
                method="GET",
                path=parts.path,
                endpoint=endpoint,
                query=query,
                headers={k.lower(): v for k, v in self.headers.items()},
                page=page,
                status=None if isinstance(reply, Scripted) or reply.status == 0 else reply.status,
                from_source=from_source,
                rate_limited=limited,
                fault=fault,
            )
        )
        if isinstance(reply, Scripted):  # close the connection without answering
            self.close_connection = True
        elif reply.delivery is not None and reply.delivery.reset_before:
            self._reset()
        else:
            self._send(reply, replay.kind)

    def _reset(self) -> None:
        """Reset the connection (TCP RST, not FIN): SO_LINGER on with a 0 s timeout, close."""
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.close()

    def _send(self, reply: Reply, kind: str) -> None:
        # A reply's own Content-Type/Content-Length replace the defaults; its own Content-Length
        # also closes the connection after the body, so a larger one is a body cut off mid-way.
        own = {name.lower() for name in reply.headers}
        if reply.delivery is not None and reply.delivery.delay > 0:  # before the status line
            self.server.replay._stopping.wait(reply.delivery.delay)
        try:
            self.send_response(reply.status)
            if "content-type" not in own:
                self.send_header("Content-Type", "application/json; charset=utf-8")
            if "content-length" not in own:
                self.send_header("Content-Length", str(len(reply.body)))
            else:
                self.close_connection = True
            self.send_header("X-Replay-Source", kind)
            for name, value in reply.headers.items():
                self.send_header(name, value)
            self.end_headers()
            delivery = reply.delivery
            if delivery is None:
                self.wfile.write(reply.body)
                return
            body = reply.body
            if delivery.reset_at is not None:
                self.wfile.write(body[: delivery.reset_at])
                self._reset()
                return
            sent = 0
            if delivery.trickle_every > 0:
                stopping = self.server.replay._stopping
                bytes_ = min(len(body), int(delivery.trickle_seconds / delivery.trickle_every))
                for sent in range(1, bytes_ + 1):
                    self.wfile.write(body[sent - 1 : sent])
                    if stopping.wait(delivery.trickle_every):
                        break
            self.wfile.write(body[sent:])
        except (BrokenPipeError, ConnectionResetError):  # the client gave up (e.g. timed out)
            self.close_connection = True


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    replay: ReplayServer

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Quiet when a client drops or resets the connection (it gave up, or a decoding fault
        made it); any other error is printed as usual."""
        if isinstance(sys.exc_info()[1], ConnectionError):
            return
        super().handle_error(request, client_address)


class ReplayServer:
    """The replay server (see the module docstring). Not started until :meth:`start` or
    ``with``; ``port=0`` picks a free port."""

    def __init__(
        self,
        source: MarketSource,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        clock: Callable[[], float] = time.monotonic,
        history_limit_days: int | None = HISTORY_LIMIT_DAYS,
    ) -> None:
        """``history_limit_days``: the most days of ``market_chart`` history served without a
        pro key (CoinGecko's public/demo limit; None: no limit)."""
        self.source = source
        self.history_limit_days = history_limit_days
        self.host = host
        self._requested_port = port
        self._clock = clock
        self._lock = threading.Lock()
        self._scripts: dict[tuple[str, int | None], deque[Scripted]] = {}
        self._faults = fault_spec.Injector()
        self._limiter: _RateLimiter | _FixedWindowLimiter | None = None
        self._rate_limited = 0
        self._requests: list[RecordedRequest] = []
        self._stopping = threading.Event()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # -- construction ----------------------------------------------------------------------

    @classmethod
    def synthetic(
        cls, coins: int = 1000, seed: int = synthetic.DEFAULT_SEED, **kwargs: Any
    ) -> ReplayServer:
        """A server for the deterministic synthetic market of ``coins`` coins."""
        return cls(SyntheticSource(coins, seed), **kwargs)

    @classmethod
    def from_directory(cls, directory: str | Path, **kwargs: Any) -> ReplayServer:
        """A server replaying ``directory``'s recorded bodies."""
        return cls(DirectorySource(directory), **kwargs)

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> ReplayServer:
        """Bind and serve from a daemon thread (idempotent)."""
        if self._server is None:
            self._stopping.clear()
            self._server = _Server((self.host, self._requested_port), _Handler)
            self._server.replay = self
            self._thread = threading.Thread(
                target=self._server.serve_forever,
                kwargs={"poll_interval": 0.05},
                name=f"replay-server-{self.port}",
                daemon=True,
            )
            self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the socket (pending delays are cut short)."""
        self._stopping.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> ReplayServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("the replay server is not running")
        return int(self._server.server_address[1])

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:<port>/api/v3``."""
        return f"http://{self.host}:{self.port}{API_PREFIX}"

    @property
    def kind(self) -> str:
        return self.source.kind

    # -- fault injection and inspection ----------------------------------------------------

    def script(self, endpoint: str, *responses: Scripted, page: int | None = None) -> None:
        """Queue ``responses`` for ``endpoint`` (e.g. "/coins/markets"; page-specific if given)."""
        key = ("/" + endpoint.strip("/"), page)
        with self._lock:
            self._scripts.setdefault(key, deque()).extend(responses)

    def inject(self, *faults: fault_spec.Fault | str) -> list[fault_spec.Fault]:
        """Add faults (:class:`local_mode.faults.Fault`, or SPEC strings parsed with
        :func:`local_mode.faults.parse`) after those already injected; returns them parsed.
        Raises ValidationError for a bad SPEC."""
        parsed = [
            f
            for item in faults
            for f in (fault_spec.parse(item) if isinstance(item, str) else [item])
        ]
        self._faults.add(parsed)
        return parsed

    def clear_faults(self) -> None:
        """Remove every injected fault and forget what fired."""
        self._faults.clear()

    @property
    def faults(self) -> list[fault_spec.Fault]:
        """The injected faults, in order."""
        return self._faults.faults

    def faults_fired(self) -> dict[str, int]:
        """``{fault spec: times it fired}`` (faults that never fired are absent)."""
        return self._faults.fired()

    def pending_faults(self) -> int:
        """Injected faults with a count not used up yet (``always`` ones are not counted)."""
        return self._faults.pending()

    def pending_scripts(self) -> int:
        """Scripted responses not consumed yet."""
        with self._lock:
            return sum(len(q) for q in self._scripts.values())

    def rate_limit(
        self, limit: int | None, window_seconds: float = 60.0, *, mode: str = "sliding"
    ) -> None:
        """Allow ``limit`` requests per ``window_seconds`` (None removes the limit), counted in
        a ``"sliding"`` or ``"fixed"`` window (see the module docstring); ValueError otherwise.
        Resets the count of :attr:`rate_limited`."""
        if mode not in RATE_LIMIT_MODES:
            raise ValueError(f"rate limit mode {mode!r} must be one of {RATE_LIMIT_MODES}")
        kind = _FixedWindowLimiter if mode == "fixed" else _RateLimiter
        with self._lock:
            self._limiter = None if limit is None else kind(limit, window_seconds, self._clock)
            self._rate_limited = 0

    @property
    def rate_limited(self) -> int:
        """The 429s the rate limit sent since :meth:`rate_limit` was last called."""
        with self._lock:
            return self._rate_limited

    @property
    def requests(self) -> list[RecordedRequest]:
        """Every request so far, in arrival order (a copy)."""
        with self._lock:
            return list(self._requests)

    def requests_to(self, endpoint: str) -> list[RecordedRequest]:
        """The recorded requests for one endpoint, e.g. "/coins/markets"."""
        endpoint = "/" + endpoint.strip("/")
        return [r for r in self.requests if r.endpoint == endpoint]

    def served_pages(self) -> list[int]:
        """The ``/coins/markets`` page numbers the source answered so far, ascending."""
        return sorted(
            {
                max(r.page, 1)  # page 0 or below is served as page 1
                for r in self.requests_to("/coins/markets")
                if r.page is not None and r.from_source
            }
        )

    def unserved_pages(self) -> list[int]:
        """Recorded pages (a directory source's files) that no request has been answered with.

        Empty for the synthetic source. After a run, a page listed here never reached the
        pipeline: a gap in the recording (pages 1 and 3: page 2 is ``[]`` and ends the paging)
        or paging that stopped earlier (``max_coins``, a per-page size that does not match).
        """
        recorded = getattr(self.source, "recorded_pages", [])
        served = set(self.served_pages())
        return [page for page in recorded if page not in served]

    def clear_requests(self) -> None:
        with self._lock:
            self._requests.clear()

    # -- serving (called from handler threads) ---------------------------------------------

    def _record(self, request: RecordedRequest) -> None:
        with self._lock:
            self._requests.append(request)

    def _pop_script(self, endpoint: str, page: int | None) -> Scripted | None:
        with self._lock:
            for key in ((endpoint, page), (endpoint, None)):
                queue = self._scripts.get(key)
                if queue:
                    return queue.popleft()
            return None

    def _respond(
        self,
        endpoint: str,
        query: Mapping[str, str],
        page: int | None,
        headers: Mapping[str, str] | None = None,
    ) -> tuple[Reply | Scripted, bool, bool, str | None]:
        """The reply, whether the source gave it (False: scripted, a fault's or rate-limited),
        whether the rate limit refused it, and the injected faults that shaped it (specs)."""
        scripted = self._pop_script(endpoint, page)
        if scripted is not None:
            if scripted.delay > 0:
                self._stopping.wait(scripted.delay)
            if scripted.close:
                return scripted, False, False, None
            if scripted.status is not None:
                body = scripted.body
                if body is None:
                    data = b""
                elif isinstance(body, bytes):
                    data = body
                elif isinstance(body, str):
                    data = body.encode()
                else:
                    data = _json_bytes(body)
                return Reply(scripted.status, data, dict(scripted.headers)), False, False, None
        first = self._faults.take(endpoint, page, ("replace", "delivery"))
        fault = first[0] if first else None
        if fault is not None and fault.category == "replace":
            answer = fault_spec.replacement(fault)
            reply = Reply(answer.status, answer.body, dict(answer.headers), answer.delivery)
            return reply, False, False, fault.spec
        with self._lock:
            limiter = self._limiter
            retry_after = limiter.check() if limiter is not None else None
            self._rate_limited += retry_after is not None
        if retry_after is not None:
            if fault is not None:  # it did not fire: the rate limit answered first
                self._faults.give_back(fault, page)
            reply = Reply(429, _json_bytes(RATE_LIMIT_BODY), {"Retry-After": str(retry_after)})
            return reply, False, True, None
        reply = self._serve(endpoint, query, page, headers)
        if reply.status != 200:
            if fault is not None:
                self._faults.give_back(fault, page)
            return reply, True, False, None
        shapes = self._faults.take(endpoint, page, ("shape",))
        # empty and rank-shift first: the field faults then reach a shifted-in coin too
        shapes.sort(key=lambda f: f.kind not in ("empty", "rank-shift"))
        body = reply.body
        for shape in shapes:
            body = fault_spec.reshape(shape, body, self._previous_page(endpoint, query, page))
        specs = [f.spec for f in shapes]
        if fault is not None:
            answer = fault_spec.deliver(fault, body, dict(reply.headers))
            reply = Reply(answer.status, answer.body, dict(answer.headers), answer.delivery)
            specs.insert(0, fault.spec)
        elif shapes:
            reply = Reply(reply.status, body, reply.headers)
        return reply, not first, False, "+".join(specs) or None

    def _previous_page(
        self, endpoint: str, query: Mapping[str, str], page: int | None
    ) -> Callable[[], bytes]:
        """The source's page before ``page`` (rank-shift takes its last coin)."""

        def previous() -> bytes:
            if page is None or page < 2:
                return b"[]"
            reply = self._serve(endpoint, {**query, "page": str(page - 1)}, page - 1)
            return reply.body if reply.status == 200 else b"[]"

        return previous

    def _serve(
        self,
        endpoint: str,
        query: Mapping[str, str],
        page: int | None,
        headers: Mapping[str, str] | None = None,
    ) -> Reply:
        chart = CHART_PATH_RE.fullmatch(endpoint)
        if chart:
            return self._market_chart(unquote(chart.group(1)), query, headers or {})
        if endpoint == "/ping":
            return Reply(200, _json_bytes(PING_BODY))
        if endpoint == "/global":
            return self.source.global_data()
        if endpoint == "/coins/markets":
            if not query.get("vs_currency", "").strip():
                return Reply(422, _json_bytes({"error": "Missing parameter vs_currency"}))
            per_page = _int_param(query, "per_page", DEFAULT_PER_PAGE)
            if per_page is None or page is None:
                bad = "per_page" if per_page is None else "page"
                return Reply(400, _json_bytes({"error": f"invalid {bad}"}))
            per_page = min(max(per_page, 1), MAX_PER_PAGE)
            return self.source.markets(query, max(page, 1), per_page)
        return Reply(404, _json_bytes(NOT_FOUND_BODY))

    def _market_chart(
        self, coin_id: str, query: Mapping[str, str], headers: Mapping[str, str]
    ) -> Reply:
        """``/coins/{id}/market_chart``: the parameters and the plan's range, then the source."""
        vs_currency = query.get("vs_currency", "").strip()
        if not vs_currency:
            return Reply(422, _json_bytes({"error": "Missing parameter vs_currency"}))
        raw = query.get("days", "1").strip().lower()
        days: int | str
        if raw == "max":
            days = "max"
        elif raw.isdigit() and int(raw) >= 1:
            days = int(raw)
        else:
            return Reply(400, _json_bytes({"error": "invalid days"}))
        limit = self.history_limit_days
        beyond = limit is not None and (days == "max" or (isinstance(days, int) and days > limit))
        if beyond and not headers.get(PRO_KEY_HEADER):
            return Reply(401, _json_bytes(HISTORY_RANGE_BODY))
        return self.source.market_chart(coin_id, vs_currency, days)


@contextlib.contextmanager
def serving(source: MarketSource, **kwargs: Any) -> Iterator[ReplayServer]:
    """``with serving(source) as server:`` — a started server that stops on exit."""
    server = ReplayServer(source, **kwargs)
    with server:
        yield server


MAX_SYNTHETIC_COINS = 100_000  # as ``crypto-etl run --coins``


class _OneLineParser(argparse.ArgumentParser):
    """Bad arguments: one line on stderr and exit 2 (argparse adds the usage block)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


def _int_in(low: int, high: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{value} is not in {low}-{high}")
        return value

    return parse


def parse_rate_limit(text: str) -> tuple[int, float]:
    """``"N/SECONDS"`` (or ``"N"``: per 60 s) -> ``(N, SECONDS)``; N >= 1, SECONDS > 0.

    Raises ``argparse.ArgumentTypeError`` naming what is wrong.
    """
    limit_text, slash, window_text = text.partition("/")
    try:
        limit = int(limit_text)
        window = float(window_text) if slash else 60.0
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not N/SECONDS (e.g. 30/60: 30 requests per 60 seconds)"
        ) from None
    if limit < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: N must be at least 1 request")
    if not math.isfinite(window) or window <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: SECONDS must be a number > 0")
    return limit, window


def main(argv: list[str] | None = None) -> int:
    """``python -m local_mode.replay_server --coins N | --replay DIR [--port P] [--rate-limit]``.

    Bad arguments (a missing ``--replay`` folder or an unreadable file in it, ``--coins`` below
    1, ``--port`` outside 0-65535 or already taken, a malformed ``--rate-limit``) print one
    line on stderr and exit with status 2 (SystemExit). Ctrl-C stops the server: 0.
    """
    parser = _OneLineParser(
        prog="python -m local_mode.replay_server", description=__doc__.splitlines()[0]
    )
    group = parser.add_mutually_exclusive_group()
    group.add_argument(
        "--coins",
        type=_int_in(1, MAX_SYNTHETIC_COINS),
        default=1000,
        help=f"synthetic market size, 1-{MAX_SYNTHETIC_COINS} (default 1000)",
    )
    group.add_argument("--replay", type=Path, metavar="DIR", help="directory of recorded bodies")
    parser.add_argument("--seed", type=int, default=synthetic.DEFAULT_SEED)
    parser.add_argument(
        "--port", type=_int_in(0, 65535), default=0, help="0-65535; 0 (default) picks a free port"
    )
    parser.add_argument(
        "--rate-limit",
        type=parse_rate_limit,
        metavar="N/SECONDS",
        help="e.g. 30/60: 30 requests per 60 s, then 429",
    )
    parser.add_argument(
        "--rate-limit-mode",
        choices=RATE_LIMIT_MODES,
        default="sliding",
        help="how --rate-limit counts: sliding (any 60 s) or fixed (a window opened by the first"
        " request, as API gateways count); default sliding",
    )
    parser.add_argument(
        "--faults",
        metavar="SPEC",
        help="inject faults, e.g. markets:page=2:503x3,global:html (see local_mode/faults.py)",
    )
    args = parser.parse_args(argv)
    try:
        injected = fault_spec.parse(args.faults, field="--faults") if args.faults else []
        source: MarketSource = (
            DirectorySource(args.replay, field="--replay")
            if args.replay
            else SyntheticSource(args.coins, args.seed)
        )
    except ValidationError as exc:
        parser.error(str(exc))
    server = ReplayServer(source, port=args.port)
    server.inject(*injected)
    if args.rate_limit:
        server.rate_limit(*args.rate_limit, mode=args.rate_limit_mode)
    try:
        server.start()
    except OSError as exc:
        parser.error(f"cannot listen on 127.0.0.1:{args.port}: {exc.strerror or exc}")
    try:
        print(f"CoinGecko replay ({source.kind}) at {server.base_url}  (Ctrl-C stops)", flush=True)
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
