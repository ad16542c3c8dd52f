"""Is a SQL text exactly one read-only statement? (pure: no connection, no I/O)

``crypto-etl sql`` runs only what :func:`classify` calls ``READ`` unless ``--write`` is given.
The decision is made by sqlglot's Snowflake parser (the parser fakesnow itself uses;
https://sqlglot.com/sqlglot/dialects/snowflake.html), not by a prefix test, so a ``;`` inside a
string literal, a ``$$…$$`` string or a comment is not a statement boundary, and a ``WITH``
whose body is an ``INSERT`` is a write.

Read-only (``READ``): ``SELECT`` (also ``UNION``/``INTERSECT``/``EXCEPT`` and a parenthesised
query), ``WITH … SELECT``, ``VALUES``, ``SHOW``, ``DESCRIBE``/``DESC``, ``LIST`` (a stage's
files), and ``EXPLAIN`` of one of these; none of them may contain a write anywhere in its tree
(``SELECT … INTO``, a DML CTE) or call a ``SYSTEM$`` function (some change account state, e.g.
``SYSTEM$CANCEL_ALL_QUERIES``). Everything else the parser understands is ``WRITE``; what it
cannot parse is ``UNPARSED`` (both need ``--write``). An empty text (whitespace, comments,
``;``) is ``EMPTY`` and several statements are ``MULTIPLE``: those are never run.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from enum import StrEnum

import sqlglot
from sqlglot import exp
from sqlglot.errors import ParseError, TokenError
from sqlglot.tokens import Token, TokenType

from functions.common.errors import ValidationError

DIALECT = "snowflake"


class Kind(StrEnum):
    """What a SQL text is, for the purpose of running it."""

    READ = "read"  # one read-only statement: runs without --write
    WRITE = "write"  # one statement that is not read-only: needs --write
    UNPARSED = "unparsed"  # the parser cannot tell what it does: needs --write
    EMPTY = "empty"  # no statement at all: never run
    MULTIPLE = "multiple"  # more than one statement: never run


@dataclass(frozen=True)
class Verdict:
    """The classification of one SQL text.

    ``statement`` names what was found (``"SELECT"``, ``"DROP TABLE"``, ``"WITH … INSERT"``,
    ``"EXPLAIN SELECT"``; for ``MULTIPLE`` each statement's first keyword joined by ``"; "``);
    ``reason`` is one sentence saying why it has this kind; ``count`` is the number of
    statements found (0 for ``EMPTY``; None when the text could not even be tokenized).
    """

    kind: Kind
    statement: str
    reason: str
    count: int | None = 1

    @property
    def read_only(self) -> bool:
        return self.kind is Kind.READ

    def runnable(self, write: bool) -> bool:
        """True when ``crypto-etl sql`` may run it (``write``: ``--write`` was given)."""
        return self.kind is Kind.READ or (write and self.kind in (Kind.WRITE, Kind.UNPARSED))


# Statement nodes that change data, objects, grants or the session: never inside a read.
_WRITE_NODES: tuple[type[exp.Expression], ...] = (
    exp.DML,  # INSERT, UPDATE, DELETE, MERGE
    exp.Create,
    exp.Drop,
    exp.Alter,
    exp.TruncateTable,
    exp.Copy,
    exp.Put,
    exp.Get,
    exp.Grant,
    exp.Revoke,
    exp.Set,
    exp.Use,
    exp.Transaction,
    exp.Commit,
    exp.Rollback,
    exp.Into,
    exp.Undrop,
    exp.Comment,
    exp.Analyze,
    exp.Refresh,
    exp.Cache,
    exp.Uncache,
    exp.Pragma,
    exp.LoadData,
    exp.Kill,
    exp.Execute,
    exp.Command,
)
_READ_ROOTS: tuple[type[exp.Expression], ...] = (
    exp.Select,
    exp.SetOperation,
    exp.Values,
    exp.Show,
    exp.Describe,
    exp.ListStage,
)
# Statements sqlglot keeps as an opaque Command that are known to write (or may: CALL runs a
# procedure, EXECUTE IMMEDIATE any SQL, GET writes local files).
_WRITE_COMMANDS = frozenset(
    {"CALL", "EXECUTE", "REMOVE", "RM", "GET", "PUT", "UNSET", "BEGIN", "DECLARE"}
)
_EXPLAIN_FORMATS = ("USING TEXT ", "USING JSON ", "USING TABULAR ")


@contextlib.contextmanager
def _quiet_sqlglot() -> Iterator[None]:
    """sqlglot logs a warning for each statement it keeps as a Command: the verdict says it."""
    log = logging.getLogger("sqlglot")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(level)


def _split(tokens: list[Token]) -> list[list[Token]]:
    """Token groups between ``;`` tokens, without the empty ones."""
    groups: list[list[Token]] = [[]]
    for token in tokens:
        if token.token_type == TokenType.SEMICOLON:
            groups.append([])
        else:
            groups[-1].append(token)
    return [g for g in groups if g]


def _first_words(sql: str, n: int = 2) -> str:
    words = sql.split()
    return " ".join(words[:n]).upper() + (" …" if len(words) > n else "")


def _name(node: exp.Expression) -> str:
    """A short upper-case name of a statement node: ``DROP TABLE``, ``INSERT``, ``SELECT``."""
    if isinstance(node, exp.Command):
        return str(node.this).upper()
    if isinstance(node, exp.Into) or (isinstance(node, exp.Select) and node.args.get("into")):
        return "SELECT … INTO"
    if isinstance(node, exp.Transaction):
        return "BEGIN"
    if isinstance(node, exp.ListStage):
        return "LIST"
    if isinstance(node, exp.TruncateTable):
        return "TRUNCATE TABLE"
    if isinstance(node, exp.SetOperation):
        return node.key.upper()
    name = node.key.upper()
    kind = node.args.get("kind")
    if isinstance(node, exp.Create | exp.Drop | exp.Alter | exp.Undrop | exp.Describe) and kind:
        return f"{name} {str(kind).upper()}"
    return name


def _with_prefix(node: exp.Expression, name: str) -> str:
    return f"WITH … {name}" if node.args.get("with") or node.args.get("with_") else name


def _classify_expression(node: exp.Expression) -> Verdict:
    while isinstance(node, exp.Subquery):
        node = node.this
    if isinstance(node, exp.Command):
        return _classify_command(node)
    name = _with_prefix(node, _name(node))
    if not isinstance(node, _READ_ROOTS + _WRITE_NODES):
        return Verdict(
            Kind.UNPARSED,
            _first_words(node.sql(dialect=DIALECT), 1),
            f"sqlglot reads it as a {node.key} expression, not a statement it knows, so it is"
            " not known to be read-only",
        )
    if not isinstance(node, _READ_ROOTS) or node.args.get("into"):
        return Verdict(Kind.WRITE, name, f"{name} is not a read-only statement")
    for inner in node.walk():
        if inner is node:
            continue
        if isinstance(inner, _WRITE_NODES):
            what = _name(inner)
            return Verdict(Kind.WRITE, name, f"{name} contains {what}, which writes")
        if isinstance(inner, exp.Anonymous) and str(inner.this).upper().startswith("SYSTEM$"):
            return Verdict(
                Kind.WRITE,
                name,
                f"{name} calls {str(inner.this).upper()}; SYSTEM$ functions can change account"
                " state (e.g. SYSTEM$CANCEL_ALL_QUERIES)",
            )
    return Verdict(Kind.READ, name, f"{name} is read-only")


def _classify_command(node: exp.Command) -> Verdict:
    keyword = str(node.this).upper()
    rest = node.expression.name if isinstance(node.expression, exp.Expression) else ""
    if keyword == "SHOW":
        return Verdict(Kind.READ, "SHOW", "SHOW is read-only")
    if keyword == "EXPLAIN":
        body = rest.strip()
        for fmt in _EXPLAIN_FORMATS:
            if body.upper().startswith(fmt):
                body = body[len(fmt) :]
        inner = classify(body)
        name = f"EXPLAIN {inner.statement}" if inner.statement else "EXPLAIN"
        if inner.kind is Kind.READ:
            return Verdict(Kind.READ, name, f"{name} is read-only")
        kind = Kind.UNPARSED if inner.kind in (Kind.EMPTY, Kind.MULTIPLE) else inner.kind
        return Verdict(kind, name, f"{name} explains what is not one read: {inner.reason}")
    if keyword in _WRITE_COMMANDS:
        return Verdict(Kind.WRITE, keyword, f"{keyword} may write (it is not read-only)")
    return Verdict(
        Kind.UNPARSED,
        keyword,
        f"sqlglot's Snowflake parser does not understand {keyword} statements, so it is not"
        " known to be read-only",
    )


def classify(sql: str) -> Verdict:
    """Classify ``sql`` (one text, as typed): see the module docstring for the rules.

    Never raises: text the tokenizer or parser rejects is ``Kind.UNPARSED`` with sqlglot's
    message in ``reason``.
    """
    try:
        tokens = sqlglot.tokenize(sql, dialect=DIALECT)
    except TokenError as exc:
        return Verdict(
            Kind.UNPARSED,
            _first_words(sql, 1),
            f"sqlglot cannot tokenize it ({_one_line(exc)}), so it is not known to be read-only",
            count=None,
        )
    groups = _split(tokens)
    if not groups:
        return Verdict(
            Kind.EMPTY, "", "no SQL statement found (only whitespace, comments or ';')", count=0
        )
    if len(groups) > 1:
        found = "; ".join(
            sql[g[0].start : g[min(1, len(g) - 1)].end + 1] + (" …" if len(g) > 2 else "")
            for g in groups
        )
        return Verdict(
            Kind.MULTIPLE,
            found,
            f"found {len(groups)} statements ({found}); give one statement at a time",
            count=len(groups),
        )
    try:
        with _quiet_sqlglot():
            parsed = [e for e in sqlglot.parse(sql, dialect=DIALECT) if e is not None]
    except ParseError as exc:
        word = groups[0][0].text.upper()
        return Verdict(
            Kind.UNPARSED,
            word,
            f"sqlglot's Snowflake parser cannot parse this {word} statement"
            f" ({_one_line(exc)}), so it is not known to be read-only",
        )
    if len(parsed) != 1:  # the tokens say one statement; be safe if the parser disagrees
        return Verdict(
            Kind.UNPARSED,
            groups[0][0].text.upper(),
            f"the parser found {len(parsed)} statements where the tokenizer found one",
            count=len(parsed),
        )
    return _classify_expression(parsed[0])


def _one_line(exc: BaseException) -> str:
    # sqlglot's messages carry ANSI underline codes and the offending line: keep the first line.
    first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return first.replace("\x1b[4m", "").replace("\x1b[0m", "").strip()


def check(sql: str, *, write: bool) -> Verdict:
    """The verdict for ``sql`` if ``crypto-etl sql`` may run it, else ValidationError.

    ``write`` says ``--write`` was given. The error (field ``statement``) names what was found
    and why it is refused: an empty text or several statements always; a statement that is not
    read-only (or that the parser cannot classify) unless ``write``.
    """
    verdict = classify(sql)
    if verdict.runnable(write):
        return verdict
    if verdict.kind is Kind.EMPTY:
        raise ValidationError("statement", verdict.reason)
    if verdict.kind is Kind.MULTIPLE:
        raise ValidationError("statement", f"{verdict.reason} (nothing was run)")
    raise ValidationError(
        "statement",
        f"{verdict.reason}; `crypto-etl sql` is read-only (SELECT, WITH … SELECT, SHOW,"
        " DESCRIBE, LIST, EXPLAIN, VALUES) unless --write is given (nothing was run)",
    )
