"""Snowflake connection settings from the environment (and, on AWS, from Secrets Manager).

Environment variables (all ``SNOWFLAKE_*``; an empty value counts as unset):

==========================  ===========================================================
ACCOUNT, USER               required (from the env or the secret)
PASSWORD                    password auth, used when no private key is configured
PRIVATE_KEY                 key-pair auth: PEM text (``\\n`` escapes are accepted)
PRIVATE_KEY_PASSPHRASE      passphrase of an encrypted PEM key
ROLE, WAREHOUSE             optional
DATABASE, SCHEMA            default ``CRYPTO_ETL_DB`` / ``PUBLIC``; validated identifiers
HOST, PORT, PROTOCOL        connection overrides (local mode: the fakesnow server)
NETWORK_TIMEOUT             seconds the connector keeps retrying a request (short locally)
LOGIN_TIMEOUT               seconds the connector keeps retrying the login
STATEMENT_TIMEOUT_SECONDS   session STATEMENT_TIMEOUT_IN_SECONDS (default 300; 0 = Snowflake's
                            maximum, 7 days): the server cancels a longer statement
LOCK_TIMEOUT_SECONDS        session LOCK_TIMEOUT (default 60; 0 = fail at once): how long a
                            statement waits for a lock held by another transaction, e.g. a
                            killed load's, before it fails
SESSION_PARAMETERS          JSON object of other session parameters (local: ``FAKESNOW_DB_PATH``)
SECRET_ARN                  Secrets Manager secret holding the JSON shape in ``EXPECTED_JSON``
==========================  ===========================================================

Values in the environment override the secret's. Secrets never appear in ``repr`` or logs.
Every session also pins ``TIMESTAMP_INPUT_FORMAT`` and ``DATE_INPUT_FORMAT`` to ``AUTO``, so an
account-level input format cannot break the casts of bound timestamps (see
:meth:`SnowflakeConfig.connect_session_parameters`). Parameter names and ranges:
https://docs.snowflake.com/en/sql-reference/parameters (STATEMENT_TIMEOUT_IN_SECONDS: 0-604800,
default 172800; LOCK_TIMEOUT: default 43200).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from functions.common.config import env_int
from functions.common.errors import ConfigError
from functions.common.secrets import fetch_secret_string as read_secret

DEFAULT_DATABASE = "CRYPTO_ETL_DB"
DEFAULT_SCHEMA = "PUBLIC"

IDENTIFIER_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_$]*$")

EXPECTED_JSON = (
    '{"account": "xy12345.eu-west-1", "user": "CRYPTO_ETL_LOADER", '
    '"private_key": "<PKCS#8 PEM text>", "private_key_passphrase": "optional", '
    '"role": "optional", "warehouse": "optional", "database": "optional", "schema": "optional"} '
    '(or "password" instead of "private_key")'
)

# secret JSON key -> environment variable that overrides it
_SECRET_KEYS = {
    "account": "SNOWFLAKE_ACCOUNT",
    "user": "SNOWFLAKE_USER",
    "password": "SNOWFLAKE_PASSWORD",
    "private_key": "SNOWFLAKE_PRIVATE_KEY",
    "private_key_passphrase": "SNOWFLAKE_PRIVATE_KEY_PASSPHRASE",
    "role": "SNOWFLAKE_ROLE",
    "warehouse": "SNOWFLAKE_WAREHOUSE",
    "database": "SNOWFLAKE_DATABASE",
    "schema": "SNOWFLAKE_SCHEMA",
}

SecretFetcher = Callable[[str], str]

DEFAULT_STATEMENT_TIMEOUT_SECONDS = 300  # below the Load Lambda's 600 s timeout
DEFAULT_LOCK_TIMEOUT_SECONDS = 60
MAX_STATEMENT_TIMEOUT_SECONDS = 604_800  # Snowflake's limit (7 days)

# Session parameters this module sets itself: SNOWFLAKE_SESSION_PARAMETERS may not set them
# (value -> the variable to use instead, or None when the load pins it).
_OWN_SESSION_PARAMETERS = {
    "STATEMENT_TIMEOUT_IN_SECONDS": "SNOWFLAKE_STATEMENT_TIMEOUT_SECONDS",
    "LOCK_TIMEOUT": "SNOWFLAKE_LOCK_TIMEOUT_SECONDS",
    "TIMESTAMP_INPUT_FORMAT": None,
    "DATE_INPUT_FORMAT": None,
}


def validate_identifier(value: str, name: str) -> str:
    """Return ``value`` upper-cased if it is a plain Snowflake identifier, else ConfigError."""
    if not isinstance(value, str) or not IDENTIFIER_RE.fullmatch(value):
        raise ConfigError(
            name, f"{value!r} is not a plain identifier (letters, digits, '_', '$'; no quotes)"
        )
    return value.upper()


@dataclass(frozen=True)
class SnowflakeConfig:
    """Everything :func:`functions.load.connection.connect` needs."""

    account: str
    user: str
    password: str | None = field(default=None, repr=False)
    private_key: str | None = field(default=None, repr=False)
    private_key_passphrase: str | None = field(default=None, repr=False)
    role: str | None = None
    warehouse: str | None = None
    database: str = DEFAULT_DATABASE
    schema: str = DEFAULT_SCHEMA
    host: str | None = None
    port: int | None = None
    protocol: str | None = None
    network_timeout: int | None = None
    login_timeout: int | None = None
    session_parameters: dict[str, Any] = field(default_factory=dict)
    statement_timeout_seconds: int = DEFAULT_STATEMENT_TIMEOUT_SECONDS
    lock_timeout_seconds: int = DEFAULT_LOCK_TIMEOUT_SECONDS

    def __post_init__(self) -> None:
        database = validate_identifier(self.database, "SNOWFLAKE_DATABASE")
        object.__setattr__(self, "database", database)
        object.__setattr__(self, "schema", validate_identifier(self.schema, "SNOWFLAKE_SCHEMA"))
        if not self.private_key and not self.password:
            raise ConfigError(
                "SNOWFLAKE_PRIVATE_KEY",
                "neither a private key nor SNOWFLAKE_PASSWORD is configured",
            )
        if self.protocol not in (None, "http", "https"):
            raise ConfigError("SNOWFLAKE_PROTOCOL", f"{self.protocol!r} must be 'http' or 'https'")
        for name, value, maximum in (
            ("SNOWFLAKE_STATEMENT_TIMEOUT_SECONDS", self.statement_timeout_seconds,
             MAX_STATEMENT_TIMEOUT_SECONDS),
            ("SNOWFLAKE_LOCK_TIMEOUT_SECONDS", self.lock_timeout_seconds, None),
        ):  # fmt: skip
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ConfigError(name, f"{value!r} must be an integer >= 0")
            if maximum is not None and value > maximum:
                raise ConfigError(name, f"{value} is above Snowflake's maximum {maximum}")
        _check_own_parameters(self.session_parameters)

    def connect_session_parameters(self) -> dict[str, Any]:
        """The session parameters every connection is opened with (sent at login).

        ``STATEMENT_TIMEOUT_IN_SECONDS`` and ``LOCK_TIMEOUT`` (seconds) from this config,
        ``TIMESTAMP_INPUT_FORMAT`` / ``DATE_INPUT_FORMAT`` = ``AUTO`` (the bound ISO-8601 values
        the load casts), then ``session_parameters``.
        """
        return {
            "STATEMENT_TIMEOUT_IN_SECONDS": self.statement_timeout_seconds,
            "LOCK_TIMEOUT": self.lock_timeout_seconds,
            "TIMESTAMP_INPUT_FORMAT": "AUTO",
            "DATE_INPUT_FORMAT": "AUTO",
            **self.session_parameters,
        }

    @property
    def auth_method(self) -> str:
        """``key-pair`` or ``password`` (safe to log)."""
        return "key-pair" if self.private_key else "password"

    def describe(self) -> dict[str, Any]:
        """A loggable summary (no secrets)."""
        return {
            "account": self.account,
            "user": self.user,
            "auth": self.auth_method,
            "role": self.role,
            "warehouse": self.warehouse,
            "database": self.database,
            "schema": self.schema,
            "host": self.host,
            "port": self.port,
            "statement_timeout_seconds": self.statement_timeout_seconds,
            "lock_timeout_seconds": self.lock_timeout_seconds,
        }

    @classmethod
    def from_env(
        cls, env: Mapping[str, str], *, fetch_secret: SecretFetcher | None = None
    ) -> SnowflakeConfig:
        """Build the config from ``SNOWFLAKE_*`` variables (plus the secret named by ARN)."""
        values: dict[str, str] = {}
        arn = env.get("SNOWFLAKE_SECRET_ARN", "").strip()
        if arn:
            values.update(_secret_values(arn, fetch_secret or _fetch_secret_string))
        for key, var in _SECRET_KEYS.items():
            if env.get(var, "").strip():
                values[key] = env[var].strip()

        missing = [k for k in ("account", "user") if not values.get(k)]
        if not values.get("private_key") and not values.get("password"):
            missing.append("private_key or password")
        if missing:
            where = f"the secret {arn} or the environment" if arn else "the environment"
            env_names = ", ".join(_SECRET_KEYS.get(k, k) for k in missing)
            raise ConfigError(
                "SNOWFLAKE_SECRET_ARN" if arn else "SNOWFLAKE_ACCOUNT",
                f"missing {', '.join(missing)} (looked in {where}: set {env_names}"
                + (f", or fill the secret with JSON {EXPECTED_JSON})" if arn else ")"),
            )

        private_key = values.get("private_key")
        if private_key and "\\n" in private_key and "\n" not in private_key:
            private_key = private_key.replace("\\n", "\n")

        port = env_int(env, "SNOWFLAKE_PORT", 0, minimum=0, maximum=65535) or None
        network_timeout = env_int(env, "SNOWFLAKE_NETWORK_TIMEOUT", 0, minimum=0) or None
        login_timeout = env_int(env, "SNOWFLAKE_LOGIN_TIMEOUT", 0, minimum=0) or None
        statement_timeout = env_int(
            env,
            "SNOWFLAKE_STATEMENT_TIMEOUT_SECONDS",
            DEFAULT_STATEMENT_TIMEOUT_SECONDS,
            minimum=0,
            maximum=MAX_STATEMENT_TIMEOUT_SECONDS,
        )
        lock_timeout = env_int(
            env, "SNOWFLAKE_LOCK_TIMEOUT_SECONDS", DEFAULT_LOCK_TIMEOUT_SECONDS, minimum=0
        )
        return cls(
            account=values["account"],
            user=values["user"],
            password=values.get("password") or None,
            private_key=private_key or None,
            private_key_passphrase=values.get("private_key_passphrase") or None,
            role=values.get("role") or None,
            warehouse=values.get("warehouse") or None,
            database=values.get("database") or DEFAULT_DATABASE,
            schema=values.get("schema") or DEFAULT_SCHEMA,
            host=env.get("SNOWFLAKE_HOST", "").strip() or None,
            port=port,
            protocol=env.get("SNOWFLAKE_PROTOCOL", "").strip().lower() or None,
            network_timeout=network_timeout,
            login_timeout=login_timeout,
            session_parameters=_session_parameters(env),
            statement_timeout_seconds=statement_timeout,
            lock_timeout_seconds=lock_timeout,
        )


def _session_parameters(env: Mapping[str, str]) -> dict[str, Any]:
    raw = env.get("SNOWFLAKE_SESSION_PARAMETERS", "").strip()
    if not raw:
        return {}
    try:
        parsed = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ConfigError(
            "SNOWFLAKE_SESSION_PARAMETERS", f"is not valid JSON ({exc.msg} at char {exc.pos})"
        ) from exc
    if not isinstance(parsed, dict):
        raise ConfigError("SNOWFLAKE_SESSION_PARAMETERS", "must be a JSON object")
    return parsed


def _check_own_parameters(params: Mapping[str, Any]) -> None:
    """ConfigError if ``params`` sets a parameter this module sets itself (any letter case)."""
    for key in params:
        if str(key).upper() in _OWN_SESSION_PARAMETERS:
            instead = _OWN_SESSION_PARAMETERS[str(key).upper()]
            raise ConfigError(
                "SNOWFLAKE_SESSION_PARAMETERS",
                f"must not set {key}: "
                + (f"use {instead}" if instead else "the load pins it to AUTO"),
            )


def _fetch_secret_string(arn: str) -> str:
    """The secret's string ("" when it has no value yet)."""
    return read_secret(arn, "SNOWFLAKE_SECRET_ARN")


def _secret_values(arn: str, fetch: SecretFetcher) -> dict[str, str]:
    raw = fetch(arn).strip()
    if not raw:
        raise ConfigError(
            "SNOWFLAKE_SECRET_ARN",
            f"secret {arn} is empty (or has no value yet): missing account, user, "
            f"private_key or password; fill it with JSON {EXPECTED_JSON}",
        )
    try:
        parsed = json.loads(raw)
    except json.JSONDecodeError as exc:
        # Never echo the secret's text: it may hold a key.
        raise ConfigError(
            "SNOWFLAKE_SECRET_ARN",
            f"secret {arn} is not valid JSON ({exc.msg} at char {exc.pos});"
            f" expected {EXPECTED_JSON}",
        ) from exc
    if not isinstance(parsed, dict):
        raise ConfigError(
            "SNOWFLAKE_SECRET_ARN", f"secret {arn} must be a JSON object: {EXPECTED_JSON}"
        )
    # Unknown keys are ignored; a misspelt required key is reported as missing by the caller.
    return {
        k: str(v).strip()
        for k, v in parsed.items()
        if k in _SECRET_KEYS and v is not None and str(v).strip()
    }
