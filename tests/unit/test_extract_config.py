"""ExtractConfig: environment variables, plans and the API-key secret (moto for Secrets Manager)."""

from __future__ import annotations

import json

import boto3
import pytest
from moto import mock_aws

from functions.common.errors import ConfigError
from functions.extract.config import (
    PRO_BASE_URL,
    PUBLIC_BASE_URL,
    ExtractConfig,
    fetch_secret_string,
)
from functions.extract.pacing import PLAN_RATE_LIMITS, RateLimit

KEY = "CG-abcDEF123456"


def test_defaults_are_the_public_api():
    cfg = ExtractConfig.from_env({})
    assert cfg.base_url == PUBLIC_BASE_URL
    assert cfg.plan == "public"
    assert cfg.api_key is None
    assert cfg.auth_headers == {}
    assert (cfg.timeout_seconds, cfg.max_retries) == (30.0, 6)
    assert (cfg.max_retry_wait_seconds, cfg.backoff_base_seconds) == (120.0, 1.0)
    assert cfg.lake_bucket is None


def test_every_variable_is_read():
    cfg = ExtractConfig.from_env(
        {
            "COINGECKO_BASE_URL": "http://127.0.0.1:9999/api/v3/",
            "COINGECKO_API_PLAN": "DEMO",
            "COINGECKO_API_KEY": KEY,
            "COINGECKO_TIMEOUT_SECONDS": "2.5",
            "COINGECKO_MAX_RETRIES": "3",
            "COINGECKO_MAX_RETRY_WAIT_SECONDS": "9",
            "COINGECKO_BACKOFF_BASE_SECONDS": "0.25",
            "LAKE_BUCKET": "my-lake",
        }
    )
    assert cfg.base_url == "http://127.0.0.1:9999/api/v3"
    assert cfg.plan == "demo"
    assert cfg.auth_headers == {"x-cg-demo-api-key": KEY}
    assert (cfg.timeout_seconds, cfg.max_retries, cfg.max_retry_wait_seconds) == (2.5, 3, 9.0)
    assert cfg.backoff_base_seconds == 0.25
    assert cfg.lake_bucket == "my-lake"
    assert cfg.key_source == "env"


def test_pro_plan_uses_the_pro_host_and_header():
    cfg = ExtractConfig.from_env({"COINGECKO_API_PLAN": "pro", "COINGECKO_API_KEY": KEY})
    assert cfg.base_url == PRO_BASE_URL
    assert cfg.auth_headers == {"x-cg-pro-api-key": KEY}


def test_a_key_without_a_plan_is_a_demo_key():
    cfg = ExtractConfig.from_env({"COINGECKO_API_KEY": KEY})
    assert cfg.plan == "demo"
    assert cfg.base_url == PUBLIC_BASE_URL
    assert cfg.auth_headers == {"x-cg-demo-api-key": KEY}


@pytest.mark.parametrize(
    ("env", "name"),
    [
        ({"COINGECKO_API_PLAN": "enterprise"}, "COINGECKO_API_PLAN"),
        ({"COINGECKO_API_PLAN": "pro"}, "COINGECKO_API_KEY"),
        ({"COINGECKO_API_PLAN": "demo"}, "COINGECKO_API_KEY"),
        ({"COINGECKO_TIMEOUT_SECONDS": "soon"}, "COINGECKO_TIMEOUT_SECONDS"),
        ({"COINGECKO_TIMEOUT_SECONDS": "0"}, "COINGECKO_TIMEOUT_SECONDS"),
        ({"COINGECKO_MAX_RETRIES": "-1"}, "COINGECKO_MAX_RETRIES"),
        ({"COINGECKO_MAX_RETRIES": "2.5"}, "COINGECKO_MAX_RETRIES"),
        ({"COINGECKO_MAX_RETRY_WAIT_SECONDS": "-3"}, "COINGECKO_MAX_RETRY_WAIT_SECONDS"),
        ({"COINGECKO_BACKOFF_BASE_SECONDS": "x"}, "COINGECKO_BACKOFF_BASE_SECONDS"),
        ({"COINGECKO_BASE_URL": "ftp://example.com/api"}, "COINGECKO_BASE_URL"),
        ({"COINGECKO_BASE_URL": "api.coingecko.com/api/v3"}, "COINGECKO_BASE_URL"),
        ({"COINGECKO_API_KEY": "has space"}, "COINGECKO_API_KEY"),
        ({"COINGECKO_API_KEY": "line\nbreak"}, "COINGECKO_API_KEY"),
        ({"COINGECKO_RATE_LIMIT": "30"}, "COINGECKO_RATE_LIMIT"),
        ({"COINGECKO_RATE_LIMIT": "0/60"}, "COINGECKO_RATE_LIMIT"),
        ({"COINGECKO_RATE_LIMIT": "30/0"}, "COINGECKO_RATE_LIMIT"),
        ({"COINGECKO_RATE_LIMIT": "fast"}, "COINGECKO_RATE_LIMIT"),
    ],
)
def test_bad_values_raise_config_error_naming_the_variable(env, name):
    with pytest.raises(ConfigError) as info:
        ExtractConfig.from_env(env)
    assert info.value.name == name


