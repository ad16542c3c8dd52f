"""Typed readers for environment configuration (one config object per function builds on these)."""

from __future__ import annotations

import math
from collections.abc import Mapping

from functions.common.errors import ConfigError


def env_str(env: Mapping[str, str], name: str, default: str | None = None) -> str:
    value = env.get(name, "").strip()
    if value:
        return value
    if default is None:
        raise ConfigError(name, "is required but not set")
    return default


def env_int(
    env: Mapping[str, str], name: str, default: int, minimum: int = 0, maximum: int | None = None
) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError as exc:
        raise ConfigError(name, f"{raw!r} is not an integer") from exc
    if value < minimum or (maximum is not None and value > maximum):
        raise ConfigError(name, f"{value} is outside [{minimum}, {maximum or 'inf'}]")
    return value


def env_float(env: Mapping[str, str], name: str, default: float, minimum: float = 0.0) -> float:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError as exc:
        raise ConfigError(name, f"{raw!r} is not a number") from exc
    if not math.isfinite(value):
        raise ConfigError(name, f"{raw!r} must be a finite number")
    if value < minimum:
        raise ConfigError(name, f"{value} is below {minimum}")
    return value
