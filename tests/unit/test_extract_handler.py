"""The Extract handler end to end: real HTTP to the replay server, a folder as the lake."""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import json
import random
import shutil
from pathlib import Path

import pytest
import requests

from functions.common import keys
from functions.common.errors import SourceError, SourceUnavailableError, ValidationError
from functions.common.storage import LocalStorage
from functions.extract import handler as extract
from functions.extract.client import CoinGeckoClient
from functions.extract.config import ExtractConfig
from local_mode.replay_server import ReplayServer, Scripted

CONTRACT_KEYS = {
    "snapshot_id",
    "execution_id",
    "fetched_at",
    "fetch_date",
    "vs_currency",
    "bucket",
    "raw_prefix",
    "manifest_key",
    "global_key",
    "pages",
    "coin_count",
    "run_id",
    "partition_date",
    "global_error",
    "stop_reason",
    "end_confirmed",
    "paging_warning",
    "api_calls",
    "retries",
    "max_coins",
    "per_page",
    # the deadline loop, /global's size of the market, pacing
    "done",
    "next_page",
    "invocations",
    "progress_key",
    "expected_pages",
    "active_cryptocurrencies",
    "retry_wait_seconds",
    "rate_limit",
    "rate_limited",
    "pacing_waits",
    "pacing_wait_seconds",
}


def event(**inputs) -> dict:
    return {
        "input": inputs,
        "execution": {
            "name": "exec-0001",
            "id": "arn:aws:states:us-east-1:123456789012:execution:crypto-etl:exec-0001",
            "start_time": "2024-05-01T23:59:58.123Z",
        },
    }


def config_for(server: ReplayServer, **env: str) -> ExtractConfig:
    return ExtractConfig.from_env(
        {
            "COINGECKO_BASE_URL": server.base_url,
            "COINGECKO_BACKOFF_BASE_SECONDS": "0.001",
            "COINGECKO_MAX_RETRIES": "2",
            "COINGECKO_TIMEOUT_SECONDS": "5",
            **env,
        }
    )


@pytest.fixture
def lake(tmp_path: Path) -> LocalStorage:
    return LocalStorage(tmp_path / "lake", bucket="crypto-etl-test")


@pytest.fixture
def server():
    with ReplayServer.synthetic(coins=1000, seed=11) as srv:
        yield srv


class RecordingStorage(LocalStorage):
    """A LocalStorage that remembers the order of its writes."""

    def __init__(self, root: Path) -> None:
        super().__init__(root, bucket="crypto-etl-test")
        self.writes: list[str] = []

    def put_bytes(self, key: str, data: bytes, content_type: str = "") -> None:
        self.writes.append(key)
        super().put_bytes(key, data, content_type)