def test_the_key_never_shows_in_repr_describe_or_errors():
    cfg = ExtractConfig.from_env({"COINGECKO_API_KEY": KEY})
    assert KEY not in repr(cfg)
    assert KEY not in json.dumps(cfg.describe())
    with pytest.raises(ConfigError) as info:
        ExtractConfig.from_env({"COINGECKO_API_KEY": KEY + " tail"})
    assert KEY not in str(info.value)


@pytest.mark.parametrize(
    ("secret", "plan_env", "expected_plan", "expected_key"),
    [
        (KEY, "", "demo", KEY),
        (KEY, "pro", "pro", KEY),
        (f"  {KEY}\n", "demo", "demo", KEY),
        (json.dumps({"api_key": KEY, "plan": "pro"}), "demo", "pro", KEY),
        (json.dumps({"api_key": KEY}), "pro", "pro", KEY),
        ("", "demo", "public", None),
        (json.dumps({"api_key": ""}), "pro", "public", None),
        ("   ", "", "public", None),
    ],
)
def test_secret_shapes(secret, plan_env, expected_plan, expected_key):
    seen: list[str] = []

    def fetch(arn: str) -> str:
        seen.append(arn)
        return secret

    env = {"COINGECKO_API_KEY_SECRET_ARN": "arn:secret:cg", "COINGECKO_API_PLAN": plan_env}
    cfg = ExtractConfig.from_env(env, fetch_secret=fetch)
    assert seen == ["arn:secret:cg"]
    assert (cfg.plan, cfg.api_key) == (expected_plan, expected_key)
    assert cfg.key_source == ("secret" if expected_key else "none")
    if expected_plan == "pro":
        assert cfg.base_url == PRO_BASE_URL


def test_env_key_wins_and_the_secret_is_not_read():
    def fetch(arn: str) -> str:
        raise AssertionError("the secret must not be read when COINGECKO_API_KEY is set")

    env = {"COINGECKO_API_KEY_SECRET_ARN": "arn:x", "COINGECKO_API_KEY": KEY}
    assert ExtractConfig.from_env(env, fetch_secret=fetch).api_key == KEY


@pytest.mark.parametrize(
    "secret",
    [
        '{"api_key": "abc", ',
        json.dumps({"api_key": 12345}),
        json.dumps({"api_key": KEY, "plan": "gold"}),
    ],
)
def test_malformed_secrets_raise_without_echoing_the_key(secret):
    env = {"COINGECKO_API_KEY_SECRET_ARN": "arn:secret:cg"}
    with pytest.raises(ConfigError) as info:
        ExtractConfig.from_env(env, fetch_secret=lambda arn: secret)
    assert info.value.name == "COINGECKO_API_KEY_SECRET_ARN"
    assert "arn:secret:cg" in str(info.value)
    assert KEY not in str(info.value)


@pytest.fixture
def aws(monkeypatch):
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    with mock_aws():
        yield boto3.client("secretsmanager", region_name="us-east-1")


def test_secrets_manager_json_secret(aws):
    arn = aws.create_secret(Name="cg", SecretString=json.dumps({"api_key": KEY, "plan": "pro"}))[
        "ARN"
    ]
    cfg = ExtractConfig.from_env({"COINGECKO_API_KEY_SECRET_ARN": arn})
    assert (cfg.plan, cfg.api_key, cfg.base_url) == ("pro", KEY, PRO_BASE_URL)


def test_secrets_manager_secret_without_a_value_means_public(aws):
    arn = aws.create_secret(Name="cg-empty")["ARN"]  # what the stack creates
    assert fetch_secret_string(arn) == ""
    cfg = ExtractConfig.from_env(
        {"COINGECKO_API_KEY_SECRET_ARN": arn, "COINGECKO_API_PLAN": "demo"}
    )
    assert (cfg.plan, cfg.api_key) == ("public", None)


def test_secrets_manager_missing_secret_is_a_config_error(aws):
    arn = "arn:aws:secretsmanager:us-east-1:123456789012:secret:nope-AbCdEf"
    with pytest.raises(ConfigError) as info:
        ExtractConfig.from_env({"COINGECKO_API_KEY_SECRET_ARN": arn})
    assert "ResourceNotFoundException" in str(info.value)
    assert arn in str(info.value)


# -- shared checks: vs_currency and the request timeout against the function's time ----------


