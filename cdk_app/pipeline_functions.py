"""The three Lambda functions (extract, transform, load): python3.12 on arm64, one role each.

Sizing, for a full-market snapshot (~19,000 coins = ~76 pages of 250 from /coins/markets):

* **extract** — 256 MB, 900 s. I/O bound: a page is ~250 KB of JSON and is written to S3 as it
  arrives, so memory stays small. The time goes into waiting on CoinGecko's rate limit (public
  plan: a handful of calls a minute, 429s honoured with Retry-After/backoff), so it gets Lambda's
  maximum; a full market on the public plan is paced across executions by the state machine.
* **transform** — 1024 MB, 300 s. pandas + numpy from the layer take ~150 MB once imported, the
  ~19k x ~35 DataFrame a few tens of MB more, with copies during cleaning and gzip-CSV writing.
  1 GB leaves headroom and buys CPU (Lambda CPU scales with memory), so a full market is
  seconds of work; 300 s is a generous ceiling.
* **load** — 512 MB, 600 s. The Snowflake connector (with cryptography) plus a few-MB gzip file
  streamed to a stage. Time is spent in Snowflake (warehouse resume, PUT, COPY, one transaction),
  which can take minutes on a cold warehouse; 10 minutes is the ceiling.
"""

from __future__ import annotations

from dataclasses import dataclass

import aws_cdk as cdk
from aws_cdk import aws_iam as iam
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_logs as logs
from aws_cdk import aws_ssm as ssm
from constructs import Construct

from cdk_app.bundling import BUILD_ROOT, REPO_ROOT, function_code
from cdk_app.config import Settings
from cdk_app.data_lake import HISTORY, PROCESSED, RAW, REJECTED, SNAPSHOTS, DataLake
from cdk_app.nag import acknowledge, arn_ref
from cdk_app.secrets import Secrets
from functions.common import observability as obs

SERVICE_PREFIX = "crypto-etl"

# Lake prefixes each function may read (GetObject) and write (PutObject); ListBucket is limited
# to their union. snapshots/ holds one index per snapshot (partition date, run loaded): extract
# reads it to reuse the snapshot's date and creates it on the first run; load switches it to the
# loaded run after COMMIT. Extract reads raw/ for its own progress.json (the pages fetched by the
# run's earlier invocations of the deadline loop) and, for the history backfill, writes
# raw/history/ (items.json, the market_chart bodies) under its raw/ grant. Nobody may delete.
# Prefixes a function lists without reading: the backfill plan (extract) lists processed/ keys
# to find the latest snapshot's partition date, then reads only raw/ and snapshots/.
LAKE_LIST_ONLY: dict[str, tuple[str, ...]] = {"extract": (PROCESSED,)}

LAKE_ACCESS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "extract": ((RAW, SNAPSHOTS), (RAW, SNAPSHOTS)),
    # transform reads the index (and raw manifests) to find the previous snapshot's row count
    # for the quality gate.
    "transform": ((RAW, SNAPSHOTS), (PROCESSED, REJECTED)),
    # raw/history/: the backfill's load_history reads the market_chart bodies, the items file
    # and the Distributed Map's result files (never the snapshot pages under raw/dt=…).
    "load": ((PROCESSED, SNAPSHOTS, HISTORY), (SNAPSHOTS,)),
}

# Unzipped size of the AWS SDK for pandas layer 3.16.0: 167 MB, as measured in
# https://github.com/aws/aws-sdk-pandas/issues/3331 (the 3.16.0 and 3.15.1 layers are 167 MB;
# 3.16.1 grew to 204 MB because of an Arrow build change, which is why 3.16.0 is the default).
# The layers of one release are built alike for each Python version and architecture.
# Lambda's limit for a function's code plus its layers is 250 MB (262,144,000 bytes unzipped).
PANDAS_LAYER_UNZIPPED_BYTES = 167 * 1024 * 1024
LAMBDA_UNZIPPED_LIMIT_BYTES = 262_144_000


@dataclass(frozen=True)
class FunctionSpec:
    """Name, sizing and purpose of one pipeline function."""

    name: str
    memory_mb: int
    timeout_s: int
    description: str


