"""The definition's deadline loop: Extract -> "Extract done?" -> Extract … until ``done``, run by
moto's Step Functions interpreter with stand-in handlers (the real ones: test_extract_loop.py and
tests/integration/test_full_market.py)."""

from __future__ import annotations

import json
from typing import Any

from state_machine import definition
from state_machine.local_runner import LocalStepFunctions, StateEvent


def _handlers(results: list[dict[str, Any]]):
    seen: list[tuple[str, dict[str, Any]]] = []
    pending = list(results)

    def extract(event: dict[str, Any], context: Any) -> dict[str, Any]:
        seen.append(("extract", event))
        return pending.pop(0)

    def transform(event: dict[str, Any], context: Any) -> dict[str, Any]:
        seen.append(("transform", event))
        return {**event, "row_count": event["coin_count"]}

    def load(event: dict[str, Any], context: Any) -> dict[str, Any]:
        seen.append(("load", event))
        return {**event, "rows_inserted": event["row_count"]}

    return {"extract": extract, "transform": transform, "load": load}, seen


def test_the_choice_state_loops_back_to_extract_until_done():
    states = json.loads(definition.definition_template())["States"]
    assert states["Extract"]["Next"] == "Extract done?"
    assert states["Extract"]["Parameters"]["Payload"]["input.$"] == "$$.Execution.Input"
    choice = states["Extract done?"]
    assert choice["Type"] == "Choice"
    assert {c["Next"] for c in choice["Choices"]} == {"Transform", "Extract"}
    assert choice["Default"] == "Extract result invalid"


def test_extract_is_invoked_again_with_the_execution_input_until_done():
    results = [
        {"done": False, "next_page": 4, "pages": 3, "coin_count": 300, "invocations": 1},
        {"done": False, "next_page": 7, "pages": 6, "coin_count": 600, "invocations": 2},
        {"done": True, "next_page": None, "pages": 8, "coin_count": 777, "invocations": 3},
    ]
    handlers, seen = _handlers(results)
    events: list[StateEvent] = []
    with LocalStepFunctions(handlers, retry_sleep=lambda s: None) as sfn:
        result = sfn.execute({"max_coins": "all"}, name="loop-1", on_event=events.append)
    assert result.status == "SUCCEEDED", result
    assert [name for name, _ in seen] == ["extract"] * 3 + ["transform", "load"]
    # Every invocation gets the execution's input, not the previous invocation's output.
    for _, event in seen[:3]:
        assert event["input"] == {"max_coins": "all"}
        assert event["execution"]["name"] == "loop-1"
    assert seen[3][1] == results[2]  # Transform receives the finished extract's contract
    assert result.output["rows_inserted"] == 777
    entered = [e.state for e in events if e.kind == "entered"]
    assert entered == ["Extract", "Extract done?"] * 3 + ["Transform", "Load", "Succeeded"]


def test_an_extract_result_without_done_fails_with_an_alert():
    handlers, seen = _handlers([{"pages": 3, "coin_count": 300}])
    with LocalStepFunctions(handlers, retry_sleep=lambda s: None) as sfn:
        result = sfn.execute({}, name="loop-2")
    assert result.status == "FAILED"
    assert result.error == "ExtractContractError"
    # Neither Transform nor Load ran; the load function was invoked only to record the failure
    # with the counts the invalid result held.
    assert [name for name, _ in seen] == ["extract", "load"]
    assert seen[1][1]["action"] == "record_failure"
    assert seen[1][1]["state_input"] == {"pages": 3, "coin_count": 300}
    [alert] = result.alerts
    assert alert["failed_state"] == "Extract"
    assert alert["error"] == "ExtractContractError"
