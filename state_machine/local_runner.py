"""Run the very same ASL definition locally under moto's Step Functions interpreter.

moto executes the definition (Retry, Catch, Pass, Fail, the SNS integration, execution history)
as Step Functions does. Its Docker-less Lambda backend normally answers every invocation with a
canned payload; we patch that one method (``LambdaSimpleBackend.invoke``) so each invocation is
dispatched in-process to our real handler, with an unhandled exception reported the way Lambda
reports it (``X-Amz-Function-Error: Unhandled`` and ``{"errorType", "errorMessage"}``), so the
state machine sees the handler's error class name as the error, exactly as on AWS.

moto runs each execution in a thread of its own (``ExecutionWorker.start`` targets
``ExecutionWorker._execution_logic``); we wrap that method so the thread signals when it ends,
and ``execute`` waits on that signal instead of polling the execution every 50 ms
(a tight poll competes with the in-process handlers for the interpreter and slows them).

``tests/unit/test_local_runner.py`` guards both patches so a moto upgrade cannot break them
silently.

**The Distributed Map (the backfill's ``Fetch``).** moto 5.2's interpreter cannot run it: its
ASL parser rejects ``ItemBatcher`` (and an integer ``ToleratedFailurePercentage``), ignores
tolerated failures, evaluates the ``ResultWriter`` parameters against the items instead of the
state input, and writes an empty result manifest (probed; ``tests/integration/test_backfill.py``
keeps the probe, so an upgrade that fixes it is noticed). So when a definition has a state of
``Type: Map`` whose ``ItemProcessor.ProcessorConfig.Mode`` is ``DISTRIBUTED``, the runner
deploys the definition with that one state replaced by a Task on a local function
(``distributed-map``) and keeps everything around it (``ResultPath``, ``ResultSelector``,
``OutputPath``, ``Catch``, ``Retry``, ``Next``/``End``). That function, :class:`DistributedMap`,
does what the Map Run does on AWS, from the Map state as written:

* ``ItemReader`` (``s3:getObject``, ``InputType: JSON``) reads the items file from the lake the
  handlers use (``storage_from_env``: the folder lake locally), not through the S3 API;
* ``ItemBatcher``: batches of ``MaxItemsPerBatch(Path)`` items, each child's input
  ``{"Items": [...], "BatchInput": {...}}`` (``MaxInputBytesPerBatch`` is not applied);
* the ``ItemProcessor`` is deployed into moto as a state machine of its own and each batch runs
  as one of its executions (a child execution, with its Retry and Catch), at most
  ``MaxConcurrency(Path)`` at once (0: all);
* ``ToleratedFailurePercentage``/``ToleratedFailureCount`` (or their ``Path``): a failed child
  counts all its items as failed; past the threshold no further child starts and the state fails
  with ``States.ExceedToleratedFailureThreshold`` (catchable, as on AWS);
* ``ResultWriter`` (``s3:putObject``) writes ``<Prefix>/<map run id>/manifest.json`` and
  ``SUCCEEDED_0.json`` / ``FAILED_0.json`` (AWS's layout and field names) to the lake and returns
  ``{"MapRunArn", "ResultWriterDetails": {"Bucket", "Key"}}``; without it, the array of child
  outputs.

What differs from AWS: the execution history shows a ``TaskStateEntered``/``TaskSucceeded`` on
the local function where AWS records ``MapStateEntered`` and ``MapRun*`` events; the parameters
are resolved with plain ``$.a.b`` paths (no intrinsic functions or ``$$`` in the Map's own
fields), and a path that does not resolve fails the state with a catchable error where AWS
raises ``States.Runtime``; ``ItemSelector``, CSV items and ``MaxItems`` are refused; stopping the
parent stops starting children but does not stop running ones (an in-process handler cannot be
interrupted); child executions are named ``<index>-<uuid>`` and their history is not followed
(``on_map_event`` reports each batch instead).
"""

from __future__ import annotations

import io
import json
import logging
import math
import os
import threading
import time
import traceback
import uuid
import zipfile
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from types import SimpleNamespace
from typing import Any
from unittest import mock

from functions.common.context import LocalLambdaContext
from state_machine.definition import PIPELINE, SUBSTITUTIONS_OF, render

REGION = "us-east-1"
ACCOUNT = "123456789012"
STATE_MACHINE_NAME = "crypto-etl-pipeline"
# Definition name (state_machine.definition) -> the local state machine's name.
STATE_MACHINE_NAMES: dict[str, str] = {
    "pipeline": STATE_MACHINE_NAME,
    "backfill": "crypto-etl-backfill",
}
# The local function that runs a Distributed Map's items (see the module docstring).
MAP_FUNCTION = "distributed-map"
TOPIC_NAME = "crypto-etl-alerts"

Handler = Callable[[dict[str, Any], Any], dict[str, Any]]

# Each function's Lambda timeout on AWS (cdk_app/pipeline_functions.py SPECS; an infra test
# keeps the two equal) so deadline logic sees the same budget locally.
FUNCTION_TIMEOUTS: dict[str, int] = {"extract": 900, "transform": 300, "load": 600}

# Logical function name -> placeholder in the definition.
FUNCTIONS: dict[str, str] = {
    "extract": "ExtractFunctionArn",
    "transform": "TransformFunctionArn",
    "load": "LoadFunctionArn",
}


def default_handlers() -> dict[str, Handler]:
    """The real Lambda handlers (imported lazily: transform pulls in pandas)."""
    from functions.extract.handler import handler as extract
    from functions.load.handler import handler as load
    from functions.transform.handler import handler as transform

    return {"extract": extract, "transform": transform, "load": load}


