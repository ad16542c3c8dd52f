"""The whole market (``--max-coins all``) through the state machine's deadline loop, paced at a
rate limit the local server enforces: the real definition under moto, real HTTP, real handlers,
real SQL on the fakesnow server."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from local_mode.run_command import RunOptions, run_pipeline
from local_mode.warehouse_commands import query
from state_machine.local_runner import FUNCTION_TIMEOUTS

pytestmark = pytest.mark.integration

COINS = 2000
# Columns that differ between two runs of the same market by design.
RUN_COLUMNS = {"FETCHED_AT", "LOADED_AT", "SNAPSHOT_ID"}


def _rows(local_dir: Path) -> list[tuple]:
    columns, _ = query(local_dir, "SELECT * FROM CRYPTO_DATA LIMIT 0")
    keep = [c for c in columns if c not in RUN_COLUMNS]
    _, rows = query(local_dir, f"SELECT {', '.join(keep)} FROM CRYPTO_DATA ORDER BY COIN_ID")
    return rows


def test_the_whole_market_through_the_deadline_loop_equals_a_single_pass(tmp_path):
    common = dict(
        offline=True, coins=COINS, max_coins="all", per_page=100, snapshot_id="full-market"
    )
    out = io.StringIO()
    # A 3-second Lambda timeout: each invocation has ~2 s for pages (0.5 s request timeout and
    # 0.5 s margin kept free), and 22 calls at 4 per second need more than 5 s.
    looped = run_pipeline(
        RunOptions(
            local_dir=tmp_path / "looped",
            rate_limit="4/1",
            function_timeouts={**FUNCTION_TIMEOUTS, "extract": 3.0},
            extra_env={
                "COINGECKO_TIMEOUT_SECONDS": "0.5",
                "EXTRACT_DEADLINE_MARGIN_SECONDS": "0.5",
            },
            **common,
        ),
        out,
    )
    progress = out.getvalue()
    assert looped.status == "SUCCEEDED", progress
    o = looped.output
    assert o["invocations"] >= 3
    assert progress.count("Extract continues") == o["invocations"] - 1
    assert (o["coin_count"], o["stop_reason"], o["end_confirmed"]) == (COINS, "empty_page", True)
    assert o["api_calls"] == 1 + COINS // 100 + 1  # /global, the pages, the empty page
    assert (o["rate_limited"], o["retries"]) == (0, 0)  # paced: the server never said 429
    assert o["row_count"] == COINS

    single = run_pipeline(RunOptions(local_dir=tmp_path / "single", **common), io.StringIO())
    assert single.status == "SUCCEEDED"
    assert single.output["invocations"] == 1
    looped_rows, single_rows = _rows(tmp_path / "looped"), _rows(tmp_path / "single")
    assert len(looped_rows) == COINS
    assert looped_rows == single_rows
