"""The Looker Studio deliverables: data source queries, report definition, ``crypto-etl looker``.

Every query in looker/datasources/ is parsed (one statement, no trailing semicolon, views only)
and run as is on a real local warehouse (the fakesnow server, database CRYPTO_ETL_DB, schema
PUBLIC) loaded with the reporting scenario of test_reporting_views; every field that
looker/report.yaml names must be a column its data source's query returns there, or a
calculated field of that data source whose formula uses only such columns. The command runs as
a subprocess with environment variants and must print no secret.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import sqlglot
import yaml
from sqlglot import exp

from functions.load import sql
from functions.load.loader import ensure_objects
from functions.load.sql import Names
from tests.unit.test_reporting_views import SNAPSHOTS, Market, frame, load, market_warehouse

REPO_ROOT = Path(sql.__file__).resolve().parents[2]
LOOKER = REPO_ROOT / "looker"
QUERY_FILES = sorted((LOOKER / "datasources").glob("*.sql"))
LATEST_CHOICE = "Latest snapshot"
# Data sources that hold every snapshot, so the Snapshot control must not filter them.
EVERY_SNAPSHOT = {"market_history", "coin_history"}

# Looker Studio formula syntax used by the calculated fields (functions and bare keywords).
LOOKER_FUNCTIONS = {"IFNULL", "DATETIME_DIFF", "CURRENT_DATETIME", "ABS", "CONCAT", "ROUND"}
LOOKER_KEYWORDS = {
    "CASE", "WHEN", "THEN", "ELSE", "END", "AND", "OR", "NOT", "IN", "IS", "NULL", "TRUE",
    "FALSE", "SECOND", "MINUTE", "HOUR", "DAY", "WEEK", "MONTH", "YEAR",
}  # fmt: skip


def definition() -> dict[str, Any]:
    return yaml.safe_load((LOOKER / "report.yaml").read_text(encoding="utf-8"))


def sources() -> dict[str, dict[str, Any]]:
    return {ds["name"]: ds for ds in definition()["data_sources"]}


def query(name: str) -> str:
    return (LOOKER / "datasources" / f"{name}.sql").read_text(encoding="utf-8")


# --- the query files ----------------------------------------------------------------------------


def test_there_is_a_query_file_per_data_source_of_the_definition():
    assert QUERY_FILES, "no looker/datasources/*.sql"
    names = {p.stem for p in QUERY_FILES}
    assert names == set(sources())
    for name, ds in sources().items():
        assert ds["query"] == f"datasources/{name}.sql"


@pytest.mark.parametrize("path", QUERY_FILES, ids=lambda p: p.name)
def test_each_query_is_one_statement_without_a_semicolon_reading_only_the_views(path):
    text = path.read_text(encoding="utf-8")
    assert not text.rstrip().endswith(";"), f"{path.name} ends with ';' (the connector refuses it)"
    assert ";" not in text
    statements = [s for s in sqlglot.parse(text, read="snowflake") if s is not None]
    assert len(statements) == 1 and isinstance(statements[0], exp.Query)
    tables = list(statements[0].find_all(exp.Table))
    assert tables
    for table in tables:
        # Fully qualified, and only the views (the report's role has SELECT on views only).
        assert (table.catalog, table.db) == ("CRYPTO_ETL_DB", "PUBLIC"), table.sql()
        assert table.name in sql.VIEWS, table.sql()


# --- run on the local warehouse -------------------------------------------------------------------


@pytest.fixture(scope="module")
def market(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Market]:
    with market_warehouse(tmp_path_factory.mktemp("looker")) as m:
        yield m


@pytest.fixture(scope="module")
def results(market: Market) -> dict[str, pd.DataFrame]:
    """Each data source's query, run as is (nothing replaced) on CRYPTO_ETL_DB.PUBLIC."""
    assert (Names().database, Names().schema) == ("CRYPTO_ETL_DB", "PUBLIC")
    return {p.stem: frame(market.conn, p.read_text(encoding="utf-8")) for p in QUERY_FILES}


def test_every_query_runs_as_is_and_returns_rows(results):
    assert set(results) == set(sources()) and results
    for name, df in results.items():
        assert len(df) > 0, name
        assert len(set(df.columns)) == len(df.columns), name


def _formula_names(formula: str) -> tuple[set[str], set[str]]:
    """(functions, field names) a Looker Studio formula uses."""
    bare = re.sub(r'"[^"]*"|\'[^\']*\'', "", formula)
    functions, fields = set(), set()
    for match in re.finditer(r"([A-Za-z_][A-Za-z0-9_]*)(\s*\()?", bare):
        word, call = match.group(1), match.group(2)
        if call:
            functions.add(word)
        elif word.upper() not in LOOKER_KEYWORDS:
            fields.add(word)
    return functions, fields


