"""The fast paths give exactly what the plain ones give: orjson vs ``json.loads``, the chunked
frame vs one frame, the column-wise CSV writer vs a row-by-row writer of the encoding rules
(``functions.common.schema``), streamed gzip vs one-shot ``gzip.compress``; on recorded and on
hostile synthetic pages. The references here are written plainly, value by value."""

from __future__ import annotations

import gzip
import json
import math
import random
from datetime import date, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from functions.common.schema import COLUMN_NAMES, PROCESSED_COLUMNS
from functions.common.storage import LocalStorage
from functions.transform import transform as transform_module
from functions.transform.csv_gz import (
    csv_bytes,
    float_texts,
    gzip_bytes,
    iter_csv_bytes,
    rejected_to_csv_gz,
    to_csv_gz,
    verify_csv_gz,
)
from functions.transform.gate import GateConfig
from functions.transform.handler import LazyPages, parse_page, run
from functions.transform.transform import REJECTED_COLUMNS, transform
from tests.conftest import SHARED_COINGECKO
from tests.unit.test_transform_handler import BUCKET, lay_out
from tests.unit.test_transform_rules import coin, manifest_for

FETCHED_AT = "2026-11-23T08:00:00.5+01:00"
KIND = {name: kind for name, _, kind in PROCESSED_COLUMNS}


# --- a plain reference writer of the encoding rules -------------------------------------------


def _reference_field(value: object, kind: str) -> str:
    if value is None or value is pd.NaT or (isinstance(value, float) and math.isnan(value)):
        return ""
    if value is pd.NA:
        return ""
    if kind == "float":
        return repr(float(value))
    if kind == "int":
        return str(int(value))
    if kind == "timestamp":
        stamp = pd.Timestamp(value).tz_convert("UTC")
        return stamp.to_pydatetime().replace(tzinfo=None).isoformat(" ", "microseconds") + "+00:00"
    if kind == "date":
        return (value.date() if isinstance(value, datetime) else value).isoformat()
    text = str(value)
    return '"' + text.replace('"', '""') + '"' if text else ""


def reference_csv(df: pd.DataFrame, columns: tuple[str, ...]) -> bytes:
    kinds = []
    for name in columns:
        if name in KIND:
            kinds.append(KIND[name])
        elif pd.api.types.is_integer_dtype(df[name]) and not pd.api.types.is_bool_dtype(df[name]):
            kinds.append("int")
        else:
            kinds.append("str")
    lines = [",".join(columns)]
    for row in df[list(columns)].itertuples(index=False):
        lines.append(",".join(_reference_field(v, k) for v, k in zip(row, kinds, strict=True)))
    return ("\n".join(lines) + "\n").encode()


# --- inputs -----------------------------------------------------------------------------------


def recorded_pages() -> list[list]:
    paths = sorted(SHARED_COINGECKO.glob("markets_*.json"))
    if not paths:
        pytest.skip(f"no recorded markets bodies in {SHARED_COINGECKO}")
    return [json.loads(p.read_text()) for p in paths]


def _boundary_floats() -> list[float]:
    out = [0.0, -0.0, 5e-324, 1.7976931348623157e308, 0.1, 1e-7, 123456789.12345679]
    for edge in (1e-4, 1e16, 1e15, 1e-5, 1e21, 1e22):
        for x in (edge, -edge):
            out += [x, float(np.nextafter(x, 0)), float(np.nextafter(x, np.inf * x))]
    return out