def test_end_to_end_into_the_lake(server, tmp_path):
    lake = RecordingStorage(tmp_path / "lake")
    out = extract.run(event(max_coins=600), config=config_for(server), storage=lake)

    prefix = "raw/dt=2024-05-01/snapshot=exec-0001/run=exec-0001/"
    assert set(out) == CONTRACT_KEYS
    assert out["snapshot_id"] == "exec-0001"
    assert out["execution_id"].endswith(":exec-0001")
    assert out["run_id"] == "exec-0001"  # the execution name is key-safe
    assert out["fetch_date"] == out["partition_date"] == "2024-05-01"
    assert out["bucket"] == "crypto-etl-test"
    assert out["raw_prefix"] == prefix
    assert out["manifest_key"] == prefix + "manifest.json"
    assert out["global_key"] == prefix + "global.json"
    assert out["global_error"] is None
    # max_coins reached on page 3: the end is confirmed without asking for page 4
    assert (out["stop_reason"], out["end_confirmed"], out["paging_warning"]) == (
        "max_coins",
        True,
        None,
    )
    assert (out["pages"], out["coin_count"], out["max_coins"], out["per_page"]) == (
        3,
        600,
        600,
        250,
    )
    assert (out["api_calls"], out["retries"]) == (4, 0)
    assert out["vs_currency"] == "usd"
    assert out["fetched_at"].endswith("+00:00")
    json.dumps(out)  # the state machine needs JSON

    # Each page body is byte-identical to what the server sends for it.
    for page in (1, 2, 3):
        sent = requests.get(
            f"{server.base_url}/coins/markets",
            params={"vs_currency": "usd", "per_page": 250, "page": page},
            timeout=5,
        ).content
        assert lake.get_bytes(keys.page_key(prefix, page)) == sent
    sent_global = requests.get(f"{server.base_url}/global", timeout=5).content
    assert lake.get_bytes(prefix + "global.json") == sent_global

    manifest = json.loads(lake.get_bytes(out["manifest_key"]))
    assert manifest["snapshot_id"] == "exec-0001"
    assert (manifest["run_id"], manifest["partition_date"]) == ("exec-0001", "2024-05-01")
    assert manifest["execution_id"] == out["execution_id"]
    assert manifest["fetched_at"] == out["fetched_at"]
    assert (manifest["vs_currency"], manifest["per_page"], manifest["max_coins"]) == (
        "usd",
        250,
        600,
    )
    assert manifest["source_base_url"] == server.base_url
    assert [(p["page"], p["key"], p["count"], p["rows"]) for p in manifest["pages"]] == [
        (1, prefix + "markets/page-0001.json", 250, 250),
        (2, prefix + "markets/page-0002.json", 250, 250),
        (3, prefix + "markets/page-0003.json", 100, 250),
    ]
    for entry in manifest["pages"]:
        assert entry["sha256"] == hashlib.sha256(lake.get_bytes(entry["key"])).hexdigest()
    assert (manifest["global_key"], manifest["global_error"]) == (out["global_key"], None)
    assert (manifest["coin_count"], manifest["api_calls"], manifest["retries"]) == (600, 4, 0)
    assert (manifest["stop_reason"], manifest["end_confirmed"]) == ("max_coins", True)
    assert (manifest["served_per_page"], manifest["paging_warning"]) == (None, None)
    # The snapshot index fixes the partition date at this first run; nothing is loaded yet.
    index = json.loads(lake.get_bytes("snapshots/exec-0001.json"))
    assert index["snapshot_id"] == "exec-0001"
    assert (index["partition_date"], index["current"]) == ("2024-05-01", None)
    assert index["created_by_execution"] == out["execution_id"]
    # the index first, /global (it sizes the market), pages as they arrive each followed by
    # the progress record, the manifest last
    progress = prefix + "progress.json"
    assert lake.writes == [
        "snapshots/exec-0001.json",
        prefix + "global.json",
        progress,
        prefix + "markets/page-0001.json",
        progress,
        prefix + "markets/page-0002.json",
        progress,
        prefix + "markets/page-0003.json",
        progress,
        prefix + "manifest.json",
        progress,
    ]
    assert (out["done"], out["next_page"], out["invocations"]) == (True, None, 1)
    assert out["expected_pages"] == 3  # min(active_cryptocurrencies, 600) / 250, rounded up


def test_the_transform_accepts_the_extract_output(server, lake):
    from functions.transform.handler import run as transform

    out = extract.run(event(max_coins=600), config=config_for(server), storage=lake)
    result = transform(out, storage=lake)
    assert result["row_count"] == 600
    assert result["snapshot_id"] == out["snapshot_id"]


def test_retries_are_counted_in_the_contract_and_manifest(server, lake):
    server.script("/coins/markets", Scripted.error(503, "busy"), page=2)
    server.script("/global", Scripted.error(429, retry_after=0))
    out = extract.run(event(max_coins=500), config=config_for(server), storage=lake)
    assert (out["api_calls"], out["retries"]) == (5, 2)
    manifest = json.loads(lake.get_bytes(out["manifest_key"]))
    assert (manifest["api_calls"], manifest["retries"]) == (5, 2)


def test_input_overrides_and_defaults(server, lake):
    out = extract.run(
        event(snapshot_id="manual-1", vs_currency="EUR", per_page=100, max_coins=150),
        config=config_for(server),
        storage=lake,
    )
    assert out["snapshot_id"] == "manual-1"
    assert out["run_id"] == "exec-0001"  # the run is the execution's, the snapshot the input's
    assert out["raw_prefix"] == "raw/dt=2024-05-01/snapshot=manual-1/run=exec-0001/"
    assert out["vs_currency"] == "eur"
    assert (out["pages"], out["coin_count"]) == (2, 150)
    assert {r.query["vs_currency"] for r in server.requests_to("/coins/markets")} == {"eur"}
    assert {r.query["per_page"] for r in server.requests_to("/coins/markets")} == {"100"}

    server.clear_requests()
    out = extract.run(event(), config=config_for(server), storage=lake)
    assert (out["max_coins"], out["per_page"], out["vs_currency"]) == (1000, 250, "usd")
    assert (out["pages"], out["coin_count"]) == (4, 1000)


def test_unknown_input_members_are_ignored(server, lake):
    out = extract.run(
        event(Comment="Insert your JSON here", max_coins=10),
        config=config_for(server),
        storage=lake,
    )
    assert out["coin_count"] == 10


