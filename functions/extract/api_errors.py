"""CoinGecko error bodies (pure; no network).

CoinGecko answers errors with one of these shapes (the first two as recorded from the live API;
the third is its answer to a history range beyond the plan, HTTP 401, as quoted in
github.com/SixPM-Software/waxtax/pull/8 and ghostfolio/ghostfolio#3231)::

    {"error": "Missing parameter vs_currency"}
    {"status": {"error_code": 429, "error_message": "You've exceeded the Rate Limit..."}}
    {"error": {"status": {"error_code": 10012, "error_message": "Your request exceeds the
               allowed time range. Public API users are limited to ... the past 365 days..."}}}

``error_code`` is an HTTP status for some errors (403, 429, 500...) and a CoinGecko code for
others (10002 "API Key Missing", 10010/10011 "Invalid API Key", 10005 "no access").
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

# CoinGecko's own error codes (not HTTP statuses) and the HTTP status they come with.
COINGECKO_CODE_STATUS: dict[int, int] = {
    10002: 401,  # API Key Missing
    10010: 401,  # Invalid API Key (a pro key on the public/demo host)
    10011: 401,  # Invalid API Key (a demo key on the pro host)
    10005: 403,  # this plan may not access the endpoint
    1020: 403,  # access denied by the CDN firewall
    10012: 401,  # a history range beyond the plan (public/demo: the past 365 days)
}


@dataclass(frozen=True)
class ApiErrorBody:
    """An error object from CoinGecko: its message and, when given, its ``error_code``."""

    message: str
    code: int | None = None

    def http_status(self) -> int:
        """The HTTP status this error comes with (used by the replay server).

        ``error_code`` when it is an HTTP error status (400-599); a known CoinGecko code via
        :data:`COINGECKO_CODE_STATUS`; otherwise 422 for "Missing parameter ...", 404 for
        "... not found", and 400 for anything else.
        """
        if self.code is not None:
            if 400 <= self.code <= 599:
                return self.code
            if self.code in COINGECKO_CODE_STATUS:
                return COINGECKO_CODE_STATUS[self.code]
        lowered = self.message.lower()
        if lowered.startswith("missing parameter"):
            return 422
        if "not found" in lowered:
            return 404
        return 400


def parse_error_body(obj: Any) -> ApiErrorBody | None:
    """The error carried by a parsed JSON body, or None if ``obj`` is not an error object."""
    if not isinstance(obj, dict):
        return None
    status = obj.get("status")
    if isinstance(status, dict) and ("error_message" in status or "error_code" in status):
        code = status.get("error_code")
        code = code if isinstance(code, int) and not isinstance(code, bool) else None
        message = status.get("error_message")
        return ApiErrorBody(str(message) if message is not None else "", code)
    if "error" in obj and (len(obj) == 1 or "data" not in obj):
        error = obj["error"]
        if isinstance(error, dict) and isinstance(error.get("status"), dict):
            return parse_error_body({"status": error["status"]})  # {"error": {"status": ...}}
        if isinstance(error, dict):  # {"error": {"message": ...}} on some gateways
            error = error.get("message") or error.get("error") or json.dumps(error)
        return ApiErrorBody(str(error))
    return None


def error_from_bytes(body: bytes) -> ApiErrorBody | None:
    """Parse ``body`` and return its error object, or None (not JSON, or not an error)."""
    try:
        return parse_error_body(json.loads(body))
    except (ValueError, UnicodeDecodeError):
        return None


def snippet(body: bytes, limit: int = 200) -> str:
    """The start of ``body`` as text for error messages (decoded leniently, whitespace folded)."""
    text = " ".join(body[: limit * 4].decode("utf-8", errors="replace").split())
    return text if len(text) <= limit else text[: limit - 1] + "…"