def _chart_fields(item: dict[str, Any]) -> list[str]:
    fields = [d if isinstance(d, str) else d["field"] for d in item.get("dimensions", [])]
    fields += [m["field"] for m in item.get("metrics", [])]
    sort = item.get("sort", [])
    fields += [s["field"] for s in (sort if isinstance(sort, list) else [sort])]
    fields += [f["field"] for f in item.get("filters", [])]
    if "control_field" in item:
        fields.append(item["control_field"])
    return fields


def test_every_field_of_the_definition_is_returned_by_its_query(results):
    doc = definition()
    available: dict[str, set[str]] = {}
    for name, ds in sources().items():
        columns = set(results[name].columns)
        calculated = {c["name"] for c in ds["calculated_fields"]}
        assert not calculated & columns, f"{name}: a calculated field shadows a column"
        for field in ds["field_types"]:
            assert field in columns, f"{name}: field_types names {field}, not returned"
        for calc in ds["calculated_fields"]:
            functions, used = _formula_names(calc["formula"])
            assert functions <= LOOKER_FUNCTIONS, (name, calc["name"], functions)
            assert used and used <= columns | (calculated - {calc["name"]}), (
                f"{name}.{calc['name']} uses {sorted(used - columns)}, not returned by its query"
            )
        available[name] = columns | calculated

    items = [(c, "report") for c in doc["controls"]]
    for page in doc["pages"]:
        items += [(c, page["name"]) for c in page.get("controls", [])]
        items += [(c, page["name"]) for c in page["charts"]]
    checked = 0
    for item, where in items:
        ds = item["data_source"]
        assert ds in available, f"{where} / {item.get('title', item.get('name'))}: {ds}?"
        for field in _chart_fields(item):
            assert field in available[ds], (
                f"{where} / {item.get('title', item.get('name'))}: {field} is not a field of"
                f" data source {ds} (its query returns {sorted(results[ds].columns)})"
            )
            checked += 1
    assert checked > 50
    for chart in (c for p in doc["pages"] for c in p["charts"]):
        for metric in chart["metrics"]:
            assert metric["aggregation"] in {"SUM", "AVG", "MIN", "MAX", "COUNT"}, chart["title"]


def test_the_snapshot_control_filters_the_per_snapshot_pages_and_spares_the_history(results):
    doc = definition()
    (snapshot,) = [c for c in doc["controls"] if c["name"] == "Snapshot"]
    field = snapshot["control_field"]
    assert snapshot["default_selection"] == LATEST_CHOICE
    for name, df in results.items():
        assert (field in df.columns) == (name not in EVERY_SNAPSHOT), name
        assert "VS_CURRENCY" in df.columns and "FETCH_DATE" in df.columns, name
        if field in df.columns:
            # "Latest snapshot" is exactly one snapshot per currency.
            latest = df[df[field] == LATEST_CHOICE]
            assert latest.groupby("VS_CURRENCY")["SNAPSHOT_ID"].nunique().eq(1).all(), name
            assert set(latest["VS_CURRENCY"]) == {s.vs_currency for s in SNAPSHOTS}, name
    for page in doc["pages"]:
        history = page["name"] in {"History", "Coin history"}
        for chart in page["charts"]:
            assert (chart["data_source"] in EVERY_SNAPSHOT) == history, chart["title"]


def test_joined_queries_keep_every_row_of_their_view(market, results):
    for name, view in (
        ("snapshot_filter", "SNAPSHOT_FILTER"),
        ("market_snapshots", "MARKET_SNAPSHOTS"),
        ("market_history", "MARKET_SNAPSHOTS"),
        ("snapshot_coins", "COIN_HISTORY"),
        ("coin_history", "COIN_HISTORY"),
    ):
        rows = frame(market.conn, f"SELECT COUNT(*) AS N FROM {view}")["N"].iloc[0]
        assert len(results[name]) == rows, name


def test_the_movers_query_applies_the_top_movers_rule_to_every_snapshot(market, results):
    movers = results["top_movers"]
    view = frame(market.conn, "SELECT * FROM TOP_MOVERS")
    latest = movers[movers["SNAPSHOT_CHOICE"] == LATEST_CHOICE]
    common = [c for c in view.columns if c in movers.columns]
    key = ["VS_CURRENCY", "DIRECTION", "MOVE_RANK"]
    left = latest[common].sort_values(key).reset_index(drop=True)
    right = view[common].sort_values(key).reset_index(drop=True)
    pd.testing.assert_frame_equal(left, right, check_dtype=False)
    per_side = movers.groupby(["SNAPSHOT_ID", "DIRECTION"])["MOVE_RANK"].max()
    assert per_side.max() == sql.TOP_MOVERS_PER_SIDE
    assert movers["SNAPSHOT_ID"].nunique() == len(SNAPSHOTS)