SPECS: dict[str, FunctionSpec] = {
    "extract": FunctionSpec(
        "extract", 256, 900, "crypto-etl: page CoinGecko /coins/markets + /global into raw/"
    ),
    "transform": FunctionSpec(
        "transform", 1024, 300, "crypto-etl: clean, dedupe and enrich raw/ into processed/"
    ),
    "load": FunctionSpec(
        "load", 512, 600, "crypto-etl: replace the snapshot in Snowflake from processed/"
    ),
}

_RETENTION = {
    1: logs.RetentionDays.ONE_DAY,
    3: logs.RetentionDays.THREE_DAYS,
    5: logs.RetentionDays.FIVE_DAYS,
    7: logs.RetentionDays.ONE_WEEK,
    14: logs.RetentionDays.TWO_WEEKS,
    30: logs.RetentionDays.ONE_MONTH,
    60: logs.RetentionDays.TWO_MONTHS,
    90: logs.RetentionDays.THREE_MONTHS,
    120: logs.RetentionDays.FOUR_MONTHS,
    150: logs.RetentionDays.FIVE_MONTHS,
    180: logs.RetentionDays.SIX_MONTHS,
    365: logs.RetentionDays.ONE_YEAR,
    400: logs.RetentionDays.THIRTEEN_MONTHS,
    545: logs.RetentionDays.EIGHTEEN_MONTHS,
    731: logs.RetentionDays.TWO_YEARS,
    1096: logs.RetentionDays.THREE_YEARS,
    1827: logs.RetentionDays.FIVE_YEARS,
}


def retention(days: int) -> logs.RetentionDays:
    """The CloudWatch Logs retention enum for ``days`` (validated in config)."""
    return _RETENTION[days]


def pandas_layer(scope: Construct, settings: Settings) -> lambda_.ILayerVersion:
    """The AWS SDK for pandas managed layer (python3.12, arm64).

    Its ARN is read at DEPLOY time from the public SSM parameter
    ``/aws/service/aws-sdk-pandas/<version>/py3.12/arm64/layer-arn`` (no region segment: SSM is
    regional, so the deploying region's parameter names that region's layer; source of the format
    in ``cdk_app.config``) through a CloudFormation dynamic reference (``{{resolve:ssm:…}}``), so
    the stack stays region-agnostic and synth needs no AWS call. ``aws_sdk_pandas_layer_arn`` in
    context overrides it.
    """
    arn = settings.aws_sdk_pandas_layer_arn
    if not arn:
        arn = ssm.StringParameter.from_string_parameter_attributes(
            scope,
            "PandasLayerArnParameter",
            parameter_name=settings.pandas_layer_parameter_name,
            force_dynamic_reference=True,
            simple_name=False,  # the name starts with "/"
        ).string_value
    return lambda_.LayerVersion.from_layer_version_arn(scope, "AwsSdkPandasLayer", arn)


