"""Transform on every recorded /coins/markets body in ../shared/data/coingecko.

Expected values are computed here from the raw JSON with plain Python, not by the code under test.
A markets file is paired with the /global body of the same source repository captured the same
UTC day (when there is one); otherwise the snapshot has no /global and must use the fallback.
"""

from __future__ import annotations

import gzip
import io
import json
import math
import re
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import pytest

from functions.common.schema import COLUMN_NAMES, TIMESTAMP_FORMAT
from functions.transform.csv_gz import to_csv_gz
from functions.transform.transform import transform
from tests.conftest import SHARED_COINGECKO

MARKET_FILES = sorted(p.name for p in SHARED_COINGECKO.glob("markets_*.json")) or ["<absent>"]
FETCHED_AT = "2026-11-23T08:00:00+00:00"


def _source(name: str) -> str:
    """The repository part of a recorded file name: markets_<repo>_<n>[_pageN].json."""
    stem = name.split("_", 1)[1].removesuffix(".json")
    return re.sub(r"_\d+(_page\d+)?$", "", stem)


def _vs_currency(folder: Path, name: str) -> str:
    """The vs_currency of the recorded request, from SOURCES.md (usd unless it says otherwise)."""
    for line in (folder / "SOURCES.md").read_text().splitlines():
        if line.startswith(f"| {name} "):
            found = re.search(r"vs_currency=([a-z]+)", line)
            return found.group(1) if found else "usd"
    return "usd"


def _capture_day(rows: list[dict]) -> str:
    return max(r["last_updated"] for r in rows)[:10]


def _matching_global(folder: Path, name: str, rows: list[dict]) -> dict | None:
    for path in sorted(folder.glob("global_*.json")):
        if _source(path.name) != _source(name):
            continue
        body = json.loads(path.read_text())
        day = datetime.fromtimestamp(body["data"]["updated_at"], UTC).date().isoformat()
        if day == _capture_day(rows):
            return body
    return None


def _valid(row: dict, totals: dict[str, float] | None = None) -> bool:
    """The reject rules, restated independently for the recorded rows (``totals``: /global's
    ``market_cap`` / ``total_volume`` totals when the snapshot has them)."""
    if not isinstance(row.get("id"), str) or not row["id"].strip():
        return False
    fields = ("current_price", "market_cap", "total_volume")
    if any(row.get(k) is not None and row[k] < 0 for k in fields):
        return False
    return all(row.get(k) is None or row[k] <= total for k, total in (totals or {}).items())


def _first_valid_by_id(rows: list[dict], totals: dict[str, float] | None = None) -> dict[str, dict]:
    out: dict[str, dict] = {}
    for row in rows:
        if _valid(row, totals) and row["id"] not in out:
            out[row["id"]] = row
    return out


def _totals(body: dict | None, vs: str) -> dict[str, float] | None:
    if body is None:
        return None
    data = body["data"]
    return {"market_cap": data["total_market_cap"][vs], "total_volume": data["total_volume"][vs]}


def _run(folder: Path, name: str, with_global: bool = True):
    rows = json.loads((folder / name).read_text())
    vs = _vs_currency(folder, name)
    body = _matching_global(folder, name, rows) if with_global else None
    manifest = {"snapshot_id": "rec", "pages": [{"page": 1, "key": "k", "count": len(rows)}]}
    result = transform(
        manifest,
        [rows],
        body,
        snapshot_id="rec",
        fetched_at=FETCHED_AT,
        fetch_date="2026-11-23",
        vs_currency=vs,
    )
    return rows, vs, body, result


