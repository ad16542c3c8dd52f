"""Optional schedule: an EventBridge Scheduler schedule that starts the state machine."""

from __future__ import annotations

import json
from typing import Any

from aws_cdk import Duration
from aws_cdk import aws_iam as iam
from aws_cdk import aws_scheduler as scheduler
from aws_cdk import aws_scheduler_targets as targets
from aws_cdk import aws_stepfunctions as sfn
from constructs import Construct


class Schedule(Construct):
    """Starts an execution on ``expression`` with ``execution_input``; its role may only
    ``states:StartExecution`` on this state machine."""

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        state_machine: sfn.IStateMachine,
        expression: str,
        execution_input: dict[str, Any],
    ) -> None:
        super().__init__(scope, construct_id)
        self.role = iam.Role(
            self,
            "Role",
            assumed_by=iam.ServicePrincipal("scheduler.amazonaws.com"),
            description="crypto-etl schedule: start executions of the pipeline only",
        )
        self.schedule = scheduler.Schedule(
            self,
            "Schedule",
            description=f"crypto-etl pipeline {expression}",
            schedule=scheduler.ScheduleExpression.expression(expression),
            target=targets.StepFunctionsStartExecution(
                state_machine,
                role=self.role,
                input=scheduler.ScheduleTargetInput.from_text(json.dumps(execution_input)),
                # A failed StartExecution (throttling) is retried briefly, never hours later.
                retry_attempts=3,
                max_event_age=Duration.hours(1),
            ),
        )