def hostile_pages(n_pages: int = 7, per_page: int = 11, seed: int = 5) -> list[list]:
    """Pages with every kind of cell the rules tell apart, keys missing for whole pages, extra
    fields only in late pages, entries that are not objects, NaN literals, repeats."""
    rng = random.Random(seed)
    floats = [abs(x) for x in _boundary_floats() if abs(x) < 1e30]
    odd_numbers = [None, 12, "1.5e-9", "abc", True, -3.0, "1e999"]
    texts = ['Comma, "Quote"', "cr\rhere", "two\nlines", "Ünïcödé 🚀", "", "NA", "tab\there"]
    odd_texts = [None, 7, "x" * 301, "   "]
    stamps = ["0001-01-01T00:00:00Z", "0999-06-30T12:00:00.5+02:00", "9999-12-31T23:59:59.999Z"]

    def pick(good: list, odd: list) -> object:
        return rng.choice(odd) if rng.random() < 0.08 else rng.choice(good)

    pages: list[list] = []
    rank = 0
    for p in range(n_pages):
        page: list = []
        for r in range(per_page):
            rank += 1
            row = coin(f"coin-{rank % 60}", rank)  # ids repeat across pages: duplicates
            row["name"] = pick(texts, odd_texts)
            row["symbol"] = pick(texts, odd_texts)
            for name in ("current_price", "market_cap", "total_volume", "ath", "atl", "low_24h"):
                row[name] = pick(floats, odd_numbers)
            row["last_updated"] = pick(stamps, ["not a date", None, 5])
            row["roi"] = pick([None, {"times": rng.choice(floats), "currency": "usd"}], [3, "x"])
            if p == 2:  # a key absent from a whole page (and so from a whole chunk)
                del row["high_24h"]
            if p >= 5:
                row["late_extra_field"] = r
            if r == 3:
                row["ath"] = float("nan")  # written as the JSON literal NaN
            page.append(row)
        if p == 4:
            page[2] = ["not", "an", "object"]
            page[5] = None
        pages.append(page)
    return pages


def _run(pages: list, **kwargs):
    return transform(
        manifest_for(*pages, counts=kwargs.pop("counts", None)),
        pages,
        kwargs.pop("global_body", None),
        snapshot_id="golden-1",
        fetched_at=FETCHED_AT,
        fetch_date=date(2026, 11, 23),
        vs_currency="usd",
        allow_empty=True,
        **kwargs,
    )


def _assert_same_result(a, b) -> None:
    pd.testing.assert_frame_equal(a.processed, b.processed)
    pd.testing.assert_frame_equal(a.rejected, b.rejected)
    assert json.dumps(a.quality, sort_keys=True) == json.dumps(b.quality, sort_keys=True)


# --- the parser -------------------------------------------------------------------------------

PAGES_FOR_PARSER = [
    b'[{"id": "a", "current_price": 1.5, "market_cap": 123, "roi": null}]',
    b'[{"id": "nan", "ath": NaN, "atl": Infinity, "low_24h": -Infinity}]',
    b'[{"id": "huge", "market_cap": 1e400}]',
    b'[{"id": "big", "market_cap": 123456789012345678901234567890}]',
    b'[{"id": "neg", "market_cap": -9223372036854775809}]',
    b'[{"id": "u64", "market_cap": 18446744073709551615, "rank": 9223372036854775807}]',
    b'[{"id": "frac", "current_price": 0.00000000000000000001234567890123456789}]',
    b'[{"id": "exp", "current_price": 1.5e-1234567890123456789}]',
    b'[{"id": "\\ud83d lone", "name": "\\ud83d\\ude80 pair"}]',
    b'\xef\xbb\xbf[{"id": "bom"}]',
    json.dumps([{"id": "utf16", "name": "Ünï"}]).encode("utf-16"),
    b'[{"id": "dup", "id": "dup-last"}]',
    b'[{"id": "deep", "x": ' + b"[" * 600 + b"]" * 600 + b"}]",
]


@pytest.mark.parametrize("body", PAGES_FOR_PARSER, ids=range(len(PAGES_FOR_PARSER)))
def test_parse_page_reads_what_json_loads_reads(body: bytes) -> None:
    # repr compares types too (an int stays an int) and NaN with NaN.
    assert repr(parse_page(body)) == repr(json.loads(body))


