"""local_mode.sql_guard: what `crypto-etl sql` runs without --write, decided by sqlglot's parser."""

from __future__ import annotations

import logging

import pytest

from functions.common.errors import ValidationError
from local_mode.sql_guard import Kind, check, classify

READ = [
    ("SELECT 1", "SELECT"),
    ("select count(*) as n from CRYPTO_DATA", "SELECT"),
    ("SELECT 1;", "SELECT"),  # a trailing ';' is not a second statement
    ("SELECT 1;;  ", "SELECT"),
    ("SELECT ';' AS S", "SELECT"),  # ';' in a string literal
    ("SELECT 'a;b' AS S FROM T WHERE X = 'DROP TABLE T; --'", "SELECT"),
    ("SELECT $$x; DROP TABLE T$$ AS S", "SELECT"),  # ... in a $$ string
    ('SELECT 1 AS "a;b"', "SELECT"),  # ... in a quoted identifier
    ("SELECT 1 -- ; DROP TABLE T", "SELECT"),  # ... in a line comment
    ("SELECT 1 /* ; DROP TABLE T; */", "SELECT"),  # ... in a block comment
    ("  \n\tSELECT 1\n", "SELECT"),
    ("(SELECT 1)", "SELECT"),
    ("SELECT 1 UNION ALL SELECT 2", "UNION"),
    ("SELECT 1 EXCEPT SELECT 2", "EXCEPT"),
    ("WITH a AS (SELECT 1 AS X) SELECT X FROM a", "WITH … SELECT"),
    ("WITH a AS (SELECT 1) , b AS (SELECT 2) SELECT * FROM a, b", "WITH … SELECT"),
    ("SELECT * FROM (SELECT * FROM CRYPTO_DATA) AS D", "SELECT"),
    ("SELECT * FROM TABLE(RESULT_SCAN(LAST_QUERY_ID()))", "SELECT"),
    ("VALUES (1, 'a'), (2, 'b')", "VALUES"),
    ("SHOW TABLES", "SHOW"),
    ("show terse tables in schema CRYPTO_ETL_DB.PUBLIC", "SHOW"),
    ("SHOW GRANTS", "SHOW"),  # kept as a Command by sqlglot; SHOW only lists
    ("DESCRIBE TABLE CRYPTO_DATA", "DESCRIBE TABLE"),
    ("DESC TABLE CRYPTO_DATA", "DESCRIBE TABLE"),
    ("DESC VIEW LATEST_SNAPSHOT", "DESCRIBE VIEW"),
    ("LIST @MY_STAGE", "LIST"),
    ("EXPLAIN SELECT * FROM CRYPTO_DATA", "EXPLAIN SELECT"),
    ("EXPLAIN USING JSON SELECT 1", "EXPLAIN SELECT"),
    ("explain using text with a as (select 1) select * from a", "EXPLAIN WITH … SELECT"),
]

WRITE = [
    ("DROP TABLE CRYPTO_DATA", "DROP TABLE"),
    ("drop table if exists CRYPTO_DATA", "DROP TABLE"),
    ("DELETE FROM CRYPTO_DATA", "DELETE"),
    ("DELETE FROM CRYPTO_DATA WHERE SNAPSHOT_ID = 'x;y'", "DELETE"),
    ("INSERT INTO T VALUES (1)", "INSERT"),
    ("INSERT OVERWRITE INTO T SELECT 1", "INSERT"),
    ("UPDATE T SET A = 1", "UPDATE"),
    ("MERGE INTO A USING B ON A.X = B.X WHEN MATCHED THEN DELETE", "MERGE"),
    ("CREATE TABLE T (A INT)", "CREATE TABLE"),
    ("CREATE OR REPLACE VIEW V AS SELECT 1", "CREATE VIEW"),
    ("CREATE TABLE T AS SELECT * FROM CRYPTO_DATA", "CREATE TABLE"),
    ("ALTER TABLE T ADD COLUMN B INT", "ALTER TABLE"),
    ("TRUNCATE TABLE CRYPTO_DATA", "TRUNCATE TABLE"),
    ("UNDROP TABLE T", "UNDROP TABLE"),
    ("COPY INTO T FROM @S", "COPY"),
    ("PUT file:///tmp/x.csv @S", "PUT"),
    ("GET @S file:///tmp/", "GET"),
    ("REMOVE @S", "REMOVE"),
    ("GRANT SELECT ON T TO ROLE R", "GRANT"),
    ("REVOKE SELECT ON T FROM ROLE R", "REVOKE"),
    ("CALL MY_PROC()", "CALL"),
    ("EXECUTE IMMEDIATE $$DROP TABLE T$$", "EXECUTE"),
    ("USE SCHEMA OTHER", "USE"),
    ("SET X = 1", "SET"),
    ("BEGIN", "BEGIN"),
    ("COMMIT", "COMMIT"),
    ("ROLLBACK", "ROLLBACK"),
    ("COMMENT ON TABLE T IS 'x'", "COMMENT"),
    ("WITH a AS (SELECT 1 AS X) INSERT INTO T SELECT X FROM a", "WITH … INSERT"),
    ("WITH d AS (DELETE FROM T RETURNING *) SELECT * FROM d", "WITH … SELECT"),
    ("SELECT * INTO T2 FROM T", "SELECT … INTO"),
    ("SELECT SYSTEM$CANCEL_ALL_QUERIES(1)", "SELECT"),
    ("EXPLAIN DELETE FROM T", "EXPLAIN DELETE"),
]