@pytest.mark.parametrize(
    ("bad_event", "field"),
    [
        ([], "event"),
        ({**event(), "input": "usd"}, "input"),
        ({"input": {}}, "execution"),
        ({"input": {}, "execution": {"id": "x", "start_time": "2024-01-01T00:00:00Z"}},
         "execution.name"),
        ({"input": {}, "execution": {"name": "n", "start_time": "2024-01-01T00:00:00Z"}},
         "execution.id"),
        ({"input": {}, "execution": {"name": "n", "id": "x", "start_time": "yesterday"}},
         "execution.start_time"),
        ({"input": {}, "execution": {"name": "bad name!", "id": "x",
                                     "start_time": "2024-01-01T00:00:00Z"}}, "execution.name"),
        ({"input": {}, "execution": {"name": "snap-1\n", "id": "x",
                                     "start_time": "2024-01-01T00:00:00Z"}}, "execution.name"),
        (event(snapshot_id="../escape"), "input.snapshot_id"),
        (event(snapshot_id=""), "input.snapshot_id"),
        (event(snapshot_id="snap-1\n"), "input.snapshot_id"),
        (event(per_page=0), "input.per_page"),
        (event(per_page=251), "input.per_page"),
        (event(per_page="250"), "input.per_page"),
        (event(max_coins=0), "input.max_coins"),
        (event(max_coins=True), "input.max_coins"),
        (event(max_coins=10.5), "input.max_coins"),
        (event(vs_currency="us dollar"), "input.vs_currency"),
        (event(vs_currency=""), "input.vs_currency"),
        (event(vs_currency=840), "input.vs_currency"),
        (event(vs_currency="usd\n"), "input.vs_currency"),
    ],
)  # fmt: skip
def test_bad_events_raise_validation_error_naming_the_field(server, lake, bad_event, field):
    with pytest.raises(ValidationError) as info:
        extract.run(bad_event, config=config_for(server), storage=lake)
    assert info.value.field == field
    assert server.requests == []  # validated before any request
    assert lake.list_keys("") == []


def test_start_time_without_zone_is_utc_and_offsets_are_converted():
    ev = event()
    ev["execution"]["start_time"] = "2024-05-01T23:30:00-02:00"
    assert extract.parse_event(ev).fetch_date.isoformat() == "2024-05-02"
    ev["execution"]["start_time"] = "2024-05-01T23:30:00"
    assert extract.parse_event(ev).fetch_date.isoformat() == "2024-05-01"


def test_permanent_500_fails_and_writes_no_manifest(server, lake):
    server.script("/coins/markets", *[Scripted.error(500, "Internal server error")] * 3, page=2)
    with pytest.raises(SourceUnavailableError, match="HTTP 500"):
        extract.run(event(), config=config_for(server), storage=lake)
    prefix = "raw/dt=2024-05-01/snapshot=exec-0001/run=exec-0001/"
    written = lake.list_keys("raw/")
    assert sorted(written) == sorted(
        prefix + name for name in ("global.json", "markets/page-0001.json", "progress.json")
    )
    # The progress record says where a retry of this invocation resumes.
    progress = json.loads(lake.get_bytes(prefix + "progress.json"))
    assert (progress["paging"]["next_page"], progress["done"]) == (2, False)


def test_401_fails_fast_with_the_api_message(server, lake):
    server.script("/coins/markets", Scripted.error(401, "Invalid API Key"))
    with pytest.raises(SourceError, match="Invalid API Key") as info:
        extract.run(event(), config=config_for(server), storage=lake)
    assert not isinstance(info.value, SourceUnavailableError)
    assert len(server.requests_to("/coins/markets")) == 1
    # /global (fetched first) and the progress record only: no page, no manifest
    assert {k.rsplit("/", 1)[1] for k in lake.list_keys(keys.RAW)} == {
        "global.json",
        "progress.json",
    }


# --- /global is auxiliary: its failure degrades the snapshot to the fetched basis -------------

GLOBAL_403 = "This endpoint is temporarily unavailable"


@pytest.fixture
def three_coins():
    """A market of 3 coins: page 1 holds them all, page 2 is empty (the confirmed end)."""
    with ReplayServer.synthetic(coins=3, seed=5) as srv:
        yield srv


def _extract_then_transform(server: ReplayServer, lake: LocalStorage) -> tuple[dict, dict]:
    from functions.transform.handler import run as transform

    out = extract.run(event(), config=config_for(server), storage=lake)
    return out, transform(out, storage=lake)


