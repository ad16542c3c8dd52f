"""The history backfill: a second state machine, from state_machine/backfill.asl.json.

Plan (extract function) -> Fetch, a Distributed Map whose child executions call the extract
function on batches of coins -> LoadHistory (load function); Catch -> Notify(SNS) -> Fail. The
definition is the same file the local runner executes.

Its role, least privilege (sources: "IAM policies for using Distributed Map states",
https://docs.aws.amazon.com/step-functions/latest/dg/iam-policies-eg-dist-map.html, and the CDK's
own ``DistributedMap``/``ResultWriter`` grants, aws-cdk-lib 2.275):

* ``lambda:InvokeFunction`` on the extract and load functions only (and their versions/aliases);
* ``states:StartExecution`` on this state machine (the Map's child executions are executions of
  it) and ``states:DescribeExecution``/``states:StopExecution`` on its child executions
  (``execution:<name>/*``), in a separate policy so the role does not depend on the machine;
* ``s3:GetObject`` on ``raw/history/*/items.json`` (the ItemReader) and ``s3:PutObject``,
  ``s3:GetObject``, ``s3:ListMultipartUploadParts``, ``s3:AbortMultipartUpload`` on
  ``raw/history/*/results/*`` (the ResultWriter): nothing else in the lake;
* ``sns:Publish`` on the alert topic (with its KMS key), CloudWatch Logs delivery and X-Ray.
"""

from __future__ import annotations

import aws_cdk as cdk
from aws_cdk import aws_iam as iam
from aws_cdk import aws_logs as logs
from aws_cdk import aws_sns as sns
from aws_cdk import aws_stepfunctions as sfn
from constructs import Construct

from cdk_app.data_lake import HISTORY, DataLake
from cdk_app.nag import acknowledge, arn_ref
from cdk_app.pipeline_functions import PipelineFunctions, retention
from state_machine.definition import BACKFILL, BACKFILL_SUBSTITUTIONS, definition_template

# Placeholder in the backfill definition -> function name.
FUNCTION_PLACEHOLDERS = {"ExtractFunctionArn": "extract", "LoadFunctionArn": "load"}
TOPIC_PLACEHOLDER = "AlertTopicArn"
# Lake objects the state machine itself touches (the functions have their own grants).
ITEMS_OBJECTS = f"{HISTORY}*/items.json"
RESULTS_OBJECTS = f"{HISTORY}*/results/*"
RESULT_WRITER_ACTIONS = (
    "s3:PutObject",
    "s3:GetObject",
    "s3:ListMultipartUploadParts",
    "s3:AbortMultipartUpload",
)


class Backfill(Construct):
    """Plan -> Fetch (Distributed Map) -> LoadHistory; the same ASL as local mode.

    The execution timeout is the definition's own ``TimeoutSeconds`` (three days: the whole
    market on the public plan's 5 calls a minute is ~57 hours).
    """

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        functions: PipelineFunctions,
        lake: DataLake,
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
        if substitutions.keys() != BACKFILL_SUBSTITUTIONS.keys():
            raise ValueError(
                f"backfill placeholders {sorted(BACKFILL_SUBSTITUTIONS)} "
                f"!= supplied {sorted(substitutions)}"
            )
        stack_name = cdk.Stack.of(self).stack_name
        self.log_group = logs.LogGroup(
            self,
            "Logs",
            log_group_name=f"/aws/vendedlogs/states/{stack_name}-backfill",
            retention=retention(log_retention_days),
            removal_policy=cdk.RemovalPolicy.DESTROY,
        )
        self.state_machine = sfn.StateMachine(
            self,
            "StateMachine",
            state_machine_type=sfn.StateMachineType.STANDARD,
            definition_body=sfn.DefinitionBody.from_string(definition_template(BACKFILL)),
            definition_substitutions=substitutions,
            tracing_enabled=True,
            logs=sfn.LogOptions(
                destination=self.log_group,
                level=sfn.LogLevel.ALL,
                # Payloads are keys, coin ids and counts; no credentials pass through states.
                include_execution_data=True,
            ),
        )
        role = self.state_machine.role
        for name in FUNCTION_PLACEHOLDERS.values():
            fns[name].grant_invoke(self.state_machine)
        topic.grant_publish(self.state_machine)
        role.add_to_principal_policy(
            iam.PolicyStatement(
                sid="ReadBackfillItems",
                actions=["s3:GetObject"],
                resources=[lake.bucket.arn_for_objects(ITEMS_OBJECTS)],
            )
        )
        role.add_to_principal_policy(
            iam.PolicyStatement(
                sid="WriteMapRunResults",
                actions=list(RESULT_WRITER_ACTIONS),
                resources=[lake.bucket.arn_for_objects(RESULTS_OBJECTS)],
            )
        )
        # A policy of its own: in the role's default policy, a reference to the state
        # machine's ARN would make the machine depend on itself (the role is created first).
        name = cdk.Arn.split(
            self.state_machine.state_machine_arn, cdk.ArnFormat.COLON_RESOURCE_NAME
        ).resource_name
        self.child_executions_arn = cdk.Stack.of(self).format_arn(
            service="states",
            resource="execution",
            resource_name=f"{name}/*",
            arn_format=cdk.ArnFormat.COLON_RESOURCE_NAME,
        )
        self.map_policy = iam.Policy(
            self,
            "DistributedMapPolicy",
            statements=[
                iam.PolicyStatement(
                    sid="StartChildExecutions",
                    actions=["states:StartExecution"],
                    resources=[self.state_machine.state_machine_arn],
                ),
                iam.PolicyStatement(
                    sid="ManageChildExecutions",
                    actions=["states:DescribeExecution", "states:StopExecution"],
                    resources=[self.child_executions_arn],
                ),
            ],
        )
        role.attach_inline_policy(self.map_policy)

        bucket = arn_ref(lake.bucket)
        acknowledge(
            role,
            "AwsSolutions-IAM5",
            "Step Functions' lambda:invoke integration may call a function's versions and "
            "aliases (ARN:*); CloudWatch Logs delivery and X-Ray APIs do not support "
            "resource-level permissions (AWS documents Resource '*' for both); "
            "kms:GenerateDataKey* is how SNS encrypts with the topic's own key; the Distributed "
            "Map reads the items file and writes its results under a backfill id known only at "
            "run time (raw/history/<id>/items.json, raw/history/<id>/results/...).",
            findings=[
                *(f"Resource::{arn_ref(fns[n])}:*" for n in FUNCTION_PLACEHOLDERS.values()),
                "Resource::*",
                "Action::kms:GenerateDataKey*",
                f"Resource::{bucket}/{ITEMS_OBJECTS}",
                f"Resource::{bucket}/{RESULTS_OBJECTS}",
            ],
        )
        acknowledge(
            self.map_policy,
            "AwsSolutions-IAM5",
            "A Distributed Map's child executions get names Step Functions generates at run "
            "time, under this state machine only (execution:<this machine>/*), as AWS documents "
            "for Distributed Map states.",
            findings=[
                # How cdk-nag spells the name taken from the machine's ARN (Fn::Select/Split).
                "Resource::arn:<AWS::Partition>:states:<AWS::Region>:<AWS::AccountId>:execution:"
                '{"Fn::Select":[6,{"Fn::Split":[":",{"Ref":"'
                + arn_ref(self.state_machine).strip("<>").removesuffix(".Arn")
                + '"}]}]}/*'
            ],
        )