@dataclass
class StateEvent:
    """One step of progress, derived from the execution history."""

    kind: str  # "entered" | "exited" | "failed"
    state: str
    detail: dict[str, Any] = field(default_factory=dict)
    timestamp: datetime | None = None  # when Step Functions recorded it


@dataclass
class ExecutionResult:
    status: str  # SUCCEEDED | FAILED | TIMED_OUT | ABORTED
    execution_arn: str
    output: dict[str, Any] | None
    error: str | None
    cause: str | None
    failed_state: str | None
    duration_s: float
    alerts: list[dict[str, Any]]
    history: list[dict[str, Any]]
    state_outputs: dict[str, dict[str, Any]]
    # A failed execution's "Record failure" outcome: {"recorded": true, "table"} or
    # {"recorded": false, "error": {"Error", "Cause"}}; None when no failure was recorded.
    run_log: dict[str, Any] | None = None


def _function_error_payload(exc: BaseException) -> bytes:
    return json.dumps(
        {
            "errorType": type(exc).__name__,
            "errorMessage": str(exc),
            "stackTrace": traceback.format_exception(exc)[-6:],
        }
    ).encode()


def function_timeouts(overrides: Mapping[str, float] | None = None) -> dict[str, float]:
    """Each function's Lambda timeout in seconds: ``FUNCTION_TIMEOUTS`` with ``overrides`` on top.

    Raises ValueError for a timeout that is not a positive finite number of seconds.
    """
    merged: dict[str, float] = {**FUNCTION_TIMEOUTS, **(overrides or {})}
    for name, seconds in merged.items():
        number = isinstance(seconds, int | float) and not isinstance(seconds, bool)
        if not number or not math.isfinite(seconds) or seconds <= 0:
            raise ValueError(f"Lambda timeout for {name!r} must be > 0 seconds, got {seconds!r}")
    return merged


@contextmanager
def dispatch_lambda_in_process(
    handlers: Mapping[str, Handler],
    timeouts: Mapping[str, float] | None = None,
    on_invoke: Callable[[], None] | None = None,
) -> Iterator[list[dict[str, Any]]]:
    """Patch moto's Docker-less Lambda backend to call ``handlers[function_name]`` in-process.

    ``timeouts`` (seconds per function name) override ``FUNCTION_TIMEOUTS`` for the ones named;
    the handler's context counts down from its function's timeout. ``on_invoke`` is called
    (in moto's execution thread) before each handler runs. Yields a list that
    records every invocation (function, request, response or error).
    """
    from moto.awslambda_simple.models import LambdaSimpleBackend

    calls: list[dict[str, Any]] = []
    limits = function_timeouts(timeouts)

    def invoke(
        self: Any,
        function_name: str,
        qualifier: str | None,
        body: Any,
        headers: Any,
        response_headers: Any,
    ) -> bytes:
        name = function_name.split(":function:")[-1].split(":")[0]
        handler = handlers.get(name)
        if handler is None:
            raise KeyError(f"no local handler for Lambda function {name!r}")
        event = json.loads(body) if body else {}
        record: dict[str, Any] = {"function": name, "event": event}
        calls.append(record)
        context = LocalLambdaContext(function_name=name, timeout_seconds=limits.get(name, 900))
        try:
            result = handler(event, context)
        except Exception as exc:
            response_headers["x-amz-function-error"] = "Unhandled"
            record["error"] = {"type": type(exc).__name__, "message": str(exc)}
            return _function_error_payload(exc)
        # As strict as Lambda's runtime: no datetimes, numpy scalars or NaN in a task result.
        try:
            payload = json.dumps(result, allow_nan=False).encode()
        except (TypeError, ValueError) as exc:
            response_headers["x-amz-function-error"] = "Unhandled"
            record["error"] = {"type": "Runtime.MarshalError", "message": str(exc)}
            return json.dumps(
                {"errorType": "Runtime.MarshalError", "errorMessage": f"{name}: {exc}"}
            ).encode()
        record["result"] = result
        return payload

    def invoke_and_report(self: Any, *args: Any) -> bytes:
        # Before, not after: moto records the task's result only once invoke has returned, so
        # a catch-up here after the handler would find nothing new.
        if on_invoke is not None:
            on_invoke()  # the states entered so far come before the handler's own output
        return invoke(self, *args)

    with mock.patch.object(LambdaSimpleBackend, "invoke", invoke_and_report):
        yield calls


@contextmanager
def signal_execution_end(on_end: Callable[[str], None]) -> Iterator[None]:
    """Call ``on_end(execution_arn)`` in moto's execution thread as the thread ends.

    moto's ``ExecutionWorker.start`` runs ``_execution_logic`` in a new thread; that method
    evaluates the program and then records the final status (``terminated``), so when it
    returns ``describe_execution`` already gives the final status. ``on_end`` is also called
    when the method raises (the status then stays RUNNING).
    """
    from moto.stepfunctions.parser.backend.execution_worker import ExecutionWorker

    original = ExecutionWorker._execution_logic

    def execution_logic(self: Any) -> None:
        try:
            original(self)
        finally:
            on_end(self._evaluation_details.execution_details.arn)

    with mock.patch.object(ExecutionWorker, "_execution_logic", execution_logic):
        yield


