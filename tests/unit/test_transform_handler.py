"""The Transform Lambda end to end on a folder lake laid out as the Extract contract says."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import logging
from collections.abc import Iterator
from datetime import date
from pathlib import Path

import pandas as pd
import pytest

from functions.common import keys
from functions.common.errors import DataQualityError, ValidationError
from functions.common.schema import COLUMN_NAMES, REJECT_REASON_COLUMN
from functions.common.storage import LocalStorage, put_json
from functions.transform import handler as transform_handler
from functions.transform.handler import handler, run
from tests.unit.test_transform_rules import coin

BUCKET = "crypto-etl-test"
SNAPSHOT = "exec-2026-11-23T08-00-00"
RUN = "exec-2026-11-23T08-00-00"
DAY = date(2026, 11, 23)


def lay_out(
    storage: LocalStorage,
    pages: list[list],
    global_body: dict | None = None,
    *,
    snapshot_id: str = SNAPSHOT,
    run_id: str = RUN,
    counts: list[int] | None = None,
    max_coins: int = 1000,
    global_error: str | None = None,
) -> dict:
    """Write raw pages, global.json and manifest.json like the Extract does; return its output."""
    prefix = keys.raw_prefix(snapshot_id, DAY, run_id)
    entries = []
    for n, body in enumerate(pages, start=1):
        key = keys.page_key(prefix, n)
        data = json.dumps(body).encode()
        storage.put_bytes(key, data, "application/json")
        count = len(body) if counts is None else counts[n - 1]
        entries.append(
            {
                "page": n,
                "key": key,
                "count": count,
                "rows": len(body),
                "sha256": hashlib.sha256(data).hexdigest(),
            }
        )
    global_key = None
    if global_body is not None:
        global_key = keys.global_key(prefix)
        put_json(storage, global_key, global_body)
    manifest = {
        "snapshot_id": snapshot_id,
        "execution_id": f"arn:aws:states:us-east-1:123456789012:execution:sm:{run_id}",
        "run_id": run_id,
        "fetched_at": "2026-11-23T08:00:01.250000+00:00",
        "fetch_date": DAY.isoformat(),
        "partition_date": DAY.isoformat(),
        "vs_currency": "usd",
        "per_page": 250,
        "max_coins": max_coins,
        "source_base_url": "http://127.0.0.1:1/api/v3",
        "pages": entries,
        "global_key": global_key,
        "global_error": global_error,
        "coin_count": sum(e["count"] for e in entries),
        "api_calls": len(pages) + 1,
        "retries": 0,
    }
    put_json(storage, keys.manifest_key(prefix), manifest)
    return {
        "snapshot_id": snapshot_id,
        "execution_id": manifest["execution_id"],
        "run_id": run_id,
        "fetched_at": manifest["fetched_at"],
        "fetch_date": DAY.isoformat(),
        "partition_date": DAY.isoformat(),
        "vs_currency": "usd",
        "bucket": storage.bucket,
        "raw_prefix": prefix,
        "manifest_key": keys.manifest_key(prefix),
        "global_key": global_key,
        "global_error": global_error,
        "pages": len(pages),
        "coin_count": manifest["coin_count"],
        "stop_reason": "empty_page",
        "end_confirmed": True,
        "paging_warning": None,
        "api_calls": manifest["api_calls"],
        "retries": 0,
        "max_coins": max_coins,
        "per_page": 250,
    }


@pytest.fixture
def lake(tmp_path: Path) -> LocalStorage:
    return LocalStorage(tmp_path / "lake", bucket=BUCKET)


@pytest.fixture
def log_lines() -> Iterator[list[dict]]:
    """The transform logger's records, formatted by Powertools as JSON."""
    records: list[dict] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(json.loads(self.format(record)))

    collect = Collect()
    collect.setFormatter(transform_handler.logger.registered_formatter)
    transform_handler.logger.addHandler(collect)
    try:
        yield records
    finally:
        transform_handler.logger.removeHandler(collect)


def read_csv_gz(storage: LocalStorage, key: str) -> pd.DataFrame:
    data = gzip.decompress(storage.get_bytes(key))
    return pd.read_csv(io.BytesIO(data), dtype=str, keep_default_na=False, na_values=[""])


GLOBAL = {"data": {"total_market_cap": {"usd": 10_000.0}, "total_volume": {"usd": 1_000.0}}}


