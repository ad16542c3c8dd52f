"""Typed environment readers refuse what would silently disable a limit."""

from __future__ import annotations

import pytest

from functions.common.config import env_float, env_int, env_str
from functions.common.errors import ConfigError


@pytest.mark.parametrize("raw", ["nan", "inf", "-inf", "abc"])
def test_env_float_refuses_non_finite_and_non_numbers(raw):
    with pytest.raises(ConfigError, match="COINGECKO_MAX_RETRY_WAIT_SECONDS"):
        env_float({"COINGECKO_MAX_RETRY_WAIT_SECONDS": raw}, "COINGECKO_MAX_RETRY_WAIT_SECONDS", 1)


def test_env_readers_defaults_and_bounds():
    assert env_float({}, "X", 2.5) == 2.5
    assert env_float({"X": " 0.5 "}, "X", 2.5) == 0.5
    assert env_int({"X": "7"}, "X", 1, maximum=10) == 7
    with pytest.raises(ConfigError, match="outside"):
        env_int({"X": "11"}, "X", 1, maximum=10)
    with pytest.raises(ConfigError, match="required"):
        env_str({"X": "  "}, "X")