def _assert_fetched_basis(lake: LocalStorage, out: dict, result: dict, *, why: str) -> None:
    """The run succeeded without /global: recorded in contract and manifest, fetched basis."""
    assert out["global_key"] is None
    assert why in out["global_error"]
    manifest = json.loads(lake.get_bytes(out["manifest_key"]))
    assert (manifest["global_key"], manifest["global_error"]) == (None, out["global_error"])
    assert not lake.exists(keys.global_key(out["raw_prefix"]))
    assert (out["pages"], out["coin_count"], out["end_confirmed"]) == (2, 3, True)
    assert (result["row_count"], result["rejected_count"]) == (3, 0)
    assert result["quality"]["dominance_basis"] == "fetched"
    reason = result["quality"]["dominance_basis_reason"]
    assert "/global unavailable" in reason and why in reason
    processed = gzip.decompress(lake.get_bytes(result["processed_key"])).decode()
    rows = list(csv.DictReader(io.StringIO(processed)))
    assert {r["dominance_basis"] for r in rows} == {"fetched"}
    # the fetched basis: the 3 coins are the whole (known) market
    assert sum(float(r["market_cap_dominance_pct"]) for r in rows) == pytest.approx(100.0)


def test_global_403_degrades_to_the_fetched_basis(three_coins, lake):
    three_coins.script("/global", Scripted.error(403, GLOBAL_403))
    out, result = _extract_then_transform(three_coins, lake)
    assert out["global_error"].startswith("SourceError: ")
    assert "HTTP 403" in out["global_error"] and GLOBAL_403 in out["global_error"]
    assert len(three_coins.requests_to("/global")) == 1  # a 403 is not retried
    _assert_fetched_basis(lake, out, result, why="403")


def test_global_503_past_the_retry_budget_degrades_to_the_fetched_basis(three_coins, lake):
    # COINGECKO_MAX_RETRIES=2: three 503s spend the budget
    three_coins.script("/global", *[Scripted.error(503, "busy")] * 3)
    out, result = _extract_then_transform(three_coins, lake)
    assert out["global_error"].startswith("SourceUnavailableError: ")
    assert "HTTP 503" in out["global_error"]
    assert len(three_coins.requests_to("/global")) == 3
    assert out["retries"] == 2
    _assert_fetched_basis(lake, out, result, why="503")


def test_global_body_without_data_degrades_to_the_fetched_basis(three_coins, lake):
    three_coins.script("/global", Scripted(status=200, body={"unexpected": True}))
    out, result = _extract_then_transform(three_coins, lake)
    assert "without a 'data' object" in out["global_error"]
    _assert_fetched_basis(lake, out, result, why="'data'")


def test_global_http_200_with_a_429_error_object_is_retried_as_a_rate_limit(three_coins, lake):
    limited = {"status": {"error_code": 429, "error_message": "You've exceeded the Rate Limit"}}
    three_coins.script("/global", Scripted(status=200, body=limited))
    out, result = _extract_then_transform(three_coins, lake)
    assert (out["global_error"], out["global_key"]) == (None, keys.global_key(out["raw_prefix"]))
    assert [r.status for r in three_coins.requests_to("/global")] == [200, 200]
    # /global twice (the 429 object, then the data), page 1, and the empty page 2 twice:
    # /global counts 4 active coins and 3 were kept, so the empty page is asked for again.
    assert (out["api_calls"], out["retries"]) == (5, 1)
    sent = requests.get(f"{three_coins.base_url}/global", timeout=5).content
    assert lake.get_bytes(out["global_key"]) == sent
    assert result["quality"]["dominance_basis"] == "global"


def test_deadline_near_raises_before_fetching(server, lake):
    with pytest.raises(extract.ExtractDeadlineError, match="before page 1"):
        extract.run(event(), config=config_for(server), storage=lake, deadline=lambda: 3.0)
    assert server.requests == []


def test_an_injected_client_is_used(server, lake):
    client = CoinGeckoClient(server.base_url, rng=random.Random(0), sleep=lambda s: None)
    out = extract.run(event(max_coins=5), config=config_for(server), storage=lake, client=client)
    assert client.api_calls == out["api_calls"] == 2


