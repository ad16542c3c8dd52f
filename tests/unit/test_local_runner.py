"""The ASL definition is well formed, and local mode really executes it under moto.

These tests guard the one patch local mode relies on (moto's Docker-less Lambda backend
``invoke``): if a moto upgrade changes it, they fail instead of local mode silently running
canned Lambda responses.
"""

from __future__ import annotations

import inspect
import json
from typing import Any

import pytest

from functions.common.errors import LoadError, SourceError
from state_machine import definition
from state_machine.local_runner import LocalStepFunctions, StateEvent


def _targets(state: dict[str, Any]) -> list[str]:
    out = [state["Next"]] if "Next" in state else []
    out += [c["Next"] for c in state.get("Catch", [])]
    out += [c["Next"] for c in state.get("Choices", [])]
    if "Default" in state:
        out.append(state["Default"])
    return out


def test_definition_targets_exist_and_every_state_is_reachable():
    asl = json.loads(definition.definition_template())
    states = asl["States"]
    assert asl["StartAt"] in states
    for name, state in states.items():
        for target in _targets(state):
            assert target in states, f"{name} -> {target} does not exist"
    seen, todo = set(), [asl["StartAt"]]
    while todo:
        cur = todo.pop()
        if cur not in seen:
            seen.add(cur)
            todo.extend(_targets(states[cur]))
    assert seen == set(states), f"unreachable: {set(states) - seen}"


def test_every_task_has_retry_and_catch_to_the_alert_path():
    states = json.loads(definition.definition_template())["States"]
    for name in ("Extract", "Transform", "Load"):
        task = states[name]
        assert task["Retry"][0]["ErrorEquals"], name
        catch = task["Catch"][0]
        assert catch["ErrorEquals"] == ["States.ALL"]
        assert catch["ResultPath"] == "$.error"
        assert states[catch["Next"]]["Next"] == "Record failure"
    assert states["Extract result invalid"]["Next"] == "Record failure"
    record = states["Record failure"]
    # The recording's result and error go to $.run_log only: $.error stays the original one.
    assert record["ResultPath"] == "$.run_log"
    assert record["Catch"] == [
        {"ErrorEquals": ["States.ALL"], "ResultPath": "$.run_log", "Next": "Failure not recorded"}
    ]
    assert record["Next"] == "Notify failure"
    assert states["Failure not recorded"]["ResultPath"] == "$.run_log"
    assert states["Failure not recorded"]["Next"] == "Notify failure"
    assert states["Notify failure"]["Resource"] == "arn:aws:states:::sns:publish"
    assert states["Notify failure"]["Next"] == "Failed"
    assert states["Failed"]["Type"] == "Fail"


# The transient Lambda service errors AWS says to retry ("Handle Lambda service exceptions",
# https://docs.aws.amazon.com/step-functions/latest/dg/bp-lambda-serviceexception.html), plus
# Lambda's throttling error, which the same page names when the invocation limit is hit.
TRANSIENT_LAMBDA_ERRORS = {
    "Lambda.ClientExecutionTimeoutException",
    "Lambda.ServiceException",
    "Lambda.AWSLambdaException",
    "Lambda.SdkClientException",
    "Lambda.TooManyRequestsException",
}


def test_every_lambda_task_retries_exactly_the_transient_lambda_errors():
    states = json.loads(definition.definition_template())["States"]
    lambda_tasks = {
        name: state
        for name, state in states.items()
        if state.get("Resource", "").startswith("arn:aws:states:::lambda:invoke")
    }
    assert {"Extract", "Transform", "Load"} <= set(lambda_tasks)
    for name, task in lambda_tasks.items():
        retried = [error for retrier in task.get("Retry", []) for error in retrier["ErrorEquals"]]
        # Exactly these: the functions' own typed errors (and timeouts) must not be retried.
        assert sorted(retried) == sorted(TRANSIENT_LAMBDA_ERRORS), name


def test_placeholders_match_the_documented_substitutions():
    assert definition.placeholders() == set(definition.SUBSTITUTIONS)
    with pytest.raises(KeyError, match="missing"):
        definition.render({"ExtractFunctionArn": "x"})
    with pytest.raises(KeyError, match="unknown"):
        definition.render({**dict.fromkeys(definition.SUBSTITUTIONS, "x"), "Bogus": "y"})
    rendered = definition.render_dict({k: f"arn:{k}" for k in definition.SUBSTITUTIONS})
    assert rendered["States"]["Load"]["Parameters"]["FunctionName"] == "arn:LoadFunctionArn"


def test_moto_lambda_backend_still_has_the_patched_signature():
    from moto.awslambda_simple.models import LambdaSimpleBackend

    params = list(inspect.signature(LambdaSimpleBackend.invoke).parameters)
    assert params == ["self", "function_name", "qualifier", "body", "headers", "response_headers"]


