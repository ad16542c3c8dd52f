"""Open a ``snowflake-connector-python`` connection from a :class:`SnowflakeConfig`."""

from __future__ import annotations

from typing import Any

import snowflake.connector
from cryptography.hazmat.primitives import serialization
from snowflake.connector import SnowflakeConnection

from functions.common.errors import ConfigError, LoadError
from functions.load.config import SnowflakeConfig


def private_key_der(pem: str, passphrase: str | None = None) -> bytes:
    """PEM private key text -> unencrypted PKCS#8 DER bytes, the form the connector takes."""
    try:
        key = serialization.load_pem_private_key(
            pem.encode(), password=passphrase.encode() if passphrase else None
        )
    except (ValueError, TypeError) as exc:
        # The message names the problem without echoing any of the key material.
        hint = "a passphrase is needed" if "encrypted" in str(exc).lower() else str(exc)
        raise ConfigError(
            "SNOWFLAKE_PRIVATE_KEY",
            f"is not a usable PEM private key or the passphrase is wrong ({hint})",
        ) from None
    return key.private_bytes(
        encoding=serialization.Encoding.DER,
        format=serialization.PrivateFormat.PKCS8,
        encryption_algorithm=serialization.NoEncryption(),
    )


def connect_kwargs(cfg: SnowflakeConfig) -> dict[str, Any]:
    """The keyword arguments for ``snowflake.connector.connect`` (contains secrets: never log)."""
    kwargs: dict[str, Any] = {
        "account": cfg.account,
        "user": cfg.user,
        "database": cfg.database,
        "schema": cfg.schema,
    }
    if cfg.private_key:
        kwargs["private_key"] = private_key_der(cfg.private_key, cfg.private_key_passphrase)
    else:
        kwargs["password"] = cfg.password
    optional = {
        "role": cfg.role,
        "warehouse": cfg.warehouse,
        "host": cfg.host,
        "port": cfg.port,
        "protocol": cfg.protocol,
        "network_timeout": cfg.network_timeout,
        "login_timeout": cfg.login_timeout,
    }
    kwargs.update({k: v for k, v in optional.items() if v is not None})
    kwargs["session_parameters"] = cfg.connect_session_parameters()
    return kwargs


def connect(cfg: SnowflakeConfig) -> SnowflakeConnection:
    """Connect (autocommit on, pyformat binding); a failure raises LoadError naming the target."""
    try:
        return snowflake.connector.connect(**connect_kwargs(cfg))
    except snowflake.connector.errors.Error as exc:
        where = f"{cfg.protocol or 'https'}://{cfg.host}:{cfg.port}" if cfg.host else cfg.account
        raise LoadError(
            f"cannot connect to Snowflake {where} as {cfg.user} "
            f"(database {cfg.database}, schema {cfg.schema}): {exc}"
        ) from exc