def test_handler_reads_the_environment_at_call_time(server, tmp_path, monkeypatch, lambda_context):
    monkeypatch.setenv("LAKE_LOCAL_DIR", str(tmp_path / "lake"))
    monkeypatch.setenv("LAKE_BUCKET", "crypto-etl-local")
    monkeypatch.setenv("COINGECKO_BASE_URL", server.base_url)
    monkeypatch.setenv("COINGECKO_API_PLAN", "demo")
    monkeypatch.setenv("COINGECKO_API_KEY", "CG-local-key")
    monkeypatch.delenv("COINGECKO_API_KEY_SECRET_ARN", raising=False)
    out = extract.handler(event(max_coins=300), lambda_context)
    assert out["bucket"] == "crypto-etl-local"
    assert (out["pages"], out["coin_count"]) == (2, 300)
    assert (tmp_path / "lake" / out["manifest_key"]).is_file()
    assert {r.headers.get("x-cg-demo-api-key") for r in server.requests} == {"CG-local-key"}


@pytest.fixture
def log_lines():
    """The extract logger's JSON lines (its handler writes to the stdout of import time)."""
    buf = io.StringIO()
    stream_handler = extract.logger.registered_handler
    old = stream_handler.setStream(buf)
    try:
        yield lambda: [json.loads(line) for line in buf.getvalue().splitlines() if line.strip()]
    finally:
        stream_handler.setStream(old)


def test_handler_logs_one_line_per_page_with_the_snapshot_id(
    server, tmp_path, monkeypatch, lambda_context, log_lines
):
    monkeypatch.setenv("LAKE_LOCAL_DIR", str(tmp_path / "lake"))
    monkeypatch.setenv("COINGECKO_BASE_URL", server.base_url)
    monkeypatch.setenv("COINGECKO_API_KEY", "CG-secret-value")
    server.script("/global", Scripted.error(500))
    monkeypatch.setenv("COINGECKO_BACKOFF_BASE_SECONDS", "0.001")
    extract.handler(event(max_coins=600), lambda_context)
    lines = log_lines()
    assert lines and all(line.get("snapshot_id") == "exec-0001" for line in lines)
    page_lines = [line for line in lines if "page" in line and "rows" in line]
    assert [line["page"] for line in page_lines] == [1, 2, 3]
    assert [line["kept"] for line in page_lines] == [250, 250, 100]
    [retry] = [line for line in lines if line["level"] == "WARNING"]
    assert "HTTP 500" in retry["problem"] and retry["url"].endswith("/global")
    assert "CG-secret-value" not in json.dumps(lines)


def test_replay_of_the_recorded_pages(tmp_path, lake, shared_coingecko_dir):
    replay = tmp_path / "replay"
    replay.mkdir()
    for n in (1, 2):
        shutil.copy(
            shared_coingecko_dir / f"markets_khooihzhz_coingecko-python_2_page{n}.json",
            replay / f"markets-page-{n:04d}.json",
        )
    with ReplayServer.from_directory(replay) as server:
        out = extract.run(event(per_page=1, max_coins=10), config=config_for(server), storage=lake)
    prefix = out["raw_prefix"]
    assert (out["pages"], out["coin_count"]) == (3, 2)  # page 3 came back empty
    for n in (1, 2):
        assert (
            lake.get_bytes(keys.page_key(prefix, n))
            == (replay / f"markets-page-{n:04d}.json").read_bytes()
        )
    assert lake.get_bytes(keys.page_key(prefix, 3)) == b"[]"
    manifest = json.loads(lake.get_bytes(out["manifest_key"]))
    assert [(p["page"], p["count"]) for p in manifest["pages"]] == [(1, 1), (2, 1), (3, 0)]
    assert manifest["stop_reason"] == "empty_page"
    ids = [json.loads(lake.get_bytes(p["key"]))[: p["count"]] for p in manifest["pages"]]
    assert [c["id"] for page in ids for c in page] == ["bitcoin", "ethereum"]
    # no global.json in the directory: /global is the minimal body without totals
    global_body = json.loads(lake.get_bytes(out["global_key"]))
    assert global_body["data"]["total_market_cap"] == {}


@pytest.mark.parametrize("name", ["snap@2024", "a+b", "Ünïcode", "run=1", "x" * 80])
def test_an_execution_name_that_is_not_key_safe_gets_a_digest_run_id(server, lake, name):
    """AWS allows execution names our keys cannot hold: with the snapshot id in the input, the
    run id falls back to a digest of the execution id instead of failing the run."""
    ev = event(snapshot_id="s", max_coins=10)
    ev["execution"]["name"] = name
    out = extract.run(ev, config=config_for(server), storage=lake)
    expected = name if name == "x" * 80 else keys.run_id(name, ev["execution"]["id"])
    assert out["run_id"] == expected
    assert out["raw_prefix"].endswith(f"/snapshot=s/run={expected}/")
    assert name == "x" * 80 or expected.startswith("x-")