def test_moto_still_runs_each_execution_in_the_method_the_runner_wraps():
    """execute waits on the end of ExecutionWorker._execution_logic (signal_execution_end):
    it must still be what the execution thread runs, and record the final status itself."""
    from moto.stepfunctions.parser.backend.execution_worker import ExecutionWorker

    assert list(inspect.signature(ExecutionWorker._execution_logic).parameters) == ["self"]
    assert "Thread(target=self._execution_logic" in inspect.getsource(ExecutionWorker.start)
    logic = inspect.getsource(ExecutionWorker._execution_logic)
    assert 0 <= logic.index("program.eval(") < logic.index(".terminated()")


def test_the_end_signal_names_the_execution_and_comes_with_its_final_status():
    from state_machine.local_runner import signal_execution_end

    handlers, _ = _handlers()
    ended: list[tuple[str, str]] = []
    with LocalStepFunctions(handlers, retry_sleep=lambda s: None) as sfn:

        def on_end(arn: str) -> None:
            ended.append((arn, sfn.sfn.describe_execution(executionArn=arn)["status"]))

        with signal_execution_end(on_end):
            result = sfn.execute({}, name="exec-signal")
    assert ended == [(result.execution_arn, "SUCCEEDED")]


def _handlers(fail_in: str | None = None, error: type[Exception] = SourceError):
    seen: list[tuple[str, dict[str, Any]]] = []

    def extract(event: dict[str, Any], context: Any) -> dict[str, Any]:
        seen.append(("extract", event))
        if fail_in == "extract":
            raise error("page 2 kept failing")
        name = event["execution"]["name"]
        return {
            "snapshot_id": event["input"].get("snapshot_id", name),
            "coin_count": 7,
            "done": True,
        }

    def transform(event: dict[str, Any], context: Any) -> dict[str, Any]:
        seen.append(("transform", event))
        if fail_in == "transform":
            raise error("bad rows")
        return {**event, "row_count": event["coin_count"] - 1}

    def load(event: dict[str, Any], context: Any) -> dict[str, Any]:
        if event.get("action") == "record_failure":  # the "Record failure" step
            seen.append(("record_failure", event))
            return {"recorded": True, "table": "DB.PUBLIC.ETL_RUNS"}
        seen.append(("load", event))
        assert context.get_remaining_time_in_millis() > 0
        if fail_in == "load":
            raise error("warehouse said no")
        return {**event, "rows_inserted": event["row_count"]}

    return {"extract": extract, "transform": transform, "load": load}, seen


def test_local_execution_dispatches_each_task_to_the_real_handler():
    handlers, seen = _handlers()
    events: list[StateEvent] = []
    with LocalStepFunctions(handlers, retry_sleep=lambda s: None) as sfn:
        result = sfn.execute({"max_coins": 7}, name="exec-1", on_event=events.append)
    assert result.status == "SUCCEEDED", result
    assert result.output == {
        "snapshot_id": "exec-1",
        "coin_count": 7,
        "done": True,
        "row_count": 6,
        "rows_inserted": 6,
    }
    assert [s for s, _ in seen] == ["extract", "transform", "load"]
    extract_event = seen[0][1]
    assert extract_event["input"] == {"max_coins": 7}
    assert extract_event["execution"]["name"] == "exec-1"
    assert extract_event["execution"]["id"].endswith(":exec-1")
    assert extract_event["execution"]["start_time"]
    entered = [e.state for e in events if e.kind == "entered"]
    assert entered == ["Extract", "Extract done?", "Transform", "Load", "Succeeded"]
    assert result.alerts == []


@pytest.mark.parametrize("state", ["extract", "transform", "load"])
def test_a_failing_task_publishes_an_alert_and_fails_the_execution(state: str):
    handlers, seen = _handlers(fail_in=state, error=LoadError)
    with LocalStepFunctions(handlers, retry_sleep=lambda s: None) as sfn:
        result = sfn.execute({}, name=f"exec-{state}")
    assert result.status == "FAILED"
    assert result.error == "LoadError"
    assert result.failed_state == state.capitalize()
    # The failing task ran once (our errors are not retried by the state machine), the states
    # after it never ran, and the failure was recorded once.
    assert [s for s, _ in seen][-2:] == [state, "record_failure"]
    assert [s for s, _ in seen].count(state) == 1
    assert result.run_log == {"recorded": True, "table": "DB.PUBLIC.ETL_RUNS"}
    assert len(result.alerts) == 1
    alert = result.alerts[0]
    assert alert["failed_state"] == state.capitalize()
    assert alert["error"] == "LoadError"
    assert json.loads(alert["cause"])["errorType"] == "LoadError"
    assert alert["execution"] == result.execution_arn
    assert alert["run_log"] == {"recorded": True, "table": "DB.PUBLIC.ETL_RUNS"}


def test_a_result_lambda_could_not_serialise_fails_like_on_aws():
    handlers, _ = _handlers()
    handlers["transform"] = lambda event, context: {**event, "ratio": float("nan")}
    with LocalStepFunctions(handlers, retry_sleep=lambda s: None) as sfn:
        result = sfn.execute({}, name="exec-nan")
    assert result.status == "FAILED"
    assert result.failed_state == "Transform"
    assert result.error == "Runtime.MarshalError"
