"""Which ``/coins/markets`` pages to fetch and when to stop (pure: the fetch is injected).

``GET /coins/markets?vs_currency=..&order=market_cap_desc&per_page=..&page=N&sparkline=false``
returns at most ``per_page`` coins per page and ``[]`` past the end of the market.

Rules decided here:

* Pages are fetched in order from ``start_page`` (or from a :class:`PagingState` saved by an
  earlier call, so an extract can stop before its Lambda deadline and go on in the next
  invocation exactly where it stopped). ``max_coins=None`` pages until the market ends.
  **A short page is not the end**: a server may cap the page size below what was asked (a
  trading bot's issue reports 50 rows served for 250 asked), so paging goes on until one of
  these stops (``MarketsResult.stop_reason``):

  ============== ===============================================================  =========
  stop_reason    when                                                             confirmed
  ============== ===============================================================  =========
  empty_page     a page holds no coins: the end of the market                     yes
  early_end      a page is empty twice although fewer than half the coins         no
                 ``expected_coins`` says (from ``/global``) were kept: a hole in
                 the listing, not its end
  max_coins      ``max_coins`` coins are kept                                     yes
  deadline       fewer than ``reserve_seconds`` left before a request             no
                 (``next_page`` says where to resume)
  repeated_page  a page's body is byte-identical to the previous page's (a        no
                 server ignoring ``page``): that page is neither kept nor counted
  page_limit     ``max_pages`` pages fetched in all (this call and the calls it     no
                 resumes; guard against a server that never ends)
  ============== ===============================================================  =========

  ``end_confirmed`` is True only for the first two. Every unconfirmed stop, and a page size
  capped below ``per_page`` (``served_per_page``: the size of the first short page that was
  followed by a non-empty one), is described in ``warning``. On a market that ends on a short
  page this costs one more request (the empty page that confirms it).
* ``per_page`` stays the same on every page (page N's offset depends on it), so the last page
  may hold more rows than are still needed: with ``max_coins=600, per_page=250`` pages 1-3 are
  fetched (750 rows) and no page 4. **Bodies are kept whole** (stored exactly as received); each
  page records ``count``, the rows kept (250, 250, 100), and the manifest carries it so the
  transform trims to ``max_coins``. An empty last page is kept too (count 0): it is why paging
  stopped.
* A page's coins are counted from the start of the market: starting at ``start_page`` assumes
  the ``start_page - 1`` earlier pages held ``per_page`` coins each (``coins_before``). That is
  wrong for a server capping its page size (``served_per_page``): there ``coins_before``
  overstates the coins before ``start_page`` and ``max_coins`` is reached too early. Resuming
  from a :class:`PagingState` carries the exact count (and the last page's digest, so a repeated
  page is still recognised across invocations).
* ``deadline`` (a callable returning the seconds left, e.g. the Lambda's remaining time) is
  checked before every request: when fewer than ``reserve_seconds`` remain, paging stops and the
  result's ``next_page`` says where to resume (``stop_reason == "deadline"``). The caller may
  fail loudly or loop back (a Step Functions Choice state) with ``start_page=next_page``.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from functions.common.errors import ValidationError

MAX_PER_PAGE = 250
MARKETS_PATH = "/coins/markets"
# Pages one call may fetch: CoinGecko lists ~17k coins, 70 pages of 250 or 350 of a 50-row cap.
MAX_PAGES = 400
_SHA256_RE = re.compile(r"[0-9a-f]{64}")

STOP_REASONS = (
    "empty_page",
    "max_coins",
    "deadline",
    "repeated_page",
    "page_limit",
    "early_end",
)
# An empty page with fewer than RECHECK_FRACTION of the expected coins kept is asked for again
# (one request: a transient empty answer must not cut the market short); when it is empty
# again with fewer than EARLY_END_FRACTION kept, the stop is early_end (a hole, not the end).
RECHECK_FRACTION = 0.9
EARLY_END_FRACTION = 0.5
CONFIRMED_STOPS = frozenset({"empty_page", "max_coins"})


@dataclass(frozen=True)
class RawPage:
    """What the injected fetch returns: the body exactly as received and its row count."""

    body: bytes
    rows: int


@dataclass(frozen=True)
class FetchedPage:
    """One page as the manifest records it."""

    page: int
    body: bytes = field(repr=False)
    rows: int  # rows in the body
    count: int  # rows kept (<= rows): the transform uses only these

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.body).hexdigest()


@dataclass(frozen=True)
class PagingState:
    """Where paging stands after a call that stopped early: enough to resume it exactly.

    ``next_page`` is the page to request next; ``coins_kept`` the coins kept on the pages
    before it; ``pages_fetched`` the pages requested so far (for ``max_pages``);
    ``previous_sha256`` the digest of the last page's body (repeated-page check);
    ``first_short``/``served_per_page`` the page-size observations so far. JSON-safe through
    :meth:`to_dict`/:meth:`from_dict` (stored in the lake between Lambda invocations).
    """

    next_page: int = 1
    coins_kept: int = 0
    pages_fetched: int = 0
    previous_sha256: str | None = None
    first_short: int | None = None
    served_per_page: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], field_name: str = "paging") -> PagingState:
        """Rebuild a state; raise ValidationError naming the member that is wrong."""
        if not isinstance(data, Mapping):
            raise ValidationError(field_name, f"{data!r} must be an object")
        values: dict[str, Any] = {}
        for name, low, optional in (
            ("next_page", 1, False),
            ("coins_kept", 0, False),
            ("pages_fetched", 0, False),
            ("first_short", 1, True),
            ("served_per_page", 1, True),
        ):
            value = data.get(name)
            if value is None and optional:
                values[name] = None
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValidationError(
                    f"{field_name}.{name}", f"{value!r} must be an integer >= {low}"
                )
            values[name] = value
        digest = data.get("previous_sha256")
        if digest is not None and not (isinstance(digest, str) and _SHA256_RE.fullmatch(digest)):
            raise ValidationError(
                f"{field_name}.previous_sha256", f"{digest!r} must be 64 hex digits or null"
            )
        return cls(previous_sha256=digest, **values)


@dataclass
class MarketsResult:
    """The pages fetched, why paging stopped, and where to resume if it stopped early.

    ``stop_reason`` is one of :data:`STOP_REASONS` (see the module docstring);
    ``end_confirmed`` is True only when an empty page or ``max_coins`` ended paging;
    ``served_per_page`` is the page size the server actually serves when it is below the
    ``per_page`` asked (else None); ``warning`` is a human sentence for any unconfirmed stop or
    capped page size (else None).
    """

    pages: list[FetchedPage]
    stop_reason: str
    next_page: int | None  # set only when stop_reason == "deadline"
    coins_before: int  # coins on the pages before start_page (assuming full pages)
    end_confirmed: bool = False
    served_per_page: int | None = None
    warning: str | None = None
    state: PagingState = field(default_factory=PagingState)  # where to resume (deadline)

    @property
    def coin_count(self) -> int:
        """Coins kept on the pages fetched by this call."""
        return sum(p.count for p in self.pages)

    @property
    def complete(self) -> bool:
        return self.next_page is None


def markets_query(vs_currency: str, page: int, per_page: int) -> dict[str, str]:
    """The query string of one ``/coins/markets`` request, in CoinGecko's documented order."""
    return {
        "vs_currency": vs_currency,
        "order": "market_cap_desc",
        "per_page": str(per_page),
        "page": str(page),
        "sparkline": "false",
    }


