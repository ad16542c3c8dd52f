"""The Extract's deadline loop and the whole market: real HTTP to the replay server, a folder lake.

Each ``extract.run`` call below is one Lambda invocation of the same execution (as the state
machine's Choice state makes them); a fake deadline decides how many pages fit in each.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from functions.common.errors import ValidationError
from functions.common.storage import LocalStorage
from functions.extract import handler as extract
from functions.extract.config import ExtractConfig
from local_mode.replay_server import ReplayServer


def event(**inputs) -> dict:
    return {
        "input": inputs,
        "execution": {
            "name": "loop-0001",
            "id": "arn:aws:states:us-east-1:123456789012:execution:crypto-etl:loop-0001",
            "start_time": "2024-05-01T10:00:00Z",
        },
    }


def config_for(server: ReplayServer, **env: str) -> ExtractConfig:
    return ExtractConfig.from_env(
        {
            "COINGECKO_BASE_URL": server.base_url,
            "COINGECKO_BACKOFF_BASE_SECONDS": "0.001",
            "COINGECKO_TIMEOUT_SECONDS": "5",
            **env,
        }
    )


class PagesPerInvocation:
    """A deadline that leaves time for ``pages`` page requests, then runs out."""

    def __init__(self, pages: int) -> None:
        self.left = pages + 1  # the check at the start of the invocation, then one per page

    def __call__(self) -> float:
        self.left -= 1
        return 600.0 if self.left >= 0 else 0.0


def run_loop(server, lake, per_invocation: int, **inputs) -> tuple[list[dict], dict]:
    """Invoke until done, as the Choice state does; return every output and the last one."""
    outputs = []
    while True:
        out = extract.run(
            event(**inputs),
            config=config_for(server),
            storage=lake,
            deadline=PagesPerInvocation(per_invocation),
        )
        outputs.append(out)
        json.dumps(out)
        if out["done"]:
            return outputs, out
        assert len(outputs) < 50, "the loop does not end"


@pytest.fixture
def server():
    with ReplayServer.synthetic(coins=1234) as srv:
        yield srv


def test_max_coins_all_pages_to_the_empty_page(server, tmp_path):
    lake = LocalStorage(tmp_path / "lake")
    out = extract.run(event(max_coins="all"), config=config_for(server), storage=lake)
    assert (out["max_coins"], out["coin_count"], out["pages"]) == ("all", 1234, 6)
    assert (out["stop_reason"], out["end_confirmed"]) == ("empty_page", True)
    manifest = json.loads(lake.get_bytes(out["manifest_key"]))
    assert manifest["max_coins"] == "all"
    assert [p["count"] for p in manifest["pages"]] == [250, 250, 250, 250, 234, 0]
    # /global's active_cryptocurrencies sizes the run: its pages plus the confirming empty one
    active = json.loads(lake.get_bytes(out["global_key"]))["data"]["active_cryptocurrencies"]
    assert out["expected_pages"] == -(-active // 250) + 1


@pytest.mark.parametrize("value", ["everything", "", "ALL ", 0, 100_001, True, 2.5])
def test_max_coins_other_than_an_integer_or_all_is_refused(value, server, tmp_path):
    lake = LocalStorage(tmp_path / "lake")
    if value == "ALL ":  # case and spaces do not matter for "all"
        assert extract.parse_event(event(max_coins=value)).max_coins is None
        return
    with pytest.raises(ValidationError) as info:
        extract.run(event(max_coins=value), config=config_for(server), storage=lake)
    assert info.value.field == "input.max_coins"
    assert server.requests == []


def test_the_loop_equals_a_single_pass_row_for_row(server, tmp_path):
    single = LocalStorage(tmp_path / "single")
    one = extract.run(
        event(max_coins="all", per_page=100), config=config_for(server), storage=single
    )
    calls_single = len(server.requests)
    server.clear_requests()

    looped = LocalStorage(tmp_path / "looped")
    outputs, last = run_loop(server, looped, 3, max_coins="all", per_page=100)
    assert len(outputs) >= 3
    assert [o["done"] for o in outputs] == [False] * (len(outputs) - 1) + [True]
    assert [o["next_page"] for o in outputs[:-1]] == [4 + 3 * i for i in range(len(outputs) - 1)]
    assert last["invocations"] == len(outputs)
    # Every page was requested once: nothing already written is fetched again.
    pages = [r.page for r in server.requests_to("/coins/markets")]
    assert pages == list(range(1, one["pages"] + 1))
    assert len(server.requests_to("/global")) == 1
    assert last["api_calls"] == calls_single == one["api_calls"]
    # The lake holds the same pages, byte for byte, and the manifests agree.
    m1 = json.loads(single.get_bytes(one["manifest_key"]))
    m2 = json.loads(looped.get_bytes(last["manifest_key"]))
    assert [(p["page"], p["count"], p["sha256"]) for p in m1["pages"]] == [
        (p["page"], p["count"], p["sha256"]) for p in m2["pages"]
    ]
    for name in ("coin_count", "stop_reason", "end_confirmed", "global_error", "max_coins"):
        assert m1[name] == m2[name], name
    assert (m2["invocations"], m1["invocations"]) == (len(outputs), 1)
    # The state payload stays small: keys and counts, never rows.
    assert max(len(json.dumps(o)) for o in outputs) < 4096


def test_a_repeated_invocation_after_done_calls_nothing(server, tmp_path):
    lake = LocalStorage(tmp_path / "lake")
    first = extract.run(event(max_coins=300), config=config_for(server), storage=lake)
    server.clear_requests()
    again = extract.run(event(max_coins=300), config=config_for(server), storage=lake)
    assert again == first
    assert server.requests == []


def test_a_resumed_run_with_other_paging_input_is_refused(server, tmp_path):
    lake = LocalStorage(tmp_path / "lake")
    out = extract.run(
        event(max_coins="all"),
        config=config_for(server),
        storage=lake,
        deadline=PagesPerInvocation(2),
    )
    assert out["done"] is False
    with pytest.raises(ValidationError, match="cannot change its paging input"):
        extract.run(event(max_coins=500), config=config_for(server), storage=lake)


def test_an_invocation_that_fits_no_page_fails_instead_of_looping(server, tmp_path):
    lake = LocalStorage(tmp_path / "lake")
    with pytest.raises(extract.ExtractDeadlineError, match="stopped before page 1"):
        extract.run(
            event(max_coins="all"),
            config=config_for(server),
            storage=lake,
            deadline=PagesPerInvocation(0),
        )


def test_pacing_is_shared_across_the_invocations(tmp_path):
    # The server allows 3 calls per second in fixed windows; the client is told the same. Each
    # invocation has 1.5 s: a later one starts while the window is still spent, so without the
    # carried call times it would send at once and collect a 429.
    with ReplayServer.synthetic(coins=700) as srv:
        srv.rate_limit(3, 1.0, mode="fixed")
        lake = LocalStorage(tmp_path / "lake")
        outputs = []
        while not (outputs and outputs[-1]["done"]):
            ends = time.monotonic() + 1.5
            outputs.append(
                extract.run(
                    event(max_coins="all", per_page=100),
                    config=config_for(
                        srv, COINGECKO_RATE_LIMIT="3/1", COINGECKO_TIMEOUT_SECONDS="0.3"
                    ),
                    storage=lake,
                    deadline=lambda ends=ends: ends - time.monotonic(),
                    margin_seconds=0.0,
                )
            )
            assert len(outputs) < 20
        last = outputs[-1]
        assert len(outputs) >= 2
        assert srv.rate_limited == 0
        assert last["rate_limited"] == 0
        assert last["coin_count"] == 700
        assert last["api_calls"] == 1 + 8  # /global, 7 pages and the empty one
        assert last["pacing_waits"] >= 2  # 9 calls at 3 per second: at least two waits
        assert last["rate_limit"] == "3/1"


def test_progress_survives_in_the_lake_between_invocations(server, tmp_path: Path):
    lake = LocalStorage(tmp_path / "lake")
    out = extract.run(
        event(max_coins="all"),
        config=config_for(server),
        storage=lake,
        deadline=PagesPerInvocation(2),
    )
    progress = json.loads(lake.get_bytes(out["progress_key"]))
    assert progress["done"] is False
    assert [p["page"] for p in progress["pages"]] == [1, 2]
    assert progress["paging"]["next_page"] == out["next_page"] == 3
    assert progress["paging"]["coins_kept"] == out["coin_count"] == 500
    assert not lake.exists(out["raw_prefix"] + "manifest.json")


def test_a_rate_limit_window_longer_than_an_invocation_is_refused_at_start(
    server, tmp_path, monkeypatch
):
    # 10 s windows in a 5 s Lambda: an invocation starting with the window spent could never
    # send a request, and the loop would not advance.
    from functions.common.context import LocalLambdaContext
    from functions.common.errors import ConfigError

    monkeypatch.setenv("LAKE_LOCAL_DIR", str(tmp_path / "lake"))
    monkeypatch.setenv("COINGECKO_BASE_URL", server.base_url)
    monkeypatch.setenv("COINGECKO_TIMEOUT_SECONDS", "1")
    monkeypatch.setenv("EXTRACT_DEADLINE_MARGIN_SECONDS", "1")
    monkeypatch.setenv("COINGECKO_RATE_LIMIT", "3/10")
    context = LocalLambdaContext(function_name="extract", timeout_seconds=5)
    with pytest.raises(ConfigError) as info:
        extract.handler(event(max_coins="all"), context)
    assert info.value.name == "COINGECKO_RATE_LIMIT"
    assert "10s window is longer than" in str(info.value)
    assert server.requests == []
    monkeypatch.setenv("COINGECKO_RATE_LIMIT", "3/2")  # a window that fits: it runs
    assert extract.handler(event(max_coins=300), context)["coin_count"] == 300
