"""Typed, validated settings from CDK context (``cdk.json`` defaults, ``-c key=value`` overrides).

Every key and its default is in ``DEFAULTS`` (``cdk.json`` repeats them where CDK users look;
the README's "Deploy to AWS" settings table explains each). Values given on the command line
arrive as strings, values from ``cdk.json`` as JSON types: every reader accepts both.

* ``stack_name`` (``CryptoEtl``): stack name, also the secrets' name prefix.
* ``bundling`` (true): pip-install each function's dependencies into its asset; false = code
  only (tests, offline synth).
* ``aws_sdk_pandas_version`` (3.16.0) / ``aws_sdk_pandas_layer_arn`` (empty): the AWS SDK for
  pandas managed layer, resolved at deploy time from the public SSM parameter
  ``/aws/service/aws-sdk-pandas/<version>/py3.12/arm64/layer-arn`` unless an explicit ARN is given.
* ``lake_removal_policy`` (retain): ``retain`` or ``destroy`` (a bucket is deleted only if empty).
* ``raw_retention_days`` / ``rejected_retention_days`` (365): expiry after Infrequent Access
  at 30 days; ``noncurrent_version_retention_days`` (30); ``access_log_retention_days`` (90).
* ``log_retention_days`` (30), ``log_level`` (INFO).
* ``alert_email`` (empty): e-mail subscription of the alert topic.
* ``schedule`` (empty = none): EventBridge Scheduler expression, e.g. ``rate(6 hours)``;
  ``execution_input`` (JSON object): the input of scheduled executions.
  Its ``max_coins`` is an integer (1-100000) or ``"all"`` (the whole market, through the
  extract's deadline loop).
* ``coingecko_api_plan`` (public), ``coingecko_max_retry_wait_seconds`` (empty),
  ``coingecko_rate_limit`` (empty = the plan's default budget; ``N/W`` = N calls per W seconds;
  ``off``): the extract's client-side pacing (``COINGECKO_RATE_LIMIT``).
* ``snowflake_database`` / ``snowflake_schema`` (CRYPTO_ETL_DB / PUBLIC);
  ``snowflake_warehouse`` / ``snowflake_role`` (empty: the secret's or the user's defaults).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

DEFAULTS: dict[str, Any] = {
    "stack_name": "CryptoEtl",
    "bundling": True,
    "aws_sdk_pandas_version": "3.16.0",
    "aws_sdk_pandas_layer_arn": "",
    "lake_removal_policy": "retain",
    "raw_retention_days": 365,
    "rejected_retention_days": 365,
    "noncurrent_version_retention_days": 30,
    "access_log_retention_days": 90,
    "log_retention_days": 30,
    "log_level": "INFO",
    "alert_email": "",
    "schedule": "",
    "execution_input": {},
    "coingecko_api_plan": "public",
    "coingecko_max_retry_wait_seconds": "",
    "coingecko_rate_limit": "",
    "snowflake_database": "CRYPTO_ETL_DB",
    "snowflake_schema": "PUBLIC",
    "snowflake_warehouse": "",
    "snowflake_role": "",
}

# CloudWatch Logs accepts only these retention periods (days).
LOG_RETENTION_DAYS = (1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827)

# Objects move to Infrequent Access after this many days (S3's minimum for STANDARD_IA).
INFREQUENT_ACCESS_AFTER_DAYS = 30

_SCHEDULE_RE = re.compile(
    r"^(rate\(\d+ (minute|minutes|hour|hours|day|days)\)|cron\(.+\)|at\(.+\))$"
)
_EMAIL_RE = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
_SNOWFLAKE_IDENT_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_$]{0,254}$")
_VERSION_RE = re.compile(r"^\d+\.\d+\.\d+$")
_RATE_LIMIT_RE = re.compile(r"^(off|[1-9]\d*/(\d+(\.\d+)?))$")
_LAYER_ARN_RE = re.compile(r"^arn:aws[a-z-]*:lambda:[a-z0-9-]+:\d{12}:layer:[A-Za-z0-9_-]+:\d+$")

# The public parameters AWS SDK for pandas publishes in every region it has layers in:
# /aws/service/aws-sdk-pandas/<version>/<py version>/<arch>/layer-arn. Source: its install docs,
# "Layer ARNs can also be obtained from SSM public parameters" (CDK example
# "/aws/service/aws-sdk-pandas/3.4.0/py3.10/x86_64/layer-arn"),
# https://github.com/aws/aws-sdk-pandas/blob/main/docs/source/install.rst
# (https://aws-sdk-pandas.readthedocs.io/en/stable/install.html). A form with a region segment
# appeared in those docs in aws/aws-sdk-pandas#2486 and was reverted in #2489.
PANDAS_LAYER_PYTHON = "py3.12"
PANDAS_LAYER_ARCHITECTURE = "arm64"
# Full-string shape of that name; SSM names allow only [A-Za-z0-9_.-] between slashes.
_PANDAS_LAYER_PARAMETER_RE = re.compile(
    r"/aws/service/aws-sdk-pandas/\d+\.\d+\.\d+/py3\.\d+/(arm64|x86_64)/layer-arn"
)


class ContextError(ValueError):
    """A CDK context value is invalid; the message names the key and what was wrong."""

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(f"CDK context {key!r}: {problem}")
        self.key = key


def pandas_layer_parameter_name(version: str) -> str:
    """The public SSM parameter name of the AWS SDK for pandas layer ``version`` (e.g. 3.16.0)
    for python3.12 on arm64. Raises ``ContextError`` (key ``aws_sdk_pandas_version``) if the
    version does not make a valid name."""
    name = (
        f"/aws/service/aws-sdk-pandas/{version}/"
        f"{PANDAS_LAYER_PYTHON}/{PANDAS_LAYER_ARCHITECTURE}/layer-arn"
    )
    if not _PANDAS_LAYER_PARAMETER_RE.fullmatch(name):
        raise ContextError(
            "aws_sdk_pandas_version", f"{version!r} does not make a valid SSM name ({name!r})"
        )
    return name


def _as_bool(key: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ContextError(key, f"{value!r} is not a boolean (true/false)")


def _as_int(key: str, value: Any, minimum: int) -> int:
    try:
        number = int(str(value).strip())
    except ValueError as exc:
        raise ContextError(key, f"{value!r} is not an integer") from exc
    if number < minimum:
        raise ContextError(key, f"{number} is below the minimum {minimum}")
    return number


def _as_str(value: Any) -> str:
    return "" if value is None else str(value).strip()


def _as_json_object(key: str, value: Any) -> dict[str, Any]:
    if isinstance(value, Mapping):
        return dict(value)
    text = _as_str(value)
    if not text:
        return {}
    try:
        parsed = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ContextError(key, f"is not valid JSON ({exc.msg})") from exc
    if not isinstance(parsed, dict):
        raise ContextError(key, "must be a JSON object")
    return parsed


def _identifier(key: str, value: Any, *, optional: bool) -> str:
    text = _as_str(value)
    if not text and optional:
        return ""
    if not _SNOWFLAKE_IDENT_RE.fullmatch(text):
        raise ContextError(key, f"{text!r} is not a valid Snowflake identifier")
    return text


@dataclass(frozen=True)
class Settings:
    """Everything the stack reads from context, validated."""

    stack_name: str = DEFAULTS["stack_name"]
    bundling: bool = True
    aws_sdk_pandas_version: str = DEFAULTS["aws_sdk_pandas_version"]
    aws_sdk_pandas_layer_arn: str = ""
    retain_lake: bool = True
    raw_retention_days: int = 365
    rejected_retention_days: int = 365
    noncurrent_version_retention_days: int = 30
    access_log_retention_days: int = 90
    log_retention_days: int = 30
    log_level: str = "INFO"
    alert_email: str = ""
    schedule: str = ""
    execution_input: dict[str, Any] = field(default_factory=dict)
    coingecko_api_plan: str = "public"
    coingecko_max_retry_wait_seconds: str = ""
    coingecko_rate_limit: str = ""
    snowflake_database: str = "CRYPTO_ETL_DB"
    snowflake_schema: str = "PUBLIC"
    snowflake_warehouse: str = ""
    snowflake_role: str = ""

    @property
    def pandas_layer_parameter_name(self) -> str:
        """The public SSM parameter holding the managed layer's ARN (python3.12, arm64).

        ``/aws/service/aws-sdk-pandas/<version>/py3.12/arm64/layer-arn``, with no region segment:
        SSM parameters are regional, so the same name resolves to each region's own layer.
        """
        return pandas_layer_parameter_name(self.aws_sdk_pandas_version)


def settings_from_context(get: Any) -> Settings:
    """Build ``Settings`` from a context getter (``node.try_get_context``) with ``DEFAULTS``."""

    def value(key: str) -> Any:
        found = get(key)
        return DEFAULTS[key] if found is None else found

    stack_name = _as_str(value("stack_name"))
    if not re.fullmatch(r"[A-Za-z][A-Za-z0-9-]{0,127}", stack_name):
        raise ContextError("stack_name", f"{stack_name!r} is not a valid CloudFormation stack name")

    version = _as_str(value("aws_sdk_pandas_version"))
    if not _VERSION_RE.fullmatch(version):
        raise ContextError("aws_sdk_pandas_version", f"{version!r} is not a version like 3.16.0")
    layer_arn = _as_str(value("aws_sdk_pandas_layer_arn"))
    if layer_arn and not _LAYER_ARN_RE.fullmatch(layer_arn):
        raise ContextError("aws_sdk_pandas_layer_arn", f"{layer_arn!r} is not a layer version ARN")

    removal = _as_str(value("lake_removal_policy")).lower()
    if removal not in ("retain", "destroy"):
        raise ContextError("lake_removal_policy", f"{removal!r} must be 'retain' or 'destroy'")

    # Expiration must come after the transition to Infrequent Access.
    first_expiry = INFREQUENT_ACCESS_AFTER_DAYS + 1
    raw_days = _as_int("raw_retention_days", value("raw_retention_days"), first_expiry)
    rejected_days = _as_int(
        "rejected_retention_days", value("rejected_retention_days"), first_expiry
    )

    log_days = _as_int("log_retention_days", value("log_retention_days"), 1)
    if log_days not in LOG_RETENTION_DAYS:
        raise ContextError("log_retention_days", f"{log_days} is not one of {LOG_RETENTION_DAYS}")

    log_level = _as_str(value("log_level")).upper()
    if log_level not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
        raise ContextError("log_level", f"{log_level!r} is not a log level")

    email = _as_str(value("alert_email"))
    if email and not _EMAIL_RE.fullmatch(email):
        raise ContextError("alert_email", f"{email!r} is not an e-mail address")

    schedule = _as_str(value("schedule"))
    if schedule and not _SCHEDULE_RE.fullmatch(schedule):
        raise ContextError(
            "schedule", f"{schedule!r} must be rate(N unit), cron(...) or at(...) (or empty)"
        )

    plan = _as_str(value("coingecko_api_plan")).lower()
    if plan not in ("public", "demo", "pro"):
        raise ContextError("coingecko_api_plan", f"{plan!r} must be public, demo or pro")

    retry_wait = _as_str(value("coingecko_max_retry_wait_seconds"))
    if retry_wait:
        retry_wait = str(_as_int("coingecko_max_retry_wait_seconds", retry_wait, 0))

    rate_limit = _as_str(value("coingecko_rate_limit")).strip().lower()
    if rate_limit and (
        not _RATE_LIMIT_RE.match(rate_limit)
        or (rate_limit != "off" and float(rate_limit.split("/")[1]) <= 0)
    ):
        raise ContextError(
            "coingecko_rate_limit",
            f"{rate_limit!r} must be N/W (N calls per W seconds, e.g. 30/60), off, or empty",
        )
    execution_input = _as_json_object("execution_input", value("execution_input"))
    max_coins = execution_input.get("max_coins")
    if max_coins is not None and not (
        max_coins == "all"
        or (isinstance(max_coins, int) and not isinstance(max_coins, bool) and max_coins >= 1)
    ):
        raise ContextError(
            "execution_input", f'max_coins {max_coins!r} must be an integer >= 1 or "all"'
        )

    return Settings(
        stack_name=stack_name,
        bundling=_as_bool("bundling", value("bundling")),
        aws_sdk_pandas_version=version,
        aws_sdk_pandas_layer_arn=layer_arn,
        retain_lake=removal == "retain",
        raw_retention_days=raw_days,
        rejected_retention_days=rejected_days,
        noncurrent_version_retention_days=_as_int(
            "noncurrent_version_retention_days", value("noncurrent_version_retention_days"), 1
        ),
        access_log_retention_days=_as_int(
            "access_log_retention_days", value("access_log_retention_days"), 1
        ),
        log_retention_days=log_days,
        log_level=log_level,
        alert_email=email,
        schedule=schedule,
        execution_input=execution_input,
        coingecko_api_plan=plan,
        coingecko_max_retry_wait_seconds=retry_wait,
        coingecko_rate_limit=rate_limit,
        snowflake_database=_identifier(
            "snowflake_database", value("snowflake_database"), optional=False
        ),
        snowflake_schema=_identifier("snowflake_schema", value("snowflake_schema"), optional=False),
        snowflake_warehouse=_identifier(
            "snowflake_warehouse", value("snowflake_warehouse"), optional=True
        ),
        snowflake_role=_identifier("snowflake_role", value("snowflake_role"), optional=True),
    )