def test_handler_end_to_end(lake: LocalStorage, monkeypatch, lambda_context, log_lines) -> None:
    page1 = [coin("bitcoin", 1, market_cap=5000, total_volume=400), coin(None, 2)]
    page2 = [coin("ethereum", 3, market_cap=2500, total_volume=100), coin("bitcoin", 4)]
    event = lay_out(lake, [page1, page2], GLOBAL)
    monkeypatch.setenv("LAKE_LOCAL_DIR", str(lake.root))
    monkeypatch.setenv("LAKE_BUCKET", BUCKET)

    out = handler(dict(event), lambda_context)

    assert {k: out[k] for k in event} == event  # the input passes through
    run_part = f"dt=2026-11-23/snapshot={SNAPSHOT}/run={RUN}/"
    assert out["processed_key"] == f"processed/{run_part}crypto_data.csv.gz"
    assert out["rejected_key"] == f"rejected/{run_part}rejected.csv.gz"
    assert (out["row_count"], out["rejected_count"], out["duplicate_count"]) == (2, 1, 1)
    assert out["quality"]["dominance_basis"] == "global"
    json.dumps(out, allow_nan=False)

    processed = read_csv_gz(lake, out["processed_key"])
    assert list(processed.columns) == list(COLUMN_NAMES)
    assert list(processed["coin_id"]) == ["bitcoin", "ethereum"]
    assert [float(v) for v in processed["market_cap_dominance_pct"]] == [50.0, 25.0]
    assert [float(v) for v in processed["volume_pct"]] == [40.0, 10.0]
    assert set(processed["snapshot_id"]) == {SNAPSHOT}
    assert set(processed["fetched_at"]) == {"2026-11-23 08:00:01.250000+00:00"}
    rejected = read_csv_gz(lake, out["rejected_key"])
    assert list(rejected[REJECT_REASON_COLUMN]) == ["missing_id"]

    done = [r for r in log_lines if r["message"] == "transform done"]
    assert len(done) == 1 and done[0]["snapshot_id"] == SNAPSHOT
    assert done[0]["quality"]["rows_in"] == 4


def test_rerun_rewrites_identical_bytes(lake: LocalStorage) -> None:
    event = lay_out(lake, [[coin("a", 1), coin("b", 2)]], GLOBAL)
    first = run(event, storage=lake)
    data = lake.get_bytes(first["processed_key"])
    second = run(event, storage=lake)
    assert second == first
    assert lake.get_bytes(second["processed_key"]) == data


def test_no_rejects_still_rewrites_the_rejected_file_header_only(lake: LocalStorage) -> None:
    # A first attempt refused a row; the rerun refuses none and must not leave it behind.
    bad = lay_out(lake, [[coin("a", 1), coin("b", 2, current_price=-1)]], GLOBAL)
    first = run(bad, storage=lake)
    assert first["rejected_count"] == 1
    assert len(read_csv_gz(lake, first["rejected_key"])) == 1
    good = lay_out(lake, [[coin("a", 1)]], GLOBAL)
    out = run(good, storage=lake)
    assert out["rejected_count"] == 0
    assert out["rejected_key"] == first["rejected_key"]
    rejected = read_csv_gz(lake, out["rejected_key"])
    assert len(rejected) == 0 and "reject_reason" in rejected.columns


def test_missing_global_uses_the_fetched_basis(lake: LocalStorage) -> None:
    event = lay_out(lake, [[coin("a", 1, market_cap=300), coin("b", 2, market_cap=100)]])
    assert event["global_key"] is None
    out = run(event, storage=lake)
    processed = read_csv_gz(lake, out["processed_key"])
    assert set(processed["dominance_basis"]) == {"fetched"}
    assert [float(v) for v in processed["market_cap_dominance_pct"]] == [75.0, 25.0]
    # neither the event nor the manifest says why: the handler says what it saw
    reason = out["quality"]["dominance_basis_reason"]
    assert reason == "/global unavailable: the Extract stored no /global body"


def test_manifest_counts_and_max_coins_are_honoured(lake: LocalStorage) -> None:
    pages = [[coin("a", 1), coin("b", 2), coin("c", 3)], [coin("d", 4), coin("e", 5)]]
    event = lay_out(lake, pages, GLOBAL, counts=[3, 2])
    event["max_coins"] = 4
    out = run(event, storage=lake)
    assert list(read_csv_gz(lake, out["processed_key"])["coin_id"]) == ["a", "b", "c", "d"]
    assert out["quality"]["rows_trimmed"] == 1


def test_no_valid_rows_fails_after_writing_the_rejects(lake: LocalStorage) -> None:
    event = lay_out(lake, [[coin(None, 1), coin("x", 2, total_volume=-1)]], GLOBAL)
    with pytest.raises(DataQualityError, match=f"snapshot {SNAPSHOT}: no valid rows out of 2"):
        run(event, storage=lake)
    rejected = read_csv_gz(lake, keys.rejected_key(SNAPSHOT, DAY, RUN))
    assert list(rejected[REJECT_REASON_COLUMN]) == ["missing_id", "negative:total_volume"]
    assert not lake.exists(keys.processed_key(SNAPSHOT, DAY, RUN))


