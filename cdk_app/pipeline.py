"""The pipeline: the Step Functions state machine from state_machine/definition.asl.json."""

from __future__ import annotations

import aws_cdk as cdk
from aws_cdk import aws_logs as logs
from aws_cdk import aws_sns as sns
from aws_cdk import aws_stepfunctions as sfn
from constructs import Construct

from cdk_app.nag import acknowledge, arn_ref
from cdk_app.pipeline_functions import PipelineFunctions, retention
from state_machine.definition import SUBSTITUTIONS, definition_template

# Placeholder in the definition -> function name.
FUNCTION_PLACEHOLDERS = {
    "ExtractFunctionArn": "extract",
    "TransformFunctionArn": "transform",
    "LoadFunctionArn": "load",
}
TOPIC_PLACEHOLDER = "AlertTopicArn"


class Pipeline(Construct):
    """Extract -> Transform -> Load, Catch -> Notify(SNS) -> Fail; the same ASL as local mode.

    The execution timeout is the definition's own ``TimeoutSeconds`` (one hour).
    """

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        functions: PipelineFunctions,
        topic: sns.ITopic,
        log_retention_days: int,
    ) -> None:
        super().__init__(scope, construct_id)
        fns = functions.functions
        substitutions = {
            placeholder: fns[name].function_arn
            for placeholder, name in FUNCTION_PLACEHOLDERS.items()
        }
        substitutions[TOPIC_PLACEHOLDER] = topic.topic_arn
        if substitutions.keys() != SUBSTITUTIONS.keys():
            raise ValueError(
                f"definition placeholders {sorted(SUBSTITUTIONS)} "
                f"!= supplied {sorted(substitutions)}"
            )

        stack_name = cdk.Stack.of(self).stack_name
        # The /aws/vendedlogs/ prefix keeps CloudWatch's log resource policy small.
        self.log_group = logs.LogGroup(
            self,
            "Logs",
            log_group_name=f"/aws/vendedlogs/states/{stack_name}-pipeline",
            retention=retention(log_retention_days),
            removal_policy=cdk.RemovalPolicy.DESTROY,
        )
        self.state_machine = sfn.StateMachine(
            self,
            "StateMachine",
            state_machine_type=sfn.StateMachineType.STANDARD,
            definition_body=sfn.DefinitionBody.from_string(definition_template()),
            definition_substitutions=substitutions,
            tracing_enabled=True,
            logs=sfn.LogOptions(
                destination=self.log_group,
                level=sfn.LogLevel.ALL,
                # Payloads are small JSON (keys, counts); no credentials pass through states.
                include_execution_data=True,
            ),
        )
        # Exactly the three functions (and their versions/aliases via ":*") and the topic.
        for fn in fns.values():
            fn.grant_invoke(self.state_machine)
        topic.grant_publish(self.state_machine)

        role = self.state_machine.role
        acknowledge(
            role,
            "AwsSolutions-IAM5",
            "Step Functions' lambda:invoke integration may call a function's versions and "
            "aliases (ARN:*); CloudWatch Logs delivery and X-Ray APIs do not support "
            "resource-level permissions (AWS documents Resource '*' for both); "
            "kms:GenerateDataKey* is how SNS encrypts with the topic's own key.",
            findings=[
                *(f"Resource::{arn_ref(fn)}:*" for fn in fns.values()),
                "Resource::*",
                "Action::kms:GenerateDataKey*",
            ],
        )