@contextmanager
def states_errors_from_the_map_function() -> Iterator[None]:
    """Let the local map function fail with a ``States.*`` error name (as the Map state does on
    AWS, e.g. ``States.ExceedToleratedFailureThreshold``), which moto refuses from a Lambda
    (a custom error name may not start with ``States.``): the failure event then carries that
    Step Functions error, so ``Catch`` matches it exactly as on AWS."""
    from moto.stepfunctions.parser.asl.component.common.error_name.failure_event import (
        FailureEvent,
    )
    from moto.stepfunctions.parser.asl.component.common.error_name.states_error_name import (
        StatesErrorName,
    )
    from moto.stepfunctions.parser.asl.component.common.error_name.states_error_name_type import (
        StatesErrorNameType,
    )
    from moto.stepfunctions.parser.asl.component.state.exec.state_task import lambda_eval_utils
    from moto.stepfunctions.parser.asl.component.state.exec.state_task.state_task_lambda import (
        StateTaskLambda,
    )
    from moto.stepfunctions.parser.asl.eval.event.event_detail import EventDetails

    original = StateTaskLambda._from_error
    names = {t.to_name(): t for t in StatesErrorNameType}

    def from_error(self: Any, env: Any, ex: Exception) -> Any:
        if isinstance(ex, lambda_eval_utils.LambdaFunctionErrorException):
            try:
                error = json.loads(ex.payload)["errorType"]
            except (ValueError, KeyError, TypeError):
                error = None
            if error in names and MAP_FUNCTION in str(getattr(self, "resource", "")):
                from moto.stepfunctions.parser.api import (
                    HistoryEventType,
                    LambdaFunctionFailedEventDetails,
                )

                return FailureEvent(
                    env=env,
                    error_name=StatesErrorName(typ=names[error]),
                    event_type=HistoryEventType.LambdaFunctionFailed,
                    event_details=EventDetails(
                        lambdaFunctionFailedEventDetails=LambdaFunctionFailedEventDetails(
                            error=error, cause=ex.payload
                        )
                    ),
                )
        return original(self, env, ex)

    with mock.patch.object(StateTaskLambda, "_from_error", from_error):
        yield


def _zip_stub() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("stub.py", "# local mode dispatches to the real handler in-process\n")
    return buf.getvalue()