class PipelineFunctions(Construct):
    """extract → raw/, transform raw/ → processed/ + rejected/, load processed/ → Snowflake."""

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        settings: Settings,
        lake: DataLake,
        secrets: Secrets,
    ) -> None:
        super().__init__(scope, construct_id)
        self.settings = settings
        self.lake = lake
        self.log_groups: dict[str, logs.LogGroup] = {}
        self.roles: dict[str, iam.Role] = {}

        missing = [
            name for name in SPECS if not (REPO_ROOT / "functions" / name / "handler.py").is_file()
        ]
        if missing:
            cdk.Annotations.of(self).add_warning_v2(
                "crypto-etl:missing-handler",
                "no handler yet in "
                + ", ".join(f"functions/{name}/handler.py" for name in missing)
                + ": those functions' assets have no entry point",
            )

        self.extract = self._function(
            "extract",
            environment={
                "COINGECKO_API_KEY_SECRET_ARN": secrets.coingecko_arn,
                "COINGECKO_API_PLAN": settings.coingecko_api_plan,
                **(
                    {"COINGECKO_MAX_RETRY_WAIT_SECONDS": settings.coingecko_max_retry_wait_seconds}
                    if settings.coingecko_max_retry_wait_seconds
                    else {}
                ),
                **(
                    {"COINGECKO_RATE_LIMIT": settings.coingecko_rate_limit}
                    if settings.coingecko_rate_limit
                    else {}
                ),
            },
        )
        self._grant_lake("extract")
        secrets.grant_read(self.roles["extract"], secrets.coingecko_arn)

        self.transform = self._function(
            "transform", environment={}, layers=[pandas_layer(self, settings)]
        )
        self._grant_lake("transform")

        self.load = self._function(
            "load",
            environment={
                "SNOWFLAKE_SECRET_ARN": secrets.snowflake_arn,
                "SNOWFLAKE_DATABASE": settings.snowflake_database,
                "SNOWFLAKE_SCHEMA": settings.snowflake_schema,
                **(
                    {"SNOWFLAKE_WAREHOUSE": settings.snowflake_warehouse}
                    if settings.snowflake_warehouse
                    else {}
                ),
                **({"SNOWFLAKE_ROLE": settings.snowflake_role} if settings.snowflake_role else {}),
            },
        )
        self._grant_lake("load")
        secrets.grant_read(self.roles["load"], secrets.snowflake_arn)

        self._acknowledge_prefix_wildcards()

    @property
    def functions(self) -> dict[str, lambda_.Function]:
        """The three functions by name."""
        return {"extract": self.extract, "transform": self.transform, "load": self.load}

    def _function(
        self,
        name: str,
        *,
        environment: dict[str, str],
        layers: list[lambda_.ILayerVersion] | None = None,
    ) -> lambda_.Function:
        spec = SPECS[name]
        title = name.capitalize()
        log_group = logs.LogGroup(
            self,
            f"{title}Logs",
            retention=retention(self.settings.log_retention_days),
            removal_policy=cdk.RemovalPolicy.DESTROY,
        )
        # Own role per function, no managed policies: logs to its own group + explicit grants.
        role = iam.Role(
            self,
            f"{title}Role",
            assumed_by=iam.ServicePrincipal("lambda.amazonaws.com"),
            description=f"crypto-etl {name} function (least privilege)",
        )
        log_group.grant_write(role)
        fn = lambda_.Function(
            self,
            title,
            description=spec.description,
            runtime=lambda_.Runtime.PYTHON_3_12,
            architecture=lambda_.Architecture.ARM_64,
            handler=f"functions.{name}.handler.handler",
            code=function_code(name, bundling=self.settings.bundling, build_root=BUILD_ROOT),
            memory_size=spec.memory_mb,
            timeout=cdk.Duration.seconds(spec.timeout_s),
            role=role,
            log_group=log_group,
            layers=layers,
            # Active tracing: the handlers' Powertools Tracer sends their segments (CoinGecko
            # calls, the transform, each load step) beside the state machine's trace.
            tracing=lambda_.Tracing.ACTIVE,
            environment={
                "LAKE_BUCKET": self.lake.bucket.bucket_name,
                "POWERTOOLS_SERVICE_NAME": f"{SERVICE_PREFIX}-{name}",
                "POWERTOOLS_LOG_LEVEL": self.settings.log_level,
                # The metrics' namespace and Pipeline dimension, as cdk_app/monitoring.py reads.
                "POWERTOOLS_METRICS_NAMESPACE": obs.NAMESPACE_DEFAULT,
                "PIPELINE_NAME": cdk.Stack.of(self).stack_name,
                **environment,
            },
        )
        # The Step Functions task invokes synchronously and retries; no async retries/DLQ.
        acknowledge(
            fn,
            "AwsSolutions-L1",
            "python3.12 is pinned deliberately: the AWS SDK for pandas managed layer is "
            "published per Python version and the three functions share one runtime.",
        )
        self.log_groups[name] = log_group
        self.roles[name] = role
        return fn

    def _grant_lake(self, name: str) -> None:
        read, write = LAKE_ACCESS[name]
        self.lake.grant(
            self.roles[name], read=read, write=write, list_only=LAKE_LIST_ONLY.get(name, ())
        )

    def _acknowledge_prefix_wildcards(self) -> None:
        bucket = arn_ref(self.lake.bucket)
        for name, role in self.roles.items():
            prefixes = sorted(set(LAKE_ACCESS[name][0]) | set(LAKE_ACCESS[name][1]))
            acknowledge(
                role,
                "AwsSolutions-IAM5",
                "Object-level wildcards are the least privilege for a data lake: the function "
                "reads/writes only keys under its own prefixes (snapshot and run ids are not "
                "known before the execution runs).",
                findings=[f"Resource::{bucket}/{p}*" for p in prefixes],
            )
            acknowledge(
                role,
                "AwsSolutions-IAM5",
                "X-Ray's PutTraceSegments/PutTelemetryRecords take no resource-level permission"
                ' (AWS documents Resource "*" for them); CDK adds them for active tracing.',
                findings=["Resource::*"],
            )
