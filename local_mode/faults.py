"""Faults for the CoinGecko replay server: the SPEC language, the catalogue and the bookkeeping.

A fault changes what :class:`local_mode.replay_server.ReplayServer` answers for one endpoint
(``markets`` = ``/coins/markets``, optionally only some pages; ``global`` = ``/global``), a
number of times. Select them with a SPEC string (``crypto-etl run --offline --faults SPEC``,
:func:`parse`) or build :class:`Fault` objects and pass them to ``ReplayServer.inject``.

SPEC language — a comma-separated list of clauses, each colon-separated tokens::

    SPEC    := CLAUSE ("," CLAUSE)*
    CLAUSE  := ENDPOINT (":" TOKEN)+            exactly one FAULT token per clause
    ENDPOINT:= "markets" | "global"
    TOKEN   := "page=" N | "page=" N "-" M      markets only; pages N..M (1-based, inclusive)
             | FAULT                            a name from CATALOGUE, "=VALUE" where it takes one
             | "once" | "always" | "x" N        how many times (default: the fault's, below)
             | "retry-after=" (SECONDS|"date"|"none")   429 and error-object only
             | "every=" SECONDS                 trickle only

Examples: ``markets:page=2:503x3`` (page 2 answers 503 three times), ``global:429:retry-after=
date``, ``markets:page=3:reset``, ``markets:page=2:slow=40``, ``markets:page=2:trickle=3:every=
0.2``, ``markets:page=1:truncated``, ``markets:page=1:gzip-corrupt``, ``markets:page=2:html``,
``global:error-object=500``, ``markets:page=3:empty``, ``markets:page=2:rank-shift``,
``markets:extra-field``, ``markets:missing=max_supply``, ``markets:numbers-as-strings``.
A status fault takes its count as a suffix too: ``503x3`` is ``503:x3``.

Faults (``CATALOGUE`` holds each with its description and the pipeline outcome it leads to with
the default client settings — 6 retries, 120 s of waiting, 30 s timeout — as measured by
``tests/integration/test_cli_faults.py`` and the matrix benchmark):

* ``429`` with ``retry-after=SECONDS`` (whole seconds, 0 allowed), ``=date`` (an HTTP date 1 s
  ahead) or ``=none`` (default: no header), and CoinGecko's rate-limit body;
* ``500`` ``502`` ``503`` ``504``: CoinGecko's error object with that status;
* ``slow[=SECONDS]``: the normal answer after SECONDS (default 31, past the client's default 30 s
  timeout) before the status line;
* ``trickle[=SECONDS]`` with ``every=SECONDS``: status and headers at once, then the body one byte
  every ``every`` (default 1 s) for SECONDS (default 31), then the rest at once (a body shorter
  than that trickles whole, in less time);
* ``reset[=mid-body]``: the connection is reset (TCP RST) without an answer, or after the headers
  and half the body;
* ``truncated``: HTTP 200 with the first half of the JSON body (a complete HTTP message);
* ``gzip-corrupt``: the normal body, not compressed, under ``Content-Encoding: gzip``;
* ``html``: HTTP 200 with a Cloudflare-like HTML page (``Content-Type: text/html``);
* ``error-object[=CODE]``: HTTP 200 with ``{"status": {"error_code": CODE, "error_message": …}}``
  (default 429);
* ``empty``: the page is ``[]`` (``/global``: ``{}``), whatever follows it;
* ``rank-shift`` (markets, pages ≥ 2): page k starts with the last coin of page k-1 and loses its
  own last coin, which is then on no page (as when ranks move while paging);
* ``extra-field[=NAME]``: every coin (``/global``: its ``data``) gains ``NAME`` (default
  ``unexpected_field``) = ``"injected"``;
* ``missing[=FIELD]``: every coin loses ``FIELD`` (default ``max_supply``; ``/global``: ``data``
  loses it, default ``total_market_cap``);
* ``numbers-as-strings[=FIELD]``: every number of every coin (or only ``FIELD``) becomes its JSON
  text, e.g. ``123.4`` -> ``"123.4"`` (``/global``: the numbers in ``data``, one level down too).

Counts: ``once`` is the default for the error and transport faults, ``always`` for the data-shape
ones (``empty``, ``rank-shift``, ``extra-field``, ``missing``, ``numbers-as-strings``). With
``page=`` the count is per page (``page=2-3:503x2``: two 503s for page 2, two for page 3);
without, it counts the endpoint's requests whatever their page.

Precedence for one request: the error and transport faults are tried in the order given and the
first one left fires (at most one); every matching data-shape fault then reshapes the source's
real body (so the rest of the market stays intact): ``empty`` and ``rank-shift`` first, then the
field faults in the order given.

Pure logic: no network. Errors: :class:`~functions.common.errors.ValidationError` naming the
field (``faults`` unless the caller says, e.g. ``--faults``), the bad token and the valid names.
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from email.utils import formatdate
from typing import Any, Literal

from functions.common.errors import ValidationError

ENDPOINTS = {"markets": "/coins/markets", "global": "/global"}
STATUS_FAULTS = ("429", "500", "502", "503", "504")
# The error and transport faults: they replace the answer or change how it is delivered.
DELIVERY_KINDS = ("slow", "trickle", "truncated", "gzip-corrupt")  # plus reset=mid-body
REPLACE_KINDS = (*STATUS_FAULTS, "html", "error-object")  # plus reset
SHAPE_KINDS = ("empty", "rank-shift", "extra-field", "missing", "numbers-as-strings")
DEFAULT_SLOW_SECONDS = 31.0  # just past the client's default COINGECKO_TIMEOUT_SECONDS (30)
DEFAULT_TRICKLE_EVERY = 1.0
DEFAULT_EXTRA_FIELD = "unexpected_field"
DEFAULT_MISSING = {"markets": "max_supply", "global": "total_market_cap"}
RATE_LIMIT_MESSAGE = (
    "You've exceeded the Rate Limit. Please visit https://www.coingecko.com/en/api/pricing to "
    "subscribe to our API plans for higher rate limits."
)
# Shaped like Cloudflare's interstitial ("Just a moment..."), which answers 200 to some clients.
HTML_BODY = (
    b'<!DOCTYPE html><html lang="en-US"><head><title>Just a moment...</title>'
    b'<meta http-equiv="Content-Type" content="text/html; charset=UTF-8"></head><body>'
    b'<div class="main-wrapper" role="main"><h1>api.coingecko.com</h1>'
    b"<p>Checking if the site connection is secure</p></div>"
    b'<div class="footer">Performance &amp; security by Cloudflare</div></body></html>'
)
Times = int | None | Literal["default"]


@dataclass(frozen=True)
class FaultInfo:
    """One catalogue entry: what the fault does and what it leads to in the pipeline.

    ``outcome`` is for ``/coins/markets`` and ``global_outcome`` for ``/global``, each with the
    default client settings and the fault's default count (None: not offered there).
    """

    name: str
    description: str
    outcome: str | None
    global_outcome: str | None
    default_times: int | None  # None: always
    value: str = ""  # what "=VALUE" takes ("" : no value)


_RETRY_OK = "retried; succeeds (retries counted)"
_GLOBAL_RETRY_OK = "retried; succeeds (retries counted), global basis"
_PAST_BUDGET = "; a burst longer than COINGECKO_MAX_RETRIES (6: x7 or more) "
_NOT_JSON = (
    "retried (HTTP 200 but the body is not JSON: transient, like a 5xx); succeeds (retries"
    " counted)" + "; every attempt (x7 or more) fails Extract with SourceUnavailableError"
)
_GLOBAL_FETCHED = "/global degrades to the fetched basis (DOMINANCE_BASIS 'fetched'); succeeds"

# Outcomes as measured through `crypto-etl run --offline` (tests/integration/test_cli_faults.py;
# bursts and timeouts at scaled-down COINGECKO_* settings), not as designed.
CATALOGUE: dict[str, FaultInfo] = {
    info.name: info
    for info in (
        FaultInfo(
            "429",
            "HTTP 429 with CoinGecko's rate-limit body; Retry-After as retry-after= says",
            "retried after Retry-After (at least 1 s; absent: backoff); succeeds (retries and"
            " 429s counted)" + _PAST_BUDGET + "fails Extract with SourceUnavailableError",
            _GLOBAL_RETRY_OK + _PAST_BUDGET + _GLOBAL_FETCHED,
            1,
        ),
        *(
            FaultInfo(
                code,
                f"HTTP {code} with CoinGecko's error object (a burst: xN)",
                _RETRY_OK + _PAST_BUDGET + "fails Extract with SourceUnavailableError",
                _GLOBAL_RETRY_OK + _PAST_BUDGET + _GLOBAL_FETCHED,
                1,
            )
            for code in STATUS_FAULTS[1:]
        ),
        FaultInfo(
            "slow",
            "the normal answer after SECONDS (default 31), before the status line",
            "the read times out (COINGECKO_TIMEOUT_SECONDS); " + _RETRY_OK,
            "the read times out; " + _GLOBAL_RETRY_OK,
            1,
            "SECONDS",
        ),
        FaultInfo(
            "trickle",
            "headers at once, then one body byte every `every` s (default 1) for SECONDS "
            "(default 31), then the rest",
            "cut after COINGECKO_TIMEOUT_SECONDS for the whole response (the read timeout alone"
            " bounds each read) and retried; " + _RETRY_OK,
            "cut after the timeout and retried; " + _GLOBAL_RETRY_OK,
            1,
            "SECONDS",
        ),
        FaultInfo(
            "reset",
            "TCP reset without an answer (=mid-body: after the headers and half the body)",
            _RETRY_OK,
            _GLOBAL_RETRY_OK,
            1,
            "mid-body",
        ),
        FaultInfo(
            "truncated",
            "HTTP 200 with the first half of the JSON body (a complete HTTP message)",
            _NOT_JSON,
            # measured by benchmarks/faults.py: retried like a 5xx, as on /coins/markets
            "retried (HTTP 200 but not JSON); " + _GLOBAL_RETRY_OK + "; every attempt (x7 or"
            " more): " + _GLOBAL_FETCHED,
            1,
        ),
        FaultInfo(
            "gzip-corrupt",
            "Content-Encoding: gzip over bytes that are not gzip",
            "decoding fails (ContentDecodingError); " + _RETRY_OK,
            "decoding fails; " + _GLOBAL_RETRY_OK,
            1,
        ),
        FaultInfo(
            "html",
            "HTTP 200 with a Cloudflare-like HTML page",
            _NOT_JSON,
            # measured by benchmarks/faults.py: retried like a 5xx, as on /coins/markets
            "retried (HTTP 200 but not JSON); " + _GLOBAL_RETRY_OK + "; every attempt (x7 or"
            " more): " + _GLOBAL_FETCHED,
            1,
        ),
        FaultInfo(
            "error-object",
            'HTTP 200 with {"status": {"error_code": CODE, ...}} (default 429)',
            "429/408/5xx: retried as that status; succeeds (retries counted); any other code:"
            " fails Extract with SourceError, not retried",
            "429/408/5xx: " + _GLOBAL_RETRY_OK + "; any other code: " + _GLOBAL_FETCHED,
            1,
            "CODE",
        ),
        FaultInfo(
            "empty",
            "the page is [] (/global: {}) though more pages follow",
            "an empty page with fewer than 90 % of the coins /global counts is asked for again:"
            " once, it succeeds whole; always, paging stops as early_end (end not confirmed,"
            " paging and coverage warnings in the summary and ETL_RUNS), and the quality gate"
            " fails the Transform when it is below the previous snapshot's row count",
            _GLOBAL_FETCHED,
            None,
        ),
        FaultInfo(
            "rank-shift",
            "page k starts with page k-1's last coin and drops its own last coin (on no page)",
            "succeeds: the repeat is removed and counted (1 duplicate per page); the coin"
            " pushed out is missing, and the summary says as many coins may be (duplicates"
            " line; coverage vs /global)",
            None,
            None,
        ),
        FaultInfo(
            "extra-field",
            'every coin (/global: data) gains NAME (default unexpected_field) = "injected"',
            "ignored; succeeds with every row",
            "ignored; succeeds, global basis",
            None,
            "NAME",
        ),
        FaultInfo(
            "missing",
            "every coin loses FIELD (default max_supply; /global: data loses it, default "
            "total_market_cap)",
            "succeeds with every row, FIELD NULL",
            _GLOBAL_FETCHED,
            None,
            "FIELD",
        ),
        FaultInfo(
            "numbers-as-strings",
            'every number of every coin (or FIELD) as its JSON text, e.g. "123.4"',
            "parsed as numbers; succeeds with every row, values unchanged",
            "parsed as numbers; succeeds, global basis",
            None,
            "FIELD",
        ),
    )
}
FAULT_NAMES = tuple(CATALOGUE)
VALID_NAMES_TEXT = ", ".join(FAULT_NAMES)


# The longest a delivery fault may hold a request (an hour: far past any client timeout).
MAX_FAULT_SECONDS = 3600.0


def _seconds(text: str, what: str) -> float:
    """A finite, non-negative number of seconds; ValueError naming ``what`` otherwise."""
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{what} must be a number of seconds, not {text!r}") from None
    if not math.isfinite(value) or not 0 <= value <= MAX_FAULT_SECONDS:
        raise ValueError(f"{what} must be 0-{MAX_FAULT_SECONDS:g} seconds, not {text!r}")
    return value


@dataclass(frozen=True)
class Fault:
    """One fault (see the module docstring).

    ``kind`` is a CATALOGUE name; ``endpoint`` ``"markets"`` or ``"global"``; ``pages`` a page
    number or an inclusive range ``(first, last)`` (markets only; None: every page); ``times``
    how many times (per page when ``pages`` is set; None: always; ``"default"``: the
    catalogue's). The parameters apply to the kinds named: ``retry_after`` (429, error-object:
    whole seconds as text, ``"date"``, or None for no header), ``seconds`` (slow: delay before
    the status line; trickle: how long the trickle lasts), ``every`` (trickle: seconds between
    bytes), ``mid_body`` (reset), ``code`` (error-object), ``name`` (extra-field, missing,
    numbers-as-strings: the field). Raises ValidationError (field ``fault``) for a bad value.
    """

    kind: str
    endpoint: str = "markets"
    pages: tuple[int, int] | int | None = None
    times: Times = "default"
    retry_after: str | None = None
    seconds: float | None = None
    every: float | None = None
    mid_body: bool = False
    code: int | None = None
    name: str | None = None

    def __post_init__(self) -> None:
        bad = _problem(self)
        if bad:
            raise ValidationError("fault", bad)
        info = CATALOGUE[self.kind]
        if isinstance(self.pages, int):
            object.__setattr__(self, "pages", (self.pages, self.pages))
        if self.times == "default":
            object.__setattr__(self, "times", info.default_times)
        defaults: dict[str, Any] = {}
        if self.kind == "slow" and self.seconds is None:
            defaults["seconds"] = DEFAULT_SLOW_SECONDS
        if self.kind == "trickle":
            defaults["seconds"] = DEFAULT_SLOW_SECONDS if self.seconds is None else self.seconds
            defaults["every"] = DEFAULT_TRICKLE_EVERY if self.every is None else self.every
        if self.kind == "error-object" and self.code is None:
            defaults["code"] = 429
        if self.kind == "extra-field" and self.name is None:
            defaults["name"] = DEFAULT_EXTRA_FIELD
        if self.kind == "missing" and self.name is None:
            defaults["name"] = DEFAULT_MISSING[self.endpoint]
        for key, value in defaults.items():
            object.__setattr__(self, key, value)

    @property
    def page_range(self) -> tuple[int, int] | None:
        """``pages`` as ``(first, last)``, or None for every page."""
        return self.pages if isinstance(self.pages, tuple) else None

    @property
    def spec(self) -> str:
        """The canonical SPEC clause (the count only when not the default), e.g.
        ``markets:page=2:503:x3``; ``parse(fault.spec) == [fault]``."""
        parts = [self.endpoint]
        if (pages := self.page_range) is not None:
            first, last = pages
            parts.append(f"page={first}" if first == last else f"page={first}-{last}")
        value = {
            "slow": self.seconds,
            "trickle": self.seconds,
            "reset": "mid-body" if self.mid_body else None,
            "error-object": self.code,
            "extra-field": self.name,
            "missing": self.name,
            "numbers-as-strings": self.name,
        }.get(self.kind)
        parts.append(self.kind if value is None else f"{self.kind}={_num(value)}")
        if self.kind == "trickle":
            parts.append(f"every={_num(self.every)}")
        if self.retry_after is not None:
            parts.append(f"retry-after={self.retry_after}")
        if self.times != self.info.default_times:
            parts.append("always" if self.times is None else f"x{self.times}")
        return ":".join(parts)

    @property
    def info(self) -> FaultInfo:
        return CATALOGUE[self.kind]

    @property
    def category(self) -> str:
        """``"replace"`` (answers instead of the source), ``"delivery"`` (the source's answer,
        delivered oddly) or ``"shape"`` (the source's body, reshaped)."""
        if self.kind in SHAPE_KINDS:
            return "shape"
        if self.kind in DELIVERY_KINDS or (self.kind == "reset" and self.mid_body):
            return "delivery"
        return "replace"

    def matches(self, endpoint: str, page: int | None) -> bool:
        """Whether a request for ``endpoint`` ("/coins/markets") and ``page`` is this fault's."""
        if ENDPOINTS[self.endpoint] != endpoint:
            return False
        if self.kind == "rank-shift" and (page is None or page < 2):
            return False  # no previous page to shift a coin from
        pages = self.page_range
        return pages is None or (page is not None and pages[0] <= max(page, 1) <= pages[1])


def _num(value: object) -> str:
    """``31.0`` -> ``"31"``, ``0.2`` -> ``"0.2"``; other values as text."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _problem(f: Fault) -> str | None:
    """What is wrong with ``f`` (None: nothing)."""
    if f.kind not in CATALOGUE:
        return f"unknown fault {f.kind!r}; valid faults: {VALID_NAMES_TEXT}"
    if f.endpoint not in ENDPOINTS:
        return f"unknown endpoint {f.endpoint!r}; valid endpoints: markets, global"
    if f.endpoint == "global" and CATALOGUE[f.kind].global_outcome is None:
        return f"{f.kind} applies to markets pages only, not to global"
    if f.pages is not None:
        if f.endpoint != "markets":
            return "page= applies to markets only"
        first, last = (f.pages, f.pages) if isinstance(f.pages, int) else f.pages
        if isinstance(first, bool) or not isinstance(first, int) or first < 1 or last < first:
            return f"pages {f.pages!r} must be N or (N, M) with 1 <= N <= M"
        if f.kind == "rank-shift" and first < 2:
            return "rank-shift needs a previous page: use page=2 or later"
    if f.times not in (None, "default") and (
        isinstance(f.times, bool) or not isinstance(f.times, int) or f.times < 1
    ):
        return f"times {f.times!r} must be an integer >= 1, None (always) or 'default'"
    if f.retry_after is not None:
        if f.kind not in ("429", "error-object"):
            return f"retry-after applies to 429 and error-object, not to {f.kind}"
        if f.retry_after != "date" and not f.retry_after.isdigit():
            return f"retry-after {f.retry_after!r} must be whole seconds, date or none"
    for attr in ("seconds", "every"):
        value = getattr(f, attr)
        if value is None:
            continue
        if f.kind not in (("slow", "trickle") if attr == "seconds" else ("trickle",)):
            return f"{attr} does not apply to {f.kind}"
        if (
            not isinstance(value, int | float)
            or not math.isfinite(value)
            or not 0 <= value <= MAX_FAULT_SECONDS
        ):
            return f"{attr} {value!r} must be 0-{MAX_FAULT_SECONDS:g} seconds"
    if f.kind == "trickle" and f.every is not None and f.every <= 0:
        return "every must be more than 0 seconds"
    if f.mid_body and f.kind != "reset":
        return f"mid_body does not apply to {f.kind}"
    if f.code is not None and (f.kind != "error-object" or not 100 <= f.code <= 99999):
        return f"code {f.code!r} applies to error-object only, as an integer 100-99999"
    if f.name is not None and (f.kind not in ("extra-field", "missing", "numbers-as-strings")):
        return f"a field name does not apply to {f.kind}"
    if f.name is not None and not f.name.strip():
        return "a field name may not be empty"
    return None


# -- the SPEC language -----------------------------------------------------------------------


def parse(spec: str, *, field: str = "faults") -> list[Fault]:
    """``"markets:page=2:503x3,global:429"`` -> ``[Fault, ...]`` (see the module docstring).

    Raises ValidationError naming ``field``, the bad clause and token, and the valid names.
    """
    if not spec.strip():
        raise ValidationError(field, f"is empty; give e.g. markets:page=2:503x3 ({_HELP})")
    return [_parse_clause(clause.strip(), field) for clause in spec.split(",")]


_HELP = f"endpoints: markets, global; faults: {VALID_NAMES_TEXT}"


def _parse_clause(clause: str, field: str) -> Fault:
    def fail(token: str, why: str) -> ValidationError:
        return ValidationError(field, f"{token!r} in {clause!r}: {why}")

    if not clause:
        raise ValidationError(field, f"an empty clause (a stray comma); {_HELP}")
    endpoint, *tokens = clause.split(":")
    if endpoint not in ENDPOINTS:
        raise fail(endpoint, f"unknown endpoint; {_HELP}")
    if not tokens:
        raise fail(clause, f"names no fault; {_HELP}")
    kwargs: dict[str, Any] = {}
    kind: str | None = None
    seen: set[str] = set()
    for token in tokens:
        key, eq, value = token.partition("=")
        if not token:
            raise fail(token, "an empty token (a stray colon)")
        try:
            if key == "page" and eq:
                slot, parsed = "pages", _pages(value)
            elif token in ("once", "always") or (token[:1] == "x" and not eq):
                slot, parsed = "times", _times(token)
            elif key == "retry-after" and eq:
                slot, parsed = "retry_after", _retry_after(value)
            elif key == "every" and eq:
                slot, parsed = "every", _seconds(value, "every")
            else:
                name, count = _status_with_count(token)
                if name not in CATALOGUE:
                    raise ValueError(f"unknown fault or option; {_HELP}")
                if kind is not None:
                    raise ValueError(f"a second fault ({kind} already); one fault per clause")
                kind = name
                if count is not None:
                    if "times" in seen:
                        raise ValueError("a second count")
                    seen.add("times")
                    kwargs["times"] = count
                if eq:
                    kwargs.update(_fault_value(name, value))
                continue
        except ValueError as exc:
            raise fail(token, str(exc)) from None
        if slot in seen:
            raise fail(token, f"a second {key if key != token else 'count'}")
        seen.add(slot)
        kwargs[slot] = parsed
    if kind is None:
        raise fail(clause, f"names no fault; {_HELP}")
    try:
        return Fault(kind, endpoint, **kwargs)
    except ValidationError as exc:
        raise ValidationError(field, f"{clause!r}: {exc.problem}") from None


def _pages(text: str) -> tuple[int, int]:
    first, dash, last = text.partition("-")
    try:
        pages = (int(first), int(last) if dash else int(first))
    except ValueError:
        raise ValueError("page must be N or N-M (whole numbers)") from None
    if pages[0] < 1 or pages[1] < pages[0]:
        raise ValueError("page must be N or N-M with 1 <= N <= M")
    return pages


def _times(text: str) -> int | None:
    counts: dict[str, int | None] = {"always": None, "once": 1}
    if text in counts:
        return counts[text]
    digits = text[1:]
    if not digits.isdigit() or int(digits) < 1:
        raise ValueError("a count is once, always or xN with N >= 1")
    return int(digits)


def _retry_after(text: str) -> str | None:
    if text == "none":
        return None
    if text == "date" or text.isdigit():
        return text
    raise ValueError("retry-after is whole seconds (0 allowed), date or none")


def _status_with_count(token: str) -> tuple[str, int | None]:
    """``"503x3"`` -> ``("503", 3)``; anything else ``(name before "=", None)``."""
    name = token.partition("=")[0]
    head, x, count = name.partition("x")
    if head in STATUS_FAULTS and x:
        if not count.isdigit() or int(count) < 1:
            raise ValueError("a status count is xN with N >= 1, e.g. 503x3")
        return head, int(count)
    return name, None


def _fault_value(kind: str, value: str) -> dict[str, Any]:
    """The keyword arguments of ``kind=value``; ValueError when ``kind`` takes no such value."""
    takes = CATALOGUE[kind].value
    if not takes:
        raise ValueError(f"{kind} takes no value")
    if kind in ("slow", "trickle"):
        return {"seconds": _seconds(value, kind)}
    if kind == "reset":
        if value != "mid-body":
            raise ValueError("reset takes no value or =mid-body")
        return {"mid_body": True}
    if kind == "error-object":
        if not value.isdigit():
            raise ValueError("error-object takes a numeric error_code, e.g. error-object=500")
        return {"code": int(value)}
    if not value.strip():
        raise ValueError(f"{kind}= needs a field name")
    return {"name": value}


def describe() -> list[dict[str, Any]]:
    """The catalogue as rows ``{"fault", "value", "description", "markets", "global",
    "default_times"}`` (for the README table and the matrix benchmark)."""
    return [
        {
            "fault": info.name,
            "value": info.value,
            "description": info.description,
            "markets": info.outcome,
            "global": info.global_outcome,
            "default_times": "always" if info.default_times is None else info.default_times,
        }
        for info in CATALOGUE.values()
    ]


# -- what a fault makes the server send ------------------------------------------------------


@dataclass(frozen=True)
class Delivery:
    """How an answer goes out: ``delay`` seconds before the status line; the body trickled one
    byte every ``trickle_every`` seconds for ``trickle_seconds`` (0: at once); ``reset_at``:
    reset the connection (TCP RST) after that many body bytes (0 with ``reset_before``: no
    status line at all)."""

    delay: float = 0.0
    trickle_every: float = 0.0
    trickle_seconds: float = 0.0
    reset_before: bool = False
    reset_at: int | None = None


@dataclass(frozen=True)
class Answer:
    """What the server sends for a fault: status, body bytes, headers and the delivery."""

    status: int
    body: bytes
    headers: Mapping[str, str] = field(default_factory=dict)
    delivery: Delivery = field(default_factory=Delivery)


def _json_bytes(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


def _retry_after_header(value: str | None, now: float) -> dict[str, str]:
    if value is None:
        return {}
    if value == "date":  # an HTTP-date (RFC 9110 IMF-fixdate) 1 s ahead
        return {"Retry-After": formatdate(now + 1, usegmt=True)}
    return {"Retry-After": value}


def replacement(fault: Fault, now: float | None = None) -> Answer:
    """The answer of a ``replace`` fault (status, html, error-object, reset before headers);
    ``now`` is the wall clock (epoch seconds) for ``retry-after=date``."""
    now = time.time() if now is None else now
    kind = fault.kind
    if kind == "reset":
        return Answer(0, b"", delivery=Delivery(reset_before=True))
    if kind == "html":
        return Answer(200, HTML_BODY, {"Content-Type": "text/html; charset=UTF-8"})
    if kind in STATUS_FAULTS or kind == "error-object":
        code = int(kind) if kind in STATUS_FAULTS else int(fault.code or 429)
        message = RATE_LIMIT_MESSAGE if code == 429 else f"HTTP {code} (injected fault)"
        body = _json_bytes({"status": {"error_code": code, "error_message": message}})
        status = code if kind in STATUS_FAULTS else 200
        return Answer(status, body, _retry_after_header(fault.retry_after, now))
    raise ValueError(f"{kind} is not a replace fault")


def deliver(fault: Fault, body: bytes, headers: Mapping[str, str]) -> Answer:
    """The source's 200 answer ``body`` as a ``delivery`` fault sends it."""
    kind = fault.kind
    if kind == "slow":
        return Answer(200, body, headers, Delivery(delay=float(fault.seconds or 0)))
    if kind == "trickle":
        every = float(fault.every or DEFAULT_TRICKLE_EVERY)
        delivery = Delivery(trickle_every=every, trickle_seconds=float(fault.seconds or 0))
        return Answer(200, body, headers, delivery)
    if kind == "truncated":
        return Answer(200, body[: len(body) // 2], headers)
    if kind == "gzip-corrupt":
        return Answer(200, body, {**headers, "Content-Encoding": "gzip"})
    if kind == "reset":
        return Answer(200, body, headers, Delivery(reset_at=len(body) // 2))
    raise ValueError(f"{kind} is not a delivery fault")


def reshape(fault: Fault, body: bytes, previous_page: Callable[[], bytes] | None = None) -> bytes:
    """The source's 200 ``body`` reshaped by a ``shape`` fault; a body that is not the expected
    JSON (a list of coins, /global's object) is returned unchanged. ``previous_page`` gives
    the source's page k-1 (rank-shift)."""
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return body
    kind = fault.kind
    if fault.endpoint == "markets":
        if not isinstance(data, list):
            return body
        if kind == "empty":
            return b"[]"
        if kind == "rank-shift":
            prev = _json_list(previous_page() if previous_page else b"[]")
            if not prev or not isinstance(prev[-1], dict):
                return body
            return _json_bytes([prev[-1], *data[:-1]] if data else [prev[-1]])
        coins = [_reshape_object(fault, c) if isinstance(c, dict) else c for c in data]
        return _json_bytes(coins)
    if not isinstance(data, dict):
        return body
    if kind == "empty":
        return b"{}"
    inner = data.get("data")
    if not isinstance(inner, dict):
        return body
    return _json_bytes({**data, "data": _reshape_object(fault, inner, nested=True)})


def _json_list(body: bytes) -> list[Any]:
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return []
    return data if isinstance(data, list) else []


def _as_text(value: Any, nested: bool) -> Any:
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float):
        return json.dumps(value)
    if nested and isinstance(value, dict):
        return {k: _as_text(v, False) for k, v in value.items()}
    return value


def _reshape_object(fault: Fault, obj: dict[str, Any], nested: bool = False) -> dict[str, Any]:
    """One coin (or /global's ``data``) after a field fault."""
    name = fault.name
    if fault.kind == "extra-field":
        return {**obj, str(name): "injected"}
    if fault.kind == "missing":
        return {k: v for k, v in obj.items() if k != name}
    if fault.kind == "numbers-as-strings":
        return {
            k: (_as_text(v, nested) if name is None or k == name else v) for k, v in obj.items()
        }
    return obj


# -- bookkeeping: which fault fires for a request ---------------------------------------------


class Injector:
    """The injected faults and how many times each may still fire (thread-safe).

    A fault with ``pages`` counts per page; without, per endpoint. :meth:`fired` counts what
    fired, by :attr:`Fault.spec`.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._faults: list[Fault] = []
        self._left: list[dict[int | None, int | None]] = []
        self._fired: dict[str, int] = {}

    def add(self, faults: Iterable[Fault]) -> None:
        with self._lock:
            for fault in faults:
                self._faults.append(fault)
                self._left.append({})

    def clear(self) -> None:
        with self._lock:
            self._faults.clear()
            self._left.clear()
            self._fired.clear()

    @property
    def faults(self) -> list[Fault]:
        with self._lock:
            return list(self._faults)

    def fired(self) -> dict[str, int]:
        """``{fault spec: times fired}`` for the faults that fired at least once."""
        with self._lock:
            return dict(self._fired)

    def pending(self) -> int:
        """Faults with a count that have not fired it all yet (``always`` ones not counted)."""
        with self._lock:
            count = 0
            for fault, left in zip(self._faults, self._left, strict=True):
                if fault.times is None:
                    continue
                pages = fault.page_range
                keys: list[int | None] = (
                    [None] if pages is None else list(range(pages[0], pages[1] + 1))
                )
                count += any(left.get(k, fault.times) for k in keys)
            return count

    def take(self, endpoint: str, page: int | None, categories: tuple[str, ...]) -> list[Fault]:
        """The faults of ``categories`` that fire for this request, their counts taken: the
        first one left for ``replace``/``delivery``, every one for ``shape``."""
        taken: list[Fault] = []
        with self._lock:
            for fault, left in zip(self._faults, self._left, strict=True):
                if fault.category not in categories or not fault.matches(endpoint, page):
                    continue
                if fault.category != "shape" and taken:
                    continue
                key = None if fault.page_range is None else max(page or 1, 1)
                remaining = left.get(key, fault.times)
                if remaining is not None:
                    if remaining <= 0:
                        continue
                    left[key] = remaining - 1
                self._fired[fault.spec] = self._fired.get(fault.spec, 0) + 1
                taken.append(fault)
        return taken

    def give_back(self, fault: Fault, page: int | None) -> None:
        """Undo one :meth:`take` of ``fault`` (the request was refused before it fired)."""
        with self._lock:
            for f, left in zip(self._faults, self._left, strict=True):
                if f is fault:
                    key = None if f.page_range is None else max(page or 1, 1)
                    if f.times is not None:
                        left[key] = left.get(key, f.times) + 1
                    self._fired[f.spec] -= 1
                    if not self._fired[f.spec]:
                        del self._fired[f.spec]
                    return


def with_times(fault: Fault, times: int | None) -> Fault:
    """``fault`` with another count (e.g. a burst shorter or longer than the retry budget)."""
    return replace(fault, times=times)