class LocalStepFunctions:
    """moto's AWS (Step Functions, Lambda, SNS, SQS, IAM) with our pipeline deployed into it."""

    def __init__(
        self,
        handlers: Mapping[str, Handler] | None = None,
        env: Mapping[str, str] | None = None,
        retry_sleep: Callable[[float], None] | None = None,
        timeouts: Mapping[str, float] | None = None,
        definition: str = PIPELINE,
    ) -> None:
        """``handlers``: function name -> handler (default: the real ones); ``env``: extra
        environment variables while deployed; ``retry_sleep``: replaces the interpreter's
        sleep between Retry attempts (seconds); ``timeouts``: Lambda timeouts in seconds for
        the functions named, overriding ``FUNCTION_TIMEOUTS`` (ValueError if not > 0);
        ``definition``: which state machine to deploy, ``pipeline`` or ``backfill``
        (state_machine.definition; KeyError for another)."""
        if definition not in SUBSTITUTIONS_OF:
            raise KeyError(f"no state machine {definition!r}: one of {sorted(SUBSTITUTIONS_OF)}")
        self.definition_name = definition
        self._maps: dict[str, DistributedMap] = {}
        self._on_map_event: Callable[[MapEvent], None] | None = None
        self._any_end = threading.Condition()
        self._handlers = dict(handlers) if handlers is not None else None
        self._env = dict(env or {})
        self._retry_sleep = retry_sleep
        self.timeouts = function_timeouts(timeouts)
        self._stack: Any = None
        self._follower: _HistoryFollower | None = None
        self._ended: dict[str, threading.Event] = {}  # execution ARN -> its thread has ended
        self._ended_lock = threading.Lock()

    def __enter__(self) -> LocalStepFunctions:
        from contextlib import ExitStack

        from moto import mock_aws

        stack = ExitStack()
        self._stack = stack
        # moto logs every failed state at ERROR with a repr of the parse tree; our progress
        # reporting says the same thing readably.
        logging.getLogger("moto").setLevel(logging.CRITICAL)
        try:
            fake_creds = {
                "AWS_ACCESS_KEY_ID": "testing",
                "AWS_SECRET_ACCESS_KEY": "testing",
                "AWS_SESSION_TOKEN": "testing",
                "AWS_DEFAULT_REGION": REGION,
            }
            stack.enter_context(mock.patch.dict(os.environ, {**fake_creds, **self._env}))
            stack.enter_context(
                mock_aws(
                    config={
                        "stepfunctions": {"execute_state_machine": True},
                        "lambda": {"use_docker": False},
                    }
                )
            )
            if self._retry_sleep is not None:
                from moto.stepfunctions.parser.asl.component.common.retry import retrier_decl

                # Replace the retrier's view of the ``time`` module only (not time.sleep globally).
                stack.enter_context(
                    mock.patch.object(
                        retrier_decl, "time", SimpleNamespace(sleep=self._retry_sleep)
                    )
                )
            handlers = dict(self._handlers if self._handlers is not None else default_handlers())
            handlers[MAP_FUNCTION] = self._run_map
            self.invocations = stack.enter_context(
                dispatch_lambda_in_process(handlers, self.timeouts, on_invoke=self.catch_up)
            )
            stack.enter_context(signal_execution_end(self._signal_end))
            stack.enter_context(states_errors_from_the_map_function())
            self._deploy()
        except BaseException:
            stack.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        if self._stack is not None:
            self._stack.close()

    def _deploy(self) -> None:
        import boto3

        self.sfn = boto3.client("stepfunctions", region_name=REGION)
        self.sns = boto3.client("sns", region_name=REGION)
        self.sqs = boto3.client("sqs", region_name=REGION)
        iam = boto3.client("iam", region_name=REGION)
        lam = boto3.client("lambda", region_name=REGION)
        trust = {
            "Version": "2012-10-17",
            "Statement": [
                {
                    "Effect": "Allow",
                    "Principal": {"Service": ["lambda.amazonaws.com", "states.amazonaws.com"]},
                    "Action": "sts:AssumeRole",
                }
            ],
        }
        role_arn = iam.create_role(
            RoleName="crypto-etl-local", AssumeRolePolicyDocument=json.dumps(trust)
        )["Role"]["Arn"]
        subs: dict[str, str] = {}
        code = _zip_stub()
        for name, placeholder in FUNCTIONS.items():
            arn = lam.create_function(
                FunctionName=name,
                Runtime="python3.12",
                Role=role_arn,
                Handler=f"functions.{name}.handler.handler",
                Code={"ZipFile": code},
                Timeout=math.ceil(self.timeouts[name]),  # whole seconds, as Lambda takes it
            )["FunctionArn"]
            subs[placeholder] = arn
        self.topic_arn = self.sns.create_topic(Name=TOPIC_NAME)["TopicArn"]
        subs["AlertTopicArn"] = self.topic_arn
        # An SQS queue subscribed to the alert topic lets us read what was published.
        self.queue_url = self.sqs.create_queue(QueueName=f"{TOPIC_NAME}-inbox")["QueueUrl"]
        queue_arn = self.sqs.get_queue_attributes(
            QueueUrl=self.queue_url, AttributeNames=["QueueArn"]
        )["Attributes"]["QueueArn"]
        self.sns.subscribe(
            TopicArn=self.topic_arn,
            Protocol="sqs",
            Endpoint=queue_arn,
            Attributes={"RawMessageDelivery": "true"},
        )
        needed = SUBSTITUTIONS_OF[self.definition_name]
        rendered = render({k: v for k, v in subs.items() if k in needed}, self.definition_name)
        self.role_arn = role_arn
        self.state_machine_name = STATE_MACHINE_NAMES[self.definition_name]
        asl = json.loads(rendered)
        if distributed_map_states(asl):
            map_arn = lam.create_function(
                FunctionName=MAP_FUNCTION,
                Runtime="python3.12",
                Role=role_arn,
                Handler="state_machine.local_runner.DistributedMap",
                Code={"ZipFile": code},
                Timeout=900,  # nominal: moto does not enforce it, the map runs as long as needed
            )["FunctionArn"]
            asl, maps = localize_distributed_maps(asl, map_arn)
            for state_name, state in maps.items():
                self._maps[state_name] = DistributedMap(self, state_name, state)
        # What the local interpreter runs (== the rendered file unless it has a Distributed Map).
        self.definition = json.dumps(asl, indent=2) if self._maps else rendered
        self.rendered_definition = rendered
        self.state_machine_arn = self.sfn.create_state_machine(
            name=self.state_machine_name, definition=self.definition, roleArn=role_arn
        )["stateMachineArn"]

    def alerts(self) -> list[dict[str, Any]]:
        """Messages published to the alert topic so far (drained from the inbox queue)."""
        out: list[dict[str, Any]] = []
        while True:
            resp = self.sqs.receive_message(QueueUrl=self.queue_url, MaxNumberOfMessages=10)
            msgs = resp.get("Messages", [])
            if not msgs:
                return out
            for m in msgs:
                try:
                    out.append(json.loads(m["Body"]))
                except json.JSONDecodeError:
                    out.append({"raw": m["Body"]})
                self.sqs.delete_message(QueueUrl=self.queue_url, ReceiptHandle=m["ReceiptHandle"])

    def _end_event(self, arn: str) -> threading.Event:
        with self._ended_lock:
            return self._ended.setdefault(arn, threading.Event())

    def _signal_end(self, arn: str) -> None:
        self._end_event(arn).set()
        with self._any_end:
            self._any_end.notify_all()

    def wait_any(self, arns: list[str], timeout: float) -> list[str]:
        """The executions of ``arns`` whose thread has ended, waiting up to ``timeout`` seconds
        for at least one (an empty list when none ended in time)."""

        def ended() -> list[str]:
            return [a for a in arns if self._end_event(a).is_set()]

        with self._any_end:
            self._any_end.wait_for(lambda: bool(ended()), timeout=timeout)
        return ended()

    def _run_map(self, event: dict[str, Any], context: Any) -> Any:
        """The ``distributed-map`` function: run the named Map state's items (DistributedMap)."""
        state = event.get("map_state")
        runner = self._maps.get(state) if isinstance(state, str) else None
        if runner is None:
            raise KeyError(f"no Distributed Map state {state!r} in this definition")
        return runner.run(event.get("input"), event.get("execution") or {}, self._on_map_event)

    def execute(
        self,
        execution_input: Mapping[str, Any],
        name: str | None = None,
        on_event: Callable[[StateEvent], None] | None = None,
        poll_seconds: float = 0.5,
        timeout_seconds: float = 3600.0,
        on_map_event: Callable[[MapEvent], None] | None = None,
    ) -> ExecutionResult:
        """Start an execution and follow it to the end, reporting progress per state.

        Waits on the execution thread's end rather than polling. With ``on_event``, the
        history is caught up (``on_event`` called for each new state event, in order, a state
        that runs again reported again) before each Lambda invocation, every ``poll_seconds``
        while waiting, and at the end. Past ``timeout_seconds`` the execution is stopped
        (status ABORTED once the running handler returns: an in-process handler cannot be
        interrupted). ``state_outputs`` holds each state's last output. ``on_map_event`` is
        called (from the map's thread) as each Distributed Map starts, and as each of its
        batches (child executions) starts and ends.
        """
        started = time.monotonic()
        deadline = started + timeout_seconds
        name = name or f"local-{uuid.uuid4().hex[:12]}"
        self._on_map_event = on_map_event
        arn = self.sfn.start_execution(
            stateMachineArn=self.state_machine_arn, name=name, input=json.dumps(execution_input)
        )["executionArn"]
        follower = _HistoryFollower(self, arn, on_event)
        self._follower = follower
        ended = self._end_event(arn)
        stopped = False
        try:
            while True:
                wait = poll_seconds if stopped else min(poll_seconds, deadline - time.monotonic())
                if ended.wait(max(0.0, wait)):
                    break
                if follower.reports:
                    follower.catch_up()
                if not stopped and time.monotonic() >= deadline:
                    self.sfn.stop_execution(executionArn=arn, error="LocalTimeout")
                    stopped = True
            desc = self.sfn.describe_execution(executionArn=arn)
            history = follower.catch_up()
        finally:
            self._follower = None
            self._on_map_event = None
        if desc["status"] == "RUNNING":  # the thread ended without recording a final status
            desc = {
                **desc,
                "status": "FAILED",
                "error": "LocalRunnerError",
                "cause": "moto's execution thread ended without a final status",
            }
        output = json.loads(desc["output"]) if desc.get("output") else None
        # A state may run many times (the Extract loop): state_outputs keeps its last output.
        exits = list(_exited_outputs(history))
        state_outputs = dict(exits)
        # Each failure path goes through a Pass state ("Extract failed", "Extract result
        # invalid", ...) whose output names the task and keeps its error; the first such output
        # is where the failure was decided (later states only carry it on).
        failed_state = None
        pass_out: dict[str, Any] = {}
        for _, out in exits:
            if "failed_state" in out and isinstance(out.get("error"), dict):
                failed_state, pass_out = out["failed_state"], out
                break
        # "Record failure" (and "Failure not recorded") keep $.error: the execution's own error
        # (the Fail state's) is the original one even when recording it failed.
        error = desc.get("error") or (pass_out.get("error") or {}).get("Error")
        cause = desc.get("cause") or (pass_out.get("error") or {}).get("Cause")
        if error == "States.Runtime" and _STATES_PREFIX_REFUSED in (cause or ""):
            # moto's Fail state refuses to re-raise a Step Functions error name it caught
            # (e.g. the map's States.ExceedToleratedFailureThreshold): report the caught one.
            error = (pass_out.get("error") or {}).get("Error") or error
            cause = (pass_out.get("error") or {}).get("Cause") or cause
        run_log = None
        for state in ("Failure not recorded", "Record failure"):
            if isinstance((state_outputs.get(state) or {}).get("run_log"), dict):
                run_log = state_outputs[state]["run_log"]
                break
        return ExecutionResult(
            status=desc["status"],
            execution_arn=arn,
            output=output,
            error=error,
            cause=cause,
            failed_state=failed_state,
            duration_s=time.monotonic() - started,
            alerts=self.alerts(),
            history=history,
            state_outputs=state_outputs,
            run_log=run_log,
        )

    def catch_up(self) -> None:
        """Report the running execution's history events not reported yet (from any thread).

        ``execute`` catches up before each Lambda invocation and every ``poll_seconds``; a
        handler (running in moto's execution thread) calls this before it prints progress of
        its own, so every earlier state's events come first. No-op outside ``execute``.
        """
        follower = self._follower
        if follower is not None and follower.reports:
            follower.catch_up()

    def _history(self, arn: str) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = []
        kwargs: dict[str, Any] = {"executionArn": arn, "maxResults": 1000}
        while True:
            resp = self.sfn.get_execution_history(**kwargs)
            events.extend(resp["events"])
            if not resp.get("nextToken"):
                return events
            kwargs["nextToken"] = resp["nextToken"]