@pytest.mark.parametrize("with_global", [True, False], ids=["global-if-matched", "no-global"])
@pytest.mark.parametrize("name", MARKET_FILES)
def test_recorded_markets_transform(
    shared_coingecko_dir: Path, name: str, with_global: bool
) -> None:
    rows, vs, body, result = _run(shared_coingecko_dir, name, with_global)
    expected = _first_valid_by_id(rows, _totals(body, vs))
    out = result.processed
    q = result.quality

    assert list(out.columns) == list(COLUMN_NAMES)
    assert list(out["coin_id"]) == list(expected)  # page order kept, one row per id
    assert q["rows_in"] == len(rows)
    assert q["rows_in"] == q["rows_out"] + q["rejected"] + q["duplicates"]
    assert q["rows_out"] == len(expected)
    json.dumps(q, allow_nan=False)  # the quality summary travels in the Step Functions payload

    if body is not None:
        cap_total = body["data"]["total_market_cap"][vs]
        vol_total = body["data"]["total_volume"][vs]
        assert set(out["dominance_basis"]) == {"global"}
    else:
        cap_total = sum(r["market_cap"] for r in expected.values() if r["market_cap"] is not None)
        vol_total = sum(
            r["total_volume"] for r in expected.values() if r["total_volume"] is not None
        )
        assert set(out["dominance_basis"]) == {"fetched"}
        assert q["dominance_sum_pct"] == pytest.approx(100.0, rel=1e-9)
    assert q["dominance_sum_pct"] <= 100.0 + 1e-6

    by_id = out.set_index("coin_id")
    ids = list(expected)
    for coin_id in {ids[0], ids[len(ids) // 2], ids[-1]}:
        raw = expected[coin_id]
        got = by_id.loc[coin_id]
        assert got["market_cap_dominance_pct"] == pytest.approx(
            raw["market_cap"] / cap_total * 100, rel=1e-12
        )
        assert got["volume_pct"] == pytest.approx(raw["total_volume"] / vol_total * 100, rel=1e-12)
        assert got["current_price"] == float(raw["current_price"])
        assert got["market_cap_rank"] == raw["market_cap_rank"]
        assert got["symbol"] == raw["symbol"] and got["name"] == raw["name"]
        assert got["image_url"] == raw["image"]
        stamp = datetime.fromisoformat(raw["last_updated"]).astimezone(UTC)
        assert got["last_updated"].to_pydatetime() == stamp
        if raw["max_supply"] is None:
            assert math.isnan(got["max_supply"])
        else:
            assert got["max_supply"] == float(raw["max_supply"])

    with_roi = [r for r in expected.values() if r["roi"] is not None]
    for raw in with_roi[:3]:
        got = by_id.loc[raw["id"]]
        assert got["roi_times"] == float(raw["roi"]["times"])
        assert got["roi_currency"] == raw["roi"]["currency"]
        assert got["roi_percentage"] == float(raw["roi"]["percentage"])
    for raw in [r for r in expected.values() if r["roi"] is None][:3]:
        got = by_id.loc[raw["id"]]
        assert math.isnan(got["roi_times"]) and pd.isna(got["roi_currency"])


@pytest.mark.parametrize("name", MARKET_FILES)
def test_recorded_markets_csv_round_trip(shared_coingecko_dir: Path, name: str) -> None:
    rows, _, _, result = _run(shared_coingecko_dir, name)
    data = to_csv_gz(result.processed)
    back = pd.read_csv(
        io.BytesIO(gzip.decompress(data)), keep_default_na=False, na_values=[""], dtype=str
    )
    assert list(back.columns) == list(COLUMN_NAMES)
    assert len(back) == result.row_count
    raw_by_id = _first_valid_by_id(rows)
    for line in back.to_dict("records"):
        raw = raw_by_id[line["coin_id"]]
        for field in ("current_price", "market_cap", "total_volume", "ath", "atl"):
            if raw[field] is None:
                assert pd.isna(line[field])
            else:
                assert float(line[field]) == float(raw[field])  # full precision survives
        assert line["market_cap_rank"] == str(raw["market_cap_rank"])  # no ".0"
        expect = datetime.fromisoformat(raw["ath_date"]).astimezone(UTC)
        assert line["ath_date"] == expect.strftime(TIMESTAMP_FORMAT)
        if raw["fully_diluted_valuation"] is None:
            assert pd.isna(line["fully_diluted_valuation"])


def test_recorded_two_page_capture(shared_coingecko_dir: Path) -> None:
    """The real 2-page capture (1 coin per page) concatenates in page order."""
    names = ["markets_khooihzhz_coingecko-python_2_page1.json"]
    names.append(names[0].replace("page1", "page2"))
    if not all((shared_coingecko_dir / n).is_file() for n in names):
        pytest.skip("two-page capture not present")
    bodies = [json.loads((shared_coingecko_dir / n).read_text()) for n in names]
    manifest = {
        "pages": [
            {"page": 2, "key": "p2", "count": len(bodies[1])},
            {"page": 1, "key": "p1", "count": len(bodies[0])},
        ]
    }
    result = transform(
        manifest,
        [bodies[1], bodies[0]],  # listed out of order on purpose
        _matching_global(shared_coingecko_dir, names[0], bodies[0] + bodies[1]),
        snapshot_id="two",
        fetched_at=FETCHED_AT,
        fetch_date="2026-11-23",
        vs_currency="usd",
    )
    assert list(result.processed["coin_id"]) == [bodies[0][0]["id"], bodies[1][0]["id"]]
    assert list(result.processed["market_cap_rank"]) == [1, 2]


def test_spam_token_above_the_real_market_is_rejected(shared_coingecko_dir: Path) -> None:
    """A real top-100 capture and its same-day /global, plus one spam token worth ~3e27 USD.

    Before: it stayed, with MARKET_CAP_DOMINANCE_PCT ~1.9e17 and a failed check naming nobody.
    """
    name = "markets_khooihzhz_coingecko-python_1.json"
    if not (shared_coingecko_dir / name).is_file():
        pytest.skip(f"{name} not present")
    rows = json.loads((shared_coingecko_dir / name).read_text())
    body = _matching_global(shared_coingecko_dir, name, rows)
    assert body is not None
    cap_total = body["data"]["total_market_cap"]["usd"]
    vol_total = body["data"]["total_volume"]["usd"]
    spam = {**rows[-1], "id": "spam-token", "market_cap": 3.1e27, "total_volume": vol_total * 7e9}
    rows = [*rows[:50], spam, *rows[50:]]
    manifest = {"snapshot_id": "rec", "pages": [{"page": 1, "key": "k", "count": len(rows)}]}
    result = transform(
        manifest,
        [rows],
        body,
        snapshot_id="rec",
        fetched_at=FETCHED_AT,
        fetch_date="2026-11-23",
        vs_currency="usd",
    )
    q = result.quality
    assert "spam-token" not in set(result.processed["coin_id"])
    assert result.rejected_count == 1
    assert result.rejected.loc[0, "reject_reason"] == "exceeds_global_total:market_cap"
    detail = result.rejected.loc[0, "reject_detail"]
    assert f"market_cap=3.1e+27 > /global total_market_cap={float(cap_total)!r}" in detail
    assert q["rejected_coins"][0]["coin_id"] == "spam-token"
    assert (result.rejected.loc[0, "source_page"], result.rejected.loc[0, "source_row"]) == (1, 51)
    # Every stored share is a real share of the real market, and the checks pass.
    assert result.processed["market_cap_dominance_pct"].max() < 100
    assert q["dominance_basis"] == "global" and q["dominance_sum_pct"] <= 100
    assert q["passed"] and q["failed_checks"] == []
    btc = result.processed.set_index("coin_id").loc["bitcoin"]
    raw_btc = next(r for r in rows if r["id"] == "bitcoin")
    assert btc["market_cap_dominance_pct"] == pytest.approx(raw_btc["market_cap"] / cap_total * 100)
