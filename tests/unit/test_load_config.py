"""Snowflake configuration: environment, Secrets Manager (moto), key-pair keys."""

from __future__ import annotations

import json

import boto3
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from moto import mock_aws

from functions.common.errors import ConfigError
from functions.load.config import SnowflakeConfig
from functions.load.connection import connect_kwargs, private_key_der

BASE_ENV = {"SNOWFLAKE_ACCOUNT": "xy12345.eu-west-1", "SNOWFLAKE_USER": "LOADER"}


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _pem(key: rsa.RSAPrivateKey, passphrase: bytes | None = None) -> str:
    encryption = (
        serialization.BestAvailableEncryption(passphrase)
        if passphrase
        else serialization.NoEncryption()
    )
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
    ).decode()


def _der(key: rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.DER,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def test_password_config_with_defaults_and_local_overrides():
    cfg = SnowflakeConfig.from_env(
        {
            **BASE_ENV,
            "SNOWFLAKE_PASSWORD": "pw",
            "SNOWFLAKE_HOST": "127.0.0.1",
            "SNOWFLAKE_PORT": "8123",
            "SNOWFLAKE_PROTOCOL": "HTTP",
            "SNOWFLAKE_NETWORK_TIMEOUT": "5",
            "SNOWFLAKE_SESSION_PARAMETERS": '{"FAKESNOW_DB_PATH": "/x"}',
            "SNOWFLAKE_ROLE": " ",  # blank counts as unset
        }
    )
    assert (cfg.database, cfg.schema, cfg.auth_method) == ("CRYPTO_ETL_DB", "PUBLIC", "password")
    assert (cfg.host, cfg.port, cfg.protocol, cfg.network_timeout) == ("127.0.0.1", 8123, "http", 5)
    assert cfg.role is None
    kwargs = connect_kwargs(cfg)
    assert kwargs["password"] == "pw" and "private_key" not in kwargs
    assert kwargs["session_parameters"] == {
        "STATEMENT_TIMEOUT_IN_SECONDS": 300,
        "LOCK_TIMEOUT": 60,
        "TIMESTAMP_INPUT_FORMAT": "AUTO",
        "DATE_INPUT_FORMAT": "AUTO",
        "FAKESNOW_DB_PATH": "/x",
    }
    assert kwargs["port"] == 8123 and "role" not in kwargs


def test_secrets_never_appear_in_repr_or_describe():
    cfg = SnowflakeConfig.from_env({**BASE_ENV, "SNOWFLAKE_PASSWORD": "hunter2-secret"})
    assert "hunter2-secret" not in repr(cfg)
    assert "hunter2-secret" not in json.dumps(cfg.describe())


def test_missing_credentials_name_the_variables():
    with pytest.raises(ConfigError, match="SNOWFLAKE_USER") as err:
        SnowflakeConfig.from_env({"SNOWFLAKE_ACCOUNT": "a", "SNOWFLAKE_PASSWORD": "p"})
    assert "user" in str(err.value)
    with pytest.raises(ConfigError, match="private_key or password"):
        SnowflakeConfig.from_env(BASE_ENV)


@pytest.mark.parametrize(
    ("var", "value", "problem"),
    [
        ("SNOWFLAKE_DATABASE", "prod-db", "not a plain identifier"),
        ("SNOWFLAKE_SCHEMA", 'PUBLIC"; DROP', "not a plain identifier"),
        ("SNOWFLAKE_PORT", "http", "not an integer"),
        ("SNOWFLAKE_PROTOCOL", "ftp", "must be 'http' or 'https'"),
        ("SNOWFLAKE_SESSION_PARAMETERS", "{nope", "not valid JSON"),
        ("SNOWFLAKE_SESSION_PARAMETERS", "[1]", "must be a JSON object"),
    ],
)
def test_bad_values_raise_config_error_naming_the_variable(var, value, problem):
    with pytest.raises(ConfigError, match=problem) as err:
        SnowflakeConfig.from_env({**BASE_ENV, "SNOWFLAKE_PASSWORD": "p", var: value})
    assert err.value.name == var


def test_identifiers_are_upper_cased():
    cfg = SnowflakeConfig.from_env(
        {**BASE_ENV, "SNOWFLAKE_PASSWORD": "p", "SNOWFLAKE_DATABASE": "my_db$1"}
    )
    assert cfg.database == "MY_DB$1"


def test_key_pair_pem_becomes_der_and_wins_over_password(rsa_key):
    pem = _pem(rsa_key)
    env = {**BASE_ENV, "SNOWFLAKE_PRIVATE_KEY": pem, "SNOWFLAKE_PASSWORD": "ignored"}
    kwargs = connect_kwargs(SnowflakeConfig.from_env(env))
    assert kwargs["private_key"] == _der(rsa_key)
    assert "password" not in kwargs


def test_key_with_escaped_newlines_and_passphrase(rsa_key):
    pem = _pem(rsa_key, b"s3cret").replace("\n", "\\n")
    cfg = SnowflakeConfig.from_env(
        {**BASE_ENV, "SNOWFLAKE_PRIVATE_KEY": pem, "SNOWFLAKE_PRIVATE_KEY_PASSPHRASE": "s3cret"}
    )
    assert connect_kwargs(cfg)["private_key"] == _der(rsa_key)


def test_wrong_passphrase_or_garbage_key_is_a_config_error_without_the_key(rsa_key):
    pem = _pem(rsa_key, b"right")
    with pytest.raises(ConfigError, match="SNOWFLAKE_PRIVATE_KEY") as err:
        private_key_der(pem, "wrong")
    assert "BEGIN" not in str(err.value)
    with pytest.raises(ConfigError, match="passphrase"):
        private_key_der(pem, None)
    with pytest.raises(ConfigError, match="not a usable PEM"):
        # A PEM frame around garbage (built here so no key-shaped literal is tracked).
        frame = "-----{} PRIVATE KEY-----"
        private_key_der("\n".join([frame.format("BEGIN"), "AAAA", frame.format("END"), ""]))


@pytest.fixture
def secrets(monkeypatch):
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-1")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    with mock_aws():
        yield boto3.client("secretsmanager", region_name="eu-west-1")


def test_config_from_secrets_manager_with_env_overrides(secrets, rsa_key):
    arn = secrets.create_secret(
        Name="crypto-etl/snowflake",
        SecretString=json.dumps(
            {
                "account": "ab12345.eu-west-1",
                "user": "ETL_LOADER",
                "private_key": _pem(rsa_key),
                "role": "ETL_ROLE",
                "warehouse": "ETL_WH",
                "database": "SECRET_DB",
                "comment": "extra keys are ignored",
            }
        ),
    )["ARN"]
    cfg = SnowflakeConfig.from_env({"SNOWFLAKE_SECRET_ARN": arn, "SNOWFLAKE_SCHEMA": "RAW"})
    assert (cfg.account, cfg.user, cfg.role, cfg.warehouse) == (
        "ab12345.eu-west-1",
        "ETL_LOADER",
        "ETL_ROLE",
        "ETL_WH",
    )
    assert (cfg.database, cfg.schema, cfg.auth_method) == ("SECRET_DB", "RAW", "key-pair")
    assert connect_kwargs(cfg)["private_key"] == _der(rsa_key)
    # An environment variable overrides the secret's value.
    cfg = SnowflakeConfig.from_env({"SNOWFLAKE_SECRET_ARN": arn, "SNOWFLAKE_USER": "OTHER"})
    assert cfg.user == "OTHER"


@pytest.mark.parametrize(
    "secret_string",
    [
        "{}",
        json.dumps({"account": "", "user": "", "private_key": ""}),
        json.dumps({"account": "a1", "user": "u"}),
    ],
)
def test_unfilled_secret_lists_missing_keys_and_the_expected_shape(secrets, secret_string):
    arn = secrets.create_secret(Name="sf", SecretString=secret_string)["ARN"]
    with pytest.raises(ConfigError) as err:
        SnowflakeConfig.from_env({"SNOWFLAKE_SECRET_ARN": arn})
    message = str(err.value)
    assert err.value.name == "SNOWFLAKE_SECRET_ARN"
    assert "private_key or password" in message
    assert '{"account": ' in message  # the expected JSON shape
    if secret_string == "{}":
        assert "missing account, user" in message


def test_secret_that_is_not_json_or_absent(secrets):
    arn = secrets.create_secret(Name="sf", SecretString="CHANGE-ME-placeholder")["ARN"]
    with pytest.raises(ConfigError, match="not valid JSON") as err:
        SnowflakeConfig.from_env({"SNOWFLAKE_SECRET_ARN": arn})
    assert "CHANGE-ME" not in str(err.value)  # the secret's text is never echoed
    with pytest.raises(ConfigError, match="ResourceNotFoundException"):
        SnowflakeConfig.from_env(
            {"SNOWFLAKE_SECRET_ARN": arn.replace(":secret:sf", ":secret:missing")}
        )


def test_secret_created_without_a_value_reads_as_empty(secrets):
    # What the CDK stack creates: a secret with no SecretString at all.
    arn = secrets.create_secret(Name="sf-empty")["ARN"]
    with pytest.raises(ConfigError, match=r"is empty .* fill it with JSON"):
        SnowflakeConfig.from_env({"SNOWFLAKE_SECRET_ARN": arn})


def test_statement_and_lock_timeouts_are_set_on_every_session():
    env = {**BASE_ENV, "SNOWFLAKE_PASSWORD": "pw"}
    cfg = SnowflakeConfig.from_env(
        {
            **env,
            "SNOWFLAKE_STATEMENT_TIMEOUT_SECONDS": "120",
            "SNOWFLAKE_LOCK_TIMEOUT_SECONDS": "0",
        }
    )
    assert (cfg.statement_timeout_seconds, cfg.lock_timeout_seconds) == (120, 0)
    params = connect_kwargs(cfg)["session_parameters"]
    assert (params["STATEMENT_TIMEOUT_IN_SECONDS"], params["LOCK_TIMEOUT"]) == (120, 0)
    assert cfg.describe()["lock_timeout_seconds"] == 0
    for var, bad, why in (
        ("SNOWFLAKE_STATEMENT_TIMEOUT_SECONDS", "604801", "outside"),
        ("SNOWFLAKE_STATEMENT_TIMEOUT_SECONDS", "-1", "outside"),
        ("SNOWFLAKE_LOCK_TIMEOUT_SECONDS", "1m", "not an integer"),
    ):
        with pytest.raises(ConfigError, match=why) as err:
            SnowflakeConfig.from_env({**env, var: bad})
        assert err.value.name == var
    with pytest.raises(ConfigError, match="SNOWFLAKE_LOCK_TIMEOUT_SECONDS") as err:
        SnowflakeConfig(account="a", user="u", password="p", lock_timeout_seconds=-5)
    assert err.value.name == "SNOWFLAKE_LOCK_TIMEOUT_SECONDS"


@pytest.mark.parametrize(
    ("key", "hint"),
    [
        ("lock_timeout", "use SNOWFLAKE_LOCK_TIMEOUT_SECONDS"),
        ("STATEMENT_TIMEOUT_IN_SECONDS", "use SNOWFLAKE_STATEMENT_TIMEOUT_SECONDS"),
        ("TIMESTAMP_INPUT_FORMAT", "pins it to AUTO"),
        ("date_input_format", "pins it to AUTO"),
    ],
)
def test_session_parameters_json_cannot_override_what_the_load_sets(key, hint):
    env = {**BASE_ENV, "SNOWFLAKE_PASSWORD": "pw"}
    with pytest.raises(ConfigError, match=hint) as err:
        SnowflakeConfig.from_env({**env, "SNOWFLAKE_SESSION_PARAMETERS": json.dumps({key: 1})})
    assert err.value.name == "SNOWFLAKE_SESSION_PARAMETERS"