class _HistoryFollower:
    """Turns an execution's history into StateEvents, each exactly once and in order."""

    def __init__(
        self,
        runner: LocalStepFunctions,
        arn: str,
        on_event: Callable[[StateEvent], None] | None,
    ) -> None:
        self._runner = runner
        self._arn = arn
        self._on_event = on_event
        self._seen = 0
        self._lock = threading.RLock()  # on_event may print, and printing may call back here
        self.history: list[dict[str, Any]] = []
        # Without a listener only the final history matters: no fetches while it runs.
        self.reports = on_event is not None

    def catch_up(self) -> list[dict[str, Any]]:
        """Fetch the history and report the events not reported yet; return the history."""
        with self._lock:
            history = self._runner._history(self._arn)
            self.history = history
            new, self._seen = history[self._seen :], max(self._seen, len(history))
            for ev in new:
                state_event = _to_state_event(ev, history)
                if state_event is not None and self._on_event is not None:
                    self._on_event(state_event)
            return history


def _exited_outputs(history: list[dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any]]]:
    """``(state name, output)`` for each StateExited event, in order (repeats included)."""
    for ev in history:
        details = ev.get("stateExitedEventDetails")
        if details and "output" in details:
            try:
                out = json.loads(details["output"])
            except json.JSONDecodeError:
                out = {"raw": details["output"]}
            yield details["name"], out if isinstance(out, dict) else {"value": out}


