"""A deterministic SYNTHETIC crypto market shaped like CoinGecko's ``/coins/markets``, ``/global``.

Not real data: names, ids and numbers are generated from a seed (same seed, same bytes). The
shape follows CoinGecko's ``/coins/markets`` bodies as recorded from the live API:

* the same 26 fields in the same order; ids unique; 1 in 80 coins reuses an earlier coin's
  symbol (a different id with the same symbol);
* market caps heavy-tailed (a power law in rank with lognormal noise: the top coin near $1.3T,
  rank 1000 near $30M), sorted descending, ranks 1..n; about 1% of the tail has ``market_cap`` 0
  and ``market_cap_rank`` null (listed last, as CoinGecko does);
* prices lognormal across coins (plus ~3% stablecoins near 1.0); circulating supply = cap/price;
  ``max_supply`` null for 45% of coins (rounded); ``total_supply`` null for a few; FDV from them;
* 24h fields (high/low/changes) null for ~3% of coins; ``roi`` null for ~90%, else
  ``{"times", "currency", "percentage"}``;
* JSON ints for caps, FDV and most volumes; floats for supplies; prices float (int when a large
  price is whole); tiny prices come out in exponent notation (``1.83e-06``);
* ISO timestamps like ``"2024-01-01T00:00:00.000Z"``; image URLs on coin-images.coingecko.com.

:func:`generate_global` gives the matching ``/global`` body: for USD and the other currencies
in :data:`FX_RATES`, ``total_market_cap``/``total_volume`` exceed the coins' sums (the market's
long tail is larger than any page set), plus ``market_cap_percentage`` of the top 10 symbols.
"""

from __future__ import annotations

import math
import random
from datetime import UTC, datetime, timedelta
from typing import Any

# Units of each currency per US dollar (synthetic, fixed: the market is labelled synthetic).
FX_RATES: dict[str, float] = {
    "usd": 1.0,
    "eur": 0.91,
    "gbp": 0.79,
    "jpy": 141.0,
    "btc": 1 / 42_000.0,
    "eth": 1 / 2_300.0,
}
DEFAULT_SEED = 42
DEFAULT_AS_OF = datetime(2024, 1, 1, tzinfo=UTC)

FIELDS: tuple[str, ...] = (
    "id",
    "symbol",
    "name",
    "image",
    "current_price",
    "market_cap",
    "market_cap_rank",
    "fully_diluted_valuation",
    "total_volume",
    "high_24h",
    "low_24h",
    "price_change_24h",
    "price_change_percentage_24h",
    "market_cap_change_24h",
    "market_cap_change_percentage_24h",
    "circulating_supply",
    "total_supply",
    "max_supply",
    "ath",
    "ath_change_percentage",
    "ath_date",
    "atl",
    "atl_change_percentage",
    "atl_date",
    "roi",
    "last_updated",
)
# Fields expressed in the quote currency (scaled by FX_RATES for other currencies).
MONEY_FIELDS = (
    "current_price",
    "market_cap",
    "fully_diluted_valuation",
    "total_volume",
    "high_24h",
    "low_24h",
    "price_change_24h",
    "market_cap_change_24h",
    "ath",
    "atl",
)

_SYLLABLES = (
    "ba", "co", "di", "fu", "ga", "he", "ji", "ko", "lu", "ma", "ne", "po", "qui", "ra", "si",
    "ta", "vo", "xa", "ye", "zu", "bit", "chain", "dex", "fi", "lend", "mint", "nova", "orb",
    "pix", "quant", "sol", "ter", "uni", "vault", "wave", "zen",
)  # fmt: skip
_SUFFIXES = ("", "", "", " Token", " Network", " Protocol", " Coin", " Finance", " AI", " DAO")