def test_parse_page_on_recorded_and_synthetic_pages() -> None:
    bodies = [json.dumps(p).encode() for p in [*recorded_pages(), *hostile_pages()]]
    for body in bodies:
        assert repr(parse_page(body)) == repr(json.loads(body))


def test_parse_page_refuses_what_json_refuses() -> None:
    for body in (b"[1,", b"{'a': 1}", b"\xff\xfe\x00"):
        with pytest.raises(ValueError):
            json.loads(body)
        with pytest.raises(ValueError):
            parse_page(body)


# --- the float formatter ----------------------------------------------------------------------


def test_float_texts_equal_repr_across_magnitudes() -> None:
    rng = np.random.default_rng(11)
    values = np.concatenate(
        [
            rng.lognormal(0, 15, 100_000) * rng.choice([-1.0, 1.0], 100_000),
            rng.integers(-(10**15), 10**15, 20_000).astype(float),
            np.array(_boundary_floats()),
            np.array([np.nan, 1.0, np.nan]),
        ]
    )
    expected = ["" if math.isnan(x) else repr(x) for x in values.tolist()]
    assert float_texts(values) == expected
    assert float_texts(values[::3]) == expected[::3]  # a strided view
    assert float_texts(np.array([], dtype=float)) == []


# --- the chunked frame ------------------------------------------------------------------------


@pytest.mark.parametrize("chunk", [1, 3, 10, 11, 30])
def test_the_chunked_frame_gives_the_one_frame_result(monkeypatch, chunk: int) -> None:
    pages = json.loads(json.dumps(hostile_pages()))  # NaN cells as json.loads gives them
    whole = _run(pages)
    assert whole.rejected_count > 0 and whole.duplicate_count > 0 and whole.row_count > 0
    monkeypatch.setattr(transform_module, "FRAME_CHUNK_ROWS", chunk)
    _assert_same_result(_run(pages), whole)
    counts = [len(p) - (i % 3) for i, p in enumerate(pages)]  # pages cut by their manifest
    for max_coins in (None, 1, 23, 40):
        monkeypatch.setattr(transform_module, "FRAME_CHUNK_ROWS", 10**6)
        expected = _run(pages, counts=counts, max_coins=max_coins)
        monkeypatch.setattr(transform_module, "FRAME_CHUNK_ROWS", chunk)
        _assert_same_result(_run(pages, counts=counts, max_coins=max_coins), expected)


def test_the_chunked_frame_on_recorded_pages(monkeypatch) -> None:
    pages = recorded_pages()
    whole = _run(pages)
    monkeypatch.setattr(transform_module, "FRAME_CHUNK_ROWS", 97)
    _assert_same_result(_run(pages), whole)


def test_pages_are_taken_once_each_in_page_order() -> None:
    taken: list[int] = []

    class Pages(list):
        def __getitem__(self, i):
            taken.append(i)
            return super().__getitem__(i)

    pages = [[coin(f"c{i}", i)] for i in range(1, 6)]
    manifest = manifest_for(*pages)
    manifest["pages"] = manifest["pages"][::-1]  # listed last page first
    result = transform(
        manifest,
        Pages(pages[::-1]),
        None,
        snapshot_id="s",
        fetched_at=FETCHED_AT,
        fetch_date="2026-11-23",
        vs_currency="usd",
    )
    assert taken == [4, 3, 2, 1, 0]
    assert result.processed["coin_id"].tolist() == ["c1", "c2", "c3", "c4", "c5"]


# --- the writer -------------------------------------------------------------------------------