def _to_state_event(ev: dict[str, Any], history: list[dict[str, Any]]) -> StateEvent | None:
    etype = ev["type"]
    when = ev.get("timestamp")
    if etype.endswith("StateEntered"):
        return StateEvent("entered", ev["stateEnteredEventDetails"]["name"], timestamp=when)
    if etype.endswith("StateExited"):
        details = ev["stateExitedEventDetails"]
        try:
            out = json.loads(details.get("output") or "null")
        except json.JSONDecodeError:
            out = None
        detail = out if isinstance(out, dict) else {}
        return StateEvent("exited", details["name"], detail, timestamp=when)
    if etype in ("TaskFailed", "LambdaFunctionFailed"):
        details = ev.get("taskFailedEventDetails") or ev.get("lambdaFunctionFailedEventDetails")
        state = _state_of(ev, history)
        return StateEvent("failed", state, dict(details or {}), timestamp=when)
    return None


def _state_of(ev: dict[str, Any], history: list[dict[str, Any]]) -> str:
    """The name of the state an event belongs to (walk back to the last StateEntered)."""
    by_id = {e["id"]: e for e in history}
    cur = ev
    while cur is not None:
        details = cur.get("stateEnteredEventDetails")
        if details:
            return details["name"]
        cur = by_id.get(cur.get("previousEventId"))
    return "?"


# -- the Distributed Map, run locally (see the module docstring) ---------------------------------

# moto's message when a Fail state's ErrorPath names a ``States.*`` error.
_STATES_PREFIX_REFUSED = "Custom Error Names MUST NOT begin with the prefix 'States.'"
# The error a Map Run fails with past its tolerated failures (Step Functions' "Error names").
TOLERATED_FAILURE_ERROR = "States.ExceedToleratedFailureThreshold"
# Map-state fields the local function carries over to the Task that replaces the Map.
_KEPT_FIELDS = (
    "Comment",
    "InputPath",
    "ResultPath",
    "ResultSelector",
    "OutputPath",
    "Retry",
    "Catch",
    "Next",
    "End",
    "TimeoutSeconds",
)


class MapRunError(Exception):
    """A Map Run failure; ``error`` is the Step Functions error name it is reported under."""

    def __init__(self, error: str, message: str) -> None:
        super().__init__(message)
        self.error = error


class LocalMapError(Exception):
    """The Map state asks for something the local runner does not do (see the module docstring)."""


def _named_error(error: str, message: str) -> Exception:
    # Lambda reports an unhandled exception's class name as the error: give it the AWS name.
    return type(error, (Exception,), {})(message)


@dataclass
class MapEvent:
    """Progress of a Distributed Map run locally.

    ``kind``: ``"started"`` (``batches``, ``items`` known), ``"batch_started"`` or
    ``"batch_done"`` (``index`` 0-based, ``batch_items``; for done: ``status`` SUCCEEDED |
    FAILED | ABORTED | TIMED_OUT, ``output`` the child's output, ``error``/``cause``).
    """

    kind: str
    state: str
    batches: int
    items: int
    index: int | None = None
    batch_items: list[Any] = field(default_factory=list)
    status: str | None = None
    output: Any = None
    error: str | None = None
    cause: str | None = None