@pytest.mark.parametrize(("sql", "name"), READ)
def test_read_only_statements_run_without_write(sql: str, name: str):
    verdict = classify(sql)
    assert (verdict.kind, verdict.statement, verdict.count) == (Kind.READ, name, 1), verdict
    assert verdict.read_only
    assert check(sql, write=False) == verdict


@pytest.mark.parametrize(("sql", "name"), WRITE)
def test_statements_that_write_need_write(sql: str, name: str):
    verdict = classify(sql)
    assert (verdict.kind, verdict.statement) == (Kind.WRITE, name), verdict
    assert not verdict.read_only
    with pytest.raises(ValidationError) as err:
        check(sql, write=False)
    message = str(err.value)
    assert message.startswith("invalid statement: ")
    assert name in message and "--write" in message and "nothing was run" in message
    assert check(sql, write=True) == verdict


def test_what_a_read_contains_is_named():
    assert (
        "contains DELETE"
        in classify("WITH d AS (DELETE FROM T RETURNING *) SELECT * FROM d").reason
    )
    assert "SYSTEM$CANCEL_ALL_QUERIES" in classify("SELECT SYSTEM$CANCEL_ALL_QUERIES(1)").reason


@pytest.mark.parametrize(
    ("sql", "count", "found"),
    [
        ("SELECT 1; DROP TABLE CRYPTO_DATA", 2, "SELECT 1; DROP TABLE …"),
        ("SELECT 1; SELECT 2", 2, "SELECT 1; SELECT 2"),
        ("SELECT 1 /* c */; -- d\n DELETE FROM T;", 2, "SELECT 1; DELETE FROM …"),
        ("SELECT ';'; DROP TABLE T", 2, "SELECT ';'; DROP TABLE …"),
        ("INSERT INTO T VALUES (1); INSERT INTO T VALUES (2); COMMIT", 3, "COMMIT"),
    ],
)
def test_several_statements_are_refused_even_with_write(sql: str, count: int, found: str):
    verdict = classify(sql)
    assert (verdict.kind, verdict.count) == (Kind.MULTIPLE, count)
    assert found in verdict.statement
    for write in (False, True):
        with pytest.raises(ValidationError, match=f"found {count} statements") as err:
            check(sql, write=write)
        assert "one statement at a time" in str(err.value)


@pytest.mark.parametrize("sql", ["", "   ", ";", " ;; ", "-- just a comment", "/* x */ ;"])
def test_an_empty_statement_is_refused_even_with_write(sql: str):
    verdict = classify(sql)
    assert (verdict.kind, verdict.count) == (Kind.EMPTY, 0)
    for write in (False, True):
        with pytest.raises(ValidationError, match="no SQL statement found"):
            check(sql, write=write)


@pytest.mark.parametrize(
    ("sql", "word"),
    [
        ("SELEC 1", "SELEC"),  # the parser fails
        ("DESCRIBE RESULT LAST_QUERY_ID()", "DESCRIBE"),
        ("SELECT * FROM (DELETE FROM T)", "SELECT"),
        ("SELECT 'unterminated", "SELECT"),  # the tokenizer fails
        ("ALTER SESSION UNSET X", "ALTER"),
    ],
)
def test_what_the_parser_cannot_classify_needs_write_and_says_so(sql: str, word: str):
    verdict = classify(sql)
    assert verdict.kind in (Kind.UNPARSED, Kind.WRITE), verdict
    assert word in verdict.statement
    with pytest.raises(ValidationError, match="--write"):
        check(sql, write=False)
    assert check(sql, write=True).kind is verdict.kind
    if verdict.kind is Kind.UNPARSED:
        assert "not known to be read-only" in verdict.reason
        assert "\x1b" not in verdict.reason  # sqlglot's ANSI underline codes are stripped


def test_unknown_commands_are_unparsed_not_read():
    verdict = classify("FROBNICATE EVERYTHING")
    assert verdict.kind is Kind.UNPARSED
    assert not verdict.runnable(write=False) and verdict.runnable(write=True)


def test_classify_does_not_log_sqlglot_warnings(caplog: pytest.LogCaptureFixture):
    caplog.set_level(logging.WARNING)
    classify("SHOW GRANTS")
    classify("CALL P()")
    assert not [r for r in caplog.records if r.name.startswith("sqlglot")]
    # The sqlglot logger's own level is restored afterwards.
    assert logging.getLogger("sqlglot").level == logging.NOTSET


def test_table_output_shows_control_characters_as_escapes():
    import io

    from local_mode.warehouse_commands import print_table

    out = io.StringIO()
    print_table(["NAME"], [("a\rb",), ("\x1b[31mred",), ("tab\there",), ("Ünï 🚀",)], out)
    text = out.getvalue()
    assert "\r" not in text and "\x1b" not in text and "\t" not in text
    assert "a\\rb" in text and "\\x1b[31mred" in text and "tab\\there" in text
    assert "Ünï 🚀" in text
    assert text.count("\n") == 2 + 4 + 1  # header, rule, one line per row, the count