@pytest.mark.parametrize("source", ["recorded", "hostile"])
def test_the_writer_writes_what_the_rules_say_byte_for_byte(source: str) -> None:
    pages = recorded_pages() if source == "recorded" else json.loads(json.dumps(hostile_pages()))
    result = _run(pages)
    for df, columns in ((result.processed, COLUMN_NAMES), (result.rejected, REJECTED_COLUMNS)):
        expected = reference_csv(df, columns)
        assert csv_bytes(df, columns) == expected
        assert b"".join(iter_csv_bytes(df, columns, chunk_rows=4)) == expected
    # Streamed gzip is the one-shot gzip of the same text, byte for byte.
    assert to_csv_gz(result.processed) == gzip_bytes(reference_csv(result.processed, COLUMN_NAMES))
    assert rejected_to_csv_gz(result.rejected) == gzip.compress(
        reference_csv(result.rejected, REJECTED_COLUMNS), compresslevel=1, mtime=0
    )
    verify_csv_gz(to_csv_gz(result.processed), result.row_count)
    verify_csv_gz(rejected_to_csv_gz(result.rejected), result.rejected_count, REJECTED_COLUMNS)


def test_streamed_verify_reads_lines_split_across_pieces(monkeypatch) -> None:
    from functions.transform import csv_gz

    rows = [coin(f"c{i}", i, name=f"cr\r\nlf\n{i}\r") for i in range(1, 400)]
    result = _run([rows])
    data = to_csv_gz(result.processed)
    for size in (1, 2, 7, 64):  # tiny compressed pieces: CR LF and quoted lines cut anywhere
        monkeypatch.setattr(csv_gz._Lines, "_READ", size)
        verify_csv_gz(data, result.row_count)


def test_truncated_or_padded_gzip_is_refused() -> None:
    from functions.common.errors import DataQualityError

    data = to_csv_gz(_run([[coin("a", 1)]]).processed)
    for bad in (data[:-9], data + b"junk"):
        with pytest.raises(DataQualityError, match="not gzip'd UTF-8"):
            verify_csv_gz(bad, 1)


# --- the handler: lazy pages, orjson, streaming, same files ----------------------------------


def test_the_handler_writes_the_files_the_plain_path_writes(tmp_path: Path) -> None:
    pages = [*recorded_pages()[:3], *hostile_pages()]
    lake = LocalStorage(tmp_path / "lake", bucket=BUCKET)
    event = lay_out(lake, pages, None, max_coins=10_000)  # pages written by json.dumps (NaN)
    # The hostile rows (null names, a negative low_24h) would fail the quality gate: this test
    # compares the written files, so the gate is off (tests/unit/test_transform_gate.py).
    out = run(event, storage=lake, min_pct=0.0, gate=GateConfig(enabled=False))
    stored = [json.loads(json.dumps(p)) for p in pages]
    plain = transform(
        json.loads(lake.get_bytes(event["manifest_key"])),
        stored,
        None,
        snapshot_id=event["snapshot_id"],
        fetched_at=event["fetched_at"],
        fetch_date=event["fetch_date"],
        vs_currency="usd",
        max_coins=10_000,
        allow_empty=True,
        global_error="the Extract stored no /global body",
    )
    processed = reference_csv(plain.processed, COLUMN_NAMES)
    assert gzip.decompress(lake.get_bytes(out["processed_key"])) == processed
    rejected = reference_csv(plain.rejected, REJECTED_COLUMNS)
    assert gzip.decompress(lake.get_bytes(out["rejected_key"])) == rejected
    assert out["quality"].pop("gate") == {"enabled": False}
    assert out["quality"] == json.loads(json.dumps(plain.quality))


def test_lazy_pages_read_and_check_each_page_when_asked(tmp_path: Path) -> None:
    lake = LocalStorage(tmp_path / "lake", bucket=BUCKET)
    event = lay_out(lake, [[coin("a", 1)], [coin("b", 2)]], None)
    manifest = json.loads(lake.get_bytes(event["manifest_key"]))
    pages = LazyPages(lake, [(e["key"], e["sha256"]) for e in manifest["pages"]])
    assert len(pages) == 2 and pages[1][0]["id"] == "b" and pages.read_s > 0
    with pytest.raises(TypeError):
        pages[0:1]
