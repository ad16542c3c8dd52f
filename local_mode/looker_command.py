"""``crypto-etl looker``: what to paste into Looker Studio's Snowflake connector.

Prints the connector's fields (account URL, role, warehouse, database, schema, username, how to
authenticate) and each data source's custom query from ``looker/datasources/`` with the configured
database and schema substituted. It reads the load function's ``SNOWFLAKE_ACCOUNT``,
``SNOWFLAKE_WAREHOUSE``, ``SNOWFLAKE_DATABASE`` and ``SNOWFLAKE_SCHEMA`` from the environment,
and nothing else: no password, private key, passphrase or secret (``SNOWFLAKE_SECRET_ARN`` is not
read), so none can be printed. A value that is not configured is printed as a placeholder
(``<account>``, ``<warehouse>``) with the variable or option that fills it; that is not an error.

The role and username are the read-only reporting ones created in ``looker/README.md``
(``CRYPTO_ETL_REPORTER``, ``CRYPTO_ETL_LOOKER``; ``--role``/``--user`` to change), never the
load's ``SNOWFLAKE_ROLE``/``SNOWFLAKE_USER``, which own the schema.

The connector's fields and rules (account URL, role, warehouse, database, schema, a SQL query
that must not end with a semicolon; username with a password or private key; for key-pair auth
the user's public key is set without the BEGIN/END lines and without newlines; no MFA):
https://docs.snowflake.com/en/connectors/google-looker-studio-connector. The account URL is
``https://<account identifier>.snowflakecomputing.com``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TextIO

from functions.common.errors import ConfigError
from functions.load.config import DEFAULT_DATABASE, DEFAULT_SCHEMA, validate_identifier

REPO_ROOT = Path(__file__).resolve().parents[1]
DATASOURCES_DIR = REPO_ROOT / "looker" / "datasources"
REPORT_ROLE = "CRYPTO_ETL_REPORTER"
REPORT_USER = "CRYPTO_ETL_LOOKER"
PRIVATE_KEY_FILE = "rsa_looker.p8"
# How the queries name the views; replaced by the configured database and schema.
QUALIFIER = f"{DEFAULT_DATABASE}.{DEFAULT_SCHEMA}."
_QUALIFIER_RE = re.compile(rf"\b{re.escape(QUALIFIER)}")
# An account identifier: <org>-<account>, or a locator with region/cloud (xy12345.eu-west-1).
_ACCOUNT_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
_URL_SUFFIX = ".snowflakecomputing.com"


@dataclass(frozen=True)
class DataSource:
    """One Looker Studio data source: its query file ``<name>.sql`` and what uses it."""

    name: str
    purpose: str


# In the order looker/README.md adds them (the names of looker/report.yaml's data_sources).
DATA_SOURCES: tuple[DataSource, ...] = (
    DataSource("snapshot_filter", "the Currency, Fetch date and Snapshot controls"),
    DataSource("market_snapshots", "Market page scorecards (one snapshot)"),
    DataSource("market_history", "History page trend charts (every snapshot)"),
    DataSource("snapshot_coins", "Market page top coins and volume share (one snapshot)"),
    DataSource("dominance_share", "Market page dominance pie: top 10 + others (one snapshot)"),
    DataSource("top_movers", "Movers page: 24h gainers and losers (one snapshot)"),
    DataSource("coin_history", "Coin history page (every snapshot)"),
)


@dataclass(frozen=True)
class ConnectorSettings:
    """The connector's fields; a missing value is a ``<placeholder>`` named in ``to_fill``."""

    account_url: str
    role: str
    warehouse: str
    database: str
    schema: str
    username: str
    authentication: str
    to_fill: dict[str, str] = field(default_factory=dict)  # placeholder -> how to fill it


def account_url(account: str) -> str:
    """``https://<account>.snowflakecomputing.com`` for an account identifier (or such a URL).

    Raises ConfigError naming SNOWFLAKE_ACCOUNT when ``account`` is not an identifier.
    """
    value = account.strip()
    for prefix in ("https://", "http://"):
        if value.lower().startswith(prefix):
            value = value[len(prefix) :]
    value = value.rstrip("/")
    if value.lower().endswith(_URL_SUFFIX):
        value = value[: -len(_URL_SUFFIX)]
    if not _ACCOUNT_RE.fullmatch(value):
        raise ConfigError(
            "SNOWFLAKE_ACCOUNT",
            f"{account!r} is not an account identifier (e.g. myorg-myaccount or"
            " xy12345.eu-west-1: letters, digits, '-', '_', '.')",
        )
    return f"https://{value}{_URL_SUFFIX}"