def test_the_dominance_slices_are_the_top_10_and_the_rest_of_the_market(market, results):
    share = results["dominance_share"]
    totals = share.groupby(["SNAPSHOT_ID", "VS_CURRENCY"])["SHARE_PCT"].sum()
    assert totals.to_numpy() == pytest.approx(100.0)
    coins = frame(market.conn, "SELECT * FROM COIN_HISTORY WHERE MARKET_CAP_RANK <= 10")
    top = share[share["SLICE"] != "Others"]
    assert len(top) == len(coins)
    merged = top.merge(
        coins,
        left_on=["SNAPSHOT_ID", "SLICE_ORDER"],
        right_on=["SNAPSHOT_ID", "MARKET_CAP_RANK"],
    )
    assert len(merged) == len(top)
    assert (merged["SLICE"] == merged["NAME"]).all()
    assert merged["SHARE_PCT"].to_numpy() == pytest.approx(
        merged["MARKET_CAP_DOMINANCE_PCT"].to_numpy()
    )
    others = share[share["SLICE"] == "Others"]
    assert len(others) == len(SNAPSHOTS) and (others["SHARE_PCT"] > 0).all()


# --- crypto-etl looker ----------------------------------------------------------------------------

# A PEM frame around a marker body (built here so no key-shaped literal is tracked).
_FRAME = "-----{} PRIVATE KEY-----"
_KEY_BODY = "fakeKeyBodyDoNotPrint0123456789"
SECRETS = {
    "SNOWFLAKE_PASSWORD": "pw-Hunter2-do-not-print",
    "SNOWFLAKE_PRIVATE_KEY": "\\n".join(
        [_FRAME.format("BEGIN"), _KEY_BODY, _FRAME.format("END"), ""]
    ),
    "SNOWFLAKE_PRIVATE_KEY_PASSPHRASE": "passphrase-do-not-print",
}
SECRET_FRAGMENTS = ("Hunter2", _KEY_BODY, "passphrase-do")


