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
from state_machine.definition import render

REGION = "us-east-1"
ACCOUNT = "123456789012"
STATE_MACHINE_NAME = "crypto-etl-pipeline"
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
    ) -> None:
        """``handlers``: function name -> handler (default: the real ones); ``env``: extra
        environment variables while deployed; ``retry_sleep``: replaces the interpreter's
        sleep between Retry attempts (seconds); ``timeouts``: Lambda timeouts in seconds for
        the functions named, overriding ``FUNCTION_TIMEOUTS`` (ValueError if not > 0)."""
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
            handlers = self._handlers if self._handlers is not None else default_handlers()
            self.invocations = stack.enter_context(
                dispatch_lambda_in_process(handlers, self.timeouts, on_invoke=self.catch_up)
            )
            stack.enter_context(signal_execution_end(lambda arn: self._end_event(arn).set()))
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
        self.definition = render(subs)
        self.state_machine_arn = self.sfn.create_state_machine(
            name=STATE_MACHINE_NAME, definition=self.definition, roleArn=role_arn
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

    def execute(
        self,
        execution_input: Mapping[str, Any],
        name: str | None = None,
        on_event: Callable[[StateEvent], None] | None = None,
        poll_seconds: float = 0.5,
        timeout_seconds: float = 3600.0,
    ) -> ExecutionResult:
        """Start an execution and follow it to the end, reporting progress per state.

        Waits on the execution thread's end rather than polling. With ``on_event``, the
        history is caught up (``on_event`` called for each new state event, in order, a state
        that runs again reported again) before each Lambda invocation, every ``poll_seconds``
        while waiting, and at the end. Past ``timeout_seconds`` the execution is stopped
        (status ABORTED once the running handler returns: an in-process handler cannot be
        interrupted). ``state_outputs`` holds each state's last output.
        """
        started = time.monotonic()
        deadline = started + timeout_seconds
        name = name or f"local-{uuid.uuid4().hex[:12]}"
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
