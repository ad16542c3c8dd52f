"""How much of the market a snapshot holds, against CoinGecko ``/global`` (pure: no I/O).

``/global``'s ``data.active_cryptocurrencies`` (a count of coins) and
``data.total_market_cap[vs]`` (in the quote currency) are CoinGecko's own totals
(https://docs.coingecko.com/reference/crypto-global). The snapshot's share of each is reported;
below ``min_pct`` it is a warning (logged and returned), never a failure. A top-N run covers few
coins by design, so its coin share warns only when the run asked for the whole market
(``max_coins: "all"``); the market-cap share always can.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

from functions.common.errors import ConfigError
from functions.transform.transform import positive_number

MIN_PCT_ENV = "COVERAGE_MIN_PCT"
DEFAULT_MIN_PCT = 90.0


def min_pct_from_env(env: Mapping[str, str]) -> float:
    """``COVERAGE_MIN_PCT`` (a percentage, 0 to 100; default ``DEFAULT_MIN_PCT``).

    Raises ConfigError naming the variable when it is not a finite number in that range.
    """
    raw = env.get(MIN_PCT_ENV)
    if raw is None or not raw.strip():
        return DEFAULT_MIN_PCT
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(
            MIN_PCT_ENV, f"{raw!r} is not a number (a percentage, 0 to 100)"
        ) from None
    if not math.isfinite(value) or not 0.0 <= value <= 100.0:
        raise ConfigError(MIN_PCT_ENV, f"{raw!r} must be a percentage from 0 to 100")
    return value


def coins_fetched(loaded: Iterable[Any], rejected: Iterable[Any]) -> int:
    """How many distinct coin ids the loaded and the rejected rows hold together.

    ``loaded``: the processed rows' ids (valid, non-blank by the transform's rules, so taken as
    they are); ``rejected``: the rejected rows' ids, where NULL, non-text and blank ones (a
    ``missing_id`` row) are no coin and do not count.
    """
    distinct = set(loaded)
    distinct.update(i for i in rejected if isinstance(i, str) and i.strip())
    return len(distinct)


def _global_data(global_body: Any) -> Mapping[str, Any]:
    data = global_body.get("data") if isinstance(global_body, Mapping) else None
    return data if isinstance(data, Mapping) else {}


def _count(value: Any) -> int | None:
    number = positive_number(value)
    return int(number) if number is not None and number == int(number) else None


def _pct(part: float, whole: float | None) -> float | None:
    return None if whole is None else round(100.0 * part / whole, 2)


def coverage(
    *,
    coins: int,
    market_cap_fetched: float,
    global_body: Any,
    vs_currency: str,
    min_pct: float,
    whole_market: bool,
) -> dict[str, Any]:
    """The Transform output's ``coverage`` object.

    ``coins``: distinct coin ids kept from the pages (loaded + rejected); ``market_cap_fetched``:
    the sum of the processed rows' market caps (vs_currency). ``global_body`` is the parsed
    ``/global`` body or None (unavailable: its fields are then null and there is no warning).
    Shape: ``{coins_fetched: int, active_cryptocurrencies: int|null, coin_pct: float|null,
    market_cap_fetched: float, total_market_cap: float|null, market_cap_pct: float|null,
    min_pct: float, whole_market: bool, warning: str|null}``; percentages are
    ``100 x fetched / total`` rounded to 2 decimals (they may exceed 100 when /global lags the
    listing). A value of ``/global`` that is not a positive number counts as absent.
    """
    data = _global_data(global_body)
    active = _count(data.get("active_cryptocurrencies"))
    caps = data.get("total_market_cap")
    total_cap = None
    if isinstance(caps, Mapping):
        total_cap = positive_number(caps.get(vs_currency.lower()))
    coin_pct = _pct(coins, active)
    cap_pct = _pct(market_cap_fetched, total_cap)
    short = []
    if cap_pct is not None and cap_pct < min_pct:
        short.append(
            f"market cap fetched {cap_pct:g} % of /global's total_market_cap[{vs_currency.lower()}]"
        )
    if whole_market and coin_pct is not None and coin_pct < min_pct:
        short.append(f"coins fetched {coin_pct:g} % of /global's active_cryptocurrencies")
    warning = f"{' and '.join(short)}, below {min_pct:g} %" if short else None
    return {
        "coins_fetched": int(coins),
        "active_cryptocurrencies": active,
        "coin_pct": coin_pct,
        "market_cap_fetched": float(market_cap_fetched),
        "total_market_cap": total_cap,
        "market_cap_pct": cap_pct,
        "min_pct": float(min_pct),
        "whole_market": bool(whole_market),
        "warning": warning,
    }
