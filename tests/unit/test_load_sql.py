"""The load's SQL builders (pure): names, binding, column lists, the views file."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import sqlglot
from sqlglot import exp

from functions.common.errors import ConfigError, ValidationError
from functions.common.schema import COLUMN_NAMES, TIMESTAMP_FORMAT
from functions.load import sql
from functions.load.sql import Names

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_names_are_validated_upper_cased_and_qualified():
    n = Names("analytics_db", "crypto")
    assert n.q("CRYPTO_DATA") == "ANALYTICS_DB.CRYPTO.CRYPTO_DATA"
    for bad_db in ("db; DROP TABLE X", 'db"', "1db", "a.b", ""):
        with pytest.raises(ConfigError, match="database"):
            Names(bad_db, "PUBLIC")
    with pytest.raises(ConfigError, match="schema"):
        Names("DB", "pub lic")


def test_crypto_data_ddl_has_every_processed_column_in_file_order_plus_loaded_at():
    ddl = sql.create_crypto_data(Names()).sql
    assert ddl.startswith("CREATE TABLE IF NOT EXISTS CRYPTO_ETL_DB.PUBLIC.CRYPTO_DATA (")
    positions = [ddl.index(f"\n    {c.upper()} ") for c in COLUMN_NAMES]
    assert positions == sorted(positions)
    assert "LOADED_AT TIMESTAMP_TZ NOT NULL" in ddl
    assert "PRIMARY KEY (SNAPSHOT_ID, COIN_ID)" in ddl
    assert tuple(c.upper() for c in COLUMN_NAMES) == sql.DATA_COLUMN_NAMES


def test_every_ddl_is_idempotent():
    n = Names()
    for stmt in sql.create_tables(n):
        assert "IF NOT EXISTS" in stmt.sql
    for stmt in sql.create_views(n):
        assert stmt.sql.startswith("CREATE OR REPLACE VIEW") and "COPY GRANTS" in stmt.sql


def test_values_are_bound_never_formatted_into_sql():
    n = Names()
    evil = "x' OR '1'='1"
    for stmt in (
        sql.delete_snapshot(n, evil),
        sql.count_existing(n, "STG", evil),
        sql.delete_run(n, evil, evil),
        sql.insert_snapshot(n, "STG", evil),
        sql.insert_run(n, {"snapshot_id": evil, "execution_id": evil, "quality": evil}),
    ):
        assert evil not in stmt.sql
        assert evil in stmt.params.values()
        assert "%(" in stmt.sql


def test_insert_run_binds_every_column_and_rejects_unknown_ones():
    stmt = sql.insert_run(Names(), {"snapshot_id": "s", "status": "SUCCEEDED"})
    assert set(stmt.params) == {c.lower() for c, _ in sql.ETL_RUN_COLUMNS}
    assert "CAST(%(loaded_at)s AS TIMESTAMP_TZ)" in stmt.sql
    with pytest.raises(ValueError, match="unknown ETL_RUNS columns"):
        sql.insert_run(Names(), {"snapshot_id": "s", "nope": 1})


def test_staging_names_and_put_path_are_checked():
    with pytest.raises(ConfigError):
        sql.create_staging_table("STG; DROP TABLE CRYPTO_DATA")
    with pytest.raises(ValidationError, match="local_file"):
        sql.put_file(Path("/tmp/it's here.csv.gz"), "STAGE")
    put = sql.put_file(Path("/tmp/a/s-1.csv.gz"), "STAGE_1")
    assert put.sql.startswith("PUT 'file:///tmp/a/s-1.csv.gz' @STAGE_1 ")
    copy = sql.copy_into_staging("STG", "STAGE_1").sql
    options = (
        "SKIP_HEADER = 1",
        "FIELD_OPTIONALLY_ENCLOSED_BY = '\"'",
        "NULL_IF = ('')",
        "EMPTY_FIELD_AS_NULL = TRUE",
        "ON_ERROR = ABORT_STATEMENT",
        "FORCE = TRUE",
    )
    for option in options:
        assert option in copy


def test_expected_columns_match_the_ddl():
    n = Names()
    for table, stmt in zip(sql.TABLES, sql.create_tables(n), strict=True):
        for col in sql.expected_columns(table):
            assert f"\n    {col} " in stmt.sql, (table, col)


def test_columns_the_load_adds_itself_are_nullable_and_last_so_upgraded_tables_match_new_ones():
    # ADD COLUMN appends: an upgraded ETL_RUNS then has the columns of a new one, in order.
    added = sql.ADDED_COLUMNS[sql.ETL_RUNS]
    tail = sql.ETL_RUN_COLUMNS[-len(added) :]
    assert tuple(c for c, _ in tail) == added
    assert all("NOT NULL" not in t for _, t in tail)
    stmt = sql.add_column(Names(), sql.ETL_RUNS, "COIN_COVERAGE_PCT")
    assert stmt.sql == (
        "ALTER TABLE CRYPTO_ETL_DB.PUBLIC.ETL_RUNS ADD COLUMN IF NOT EXISTS COIN_COVERAGE_PCT FLOAT"
    )
    for table, column in [(sql.ETL_RUNS, "PAGES"), (sql.CRYPTO_DATA, "COIN_COVERAGE_PCT")]:
        with pytest.raises(ValueError, match="not a column the load may add"):
            sql.add_column(Names(), table, column)


def test_looker_views_file_is_in_sync_with_the_builder():
    path = REPO_ROOT / "looker" / "views.sql"
    assert path.read_text() == sql.views_script(), (
        "looker/views.sql is stale: python -m functions.load.sql > looker/views.sql"
    )
    for view in sql.VIEWS:
        assert f"CREATE OR REPLACE VIEW CRYPTO_ETL_DB.PUBLIC.{view} COPY GRANTS" in path.read_text()


def test_views_script_follows_database_and_schema():
    script = sql.views_script("OTHER_DB", "REPORTING")
    assert "CRYPTO_ETL_DB" not in script
    assert "FROM OTHER_DB.REPORTING.CRYPTO_DATA" in script


def test_views_are_snowflake_sql_reading_only_their_own_schema_in_creation_order():
    created: list[str] = []
    for stmt in sql.create_views(Names("OTHER_DB", "REPORTING")):
        parsed = sqlglot.parse_one(stmt.sql, read="snowflake")
        assert isinstance(parsed, exp.Create) and parsed.args["kind"] == "VIEW"
        name = parsed.this.name
        read = {(t.catalog, t.db, t.name) for t in parsed.find_all(exp.Table)} - {
            ("OTHER_DB", "REPORTING", name)
        }
        assert read and all(t[:2] == ("OTHER_DB", "REPORTING") for t in read), (name, read)
        # A view reads CRYPTO_DATA or views created before it.
        assert {t[2] for t in read} <= {"CRYPTO_DATA", "CRYPTO_PRICE_HISTORY", *created}, (
            name,
            read,
        )
        created.append(name)
    assert tuple(created) == sql.VIEWS
    assert set(sql.VIEW_COLUMNS) == set(sql.VIEWS)


def test_views_avoid_what_snowflake_and_the_emulator_disagree_on():
    for stmt in sql.create_views(Names()):
        # MAX_BY/MIN_BY: DuckDB skips a NULL value at the maximum; TO_CHAR: format dropped.
        for construct in ("MAX_BY", "MIN_BY", "TO_CHAR", "TO_VARCHAR"):
            assert construct not in stmt.sql, (stmt.label, construct)
        # Snowflake sorts NULLs first in DESC, DuckDB last: every time ordering says which.
        unpinned = re.findall(r"(?:FETCHED_AT|LOADED_AT)\)? (?:ASC|DESC)(?! NULLS LAST)", stmt.sql)
        assert not unpinned, (stmt.label, unpinned)


def test_copy_pins_the_processed_files_timestamp_and_date_formats():
    copy = sql.copy_into_staging("STG", "STAGE_1").sql
    assert "TIMESTAMP_FORMAT = 'YYYY-MM-DD HH24:MI:SS.FF6TZH:TZM'" in copy
    assert "DATE_FORMAT = 'YYYY-MM-DD'" in copy
    # Derived from the writer's format, so a change there cannot silently unpin the COPY.
    assert sql.snowflake_datetime_format(TIMESTAMP_FORMAT) == sql.COPY_TIMESTAMP_FORMAT
    assert sql.snowflake_datetime_format("%d/%m/%Y %H:%M") == "DD/MM/YYYY HH24:MI"
    for unsupported in ("%Y-%m-%dT%H:%M:%S", "%b %d %Y", "%Y-%m-%d %H:%M:%S%z"):
        with pytest.raises(ValueError, match=r"unsupported|no Snowflake format element"):
            sql.snowflake_datetime_format(unsupported)


def test_schema_statements_create_only_the_schema():
    n = Names("analytics_db", "crypto")
    assert sql.create_schema(n).sql == "CREATE SCHEMA IF NOT EXISTS ANALYTICS_DB.CRYPTO"
    assert sql.use_schema(n).sql == "USE SCHEMA ANALYTICS_DB.CRYPTO"
    check = sql.schema_exists(n)
    assert check.sql.startswith("SELECT COUNT(*) FROM ANALYTICS_DB.INFORMATION_SCHEMA.SCHEMATA")
    assert check.params == {"schema": "CRYPTO"}
    assert "CREATE DATABASE" not in sql.create_schema(n).sql


def test_the_commit_check_finds_this_attempts_run_row_by_bound_values():
    stmt = sql.find_run(Names(), "s1", "2024-05-01T12:00:00.123456+00:00")
    assert stmt.sql == (
        "SELECT COUNT(*) FROM CRYPTO_ETL_DB.PUBLIC.ETL_RUNS WHERE SNAPSHOT_ID = %(snapshot_id)s"
        " AND LOADED_AT = CAST(%(loaded_at)s AS TIMESTAMP_TZ)"
    )
    assert stmt.params == {"snapshot_id": "s1", "loaded_at": "2024-05-01T12:00:00.123456+00:00"}
