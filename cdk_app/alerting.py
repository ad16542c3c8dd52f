"""Alerting: an encrypted SNS topic for pipeline failures and the CloudWatch alarms around it.

**One failure, one alert.** A failure the state machine sees (any error a task raises, after its
retries) goes through the definition's Catch path to the ``Notify failure`` state, which
publishes ONE message to the topic with the execution, the failed state, the error name and its
cause. That message is the alert. The alarms therefore page (have the topic as their action)
only for what that path cannot publish:

* ``ExecutionsTimedOut`` — the execution outlived its ``TimeoutSeconds`` (no Catch runs);
* ``ExecutionsAborted`` — the execution was stopped (StopExecution, or a redeploy);
* ``FailedWithoutAlert`` — from the state machine's own log (a metric filter): the
  ``Notify failure`` publish itself failed (a ``TaskFailed`` or ``TaskTimedOut`` event of an
  ``sns`` task), or the execution failed with an error no Catch can catch (``States.Runtime``,
  ``States.DataLimitExceeded``: "Error names", Step Functions developer guide).

Kept, but with no action (they show in the CloudWatch console; paging on them would repeat the
Catch path's alert for the same failure): ``ExecutionsFailed`` (every failed execution, alerted
or not) and each function's ``Errors`` (Lambda counts an error that Step Functions then
catches, so one failure would page twice more). A Lambda throttle is retried by the state
machine and, if it persists, fails the execution through the Catch path: no separate alarm.

Metric names: ``AWS/States`` ExecutionsFailed/TimedOut/Aborted by ``StateMachineArn`` and
``AWS/Lambda`` Errors by ``FunctionName`` ("Monitoring Step Functions metrics using CloudWatch",
"Using CloudWatch metrics with Lambda"). The log event shape (``type``, ``details.error``,
``details.resourceType``) is that of the execution history events the log records ("Log
levels for Step Functions execution events"; ``TaskFailedEventDetails``,
``ExecutionFailedEventDetails`` in the API reference).
"""

from __future__ import annotations

import aws_cdk as cdk
from aws_cdk import aws_cloudwatch as cloudwatch
from aws_cdk import aws_cloudwatch_actions as cw_actions
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_logs as logs
from aws_cdk import aws_sns as sns
from aws_cdk import aws_sns_subscriptions as subscriptions
from aws_cdk import aws_stepfunctions as sfn
from constructs import Construct

# A CloudWatch Logs JSON filter pattern over the state machine's execution log: the SNS publish
# of "Notify failure" failed or timed out (the only sns task; it has no Retry, so a failed
# publish is a message not sent), or the execution failed with an error that no Catch (not even
# States.ALL) catches, so the Catch path never ran.
FAILED_WITHOUT_ALERT_PATTERN = (
    '{ ((($.type = "TaskFailed") || ($.type = "TaskTimedOut")) && '
    '($.details.resourceType = "sns")) || '
    '(($.type = "ExecutionFailed") && '
    '(($.details.error = "States.Runtime") || ($.details.error = "States.DataLimitExceeded"))) }'
)


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
        # The alarms whose action is the topic (the rest are console-only).
        self.paging: set[str] = set()

    def _alarm(
        self, alarm_id: str, metric: cloudwatch.IMetric, description: str, *, page: bool
    ) -> cloudwatch.Alarm:
        alarm = metric.create_alarm(
            self,
            alarm_id,
            alarm_description=description,
            threshold=1,
            evaluation_periods=1,
            comparison_operator=cloudwatch.ComparisonOperator.GREATER_THAN_OR_EQUAL_TO_THRESHOLD,
            treat_missing_data=cloudwatch.TreatMissingData.NOT_BREACHING,
        )
        if page:
            alarm.add_alarm_action(cw_actions.SnsAction(self.topic))
            self.paging.add(alarm_id)
        self.alarms[alarm_id] = alarm
        return alarm

    def watch_state_machine(
        self, state_machine: sfn.IStateMachine, log_group: logs.ILogGroup
    ) -> None:
        """Alarms on the state machine (5-minute sums >= 1), see the module docstring:
        ``ExecutionsTimedOut``, ``ExecutionsAborted`` and ``FailedWithoutAlert`` (from a metric
        filter on ``log_group``, the state machine's execution log) page; ``ExecutionsFailed``
        does not."""
        period = cdk.Duration.minutes(5)
        self._alarm(
            "ExecutionsTimedOut",
            state_machine.metric_timed_out(period=period, statistic="Sum"),
            "crypto-etl: a pipeline execution timed out (no failure message was sent: see the "
            "execution's events)",
            page=True,
        )
        self._alarm(
            "ExecutionsAborted",
            state_machine.metric_aborted(period=period, statistic="Sum"),
            "crypto-etl: a pipeline execution was stopped before it ended",
            page=True,
        )
        namespace = f"crypto-etl/{cdk.Stack.of(self).stack_name}"
        self.failed_without_alert_filter = logs.MetricFilter(
            self,
            "FailedWithoutAlertFilter",
            log_group=log_group,
            filter_pattern=logs.FilterPattern.literal(FAILED_WITHOUT_ALERT_PATTERN),
            metric_namespace=namespace,
            metric_name="FailedWithoutAlert",
            metric_value="1",
        )
        self._alarm(
            "FailedWithoutAlert",
            self.failed_without_alert_filter.metric(period=period, statistic="Sum"),
            "crypto-etl: a pipeline execution failed and its failure message could not be sent "
            "(the Notify failure publish failed, or an uncatchable States.Runtime / "
            "States.DataLimitExceeded error): see the execution's events",
            page=True,
        )
        self._alarm(
            "ExecutionsFailed",
            state_machine.metric_failed(period=period, statistic="Sum"),
            "crypto-etl: a pipeline execution failed (no action: the failure message on the "
            "alert topic is the alert; FailedWithoutAlert pages when that message is missing)",
            page=False,
        )

    def watch_function(self, name: str, function: lambda_.IFunction) -> None:
        """A console-only alarm (no action) on the function's errors (5-minute sums >= 1):
        Step Functions catches them and the Catch path's message is the alert."""
        self._alarm(
            f"{name.capitalize()}Errors",
            function.metric_errors(period=cdk.Duration.minutes(5), statistic="Sum"),
            f"crypto-etl: the {name} function raised errors (no action: the pipeline's failure "
            "message carries the error)",
            page=False,
        )
