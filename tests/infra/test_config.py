"""CDK context: cdk.json defaults, CLI strings accepted, bad values refused naming the key."""

from __future__ import annotations

from typing import Any

import pytest

from cdk_app.app import cdk_json_context
from cdk_app.config import DEFAULTS, ContextError, Settings, settings_from_context

pytestmark = pytest.mark.infra


def _settings(**context: Any) -> Settings:
    return settings_from_context(context.get)


def test_cdk_json_documents_every_setting_with_its_default() -> None:
    context = cdk_json_context()
    assert context["cli-telemetry"] is False
    for key, default in DEFAULTS.items():
        assert key in context, f"cdk.json lacks {key}"
        if key != "execution_input":
            assert context[key] == default, key


def test_defaults() -> None:
    s = _settings()
    assert s.bundling is True
    assert s.retain_lake is True
    assert s.schedule == ""
    assert s.snowflake_database == "CRYPTO_ETL_DB"
    # AWS SDK for pandas' public parameter: no region segment (SSM is regional already).
    assert s.pandas_layer_parameter_name == (
        "/aws/service/aws-sdk-pandas/3.16.0/py3.12/arm64/layer-arn"
    )


def test_command_line_strings_are_parsed() -> None:
    s = _settings(
        bundling="false",
        raw_retention_days="120",
        execution_input='{"max_coins": 250}',
        log_level="debug",
        coingecko_api_plan="PRO",
    )
    assert s.bundling is False
    assert s.raw_retention_days == 120
    assert s.execution_input == {"max_coins": 250}
    assert s.log_level == "DEBUG"
    assert s.coingecko_api_plan == "pro"


@pytest.mark.parametrize(
    ("key", "value", "problem"),
    [
        ("bundling", "maybe", "not a boolean"),
        ("raw_retention_days", "30", "below the minimum 31"),
        ("rejected_retention_days", "x", "not an integer"),
        ("log_retention_days", "31", "is not one of"),
        ("lake_removal_policy", "snapshot", "'retain' or 'destroy'"),
        ("schedule", "every 6 hours", r"must be rate\(N unit\)"),
        ("execution_input", "[1, 2]", "must be a JSON object"),
        ("execution_input", "{oops", "not valid JSON"),
        ("alert_email", "ops-at-example", "not an e-mail"),
        ("coingecko_api_plan", "free", "public, demo or pro"),
        ("snowflake_database", "CRYPTO-DB", "not a valid Snowflake identifier"),
        ("aws_sdk_pandas_version", "latest", "not a version"),
        ("aws_sdk_pandas_layer_arn", "arn:aws:lambda:eu-west-1:1:layer:x", "not a layer version"),
        ("stack_name", "1stack", "not a valid CloudFormation stack name"),
        ("coingecko_rate_limit", "30 per minute", "must be N/W"),
        ("coingecko_rate_limit", "30/0", "must be N/W"),
        ("coingecko_rate_limit", "0/60", "must be N/W"),
        ("execution_input", '{"max_coins": "everything"}', 'integer >= 1 or "all"'),
        ("execution_input", '{"max_coins": 0}', 'integer >= 1 or "all"'),
    ],
)
def test_bad_values_are_refused_naming_the_key(key: str, value: str, problem: str) -> None:
    with pytest.raises(ContextError, match=problem) as info:
        _settings(**{key: value})
    assert info.value.key == key
    assert repr(key) in str(info.value)


def test_whole_market_input_and_rate_limit_are_accepted() -> None:
    s = _settings(execution_input='{"max_coins": "all"}', coingecko_rate_limit="30/60")
    assert (s.execution_input, s.coingecko_rate_limit) == ({"max_coins": "all"}, "30/60")
    assert _settings(coingecko_rate_limit="OFF").coingecko_rate_limit == "off"


def test_pandas_layer_parameter_follows_the_configured_version() -> None:
    assert _settings(aws_sdk_pandas_version="3.15.1").pandas_layer_parameter_name == (
        "/aws/service/aws-sdk-pandas/3.15.1/py3.12/arm64/layer-arn"
    )


@pytest.mark.parametrize("version", ["3.16.0/eu-west-1", "v3.16.0", "../3.16.0", "3.16"])
def test_a_version_that_would_make_another_parameter_name_is_refused(version: str) -> None:
    with pytest.raises(ContextError, match="aws_sdk_pandas_version"):
        _settings(aws_sdk_pandas_version=version)
    # Settings built directly (not from context) are checked when the name is made.
    with pytest.raises(ContextError, match="not make a valid SSM name"):
        _ = Settings(aws_sdk_pandas_version=version).pandas_layer_parameter_name


def test_schedule_expressions_accepted() -> None:
    for expression in ("rate(6 hours)", "rate(1 day)", "cron(0 */6 * * ? *)"):
        assert _settings(schedule=expression).schedule == expression


def test_local_mode_gives_each_function_its_deployed_timeout():
    from cdk_app.pipeline_functions import SPECS
    from state_machine.local_runner import FUNCTION_TIMEOUTS

    assert {name: spec.timeout_s for name, spec in SPECS.items()} == FUNCTION_TIMEOUTS