@pytest.mark.parametrize(
    ("value", "ok"),
    [
        ("usd", True),
        ("USD", True),
        ("bits", True),
        ("a" * 16, True),
        ("x_y-1", True),
        ("", False),
        ("us d", False),
        (" usd", False),
        ("usd\n", False),
        ("a" * 17, False),
        ("usd;", False),
        ("ü", False),
    ],
)
def test_vs_currency_rule_is_the_extracts(value, ok):
    """The CLI's up-front check and the extract's event validation accept the same values."""
    from functions.common.errors import ValidationError
    from functions.extract.config import check_vs_currency
    from functions.extract.handler import parse_event

    event = {
        "input": {"vs_currency": value},
        "execution": {"name": "e1", "id": "arn:e1", "start_time": "2024-01-01T00:00:00Z"},
    }
    if ok:
        assert check_vs_currency(value, "--vs-currency") == value.lower()
        assert parse_event(event).vs_currency == value.lower()
    else:
        with pytest.raises(ValidationError, match="--vs-currency"):
            check_vs_currency(value, "--vs-currency")
        with pytest.raises(ValidationError, match=r"input\.vs_currency"):
            parse_event(event)


def test_a_timeout_that_cannot_fit_names_both_numbers():
    from functions.extract.config import check_timeout_fits

    check_timeout_fits(890, 900, 10, "the extract function's timeout")  # exactly fits
    with pytest.raises(ConfigError, match="COINGECKO_TIMEOUT_SECONDS") as info:
        check_timeout_fits(890.5, 900, 10, "the extract function's timeout")
    assert "890.5s" in str(info.value) and "(900s)" in str(info.value)
    assert "890s" in str(info.value)


def test_the_extract_handler_refuses_such_a_timeout_at_invocation_start(tmp_path, monkeypatch):
    """On AWS too: the Lambda context's remaining time (here 20 s) minus the 10 s margin."""
    from functions.common.context import LocalLambdaContext
    from functions.extract import handler as extract

    monkeypatch.setenv("LAKE_LOCAL_DIR", str(tmp_path / "lake"))
    monkeypatch.setenv("COINGECKO_BASE_URL", "http://127.0.0.1:9/api/v3")  # never called
    monkeypatch.setenv("COINGECKO_TIMEOUT_SECONDS", "15")
    event = {
        "input": {},
        "execution": {"name": "e1", "id": "arn:e1", "start_time": "2024-01-01T00:00:00Z"},
    }
    with pytest.raises(ConfigError, match="COINGECKO_TIMEOUT_SECONDS: 15s") as info:
        extract.handler(event, LocalLambdaContext(timeout_seconds=20))
    assert "time left in this invocation" in str(info.value)
    assert "10s margin" in str(info.value)
    assert not (tmp_path / "lake").exists()  # refused before touching the lake


# -- COINGECKO_RATE_LIMIT ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, "5/60"),
        ({"COINGECKO_API_KEY": KEY}, "30/60"),
        ({"COINGECKO_API_PLAN": "pro", "COINGECKO_API_KEY": KEY}, "250/60"),
        ({"COINGECKO_BASE_URL": "https://api.coingecko.com/api/v3/"}, "5/60"),
        # Another host (the replay server, a proxy) is not paced unless asked.
        ({"COINGECKO_BASE_URL": "http://127.0.0.1:8080/api/v3"}, "off"),
        ({"COINGECKO_BASE_URL": "https://proxy.example.com/api/v3"}, "off"),
        # A pro key on the public host is not that plan's host.
        (
            {
                "COINGECKO_API_PLAN": "pro",
                "COINGECKO_API_KEY": KEY,
                "COINGECKO_BASE_URL": PUBLIC_BASE_URL,
            },
            "off",
        ),
    ],
)
def test_rate_limit_defaults_per_plan_on_coingecko_hosts_only(env, expected):
    cfg = ExtractConfig.from_env(env)
    assert cfg.describe()["rate_limit"] == expected
    if expected != "off":
        assert cfg.rate_limit == PLAN_RATE_LIMITS[cfg.plan]


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"COINGECKO_RATE_LIMIT": "500/60", "COINGECKO_API_PLAN": "pro"}, RateLimit(500, 60.0)),
        (
            {"COINGECKO_RATE_LIMIT": " 10/10 ", "COINGECKO_BASE_URL": "http://x:1/a"},
            RateLimit(10, 10),
        ),
        ({"COINGECKO_RATE_LIMIT": "off"}, None),
        ({"COINGECKO_RATE_LIMIT": "None"}, None),
        ({"COINGECKO_RATE_LIMIT": ""}, PLAN_RATE_LIMITS["public"]),
    ],
)
def test_rate_limit_override(env, expected):
    if env.get("COINGECKO_API_PLAN") == "pro":
        env = {**env, "COINGECKO_API_KEY": KEY}
    assert ExtractConfig.from_env(env).rate_limit == expected


def test_a_rate_limit_that_is_not_a_rate_limit_is_refused():
    with pytest.raises(ConfigError, match="COINGECKO_RATE_LIMIT"):
        ExtractConfig(rate_limit="30/60")  # type: ignore[arg-type]
