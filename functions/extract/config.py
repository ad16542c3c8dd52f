"""Extract configuration from the environment (and, on AWS, the API key from Secrets Manager).

==================================  ===========================================================
``COINGECKO_BASE_URL``              API root; default ``https://api.coingecko.com/api/v3``, or
                                    ``https://pro-api.coingecko.com/api/v3`` for plan ``pro``
``COINGECKO_API_PLAN``              ``public`` (default), ``demo`` (header
                                    ``x-cg-demo-api-key``) or ``pro`` (``x-cg-pro-api-key``)
``COINGECKO_API_KEY``               the key, locally
``COINGECKO_API_KEY_SECRET_ARN``    on AWS: a secret holding the raw key string, or
                                    ``{"api_key": "...", "plan": "demo" | "pro"}``; an empty
                                    secret (or no value yet) means the public API
``COINGECKO_TIMEOUT_SECONDS``       per request (connect and each read), default 30
``COINGECKO_MAX_RETRIES``           retries per request (429, 5xx, timeouts), default 6
``COINGECKO_MAX_RETRY_WAIT_SECONDS``  total seconds one invocation may sleep between retries,
                                    default 120
``COINGECKO_BACKOFF_BASE_SECONDS``  first backoff step (doubles each retry, with jitter), 1.0
``COINGECKO_RATE_LIMIT``            client-side pacing: ``N/SECONDS`` (at most N calls in any
                                    SECONDS, e.g. ``30/60``) or ``off``. Default: the plan's
                                    budget (``functions.extract.pacing.PLAN_RATE_LIMITS``:
                                    public 5/60, demo 30/60, pro 250/60) when
                                    ``COINGECKO_BASE_URL`` is that plan's CoinGecko host
                                    (``api.coingecko.com``, ``pro-api.coingecko.com``); off for
                                    any other base URL (the replay server, a proxy)
``LAKE_BUCKET``                     the lake bucket (``LAKE_LOCAL_DIR`` selects a folder locally)
==================================  ===========================================================

Rules: ``COINGECKO_API_KEY`` wins over the secret; a secret's ``plan`` wins over
``COINGECKO_API_PLAN``. A key with plan ``public`` is used as a demo key (CoinGecko's free keyed
tier, served on the public host). Plan ``demo``/``pro`` without any key is a ConfigError, except
when the configured secret is empty: an empty secret explicitly means "no key", i.e. public.
The key is never part of ``repr``, :meth:`ExtractConfig.describe` or any error message.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from functions.common.config import env_float, env_int
from functions.common.errors import ConfigError, ValidationError
from functions.common.secrets import fetch_secret_string as read_secret
from functions.extract.pacing import PLAN_RATE_LIMITS, RateLimit

PUBLIC_BASE_URL = "https://api.coingecko.com/api/v3"
PRO_BASE_URL = "https://pro-api.coingecko.com/api/v3"
PLANS = ("public", "demo", "pro")
KEY_HEADERS: dict[str, str] = {"demo": "x-cg-demo-api-key", "pro": "x-cg-pro-api-key"}
# The host each plan is served from (public and demo share one): its pacing default applies there.
PLAN_HOSTS: dict[str, str] = {
    "public": "api.coingecko.com",
    "demo": "api.coingecko.com",
    "pro": "pro-api.coingecko.com",
}
VALUE_SHAPE = 'the API key string, or {"api_key": "...", "plan": "demo" | "pro"}'

# A quote currency as CoinGecko names them ("usd", "eur", "btc", "bits", "sats"...): checked
# whole, after lower-casing, so surrounding whitespace is refused rather than trimmed.
VS_CURRENCY_RE = re.compile(r"[a-z0-9_-]{1,16}")

# Printable ASCII without spaces: anything else could not travel in an HTTP header.
_KEY_RE = re.compile(r"^[\x21-\x7e]{1,200}$")

SecretFetcher = Callable[[str], str]


@dataclass(frozen=True)
class ExtractConfig:
    """Everything the extract needs besides the event; build it with :meth:`from_env`."""

    base_url: str = PUBLIC_BASE_URL
    plan: str = "public"
    api_key: str | None = field(default=None, repr=False)
    key_source: str = "none"  # "env", "secret" or "none" (safe to log)
    timeout_seconds: float = 30.0
    max_retries: int = 6
    max_retry_wait_seconds: float = 120.0
    backoff_base_seconds: float = 1.0
    lake_bucket: str | None = None
    # None: no pacing. from_env fills in the plan's default (see default_rate_limit).
    rate_limit: RateLimit | None = None

    def __post_init__(self) -> None:
        if self.plan not in PLANS:
            raise ConfigError("COINGECKO_API_PLAN", f"{self.plan!r} must be one of {PLANS}")
        if self.plan != "public" and not self.api_key:
            raise ConfigError(
                "COINGECKO_API_KEY",
                f"plan {self.plan!r} needs an API key (set COINGECKO_API_KEY or fill the secret "
                "named by COINGECKO_API_KEY_SECRET_ARN), or use COINGECKO_API_PLAN=public",
            )
        if self.api_key is not None and not _KEY_RE.fullmatch(self.api_key):
            raise ConfigError(
                "COINGECKO_API_KEY",
                f"the key from {self.key_source} must be 1-200 printable ASCII characters "
                "without spaces (value not shown)",
            )
        _check_base_url(self.base_url)
        if self.timeout_seconds <= 0:
            raise ConfigError("COINGECKO_TIMEOUT_SECONDS", f"{self.timeout_seconds} must be > 0")
        if self.rate_limit is not None and not isinstance(self.rate_limit, RateLimit):
            raise ConfigError(
                "COINGECKO_RATE_LIMIT", f"{self.rate_limit!r} must be a RateLimit or None"
            )

    @property
    def auth_headers(self) -> dict[str, str]:
        """The API-key header for the plan (empty for the public API)."""
        if self.plan == "public" or not self.api_key:
            return {}
        return {KEY_HEADERS[self.plan]: self.api_key}

    def describe(self) -> dict[str, Any]:
        """A loggable summary (never the key)."""
        return {
            "base_url": self.base_url,
            "plan": self.plan,
            "key_source": self.key_source,
            "timeout_seconds": self.timeout_seconds,
            "max_retries": self.max_retries,
            "max_retry_wait_seconds": self.max_retry_wait_seconds,
            "backoff_base_seconds": self.backoff_base_seconds,
            "rate_limit": str(self.rate_limit) if self.rate_limit else "off",
        }

    @classmethod
    def from_env(
        cls, env: Mapping[str, str], *, fetch_secret: SecretFetcher | None = None
    ) -> ExtractConfig:
        """Read the ``COINGECKO_*`` variables (and the secret, through ``fetch_secret``)."""
        plan = env.get("COINGECKO_API_PLAN", "").strip().lower() or "public"
        if plan not in PLANS:
            raise ConfigError("COINGECKO_API_PLAN", f"{plan!r} must be one of {PLANS}")

        api_key: str | None = env.get("COINGECKO_API_KEY", "").strip() or None
        key_source = "env" if api_key else "none"
        arn = env.get("COINGECKO_API_KEY_SECRET_ARN", "").strip()
        if api_key is None and arn:
            secret_key, secret_plan = parse_secret(arn, (fetch_secret or fetch_secret_string)(arn))
            if secret_key is None:
                plan = "public"  # an empty secret means the public API
            else:
                api_key, key_source = secret_key, "secret"
                plan = secret_plan or plan
        if api_key and plan == "public":
            plan = "demo"

        base_url = env.get("COINGECKO_BASE_URL", "").strip().rstrip("/")
        base_url = base_url or (PRO_BASE_URL if plan == "pro" else PUBLIC_BASE_URL)
        raw_limit = env.get("COINGECKO_RATE_LIMIT", "").strip()
        rate_limit = (
            RateLimit.parse(raw_limit, "COINGECKO_RATE_LIMIT")
            if raw_limit
            else default_rate_limit(plan, base_url)
        )
        return cls(
            base_url=base_url,
            plan=plan,
            api_key=api_key,
            key_source=key_source,
            timeout_seconds=env_float(env, "COINGECKO_TIMEOUT_SECONDS", 30.0, minimum=0.001),
            max_retries=env_int(env, "COINGECKO_MAX_RETRIES", 6, minimum=0, maximum=50),
            max_retry_wait_seconds=env_float(env, "COINGECKO_MAX_RETRY_WAIT_SECONDS", 120.0),
            backoff_base_seconds=env_float(env, "COINGECKO_BACKOFF_BASE_SECONDS", 1.0),
            lake_bucket=env.get("LAKE_BUCKET", "").strip() or None,
            rate_limit=rate_limit,
        )


def default_rate_limit(plan: str, base_url: str) -> RateLimit | None:
    """The plan's pacing budget when ``base_url`` is on that plan's CoinGecko host, else None.

    Any other host (the local replay server, a proxy with its own limits) is not paced unless
    ``COINGECKO_RATE_LIMIT`` says so: offline runs and tests are not slowed down.
    """
    host = urlsplit(base_url).hostname
    if plan in PLAN_RATE_LIMITS and host == PLAN_HOSTS.get(plan):
        return PLAN_RATE_LIMITS[plan]
    return None


def check_vs_currency(value: object, field: str) -> str:
    """``value`` lower-cased, when it is 1-16 of ``[a-z0-9_-]`` in any case and nothing else.

    The extract's rule for ``input.vs_currency`` (``functions.extract.handler.parse_event``),
    shared so the CLI can refuse a value before it starts anything. Raises ValidationError
    naming ``field`` otherwise (empty, spaces, 17+ characters, not a string).
    """
    if not isinstance(value, str) or not VS_CURRENCY_RE.fullmatch(value.lower()):
        raise ValidationError(field, f"{value!r} must be 1-16 letters, digits, '_' or '-'")
    return value.lower()


def check_timeout_fits(
    timeout_seconds: float, available_seconds: float, margin_seconds: float, available: str
) -> None:
    """Raise ConfigError when one request's timeout cannot fit in the time an extract has.

    The extract requests a page only while at least ``timeout + margin`` seconds are left
    (``functions.extract.paging.fetch_markets``'s ``reserve_seconds``), so a
    ``COINGECKO_TIMEOUT_SECONDS`` above ``available_seconds - margin_seconds`` could never fetch
    page 1. ``available`` names the budget in the message (e.g. "the extract function's timeout").
    """
    limit = available_seconds - margin_seconds
    if limit <= 0:  # the margin alone takes the whole budget: it is the setting to fix
        raise ConfigError(
            "EXTRACT_DEADLINE_MARGIN_SECONDS",
            f"{margin_seconds:g}s leaves nothing of {available} ({available_seconds:g}s) for"
            f" requests (set it well below {available_seconds:g}; default 10)",
        )
    if timeout_seconds > limit:
        raise ConfigError(
            "COINGECKO_TIMEOUT_SECONDS",
            f"{timeout_seconds:g}s is more than {available} ({available_seconds:g}s) minus the"
            f" extract's {margin_seconds:g}s margin, {limit:g}s: no page could be fetched"
            f" (set it to at most {max(limit, 0):g})",
        )


def _check_base_url(url: str) -> None:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.query or parts.fragment:
        raise ConfigError(
            "COINGECKO_BASE_URL",
            f"{url!r} must be an http(s) URL without query, e.g. {PUBLIC_BASE_URL}",
        )


def parse_secret(arn: str, text: str) -> tuple[str | None, str | None]:
    """``(api_key, plan)`` from the secret's text; ``(None, None)`` for an empty secret.

    The text is the raw key, or a JSON object ``{"api_key": ..., "plan": ...}``. Error messages
    never quote the text (it holds the key).
    """
    text = text.strip()
    if not text:
        return None, None
    if not text.startswith("{"):
        return text, None
    try:
        parsed = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(
            "COINGECKO_API_KEY_SECRET_ARN",
            f"secret {arn} looks like JSON but does not parse ({exc.msg} at char {exc.pos});"
            f" expected {VALUE_SHAPE}",
        ) from exc
    if not isinstance(parsed, dict):  # pragma: no cover - text starts with "{"
        raise ConfigError("COINGECKO_API_KEY_SECRET_ARN", f"secret {arn}: expected {VALUE_SHAPE}")
    key = parsed.get("api_key")
    if key is not None and not isinstance(key, str):
        raise ConfigError(
            "COINGECKO_API_KEY_SECRET_ARN",
            f"secret {arn}: api_key must be a string, not {type(key).__name__}",
        )
    plan = parsed.get("plan")
    if plan is not None:
        if not isinstance(plan, str) or plan.strip().lower() not in PLANS:
            raise ConfigError(
                "COINGECKO_API_KEY_SECRET_ARN",
                f"secret {arn}: plan {plan!r} must be one of {PLANS}",
            )
        plan = plan.strip().lower()
    key = (key or "").strip() or None
    if key is None:
        return None, None
    return key, plan


def fetch_secret_string(arn: str) -> str:
    """The secret's string ("" when it has no value yet)."""
    return read_secret(arn, "COINGECKO_API_KEY_SECRET_ARN")
