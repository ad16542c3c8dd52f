"""The processed file's real round trip: transform -> to_csv_gz -> verify_csv_gz -> the load's
PUT + COPY into a local fakesnow server over HTTP (the real connector) -> SELECT back.

Hostile text (bare ``\\r``, ``\\r\\n``, quotes, commas, a trailing backslash, tabs, emoji, CJK, a
name of only spaces) and timestamps outside pandas 2's nanosecond range must come back exactly
as they went in. On the code before this work, the bare ``\\r`` left unquoted by Python 3.11's
csv writer split the row and the COPY failed with an opaque HTTP 500.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from functions.load.config import SnowflakeConfig
from functions.load.connection import connect
from functions.load.loader import ensure_objects, load_snapshot
from functions.load.sql import Names
from functions.transform import csv_gz
from functions.transform.transform import transform
from local_mode.warehouse import LocalWarehouse
from tests.unit.test_transform_rules import coin, manifest_for

_schemas = itertools.count()

# coin id -> (symbol, name); ids, symbols and names all carry the hostile characters.
HOSTILE: dict[str, tuple[str, str]] = {
    "bare-cr": ("cr", "Carriage\rReturn Coin"),
    "crlf": ("cr\r\nlf", "Windows\r\nLine Coin"),
    "lf": ("lf", "two\nlines\n"),
    'quote"id': ('"q"', 'He said "moon", twice ""'),
    "comma,id": ("a,b", "one, two, three"),
    "backslash": ("bs\\", "ends with a backslash \\"),
    "tab": ("\t", "tab\tseparated\t"),
    "emoji": ("🚀", "Rocket 🚀 Coin 🌕"),
    "cjk": ("比特", "比特币 (ビットコイン)"),
    "spaces": (" ", "   "),
    "null-word": ("NULL", "\\N"),
}
FAR_DATES = {
    "ath_date": ("1600-01-01T00:00:00Z", datetime(1600, 1, 1, tzinfo=UTC)),
    "atl_date": (
        "9999-12-31T23:59:59.999999Z",
        datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
    ),
}


@pytest.fixture(scope="module")
def warehouse(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalWarehouse]:
    with LocalWarehouse(tmp_path_factory.mktemp("warehouse")) as wh:
        yield wh


@pytest.fixture
def conn_names(warehouse: LocalWarehouse) -> Iterator[tuple[Any, Names]]:
    """A connection and a schema of this test's own, with the pipeline's tables created."""
    cfg = SnowflakeConfig.from_env({**warehouse.env(), "SNOWFLAKE_SCHEMA": f"C{next(_schemas)}"})
    names = Names(cfg.database, cfg.schema)
    conn = connect(cfg)
    ensure_objects(conn, names, views=False)
    yield conn, names
    conn.close()


def _transform(rows: list[dict], snapshot_id: str):
    return transform(
        manifest_for(rows),
        [rows],
        None,
        snapshot_id=snapshot_id,
        fetched_at="2026-11-23T08:00:00Z",
        fetch_date="2026-11-23",
        vs_currency="usd",
    )


def _load(conn_names: tuple[Any, Names], tmp_path: Path, rows: list[dict], snapshot_id: str):
    """transform -> to_csv_gz -> verify_csv_gz -> load_snapshot; returns (result, load result)."""
    conn, names = conn_names
    result = _transform(rows, snapshot_id)
    data = csv_gz.to_csv_gz(result.processed)
    csv_gz.verify_csv_gz(data, result.row_count)
    path = tmp_path / f"{snapshot_id}.csv.gz"
    path.write_bytes(data)
    loaded = load_snapshot(
        conn, local_file=path, snapshot_id=snapshot_id, row_count=result.row_count, names=names
    )
    return result, loaded


def _select(conn: Any, sql: str, params: dict[str, Any]) -> list[tuple]:
    with conn.cursor() as cur:
        cur.execute(sql, params)
        return [tuple(r) for r in cur.fetchall()]


def test_hostile_text_and_far_dates_survive_the_copy(conn_names, tmp_path) -> None:
    rows = [
        coin(coin_id, rank, symbol=symbol, name=name, image=f"https://img.example/{rank},x.png")
        for rank, (coin_id, (symbol, name)) in enumerate(HOSTILE.items(), start=1)
    ]
    rows.append(coin("far-dates", 99, **{k: text for k, (text, _) in FAR_DATES.items()}))

    result, loaded = _load(conn_names, tmp_path, rows, "hostile-1")

    assert result.rejected_count == 0, result.rejected.to_dict("records")
    assert loaded.rows_loaded == len(rows) and loaded.rows_inserted == len(rows)
    got = _select(
        conn_names[0],
        "SELECT COIN_ID, SYMBOL, NAME, IMAGE_URL FROM CRYPTO_DATA WHERE SNAPSHOT_ID = %(s)s",
        {"s": "hostile-1"},
    )
    expected = {(r["id"], r["symbol"], r["name"], r["image"]) for r in rows}
    assert set(got) == expected  # every text value byte for byte
    ((ath, atl),) = _select(
        conn_names[0],
        "SELECT ATH_DATE, ATL_DATE FROM CRYPTO_DATA WHERE COIN_ID = %(c)s",
        {"c": "far-dates"},
    )
    assert (ath, atl) == tuple(stamp for _, stamp in FAR_DATES.values())


def test_the_issue_page_of_three_coins_loads_whole(conn_names, tmp_path) -> None:
    """The reported page: 3 coins, one name with a bare carriage return: all 3 rows load."""
    rows = [coin("a-coin", 1), coin("cr-coin", 2, name="Carriage\rReturn Coin"), coin("z", 3)]
    result, loaded = _load(conn_names, tmp_path, rows, "issue-cr")
    assert (result.row_count, loaded.rows_loaded) == (3, 3)
    got = _select(
        conn_names[0],
        "SELECT COIN_ID, NAME FROM CRYPTO_DATA WHERE SNAPSHOT_ID = %(s)s ORDER BY COIN_ID",
        {"s": "issue-cr"},
    )
    assert got == [("a-coin", "A-Coin"), ("cr-coin", "Carriage\rReturn Coin"), ("z", "Z")]


def test_unencodable_text_rejects_only_its_row(conn_names, tmp_path) -> None:
    """A lone surrogate (valid JSON "\\ud83d") or a NUL is refused with a reason; the rest load."""
    rows = [coin("ok-1", 1), coin("surrogate", 2, name="Bad \ud83d"), coin("nul", 3, symbol="a\0")]
    rows.append(coin("ok-2", 4))
    result, loaded = _load(conn_names, tmp_path, rows, "bad-text")
    assert list(result.rejected["reject_reason"]) == ["invalid_text:name", "invalid_text:symbol"]
    assert loaded.rows_loaded == 2
    got = _select(
        conn_names[0],
        "SELECT COIN_ID FROM CRYPTO_DATA WHERE SNAPSHOT_ID = %(s)s ORDER BY COIN_ID",
        {"s": "bad-text"},
    )
    assert got == [("ok-1",), ("ok-2",)]
    csv_gz.rejected_to_csv_gz(result.rejected)  # the rejected file still encodes