def validate_paging(per_page: object, max_coins: object, start_page: object = 1) -> None:
    """Raise ValidationError naming the field when a paging parameter is out of range.

    ``max_coins`` None means the whole market (no cap).
    """
    for name, value, low, high in (
        ("per_page", per_page, 1, MAX_PER_PAGE),
        ("max_coins", max_coins, 1, None),
        ("start_page", start_page, 1, None),
    ):
        if name == "max_coins" and value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValidationError(name, f"{value!r} must be an integer")
        if value < low or (high is not None and value > high):
            raise ValidationError(name, f"{value} must be in [{low}, {high or 'inf'}]")
    assert isinstance(per_page, int) and isinstance(start_page, int)
    if isinstance(max_coins, int) and (start_page - 1) * per_page >= max_coins:
        raise ValidationError(
            "start_page",
            f"page {start_page} starts after coin {(start_page - 1) * per_page}, "
            f"past max_coins={max_coins}",
        )


def fetch_markets(
    fetch: Callable[[int], RawPage],
    *,
    per_page: int,
    max_coins: int | None,
    start_page: int = 1,
    deadline: Callable[[], float] | None = None,
    reserve_seconds: float = 0.0,
    on_page: Callable[[FetchedPage, PagingState], None] | None = None,
    max_pages: int = MAX_PAGES,
    resume: PagingState | None = None,
    expected_coins: int | None = None,
) -> MarketsResult:
    """Call ``fetch(page)`` for pages ``start_page, start_page + 1, ...`` until paging stops.

    Stops as the module docstring says (at most ``max_pages`` requests in all). ``resume``
    (a previous result's ``state``) replaces ``start_page`` and carries the exact counts.
    ``on_page(page, state)`` is called with each kept page as soon as it is fetched (to store
    it and report progress) and the state to resume from after it; a repeated page is not
    kept. ``max_coins=None`` pages until an empty page. ``expected_coins`` (e.g. ``/global``'s
    active coins, capped at ``max_coins``) makes an empty page that comes with fewer than
    :data:`RECHECK_FRACTION` of them kept be asked for once more: a transient empty answer
    then costs one request; a persistent one with fewer than :data:`EARLY_END_FRACTION` kept
    stops paging as ``early_end`` (unconfirmed, with a warning) instead of passing for the
    end. Errors raised by ``fetch`` propagate
    unchanged; a negative ``RawPage.rows`` or a bad paging parameter raises ValidationError.
    """
    # A resumed run's coins so far are known exactly (a capped server serves fewer per page
    # than start_page arithmetic assumes), so only a fresh start checks start_page that way.
    validate_paging(per_page, max_coins, 1 if resume is not None else start_page)
    if resume is not None:
        start_page = resume.next_page
    if isinstance(max_pages, bool) or not isinstance(max_pages, int) or max_pages < 1:
        raise ValidationError("max_pages", f"{max_pages!r} must be an integer >= 1")
    resume = resume or PagingState(next_page=start_page, coins_kept=(start_page - 1) * per_page)
    coins_before = resume.coins_kept
    if max_coins is not None and coins_before >= max_coins:
        raise ValidationError(
            "resume.coins_kept", f"{coins_before} coins already kept, max_coins={max_coins}"
        )
    total = coins_before
    pages: list[FetchedPage] = []
    first_short = resume.first_short  # rows of the first short, non-empty page
    served = resume.served_per_page
    previous = resume.previous_sha256
    page = start_page

    def state() -> PagingState:
        return PagingState(
            next_page=page,
            coins_kept=total,
            pages_fetched=resume.pages_fetched + len(pages),
            previous_sha256=previous,
            first_short=first_short,
            served_per_page=served,
        )

    def result(reason: str, problem: str | None = None) -> MarketsResult:
        notes = []
        if served is not None:
            notes.append(f"the server served {served} rows per page although {per_page} were asked")
        if problem is not None:
            where = (
                f"stopped with {total - coins_before} coins on pages {start_page}-{page - 1}"
                if pages
                else "stopped before fetching any page"
            )
            notes.append(f"{problem}; {where}, the end of the market was not confirmed")
        return MarketsResult(
            pages,
            reason,
            page if reason == "deadline" else None,
            coins_before,
            end_confirmed=reason in CONFIRMED_STOPS,
            served_per_page=served,
            warning="; ".join(notes) or None,
            state=state(),
        )

    while True:
        if deadline is not None and deadline() < reserve_seconds:
            return result(
                "deadline", f"less than {reserve_seconds:g}s were left (resume at page {page})"
            )
        if resume.pages_fetched + len(pages) >= max_pages:
            return result("page_limit", problem=f"the page limit ({max_pages} pages) was reached")
        raw = fetch(page)
        recheck = (
            raw.rows == 0
            and expected_coins is not None
            and total < expected_coins * RECHECK_FRACTION
        )
        if recheck:
            raw = fetch(page)  # once more: an empty answer mid-market is more likely a glitch
        early = (
            recheck and expected_coins is not None and total < expected_coins * EARLY_END_FRACTION
        )
        if raw.rows < 0:
            raise ValidationError("rows", f"page {page}: {raw.rows} must be >= 0")
        digest = hashlib.sha256(raw.body).hexdigest()
        if raw.rows > 0 and previous is not None and digest == previous:
            return result(
                "repeated_page",
                problem=f"page {page} repeated page {page - 1} byte for byte (the server "
                f"seems to ignore 'page'; page {page} was not kept)",
            )
        if raw.rows > 0 and first_short is not None and served is None:
            served = first_short
        if 0 < raw.rows < per_page and first_short is None:
            first_short = raw.rows
        previous = digest
        count = raw.rows if max_coins is None else min(raw.rows, max_coins - total)
        fetched = FetchedPage(page=page, body=raw.body, rows=raw.rows, count=count)
        pages.append(fetched)
        total += count
        page += 1
        if on_page is not None:
            on_page(fetched, state())
        if raw.rows == 0 and early:
            return result(
                "early_end",
                problem=f"page {page - 1} was empty twice although /global counts about"
                f" {expected_coins} coins and only {total} were kept (a hole in the listing?)",
            )
        if raw.rows == 0:
            return result("empty_page")
        if max_coins is not None and total >= max_coins:
            return result("max_coins")