def distributed_map_states(asl: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """The top-level states of ``asl`` that are Distributed Maps, by name."""
    return {
        name: state
        for name, state in asl.get("States", {}).items()
        if state.get("Type") == "Map"
        and (state.get("ItemProcessor") or {}).get("ProcessorConfig", {}).get("Mode")
        == "DISTRIBUTED"
    }


def localize_distributed_maps(
    asl: Mapping[str, Any], function_arn: str
) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """``(definition, maps)``: ``asl`` with each Distributed Map state replaced by a Task on the
    local map function ``function_arn`` (its flow fields kept), and the replaced states by name.

    The Task's input is ``{"map_state": name, "input": <state input>, "execution": {...}}``; its
    result is what the Map's would be (then ``ResultSelector``/``ResultPath`` apply as written).
    """
    maps = distributed_map_states(asl)
    states = dict(asl["States"])
    for name, state in maps.items():
        task: dict[str, Any] = {
            "Type": "Task",
            "Resource": function_arn,
            "Parameters": {
                "map_state": name,
                "input.$": "$",
                "execution": {"name.$": "$$.Execution.Name", "id.$": "$$.Execution.Id"},
            },
        }
        task.update({k: state[k] for k in _KEPT_FIELDS if k in state})
        states[name] = task
    return {**asl, "States": states}, maps


def resolve_path(path: str, data: Any, field_name: str) -> Any:
    """The value at a plain JSONPath ``$``, ``$.a.b`` in ``data``.

    Raises MapRunError (``States.Runtime``) naming ``field_name`` when it does not resolve, and
    LocalMapError for anything but dotted member names (filters, indexes, ``$$``, intrinsics).
    """
    if path == "$":
        return data
    if not path.startswith("$.") or any(c in path for c in "[]*?()'\" "):
        raise LocalMapError(f"{field_name}: the local runner resolves only $.a.b paths: {path!r}")
    value = data
    for part in path[2:].split("."):
        if not isinstance(value, dict) or part not in value:
            raise MapRunError(
                "States.Runtime",
                f"{field_name}: the JSONPath {path!r} could not be found in the state input",
            )
        value = value[part]
    return value


def resolve_template(template: Any, data: Any, field_name: str) -> Any:
    """A Parameters-style template with ``"key.$": "$.path"`` members resolved against ``data``."""
    if isinstance(template, dict):
        out: dict[str, Any] = {}
        for key, value in template.items():
            if key.endswith(".$"):
                if not isinstance(value, str):
                    raise LocalMapError(f"{field_name}.{key}: a path must be a string")
                out[key[:-2]] = resolve_path(value, data, f"{field_name}.{key}")
            else:
                out[key] = resolve_template(value, data, f"{field_name}.{key}")
        return out
    if isinstance(template, list):
        return [resolve_template(v, data, field_name) for v in template]
    return template


def _number(state: Mapping[str, Any], name: str, data: Any, default: float) -> float:
    """``state[name]`` or the value at ``state[name + "Path"]`` (a number), else ``default``."""
    if name in state:
        value = state[name]
    elif f"{name}Path" in state:
        value = resolve_path(state[f"{name}Path"], data, f"{name}Path")
    else:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise MapRunError("States.Runtime", f"{name} must be a number >= 0, got {value!r}")
    return value


def _iso(value: Any) -> str | None:
    return value.isoformat() if isinstance(value, datetime) else None


class DistributedMap:
    """One Distributed Map state, run by the local runner (module docstring: what differs)."""

    def __init__(
        self, runner: LocalStepFunctions, state_name: str, state: Mapping[str, Any]
    ) -> None:
        unsupported = [k for k in ("ItemSelector", "ItemsPath", "Parameters") if k in state]
        reader = state.get("ItemReader") or {}
        config = reader.get("ReaderConfig") or {}
        if config.get("InputType", "JSON") != "JSON" or "MaxItems" in config:
            unsupported.append("ItemReader.ReaderConfig (only InputType JSON, no MaxItems)")
        if reader and reader.get("Resource") != "arn:aws:states:::s3:getObject":
            unsupported.append(f"ItemReader.Resource {reader.get('Resource')!r}")
        if unsupported:
            raise LocalMapError(f"Map state {state_name!r}: not run locally: {unsupported}")
        self.runner = runner
        self.state_name = state_name
        self.state = dict(state)
        processor = dict(state["ItemProcessor"])
        processor.pop("ProcessorConfig", None)
        safe = "".join(c if c.isalnum() or c in "-_" else "-" for c in state_name)
        self.child_name = f"{runner.state_machine_name}-{safe}-items"[:80]
        self.child_arn = runner.sfn.create_state_machine(
            name=self.child_name, definition=json.dumps(processor), roleArn=runner.role_arn
        )["stateMachineArn"]

    def _storage(self, bucket: Any) -> Any:
        from functions.common.storage import storage_from_env

        storage = storage_from_env()
        if bucket != storage.bucket:
            raise MapRunError(
                "States.Runtime", f"bucket {bucket!r} is not the lake's ({storage.bucket!r})"
            )
        return storage

    def _items(self, data: Any) -> list[Any]:
        reader = self.state.get("ItemReader")
        if reader is None:
            raise LocalMapError(f"Map state {self.state_name!r}: no ItemReader")
        params = resolve_template(reader.get("Parameters") or {}, data, "ItemReader.Parameters")
        storage = self._storage(params.get("Bucket"))
        body = storage.get_bytes(str(params.get("Key")))
        try:
            items = json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise MapRunError(
                "States.ItemReaderFailed", f"{params.get('Key')} is not valid JSON: {exc}"
            ) from None
        if not isinstance(items, list):
            raise MapRunError("States.ItemReaderFailed", f"{params.get('Key')} is not an array")
        return items

    def _batches(self, items: list[Any], data: Any) -> list[dict[str, Any]]:
        batcher = self.state.get("ItemBatcher")
        if batcher is None:
            return list(items)
        size = int(_number(batcher, "MaxItemsPerBatch", data, 0)) or len(items) or 1
        batch_input = resolve_template(batcher.get("BatchInput") or {}, data, "BatchInput")
        return [
            {"Items": items[i : i + size], **({"BatchInput": batch_input} if batch_input else {})}
            for i in range(0, len(items), size)
        ]

    def run(
        self,
        data: Any,
        execution: Mapping[str, Any],
        on_event: Callable[[MapEvent], None] | None = None,
    ) -> Any:
        """Run the items of the map for the state input ``data``; return the Map's result.

        Raises MapRunError / LocalMapError (reported as the Task's error, named as on AWS).
        """
        try:
            return self._run(data, execution, on_event)
        except MapRunError as exc:
            raise _named_error(exc.error, str(exc)) from None

    def _run(
        self,
        data: Any,
        execution: Mapping[str, Any],
        on_event: Callable[[MapEvent], None] | None,
    ) -> Any:
        sfn = self.runner.sfn
        items = self._items(data)
        inputs = self._batches(items, data)
        batched = "ItemBatcher" in self.state
        sizes = [len(b["Items"]) if batched else 1 for b in inputs]
        concurrency = int(_number(self.state, "MaxConcurrency", data, 0)) or len(inputs) or 1
        tolerated_pct = _number(self.state, "ToleratedFailurePercentage", data, 0)
        tolerated_count = _number(self.state, "ToleratedFailureCount", data, 0)
        run_id = str(uuid.uuid4())
        label = self.state.get("Label", self.state_name)
        map_run_arn = (
            f"arn:aws:states:{REGION}:{ACCOUNT}:mapRun:"
            f"{self.runner.state_machine_name}/{label}:{run_id}"
        )

        def emit(event: MapEvent) -> None:
            if on_event is not None:
                on_event(event)

        emit(MapEvent("started", self.state_name, len(inputs), len(items)))
        records: list[dict[str, Any] | None] = [None] * len(inputs)
        running: dict[str, int] = {}
        next_index, failed_items = 0, 0
        exceeded = False
        while next_index < len(inputs) or running:
            while not exceeded and next_index < len(inputs) and len(running) < concurrency:
                index = next_index
                next_index += 1
                name = f"{index:05d}-{uuid.uuid4().hex[:16]}"
                arn = sfn.start_execution(
                    stateMachineArn=self.child_arn, name=name, input=json.dumps(inputs[index])
                )["executionArn"]
                running[arn] = index
                emit(
                    MapEvent(
                        "batch_started",
                        self.state_name,
                        len(inputs),
                        len(items),
                        index=index,
                        batch_items=inputs[index]["Items"] if batched else [inputs[index]],
                    )
                )
            if not running:
                break
            for arn in self.runner.wait_any(list(running), timeout=1.0):
                index = running.pop(arn)
                desc = sfn.describe_execution(executionArn=arn)
                record = {
                    "ExecutionArn": arn,
                    "Input": json.dumps(inputs[index]),
                    "InputDetails": {"Included": True},
                    "Name": desc.get("name"),
                    "Output": desc.get("output"),
                    "OutputDetails": {"Included": desc.get("output") is not None},
                    "RedriveCount": 0,
                    "RedriveStatus": "NOT_REDRIVABLE",
                    "RedriveStatusReason": "Execution is SUCCEEDED and cannot be redriven"
                    if desc["status"] == "SUCCEEDED"
                    else "Local runner: redrive not supported",
                    "StartDate": _iso(desc.get("startDate")),
                    "StateMachineArn": self.child_arn,
                    "Status": desc["status"],
                    "StopDate": _iso(desc.get("stopDate")),
                }
                if desc["status"] != "SUCCEEDED":
                    record["Error"] = desc.get("error")
                    record["Cause"] = desc.get("cause")
                    failed_items += sizes[index]
                records[index] = record
                output = json.loads(desc["output"]) if desc.get("output") else None
                emit(
                    MapEvent(
                        "batch_done",
                        self.state_name,
                        len(inputs),
                        len(items),
                        index=index,
                        batch_items=inputs[index]["Items"] if batched else [inputs[index]],
                        status=desc["status"],
                        output=output,
                        error=desc.get("error"),
                        cause=desc.get("cause"),
                    )
                )
                over_pct = items and failed_items * 100.0 / len(items) > tolerated_pct
                if failed_items and (over_pct and failed_items > tolerated_count):
                    exceeded = True
            if not exceeded and self._parent_stopped(execution):
                exceeded = True  # stop starting children; the running ones finish
        if exceeded:
            if failed_items:
                raise MapRunError(
                    TOLERATED_FAILURE_ERROR,
                    f"The specified tolerated failure threshold was exceeded: {failed_items} of"
                    f" {len(items)} items failed (tolerated {tolerated_pct:g}%,"
                    f" {tolerated_count:g} items)",
                )
            raise MapRunError("States.Runtime", "the execution was stopped")
        done = [r for r in records if r is not None]
        if "ResultWriter" not in self.state:
            return [json.loads(r["Output"]) if r.get("Output") else None for r in done]
        return self._write_results(data, map_run_arn, run_id, done)

    def _parent_stopped(self, execution: Mapping[str, Any]) -> bool:
        arn = execution.get("id")
        if not isinstance(arn, str):
            return False
        try:
            status = self.runner.sfn.describe_execution(executionArn=arn)["status"]
        except Exception:  # not an execution moto knows: keep going
            return False
        return status != "RUNNING"

    def _write_results(
        self, data: Any, map_run_arn: str, run_id: str, records: list[dict[str, Any]]
    ) -> dict[str, Any]:
        writer = self.state["ResultWriter"]
        if writer.get("Resource") != "arn:aws:states:::s3:putObject":
            raise LocalMapError(f"ResultWriter.Resource {writer.get('Resource')!r}")
        params = resolve_template(writer.get("Parameters") or {}, data, "ResultWriter.Parameters")
        storage = self._storage(params.get("Bucket"))
        prefix = str(params.get("Prefix") or "")
        if prefix and not prefix.endswith("/"):
            prefix += "/"
        base = f"{prefix}{run_id}/"
        files: dict[str, list[dict[str, Any]]] = {"FAILED": [], "PENDING": [], "SUCCEEDED": []}
        for status, wanted in (("SUCCEEDED", {"SUCCEEDED"}), ("FAILED", None)):
            chosen = [
                r
                for r in records
                if (r["Status"] in wanted if wanted else r["Status"] != "SUCCEEDED")
            ]
            if not chosen:
                continue
            key = f"{base}{status}_0.json"
            body = json.dumps(chosen).encode()
            storage.put_bytes(key, body, "application/json")
            files[status].append({"Key": key, "Size": len(body)})
        manifest_key = f"{base}manifest.json"
        manifest = {
            "DestinationBucket": storage.bucket,
            "MapRunArn": map_run_arn,
            "ResultFiles": files,
        }
        storage.put_bytes(manifest_key, json.dumps(manifest).encode(), "application/json")
        return {
            "MapRunArn": map_run_arn,
            "ResultWriterDetails": {"Bucket": storage.bucket, "Key": manifest_key},
        }