def test_output_is_accepted_by_the_load_contract(lake: LocalStorage) -> None:
    from functions.load.handler import parse_event as load_parse_event

    event = lay_out(lake, [[coin("a", 1), coin(None, 2)]], GLOBAL)
    out = run(event, storage=lake)
    request = load_parse_event(out, bucket=BUCKET)
    assert request.processed_key == out["processed_key"] and request.row_count == 1


def _bad(field: str, value):
    def mutate(event: dict) -> None:
        if value is _DELETE:
            del event[field]
        else:
            event[field] = value

    return mutate


_DELETE = object()
OTHER_PREFIX = keys.raw_prefix("other-snapshot", DAY, RUN)
OTHER_RUN_PREFIX = keys.raw_prefix(SNAPSHOT, DAY, "another-run")


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("bucket", "someone-elses-bucket"),
        ("bucket", _DELETE),
        ("bucket", f"{BUCKET}\n"),
        ("snapshot_id", "../etc"),
        ("snapshot_id", None),
        ("snapshot_id", f"{SNAPSHOT}\n"),
        ("run_id", _DELETE),
        ("run_id", f"{RUN}\n"),
        ("run_id", "../run"),
        ("partition_date", _DELETE),
        ("partition_date", "23/11/2026"),
        ("fetch_date", "23/11/2026"),
        ("fetch_date", _DELETE),
        ("raw_prefix", "processed/dt=2026-11-23/snapshot=x/"),
        ("raw_prefix", "raw/../processed/"),
        ("raw_prefix", OTHER_PREFIX),
        ("raw_prefix", OTHER_RUN_PREFIX),
        ("raw_prefix", keys.raw_prefix(SNAPSHOT, date(2026, 11, 24), RUN)),
        ("manifest_key", f"{OTHER_PREFIX}manifest.json"),
        ("manifest_key", "/etc/passwd"),
        ("manifest_key", f"{OTHER_RUN_PREFIX}manifest.json"),
        ("manifest_key", _DELETE),
        ("global_key", "processed/global.json"),
        ("global_key", 5),
        ("global_key", f"{OTHER_RUN_PREFIX}global.json"),
        ("global_error", 403),
        ("fetched_at", "2026-11-23T08:00:00"),
        ("fetched_at", "yesterday"),
        ("fetched_at", None),
        ("vs_currency", ""),
        ("vs_currency", "usd; drop table"),
        ("vs_currency", None),
        ("max_coins", 0),
        ("max_coins", "1000"),
        ("max_coins", True),
    ],
)
def test_bad_event_names_the_field(lake: LocalStorage, field: str, value) -> None:
    event = lay_out(lake, [[coin("a", 1)]], GLOBAL)
    _bad(field, value)(event)
    with pytest.raises(ValidationError) as err:
        run(event, storage=lake)
    assert err.value.field == field
    assert not lake.list_keys(keys.PROCESSED)


def test_event_must_be_an_object(lake: LocalStorage) -> None:
    with pytest.raises(ValidationError, match="event"):
        run(["not", "a", "dict"], storage=lake)  # type: ignore[arg-type]


def test_manifest_of_another_snapshot_is_refused(lake: LocalStorage) -> None:
    event = lay_out(lake, [[coin("a", 1)]], GLOBAL)
    manifest = json.loads(lake.get_bytes(event["manifest_key"]))
    manifest["snapshot_id"] = "other"
    put_json(lake, event["manifest_key"], manifest)
    with pytest.raises(ValidationError, match="snapshot_id") as err:
        run(event, storage=lake)
    assert "manifest.json" in err.value.field


def test_manifest_page_key_outside_the_snapshot_is_refused(lake: LocalStorage) -> None:
    event = lay_out(lake, [[coin("a", 1)]], GLOBAL)
    manifest = json.loads(lake.get_bytes(event["manifest_key"]))
    manifest["pages"][0]["key"] = f"{OTHER_PREFIX}markets/page-0001.json"
    put_json(lake, event["manifest_key"], manifest)
    with pytest.raises(ValidationError) as err:
        run(event, storage=lake)
    assert err.value.field.endswith("pages[0].key")


def test_missing_page_file_is_an_error_naming_the_key(lake: LocalStorage) -> None:
    event = lay_out(lake, [[coin("a", 1)], [coin("b", 2)]], GLOBAL)
    page2 = lake.root / keys.page_key(event["raw_prefix"], 2)
    page2.unlink()
    with pytest.raises(ValidationError, match=r"page-0002\.json"):
        run(event, storage=lake)