def run_looker(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """``crypto-etl looker ARGS`` with the SNOWFLAKE_* variables of ``env`` only."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("SNOWFLAKE_")}
    return subprocess.run(
        [sys.executable, "-m", "local_mode.cli", "looker", *args],
        cwd=REPO_ROOT,
        env={**base, **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_without_an_account_it_prints_placeholders_and_the_variables_to_set():
    done = run_looker()
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "https://<account>.snowflakecomputing.com" in out
    assert re.search(r"<account>\s+set SNOWFLAKE_ACCOUNT", out)
    assert re.search(r"<warehouse>\s+set SNOWFLAKE_WAREHOUSE", out)
    for line in ("Role            CRYPTO_ETL_REPORTER", "Database        CRYPTO_ETL_DB",
                 "Schema          PUBLIC", "Username        CRYPTO_ETL_LOOKER"):  # fmt: skip
        assert line in out
    for path in QUERY_FILES:  # every query, verbatim (the defaults need no substitution)
        assert path.read_text(encoding="utf-8").strip() in out, path.name

    doc = json.loads(run_looker("--json").stdout)
    assert set(doc["connector"]["to_fill"]) == {"<account>", "<warehouse>"}
    assert [d["name"] for d in doc["data_sources"]] == [
        "snapshot_filter", "market_snapshots", "market_history", "snapshot_coins",
        "dominance_share", "top_movers", "coin_history",
    ]  # fmt: skip
    assert {d["name"] for d in doc["data_sources"]} == set(sources())


@pytest.mark.parametrize("as_json", [False, True], ids=["text", "json"])
def test_configured_values_are_printed_and_no_secret_is(as_json):
    env = {
        "SNOWFLAKE_ACCOUNT": "myorg-myaccount",
        "SNOWFLAKE_USER": "CRYPTO_ETL",
        "SNOWFLAKE_ROLE": "CRYPTO_ETL_ROLE",  # the load's role: never the report's
        "SNOWFLAKE_WAREHOUSE": "crypto_etl_wh",
        "SNOWFLAKE_DATABASE": "analytics",
        "SNOWFLAKE_SCHEMA": "crypto",
        "SNOWFLAKE_SECRET_ARN": "arn:aws:secretsmanager:eu-west-1:123456789012:secret:x",
        **SECRETS,
    }
    done = run_looker(*(["--json"] if as_json else []), **env)
    assert done.returncode == 0, done.stderr
    for fragment in SECRET_FRAGMENTS:
        assert fragment not in done.stdout and fragment not in done.stderr
    assert "CRYPTO_ETL_ROLE" not in done.stdout
    if not as_json:
        assert "Account URL     https://myorg-myaccount.snowflakecomputing.com" in done.stdout
        assert "Warehouse       CRYPTO_ETL_WH" in done.stdout
        assert "Not configured" not in done.stdout
        return
    doc = json.loads(done.stdout)
    assert doc["connector"] == {
        "account_url": "https://myorg-myaccount.snowflakecomputing.com",
        "role": "CRYPTO_ETL_REPORTER",
        "warehouse": "CRYPTO_ETL_WH",
        "database": "ANALYTICS",
        "schema": "CRYPTO",
        "username": "CRYPTO_ETL_LOOKER",
        "authentication": doc["connector"]["authentication"],
        "to_fill": {},
    }
    for ds in doc["data_sources"]:
        assert "CRYPTO_ETL_DB" not in ds["sql"] and "ANALYTICS.CRYPTO." in ds["sql"]
        (statement,) = sqlglot.parse(ds["sql"], read="snowflake")
        for table in statement.find_all(exp.Table):
            assert (table.catalog, table.db) == ("ANALYTICS", "CRYPTO")
    done = run_looker("--json", "--role", "bi_reader", "--warehouse", "bi_wh", "--user", "bi")
    assert json.loads(done.stdout)["connector"] | {"authentication": ""} == {
        "account_url": "https://<account>.snowflakecomputing.com",
        "role": "BI_READER",
        "warehouse": "BI_WH",
        "database": "CRYPTO_ETL_DB",
        "schema": "PUBLIC",
        "username": "BI",
        "authentication": "",
        "to_fill": {
            "<account>": "set SNOWFLAKE_ACCOUNT (e.g. myorg-myaccount or xy12345.eu-west-1)"
        },
    }


@pytest.mark.parametrize(
    ("account", "url"),
    [
        ("xy12345.eu-west-1", "https://xy12345.eu-west-1.snowflakecomputing.com"),
        ("https://MyOrg-MyAccount.snowflakecomputing.com/", "https://MyOrg-MyAccount.snowflakecomputing.com"),
        ("  myorg-my_account  ", "https://myorg-my_account.snowflakecomputing.com"),
    ],
)  # fmt: skip
def test_the_account_url_is_built_from_the_account_identifier(account, url):
    doc = json.loads(run_looker("--json", SNOWFLAKE_ACCOUNT=account).stdout)
    assert doc["connector"]["account_url"] == url


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"SNOWFLAKE_ACCOUNT": "my account"}, "SNOWFLAKE_ACCOUNT"),
        ({"SNOWFLAKE_ACCOUNT": "a/b"}, "SNOWFLAKE_ACCOUNT"),
        ({"SNOWFLAKE_SCHEMA": "crypto; DROP TABLE X"}, "SNOWFLAKE_SCHEMA"),
        ({"SNOWFLAKE_DATABASE": 'db"'}, "SNOWFLAKE_DATABASE"),
        ({"SNOWFLAKE_WAREHOUSE": "wh-1"}, "SNOWFLAKE_WAREHOUSE"),
    ],
)
def test_a_malformed_setting_fails_with_exit_2_naming_it(env, variable):
    done = run_looker(**env)
    assert done.returncode == 2
    assert variable in done.stderr and "Traceback" not in done.stderr
    assert done.stdout == ""


def test_the_printed_queries_run_against_the_configured_schema(market, tmp_path):
    names = Names("CRYPTO_ETL_DB", "REPORTING")
    ensure_objects(market.conn, names)
    load(market.conn, SNAPSHOTS[0], tmp_path, names)
    done = run_looker("--json", SNOWFLAKE_SCHEMA="reporting")
    assert done.returncode == 0, done.stderr
    for ds in json.loads(done.stdout)["data_sources"]:
        df = frame(market.conn, ds["sql"])
        assert len(df) > 0 and set(df["SNAPSHOT_ID"]) == {SNAPSHOTS[0].snapshot_id}, ds["name"]


def test_on_an_empty_warehouse_every_view_and_query_returns_no_rows(market):
    from local_mode.looker_command import data_source_sql

    names = Names("CRYPTO_ETL_DB", "EMPTY")
    ensure_objects(market.conn, names)
    for view in sql.VIEWS:
        assert frame(market.conn, f"SELECT * FROM {names.q(view)}").empty, view
    for path in QUERY_FILES:
        df = frame(market.conn, data_source_sql(path.stem, names.database, names.schema))
        assert df.empty and len(df.columns) > 3, path.name