def connector_settings(
    env: Mapping[str, str],
    *,
    role: str | None = None,
    warehouse: str | None = None,
    user: str | None = None,
) -> ConnectorSettings:
    """The connector's fields from ``env`` (``SNOWFLAKE_*``) and the command's options.

    Reads only SNOWFLAKE_ACCOUNT, SNOWFLAKE_WAREHOUSE, SNOWFLAKE_DATABASE, SNOWFLAKE_SCHEMA
    (empty = unset). Raises ConfigError for a malformed account, database, schema, role,
    warehouse or user.
    """
    to_fill: dict[str, str] = {}
    account = env.get("SNOWFLAKE_ACCOUNT", "").strip()
    if account:
        url = account_url(account)
    else:
        url = f"https://<account>{_URL_SUFFIX}"
        how = "set SNOWFLAKE_ACCOUNT (e.g. myorg-myaccount or xy12345.eu-west-1)"
        if env.get("SNOWFLAKE_SECRET_ARN", "").strip():
            how += "; this command does not read the secret SNOWFLAKE_SECRET_ARN names"
        to_fill["<account>"] = how
    wh = (warehouse or env.get("SNOWFLAKE_WAREHOUSE", "")).strip()
    if wh:
        wh = validate_identifier(wh, "--warehouse" if warehouse else "SNOWFLAKE_WAREHOUSE")
    else:
        wh = "<warehouse>"
        to_fill[wh] = "set SNOWFLAKE_WAREHOUSE or pass --warehouse (e.g. CRYPTO_ETL_WH)"
    database = env.get("SNOWFLAKE_DATABASE", "").strip() or DEFAULT_DATABASE
    schema = env.get("SNOWFLAKE_SCHEMA", "").strip() or DEFAULT_SCHEMA
    username = validate_identifier(user or REPORT_USER, "--user")
    return ConnectorSettings(
        account_url=url,
        role=validate_identifier(role or REPORT_ROLE, "--role"),
        warehouse=wh,
        database=validate_identifier(database, "SNOWFLAKE_DATABASE"),
        schema=validate_identifier(schema, "SNOWFLAKE_SCHEMA"),
        username=username,
        authentication=(
            f"key pair: the private key of {username} ({PRIVATE_KEY_FILE}, looker/README.md"
            " step 2); this command prints no key or password"
        ),
        to_fill=to_fill,
    )


def data_source_sql(name: str, database: str, schema: str, directory: Path | None = None) -> str:
    """The custom query of data source ``name`` with its views in ``database.schema``.

    One statement, no trailing semicolon (the connector refuses one). Raises ConfigError when
    the file is missing or ends with a semicolon.
    """
    path = (directory or DATASOURCES_DIR) / f"{name}.sql"
    try:
        text = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConfigError(str(path), f"cannot read the data source query ({exc})") from exc
    if text.endswith(";"):
        raise ConfigError(str(path), "ends with ';', which the Snowflake connector refuses")
    db = validate_identifier(database, "SNOWFLAKE_DATABASE")
    sch = validate_identifier(schema, "SNOWFLAKE_SCHEMA")
    return _QUALIFIER_RE.sub(f"{db}.{sch}.", text)


def report(env: Mapping[str, str], **options: str | None) -> dict[str, Any]:
    """Everything the command prints, as one JSON-able object."""
    settings = connector_settings(env, **options)
    sources = [
        {
            "name": ds.name,
            "purpose": ds.purpose,
            "file": f"looker/datasources/{ds.name}.sql",
            "sql": data_source_sql(ds.name, settings.database, settings.schema),
        }
        for ds in DATA_SOURCES
    ]
    return {"connector": asdict(settings), "data_sources": sources}


def render_text(doc: Mapping[str, Any], out: TextIO) -> None:
    c = doc["connector"]
    print("Looker Studio > Create > Data source > Snowflake (steps: looker/README.md)\n", file=out)
    rows = (
        ("Account URL", c["account_url"]),
        ("Role", c["role"]),
        ("Warehouse", c["warehouse"]),
        ("Database", c["database"]),
        ("Schema", c["schema"]),
        ("Username", c["username"]),
        ("Authentication", c["authentication"]),
    )
    for label, value in rows:
        print(f"  {label:<15} {value}", file=out)
    if c["to_fill"]:
        print("\nNot configured here; to fill the placeholders:", file=out)
        for placeholder, how in c["to_fill"].items():
            print(f"  {placeholder:<12} {how}", file=out)
    total = len(doc["data_sources"])
    print(
        f"\n{total} data sources: for each, a new Snowflake data source with the settings above"
        " and this custom query, pasted as is (no trailing semicolon).",
        file=out,
    )
    for i, ds in enumerate(doc["data_sources"], 1):
        print(f"\n-- {i}/{total} {ds['name']}: {ds['purpose']} ({ds['file']})", file=out)
        print(ds["sql"], file=out)


def register(sub: Any) -> None:
    """Add ``looker`` to the CLI's sub-parsers."""
    looker = sub.add_parser(
        "looker",
        help="print the Looker Studio connector settings and data source queries",
        description=(
            "Print what to paste into Looker Studio's Snowflake connector for the account"
            " configured by SNOWFLAKE_ACCOUNT, SNOWFLAKE_WAREHOUSE, SNOWFLAKE_DATABASE and"
            " SNOWFLAKE_SCHEMA. No password, key or secret is read or printed."
        ),
    )
    looker.add_argument("--json", action="store_true", help="print one JSON object")
    looker.add_argument(
        "--role", help=f"the read-only reporting role (default {REPORT_ROLE}, looker/README.md)"
    )
    looker.add_argument(
        "--warehouse", help="the warehouse the report queries with (default SNOWFLAKE_WAREHOUSE)"
    )
    looker.add_argument(
        "--user", help=f"the Looker Studio user (default {REPORT_USER}, looker/README.md)"
    )
    looker.set_defaults(func=looker_cli)


def looker_cli(args: argparse.Namespace, out: TextIO) -> int:
    """``crypto-etl looker``: 0, also when values are missing (they print as placeholders)."""
    doc = report(os.environ, role=args.role, warehouse=args.warehouse, user=args.user)
    if args.json:
        print(json.dumps(doc, indent=2), file=out)
    else:
        render_text(doc, out)
    return 0
