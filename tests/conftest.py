"""Fixtures shared by every test layer."""

from __future__ import annotations

from pathlib import Path

import pytest

from functions.common.context import LocalLambdaContext

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_COINGECKO = REPO_ROOT.parent / "shared" / "data" / "coingecko"


@pytest.fixture
def lambda_context() -> LocalLambdaContext:
    return LocalLambdaContext(function_name="crypto-etl-test")


@pytest.fixture
def shared_coingecko_dir() -> Path:
    """The recorded CoinGecko bodies in ../shared/data/coingecko (skip when absent)."""
    if not SHARED_COINGECKO.is_dir():
        pytest.skip(f"recorded CoinGecko data not found at {SHARED_COINGECKO}")
    return SHARED_COINGECKO
