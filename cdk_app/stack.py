"""The one stack: data lake, secrets, functions, alerting, pipeline, history backfill, optional
schedule, outputs."""

from __future__ import annotations

from typing import Any

import aws_cdk as cdk
from constructs import Construct

from cdk_app.alerting import Alerting
from cdk_app.backfill import Backfill
from cdk_app.config import Settings
from cdk_app.data_lake import DataLake
from cdk_app.monitoring import Monitoring
from cdk_app.pipeline import Pipeline
from cdk_app.pipeline_functions import SERVICE_PREFIX, PipelineFunctions
from cdk_app.schedule import Schedule
from cdk_app.secrets import Secrets


def dashboard_vs_currency(scope: Construct, settings: Settings) -> str:
    """The dashboard's ``VsCurrency``: context ``dashboard_vs_currency``, else the scheduled
    input's ``vs_currency``, else ``usd``; lower case, as the functions emit it. ValueError for
    anything but a short code."""
    value = scope.node.try_get_context("dashboard_vs_currency") or settings.execution_input.get(
        "vs_currency"
    )
    text = str(value or "usd").strip().lower()
    if not (0 < len(text) <= 16 and text.isascii() and text.replace("_", "").isalnum()):
        raise ValueError(f"dashboard_vs_currency: not a currency code: {value!r}")
    return text


class CryptoEtlStack(cdk.Stack):
    """CoinGecko -> S3 -> Snowflake, orchestrated by Step Functions."""

    def __init__(
        self, scope: Construct, construct_id: str, *, settings: Settings, **kwargs: Any
    ) -> None:
        super().__init__(scope, construct_id, **kwargs)
        self.settings = settings
        self.lake = DataLake(self, "DataLake", settings=settings)
        self.secrets = Secrets(self, "Secrets", stack_name=self.stack_name)
        self.functions = PipelineFunctions(
            self, "Functions", settings=settings, lake=self.lake, secrets=self.secrets
        )
        self.alerting = Alerting(self, "Alerting", alert_email=settings.alert_email)
        self.pipeline = Pipeline(
            self,
            "Pipeline",
            functions=self.functions,
            topic=self.alerting.topic,
            log_retention_days=settings.log_retention_days,
        )
        self.alerting.watch_state_machine(self.pipeline.state_machine, self.pipeline.log_group)
        self.backfill = Backfill(
            self,
            "Backfill",
            functions=self.functions,
            lake=self.lake,
            topic=self.alerting.topic,
            log_retention_days=settings.log_retention_days,
        )
        for name, fn in self.functions.functions.items():
            self.alerting.watch_function(name, fn)
        self.monitoring = Monitoring(
            self,
            "Monitoring",
            state_machine=self.pipeline.state_machine,
            functions=self.functions.functions,
            service_names={name: f"{SERVICE_PREFIX}-{name}" for name in self.functions.functions},
            alarms=self.alerting.alarms,
            paging=self.alerting.paging,
            pipeline_name=self.stack_name,
            vs_currency=dashboard_vs_currency(self, settings),
        )

        self.schedule: Schedule | None = None
        if settings.schedule:
            self.schedule = Schedule(
                self,
                "Schedule",
                state_machine=self.pipeline.state_machine,
                expression=settings.schedule,
                execution_input=settings.execution_input,
            )

        sm_arn = self.pipeline.state_machine.state_machine_arn
        outputs = {
            "StateMachineArn": (sm_arn, "Start executions of this state machine"),
            "StateMachineConsoleUrl": (
                cdk.Fn.join(
                    "",
                    [
                        f"https://{cdk.Aws.REGION}.console.aws.amazon.com/states/home?region=",
                        cdk.Aws.REGION,
                        "#/statemachines/view/",
                        sm_arn,
                    ],
                ),
                "Open the state machine in the console (Start execution)",
            ),
            "BackfillStateMachineArn": (
                self.backfill.state_machine.state_machine_arn,
                'Start a history backfill: {"top_n": 200, "days": 365} (README)',
            ),
            "LakeBucketName": (self.lake.bucket.bucket_name, "Data lake bucket"),
            "AccessLogsBucketName": (
                self.lake.access_logs.bucket_name,
                "S3 server access logs of the lake bucket",
            ),
            "SnowflakeSecretName": (
                self.secrets.snowflake_name,
                "Put the Snowflake connection JSON here (README: Deploy to AWS, step 3)",
            ),
            "CoinGeckoSecretName": (
                self.secrets.coingecko_name,
                "Optional CoinGecko API key (empty = public API)",
            ),
            "AlertTopicArn": (self.alerting.topic.topic_arn, "Failure alerts"),
            "DashboardUrl": (
                f"https://{cdk.Aws.REGION}.console.aws.amazon.com/cloudwatch/home?region="
                f"{cdk.Aws.REGION}#dashboards/dashboard/{self.monitoring.dashboard_name}",
                "The pipeline's CloudWatch dashboard (README: Operating it)",
            ),
        }
        for output_id, (value, description) in outputs.items():
            cdk.CfnOutput(self, output_id, value=value, description=description)