def _iso(ts: datetime) -> str:
    """CoinGecko's timestamp format: milliseconds and a ``Z``."""
    return ts.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{ts.microsecond // 1000:03d}Z"


def _sig(x: float, digits: int = 6) -> float:
    """``x`` rounded to ``digits`` significant digits (prices look like CoinGecko's)."""
    if x == 0 or not math.isfinite(x):
        return x
    return round(x, digits - 1 - math.floor(math.log10(abs(x))))


def _names(rng: random.Random, n: int) -> list[tuple[str, str, str]]:
    """``n`` unique (id, symbol, name) triples; 1 in 80 symbols (at least one when n >= 10)
    repeats an earlier coin's symbol."""
    collide = set(rng.sample(range(5, n), max(1, n // 80))) if n >= 10 else set()
    seen_ids: set[str] = set()
    seen_symbols: set[str] = set()
    symbols: list[str] = []
    out: list[tuple[str, str, str]] = []
    while len(out) < n:
        word = "".join(rng.choice(_SYLLABLES) for _ in range(rng.randint(2, 3)))
        name = word.capitalize() + rng.choice(_SUFFIXES)
        coin_id = name.lower().replace(" ", "-")
        if coin_id in seen_ids:
            coin_id = f"{coin_id}-{len(out)}"
        seen_ids.add(coin_id)
        if len(out) in collide:
            symbol = rng.choice(symbols)  # a collision on purpose: same symbol, different id
        else:
            symbol = word[: rng.randint(3, 5)]
            while symbol in seen_symbols:
                symbol += rng.choice("abcdefghijklmnopqrstuvwxyz0123456789")
        seen_symbols.add(symbol)
        symbols.append(symbol)
        out.append((coin_id, symbol, name))
    return out


def _coin_usd(
    rng: random.Random,
    rank: int | None,
    cap: float,
    ident: tuple[str, str, str],
    as_of: datetime,
    capped: bool,
) -> dict[str, Any]:
    coin_id, symbol, name = ident
    stable = rank is not None and rng.random() < 0.03
    # Bigger coins tend to have bigger unit prices, with a wide spread (1e-9 .. 9e4).
    mu = 7.0 - 1.3 * math.log(rank or 1000)
    price = 1.0 + rng.gauss(0, 0.0008) if stable else math.exp(rng.gauss(mu, 3.2))
    price = _sig(min(max(price, 1e-9), 150_000.0))
    if price >= 1000 and rng.random() < 0.5:
        price = round(price)  # whole prices come back as JSON ints
    circulating = (cap / price) if cap > 0 else rng.uniform(1e6, 1e10)
    total_supply: float | None = circulating * rng.uniform(1.0, 1.6)
    if rng.random() < 0.04:
        total_supply = None
    max_supply: float | None = None
    if capped:
        max_supply = float(round((total_supply or circulating) * rng.uniform(1.0, 2.0)))
    supply_for_fdv = max_supply or total_supply
    fdv = round(price * supply_for_fdv) if supply_for_fdv else None
    volume: float = cap * math.exp(rng.gauss(-3.2, 1.1)) if cap > 0 else rng.uniform(0, 5e4)
    volume = round(volume) if rng.random() < 0.94 else round(volume, 3)

    coin: dict[str, Any] = {
        "id": coin_id,
        "symbol": symbol,
        "name": name,
        "image": (
            f"https://coin-images.coingecko.com/coins/images/{rng.randint(1, 40_000)}"
            f"/large/{coin_id}.png?1696500000"
        ),
        "current_price": price,
        "market_cap": round(cap),
        "market_cap_rank": rank,
        "fully_diluted_valuation": fdv,
        "total_volume": volume,
        "high_24h": None,
        "low_24h": None,
        "price_change_24h": None,
        "price_change_percentage_24h": None,
        "market_cap_change_24h": None,
        "market_cap_change_percentage_24h": None,
        "circulating_supply": float(round(circulating, 4)),
        "total_supply": float(round(total_supply, 4)) if total_supply is not None else None,
        "max_supply": max_supply,
    }
    if rng.random() >= 0.03:
        pct = rng.gauss(0, 0.02 if stable else 4.5)
        change = price - price / (1 + pct / 100)
        coin.update(
            high_24h=_sig(max(price, price - change) * (1 + abs(rng.gauss(0, 0.01)))),
            low_24h=_sig(min(price, price - change) * (1 - abs(rng.gauss(0, 0.01)))),
            price_change_24h=change,
            price_change_percentage_24h=round(pct, 5),
            market_cap_change_24h=cap - cap / (1 + pct / 100) if cap > 0 else 0,
            market_cap_change_percentage_24h=round(pct * rng.uniform(0.9, 1.1), 5) if cap else 0,
        )
    if stable:
        ath = _sig(price * (1 + abs(rng.gauss(0.04, 0.03))))
        atl = _sig(price * (1 - min(0.9, abs(rng.gauss(0.05, 0.05)))))
    else:
        ath = _sig(price * math.exp(abs(rng.gauss(1.0, 1.2))))
        atl = _sig(price * math.exp(-abs(rng.gauss(1.5, 1.5))))
    ath_date = as_of - timedelta(days=rng.uniform(1, 1500), seconds=rng.uniform(0, 86_400))
    atl_date = ath_date - timedelta(days=rng.uniform(1, 1500))
    roi = None
    if rng.random() < 0.10:
        times = math.exp(rng.gauss(1.0, 2.0))
        roi = {
            "times": times,
            "currency": rng.choice(("usd", "usd", "btc", "eth")),
            "percentage": times * 100,
        }
    coin.update(
        ath=ath,
        ath_change_percentage=round((price / ath - 1) * 100, 5),
        ath_date=_iso(ath_date),
        atl=atl,
        atl_change_percentage=round((price / atl - 1) * 100, 5),
        atl_date=_iso(atl_date),
        roi=roi,
        last_updated=_iso(as_of - timedelta(milliseconds=rng.randint(0, 300_000))),
    )
    return {k: coin[k] for k in FIELDS}


def _convert(coin: dict[str, Any], vs_currency: str) -> dict[str, Any]:
    """The same coin quoted in ``vs_currency`` (ints stay ints for fiat; floats for crypto)."""
    rate = FX_RATES[vs_currency]
    if rate == 1.0:
        return coin
    fiat = rate >= 0.01
    out = dict(coin)
    for key in MONEY_FIELDS:
        value = coin[key]
        if value is None:
            continue
        scaled = value * rate
        if isinstance(value, int) and fiat:
            out[key] = round(scaled)
        elif key in ("current_price", "high_24h", "low_24h", "ath", "atl"):
            out[key] = _sig(scaled)
        else:
            out[key] = scaled
    return out


def generate_markets(
    coins: int = 1000,
    *,
    seed: int = DEFAULT_SEED,
    vs_currency: str = "usd",
    as_of: datetime = DEFAULT_AS_OF,
    drift: bool = False,
) -> list[dict[str, Any]]:
    """``coins`` coins sorted by market cap (descending), as ``/coins/markets`` lists them.

    With ``drift``, the market moves deterministically with ``as_of``: see :func:`drifted`.
    Without it (the default) the market is the same whatever ``as_of`` (bar its timestamps).
    """
    if coins < 0:
        raise ValueError(f"coins must be >= 0, not {coins}")
    if vs_currency not in FX_RATES:
        raise ValueError(f"vs_currency {vs_currency!r} is not one of {sorted(FX_RATES)}")
    if drift:
        universe = _market_usd(coins + coins // 20 + (2 if coins else 0), seed, as_of)
        return [_convert(c, vs_currency) for c in drifted(universe, coins, seed, as_of)]
    return [_convert(c, vs_currency) for c in _market_usd(coins, seed, as_of)]


def _day_step(seed: int, coin_id: str, day: int, sigma: float) -> float:
    """One day's log-return of a coin: a fixed draw per (seed, coin, day)."""
    return random.Random(f"{seed}:{coin_id}:{day}").gauss(0.0, sigma)


def _walk(seed: int, coin_id: str, days: float, sigma: float) -> float:
    """The coin's log-price offset ``days`` after ``DEFAULT_AS_OF``: the sum of its last
    ``DRIFT_WINDOW`` daily steps (linear within a day). A moving sum, not a walk from day 0, so
    the market stays as wide as the undrifted one however far ``as_of`` is, while consecutive
    days share all but one step (day-to-day moves of about ``sigma``)."""
    whole = math.floor(days)
    window = sum(_day_step(seed, coin_id, d, sigma) for d in range(whole - DRIFT_WINDOW, whole))
    entering = _day_step(seed, coin_id, whole, sigma)
    leaving = _day_step(seed, coin_id, whole - DRIFT_WINDOW, sigma)
    return window + (days - whole) * (entering - leaving)


DRIFT_WINDOW = 30  # days of steps in a coin's offset: its spread is sigma * sqrt(30) ~ 0.33
DRIFT_SIGMA = 0.06  # daily log-return of caps and prices (a lively crypto market)


def drifted(
    universe: list[dict[str, Any]], coins: int, seed: int, as_of: datetime
) -> list[dict[str, Any]]:
    """The ``coins`` largest of ``universe`` (USD quotes) after each coin's random walk to
    ``as_of``: caps and prices move together (supplies fixed), volumes move more, the 24h
    change is the walk's last 24 hours, ranks follow the new caps, and the coins near the
    bottom of the ranking enter and leave from one day to the next."""
    days = (as_of - DEFAULT_AS_OF).total_seconds() / 86_400.0
    moved: list[dict[str, Any]] = []
    for coin in universe:
        cid = coin["id"]
        now = _walk(seed, cid, days, DRIFT_SIGMA)
        before = _walk(seed, cid, days - 1, DRIFT_SIGMA)
        factor, ratio = math.exp(now), math.exp(now - before)
        out = dict(coin)
        for key in ("current_price", "high_24h", "low_24h"):
            if out[key] is not None:
                out[key] = _sig(out[key] * factor)
        for key in ("market_cap", "fully_diluted_valuation"):
            if out[key] is not None:
                out[key] = round(out[key] * factor)
        volume = coin["total_volume"] or 0
        out["total_volume"] = round(volume * factor * math.exp(_day_step(seed, cid, -1, 0.3)))
        if out["price_change_percentage_24h"] is not None:
            pct = (ratio - 1) * 100
            out["price_change_percentage_24h"] = round(pct, 5)
            out["price_change_24h"] = out["current_price"] - out["current_price"] / ratio
            out["market_cap_change_percentage_24h"] = round(pct, 5)
            out["market_cap_change_24h"] = out["market_cap"] - out["market_cap"] / ratio
        price, before = out["current_price"], out["current_price"] / ratio
        if out["high_24h"] is not None:  # the day's range holds both ends of the 24h move
            out["high_24h"] = _sig(max(out["high_24h"], price, before))
            out["low_24h"] = _sig(min(out["low_24h"], price, before))
        top = max(price, out["high_24h"] or price)
        if out["ath"] is not None and top > out["ath"]:
            out["ath"], out["ath_date"] = top, _iso(as_of)
        bottom = min(price, out["low_24h"] or price)
        if out["atl"] is not None and bottom < out["atl"]:
            out["atl"], out["atl_date"] = bottom, _iso(as_of)
        if out["ath"]:
            out["ath_change_percentage"] = round((out["current_price"] / out["ath"] - 1) * 100, 5)
        if out["atl"]:
            out["atl_change_percentage"] = round((out["current_price"] / out["atl"] - 1) * 100, 5)
        out["last_updated"] = _iso(as_of)
        moved.append(out)
    moved.sort(key=lambda c: (c["market_cap"] <= 0, -c["market_cap"]))
    kept = moved[:coins]
    for rank, coin in enumerate(kept, start=1):
        coin["market_cap_rank"] = rank if coin["market_cap"] > 0 else None
    return kept


def _market_usd(coins: int, seed: int, as_of: datetime) -> list[dict[str, Any]]:
    """``coins`` USD-quoted coins sorted by market cap (the undrifted market)."""
    rng = random.Random(seed)
    idents = _names(rng, coins)
    zero_caps = coins // 100
    ranked = coins - zero_caps
    caps = sorted(
        (1.3e12 * (r + 1) ** -1.55 * math.exp(rng.gauss(0, 0.25)) for r in range(ranked)),
        reverse=True,
    )
    caps += [0.0] * zero_caps
    uncapped = set(rng.sample(range(coins), round(coins * 0.45)))  # max_supply null
    return [
        _coin_usd(rng, (i + 1) if cap > 0 else None, cap, idents[i], as_of, i not in uncapped)
        for i, cap in enumerate(caps)
    ]


def generate_global(
    markets: list[dict[str, Any]],
    *,
    seed: int = DEFAULT_SEED,
    as_of: datetime = DEFAULT_AS_OF,
) -> dict[str, Any]:
    """The ``/global`` body matching ``markets`` (USD quotes, as :func:`generate_markets` makes).

    Totals are the coins' sums divided by a share in [0.96, 0.99) (the long tail CoinGecko
    counts but lists without a market cap: the synthetic market is the whole market), so
    every currency's ``total_market_cap``/``total_volume`` is larger than the listed sum.
    """
    rng = random.Random(seed * 7919 + len(markets))
    cap_usd = sum(c["market_cap"] or 0 for c in markets)
    vol_usd = sum(c["total_volume"] or 0 for c in markets)
    total_cap = cap_usd / rng.uniform(0.96, 0.99) if cap_usd else 1.0e9
    total_vol = vol_usd / rng.uniform(0.96, 0.99) if vol_usd else 1.0e7
    percentages: dict[str, float] = {}
    for coin in markets:
        if len(percentages) == 10:
            break
        if coin["symbol"] not in percentages and coin["market_cap"]:
            percentages[coin["symbol"]] = coin["market_cap"] / total_cap * 100
    return {
        "data": {
            "active_cryptocurrencies": len(markets) + rng.randint(0, max(1, len(markets) // 50)),
            "upcoming_icos": 0,
            "ongoing_icos": 49,
            "ended_icos": 3376,
            "markets": 900 + rng.randint(0, 400),
            "total_market_cap": {cur: total_cap * rate for cur, rate in FX_RATES.items()},
            "total_volume": {cur: total_vol * rate for cur, rate in FX_RATES.items()},
            "market_cap_percentage": percentages,
            "market_cap_change_percentage_24h_usd": rng.gauss(0, 3),
            "updated_at": int(as_of.timestamp()),
        }
    }


# -- /coins/{id}/market_chart ---------------------------------------------------------------------

# A coin's listing day lies this many days before DEFAULT_AS_OF (uniform per coin), so
# ``days=max`` ends somewhere and a 365-day backfill after 2024 covers every coin whole.
LISTED_MIN_DAYS = 400
LISTED_MAX_DAYS = 4000
VOLUME_DAY_SIGMA = 0.3  # daily log-noise of volumes around the price path
_MS_PER_DAY = 86_400_000


def chart_universe(
    coins: int,
    *,
    seed: int = DEFAULT_SEED,
    vs_currency: str = "usd",
    as_of: datetime = DEFAULT_AS_OF,
    drift: bool = False,
) -> list[dict[str, Any]]:
    """Every coin that has a history: the market of :func:`generate_markets`, and with
    ``drift`` also the coins of its universe below the top ``coins`` (they entered or left
    the ranking), all quoted at ``as_of`` in ``vs_currency``."""
    if not drift:
        return generate_markets(coins, seed=seed, vs_currency=vs_currency, as_of=as_of)
    universe = _market_usd(coins + coins // 20 + (2 if coins else 0), seed, as_of)
    return [_convert(c, vs_currency) for c in drifted(universe, len(universe), seed, as_of)]


def listed_day(seed: int, coin_id: str) -> int:
    """The coin's first day of history, in days from ``DEFAULT_AS_OF`` (negative)."""
    age = random.Random(f"{seed}:{coin_id}:listed").uniform(LISTED_MIN_DAYS, LISTED_MAX_DAYS)
    return -math.floor(age)


def generate_market_chart(
    coin: dict[str, Any],
    *,
    now: datetime,
    days: int | str,
    seed: int = DEFAULT_SEED,
    walk_anchor: datetime | None = None,
) -> dict[str, list[list[float]]]:
    """``/coins/{id}/market_chart?days=D&interval=daily`` for ``coin`` (a market row quoted in
    the wanted currency at ``now``): ``{"prices", "market_caps", "total_volumes"}``, each a list
    of ``[unix ms, value]``.

    As CoinGecko's daily series (recorded: ``days=90`` gave 90 points at 00:00 UTC, the last one
    today's, then one at the request time): one point per UTC midnight after ``now - D`` days up
    to ``now`` (never before the coin's :func:`listed_day`; ``days="max"`` starts there), then
    ``now`` itself unless it is a midnight. The last point is the coin's ``current_price``,
    ``market_cap`` and ``total_volume``. Earlier points follow the same random walk as
    :func:`drifted` (a price at midnight ``m`` is ``current_price * exp(walk(m) - walk(now))``),
    so a history served at an ``as_of`` agrees with the drifted snapshots of the days it
    covers; caps move with the price (supply fixed) and volumes get extra daily noise.
    ``walk_anchor`` (default ``now``) is the instant ``coin``'s quotes belong to: the fixed,
    undrifted market's is :data:`DEFAULT_AS_OF`.
    """
    now = now.astimezone(UTC)
    now_ms = math.floor(now.timestamp() * 1000)
    base_ms = math.floor(DEFAULT_AS_OF.timestamp() * 1000)
    last_day = (now_ms - base_ms) // _MS_PER_DAY  # today's midnight, in days from DEFAULT_AS_OF
    first_day = listed_day(seed, coin["id"])
    if days != "max":
        start_ms = now_ms - int(days) * _MS_PER_DAY
        first_day = max(first_day, (start_ms - base_ms) // _MS_PER_DAY + 1)
    cid = coin["id"]
    anchor_ms = now_ms if walk_anchor is None else math.floor(walk_anchor.timestamp() * 1000)
    walk_now = _walk(seed, cid, (anchor_ms - base_ms) / _MS_PER_DAY, DRIFT_SIGMA)
    span = range(first_day - DRIFT_WINDOW, last_day + 1)
    steps = {d: _day_step(seed, cid, d, DRIFT_SIGMA) for d in span}
    window = sum(steps[d] for d in range(first_day - DRIFT_WINDOW, first_day))
    price_now = float(coin["current_price"] or 0.0)
    cap_now = float(coin["market_cap"] or 0.0)
    volume_now = float(coin["total_volume"] or 0.0)
    prices: list[list[float]] = []
    caps: list[list[float]] = []
    volumes: list[list[float]] = []
    for day in range(first_day, last_day + 1):
        if day > first_day:  # the moving sum of the last DRIFT_WINDOW steps (see _walk)
            window += steps[day - 1] - steps[day - 1 - DRIFT_WINDOW]
        factor = math.exp(window - walk_now)
        noise = math.exp(_day_step(seed, f"{cid}:volume", day, VOLUME_DAY_SIGMA))
        stamp = base_ms + day * _MS_PER_DAY
        prices.append([stamp, _sig(price_now * factor, 12)])
        caps.append([stamp, _sig(cap_now * factor, 12)])
        volumes.append([stamp, _sig(volume_now * factor * noise, 12)])
    if not prices or prices[-1][0] != now_ms:
        prices.append([now_ms, price_now])
        caps.append([now_ms, cap_now])
        volumes.append([now_ms, volume_now])
    return {"prices": prices, "market_caps": caps, "total_volumes": volumes}
