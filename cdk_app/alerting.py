"""Alerting: an encrypted SNS topic for pipeline failures and the CloudWatch alarms that use it."""

from __future__ import annotations

import aws_cdk as cdk
from aws_cdk import aws_cloudwatch as cloudwatch
from aws_cdk import aws_cloudwatch_actions as cw_actions
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_sns as sns
from aws_cdk import aws_sns_subscriptions as subscriptions
from aws_cdk import aws_stepfunctions as sfn
from constructs import Construct


class Alerting(Construct):
    """The alert topic (KMS-encrypted, TLS only) and alarms on the pipeline's failure metrics."""

    def __init__(self, scope: Construct, construct_id: str, *, alert_email: str = "") -> None:
        super().__init__(scope, construct_id)
        stack = cdk.Stack.of(self)
        # A customer-managed key: CloudWatch alarms cannot publish to a topic encrypted with the
        # AWS-managed aws/sns key, because that key's policy cannot be changed to let them in.
        self.key = kms.Key(
            self,
            "TopicKey",
            description="crypto-etl alert topic encryption",
            enable_key_rotation=True,
            removal_policy=cdk.RemovalPolicy.DESTROY,
            pending_window=cdk.Duration.days(7),
        )
        self.key.add_to_resource_policy(
            iam.PolicyStatement(
                sid="AllowCloudWatchAlarmsToUseTheKey",
                principals=[iam.ServicePrincipal("cloudwatch.amazonaws.com")],
                actions=["kms:Decrypt", "kms:GenerateDataKey*"],
                # The key policy's "*" is this key; the topic policy below limits who publishes.
                resources=["*"],
            )
        )
        self.topic = sns.Topic(
            self,
            "Topic",
            display_name="crypto-etl alerts",
            master_key=self.key,
            enforce_ssl=True,
        )
        # CloudWatch alarms publish as the service; allow exactly this account's alarms.
        self.topic.add_to_resource_policy(
            iam.PolicyStatement(
                sid="AllowThisAccountsAlarms",
                principals=[iam.ServicePrincipal("cloudwatch.amazonaws.com")],
                actions=["sns:Publish"],
                resources=[self.topic.topic_arn],
                conditions={
                    "StringEquals": {"aws:SourceAccount": stack.account},
                    "ArnLike": {
                        "aws:SourceArn": stack.format_arn(
                            service="cloudwatch",
                            resource="alarm",
                            resource_name="*",
                            arn_format=cdk.ArnFormat.COLON_RESOURCE_NAME,
                        )
                    },
                },
            )
        )
        if alert_email:
            self.topic.add_subscription(subscriptions.EmailSubscription(alert_email))
        self.alarms: dict[str, cloudwatch.Alarm] = {}

    def _alarm(self, alarm_id: str, metric: cloudwatch.Metric, description: str) -> None:
        alarm = metric.create_alarm(
            self,
            alarm_id,
            alarm_description=description,
            threshold=1,
            evaluation_periods=1,
            comparison_operator=cloudwatch.ComparisonOperator.GREATER_THAN_OR_EQUAL_TO_THRESHOLD,
            treat_missing_data=cloudwatch.TreatMissingData.NOT_BREACHING,
        )
        alarm.add_alarm_action(cw_actions.SnsAction(self.topic))
        self.alarms[alarm_id] = alarm

    def watch_state_machine(self, state_machine: sfn.IStateMachine) -> None:
        """Alarm on failed and timed-out executions (5-minute sums >= 1)."""
        period = cdk.Duration.minutes(5)
        self._alarm(
            "ExecutionsFailed",
            state_machine.metric_failed(period=period, statistic="Sum"),
            "crypto-etl: a pipeline execution failed (see the execution's failed state)",
        )
        self._alarm(
            "ExecutionsTimedOut",
            state_machine.metric_timed_out(period=period, statistic="Sum"),
            "crypto-etl: a pipeline execution timed out",
        )

    def watch_function(self, name: str, function: lambda_.IFunction) -> None:
        """Alarm when the function reports errors (5-minute sums >= 1)."""
        self._alarm(
            f"{name.capitalize()}Errors",
            function.metric_errors(period=cdk.Duration.minutes(5), statistic="Sum"),
            f"crypto-etl: the {name} function raised errors",
        )
