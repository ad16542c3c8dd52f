"""Which ``/coins/markets`` pages to fetch and when to stop (pure: the fetch is injected).

``GET /coins/markets?vs_currency=..&order=market_cap_desc&per_page=..&page=N&sparkline=false``
returns at most ``per_page`` coins per page; the last page is shorter than ``per_page`` or empty.

Rules decided here:

* Pages are fetched in order from ``start_page`` until a page is empty, a page is short
  (fewer rows than ``per_page``), or ``max_coins`` coins are reached. ``per_page`` stays the
  same on every page (page N's offset depends on it), so the last page may hold more rows than
  are still needed: with ``max_coins=600, per_page=250`` pages 1-3 are fetched (750 rows) and no
  page 4. **Bodies are kept whole** (stored exactly as received); each page records ``count``,
  the rows kept (250, 250, 100), and the manifest carries it so the transform trims to
  ``max_coins``. An empty last page is kept too (count 0): it is why paging stopped.
* A page's coins are counted from the start of the market: starting at ``start_page`` assumes
  the ``start_page - 1`` earlier pages were full (they were, or paging would have stopped).
* ``deadline`` (a callable returning the seconds left, e.g. the Lambda's remaining time) is
  checked before every request: when fewer than ``reserve_seconds`` remain, paging stops and the
  result's ``next_page`` says where to resume (``stop_reason == "deadline"``). The caller may
  fail loudly or loop back (a Step Functions Choice state) with ``start_page=next_page``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field

from functions.common.errors import ValidationError

MAX_PER_PAGE = 250
MARKETS_PATH = "/coins/markets"


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


@dataclass
class MarketsResult:
    """The pages fetched, why paging stopped, and where to resume if it stopped early."""

    pages: list[FetchedPage]
    stop_reason: str  # "empty_page" | "short_page" | "max_coins" | "deadline"
    next_page: int | None  # set only when stop_reason == "deadline"
    coins_before: int  # coins on the pages before start_page

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
    """Raise ValidationError naming the field when a paging parameter is out of range."""
    for name, value, low, high in (
        ("per_page", per_page, 1, MAX_PER_PAGE),
        ("max_coins", max_coins, 1, None),
        ("start_page", start_page, 1, None),
    ):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValidationError(name, f"{value!r} must be an integer")
        if value < low or (high is not None and value > high):
            raise ValidationError(name, f"{value} must be in [{low}, {high or 'inf'}]")
    assert isinstance(per_page, int) and isinstance(max_coins, int) and isinstance(start_page, int)
    if (start_page - 1) * per_page >= max_coins:
        raise ValidationError(
            "start_page",
            f"page {start_page} starts after coin {(start_page - 1) * per_page}, "
            f"past max_coins={max_coins}",
        )


def fetch_markets(
    fetch: Callable[[int], RawPage],
    *,
    per_page: int,
    max_coins: int,
    start_page: int = 1,
    deadline: Callable[[], float] | None = None,
    reserve_seconds: float = 0.0,
    on_page: Callable[[FetchedPage], None] | None = None,
) -> MarketsResult:
    """Call ``fetch(page)`` for pages ``start_page, start_page + 1, ...`` until paging stops.

    ``on_page`` is called with each page as soon as it is fetched (to store it and report
    progress). Errors raised by ``fetch`` propagate unchanged.
    """
    validate_paging(per_page, max_coins, start_page)
    coins_before = (start_page - 1) * per_page
    total = coins_before
    pages: list[FetchedPage] = []
    page = start_page
    while True:
        if deadline is not None and deadline() < reserve_seconds:
            return MarketsResult(pages, "deadline", page, coins_before)
        raw = fetch(page)
        if raw.rows < 0:
            raise ValidationError("rows", f"page {page}: {raw.rows} must be >= 0")
        count = min(raw.rows, max_coins - total)
        fetched = FetchedPage(page=page, body=raw.body, rows=raw.rows, count=count)
        pages.append(fetched)
        total += count
        if on_page is not None:
            on_page(fetched)
        if raw.rows == 0:
            return MarketsResult(pages, "empty_page", None, coins_before)
        if total >= max_coins:
            return MarketsResult(pages, "max_coins", None, coins_before)
        if raw.rows < per_page:
            return MarketsResult(pages, "short_page", None, coins_before)
        page += 1