def test_a_page_changed_after_the_manifest_is_refused_naming_it(lake: LocalStorage) -> None:
    event = lay_out(lake, [[coin("a", 1)], [coin("b", 2)]], GLOBAL)
    page2 = keys.page_key(event["raw_prefix"], 2)
    # Still valid JSON, same coin count: only the digest can tell it changed.
    lake.put_bytes(page2, json.dumps([coin("b", 2, current_price=999.0)]).encode())
    with pytest.raises(ValidationError, match="SHA-256") as err:
        run(event, storage=lake)
    assert err.value.field == page2
    manifest = json.loads(lake.get_bytes(event["manifest_key"]))
    assert manifest["pages"][1]["sha256"] in str(err.value)
    assert not lake.list_keys(keys.PROCESSED)


@pytest.mark.parametrize("digest", [None, "ABC", "0" * 63, "A" * 64])
def test_a_manifest_page_without_a_valid_sha256_is_refused(lake: LocalStorage, digest) -> None:
    event = lay_out(lake, [[coin("a", 1)]], GLOBAL)
    manifest = json.loads(lake.get_bytes(event["manifest_key"]))
    manifest["pages"][0]["sha256"] = digest
    put_json(lake, event["manifest_key"], manifest)
    with pytest.raises(ValidationError) as err:
        run(event, storage=lake)
    assert err.value.field == f"{event['manifest_key']}: pages[0].sha256"
    assert not lake.list_keys(keys.PROCESSED)


def test_global_error_of_the_extract_is_the_fetched_basis_reason(lake: LocalStorage) -> None:
    why = (
        "SourceError: CoinGecko GET http://127.0.0.1:1/api/v3/global failed with HTTP 403"
        " (not retried): This endpoint is temporarily unavailable"
    )
    pages = [[coin("a", 1, market_cap=300), coin("b", 2, market_cap=100)]]
    event = lay_out(lake, pages, global_error=why)
    out = run(event, storage=lake)
    assert out["global_error"] == why  # passes through to Load
    processed = read_csv_gz(lake, out["processed_key"])
    assert set(processed["dominance_basis"]) == {"fetched"}
    assert [float(v) for v in processed["market_cap_dominance_pct"]] == [75.0, 25.0]
    reason = out["quality"]["dominance_basis_reason"]
    assert "/global unavailable" in reason and "HTTP 403" in reason
    assert "This endpoint is temporarily unavailable" in reason


def test_without_global_error_in_the_event_the_manifest_says_why(lake: LocalStorage) -> None:
    event = lay_out(lake, [[coin("a", 1)]], global_error="SourceError: HTTP 403: go away")
    event["global_error"] = None  # e.g. an older state payload without the field
    out = run(event, storage=lake)
    reason = out["quality"]["dominance_basis_reason"]
    assert reason == "/global unavailable: SourceError: HTTP 403: go away"


def test_each_run_writes_under_its_own_prefix(lake: LocalStorage) -> None:
    first = run(lay_out(lake, [[coin("a", 1), coin("b", 2)]], GLOBAL), storage=lake)
    files = {k: lake.get_bytes(k) for k in lake.list_keys("")}
    second = run(lay_out(lake, [[coin("c", 1)]], GLOBAL, run_id="exec-rerun"), storage=lake)
    assert second["processed_key"] == keys.processed_key(SNAPSHOT, DAY, "exec-rerun")
    assert second["rejected_key"] == keys.rejected_key(SNAPSHOT, DAY, "exec-rerun")
    assert {k: lake.get_bytes(k) for k in files} == files  # the first run is untouched
    assert list(read_csv_gz(lake, first["processed_key"])["coin_id"]) == ["a", "b"]
    assert list(read_csv_gz(lake, second["processed_key"])["coin_id"]) == ["c"]


def test_recorded_two_page_capture_end_to_end(lake: LocalStorage, shared_coingecko_dir) -> None:
    base = "markets_khooihzhz_coingecko-python_2_page{}.json"
    files = [shared_coingecko_dir / base.format(n) for n in (1, 2)]
    glob_file = shared_coingecko_dir / "global_khooihzhz_coingecko-python_1.json"
    if not all(f.is_file() for f in [*files, glob_file]):
        pytest.skip("recorded two-page capture not present")
    pages = [json.loads(f.read_text()) for f in files]
    body = json.loads(glob_file.read_text())
    out = run(lay_out(lake, pages, body), storage=lake)
    processed = read_csv_gz(lake, out["processed_key"])
    assert list(processed["coin_id"]) == [pages[0][0]["id"], pages[1][0]["id"]]
    total = body["data"]["total_market_cap"]["usd"]
    assert float(processed.loc[0, "market_cap_dominance_pct"]) == pytest.approx(
        pages[0][0]["market_cap"] / total * 100, rel=1e-12
    )
    assert set(processed["dominance_basis"]) == {"global"}
