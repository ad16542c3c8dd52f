"""LocalStepFunctions.execute waits on the execution's end: progress, loops, timeouts.

Real moto interpreter, real definition, in-process handlers; no timing thresholds.
"""

from __future__ import annotations

import math
import threading
import time
from typing import Any

import pytest

from state_machine.local_runner import LocalStepFunctions, StateEvent, _to_state_event


def _pipeline(extract_runs: int = 1, extract_sleep: float = 0.0):
    """Handlers whose Extract answers ``done: false`` until its ``extract_runs``-th call."""
    seen: list[tuple[str, dict[str, Any], int]] = []  # (function, event, remaining ms)

    def extract(event: dict[str, Any], context: Any) -> dict[str, Any]:
        seen.append(("extract", event, context.get_remaining_time_in_millis()))
        time.sleep(extract_sleep)
        runs = sum(1 for name, _, _ in seen if name == "extract")
        return {"snapshot_id": "s-1", "pages": runs, "done": runs >= extract_runs}

    def transform(event: dict[str, Any], context: Any) -> dict[str, Any]:
        seen.append(("transform", event, context.get_remaining_time_in_millis()))
        return {**event, "row_count": 10 * event["pages"]}

    def load(event: dict[str, Any], context: Any) -> dict[str, Any]:
        seen.append(("load", event, context.get_remaining_time_in_millis()))
        return {**event, "rows_inserted": event["row_count"]}

    return {"extract": extract, "transform": transform, "load": load}, seen


def _kinds(events: list[StateEvent]) -> list[tuple[str, str]]:
    return [(e.kind, e.state) for e in events]


def test_each_state_event_is_reported_once_in_history_order_and_the_result_is_unchanged():
    events: list[StateEvent] = []
    results = []
    for on_event in (events.append, None):
        handlers, _ = _pipeline()
        with LocalStepFunctions(handlers) as sfn:
            results.append(sfn.execute({}, name="same", on_event=on_event))
    followed, quiet = results
    assert followed.status == quiet.status == "SUCCEEDED"
    assert (
        followed.output
        == quiet.output
        == {
            "snapshot_id": "s-1",
            "pages": 1,
            "done": True,
            "row_count": 10,
            "rows_inserted": 10,
        }
    )
    assert followed.state_outputs == quiet.state_outputs
    expected = [
        ev for raw in followed.history if (ev := _to_state_event(raw, followed.history)) is not None
    ]
    assert _kinds(events) == _kinds(expected)
    assert _kinds(events) == [
        ("entered", "Extract"),
        ("exited", "Extract"),
        ("entered", "Extract done?"),
        ("exited", "Extract done?"),
        ("entered", "Transform"),
        ("exited", "Transform"),
        ("entered", "Load"),
        ("exited", "Load"),
        ("entered", "Succeeded"),
        ("exited", "Succeeded"),
    ]


def test_a_looping_extract_is_reported_on_every_pass_and_its_last_output_kept():
    handlers, seen = _pipeline(extract_runs=3)
    events: list[StateEvent] = []
    with LocalStepFunctions(handlers) as sfn:
        result = sfn.execute({"max_coins": "all"}, name="loop", on_event=events.append)
    assert result.status == "SUCCEEDED", result
    assert [name for name, _, _ in seen] == ["extract"] * 3 + ["transform", "load"]
    # Every pass gets the execution's input, not the previous pass's output.
    assert all(event["input"] == {"max_coins": "all"} for name, event, _ in seen[:3])
    entered = [e.state for e in events if e.kind == "entered"]
    assert entered == ["Extract", "Extract done?"] * 3 + ["Transform", "Load", "Succeeded"]
    assert [e.detail.get("done") for e in events if _kinds([e]) == [("exited", "Extract")]] == [
        False,
        False,
        True,
    ]
    assert result.state_outputs["Extract"] == {"snapshot_id": "s-1", "pages": 3, "done": True}
    assert result.output == {
        **result.state_outputs["Extract"],
        "row_count": 30,
        "rows_inserted": 30,
    }
    assert result.failed_state is None


def test_an_extract_without_done_fails_as_the_contract_pass_state_says():
    handlers, seen = _pipeline()
    handlers["extract"] = lambda event, context: {"snapshot_id": "s-1"}
    with LocalStepFunctions(handlers) as sfn:
        result = sfn.execute({}, name="no-done")
    assert result.status == "FAILED"
    assert result.failed_state == "Extract"
    assert result.error == "ExtractContractError"
    assert "done" in (result.cause or "")
    assert [a["failed_state"] for a in result.alerts] == ["Extract"]
    # No Transform or Load: only the "Record failure" step invoked the load function.
    [(function, event, _)] = seen
    assert (function, event["action"], event["failed_state"]) == (
        "load",
        "record_failure",
        "Extract",
    )
    assert event["state_input"] == {"snapshot_id": "s-1"}


def test_progress_comes_before_each_handler_runs_without_polling_and_the_handler_is_left_alone():
    """With a wake-up interval far longer than the run, every event still arrives in time:
    the states entered so far are reported before each handler starts, and while a handler
    runs the runner does not read the execution from another thread."""
    handlers, _ = _pipeline(extract_sleep=0.3)
    events: list[StateEvent] = []
    reported_at_start: dict[str, list[tuple[str, str]]] = {}
    main_thread_reads: list[str] = []  # history reads by execute while a handler runs
    running = threading.Event()

    def watching(name: str, handler: Any) -> Any:
        def run(event: dict[str, Any], context: Any) -> dict[str, Any]:
            reported_at_start[name] = _kinds(events)
            running.set()
            try:
                return handler(event, context)
            finally:
                running.clear()

        return run

    handlers = {name: watching(name, h) for name, h in handlers.items()}
    with LocalStepFunctions(handlers) as sfn:
        real_history = sfn._history

        def history(arn: str) -> list[dict[str, Any]]:
            if running.is_set() and threading.current_thread() is threading.main_thread():
                main_thread_reads.append(threading.current_thread().name)
            return real_history(arn)

        sfn._history = history  # type: ignore[method-assign]
        result = sfn.execute({}, name="quiet-wait", on_event=events.append, poll_seconds=60)
    assert result.status == "SUCCEEDED", result
    assert reported_at_start["extract"] == [("entered", "Extract")]
    assert reported_at_start["transform"][-3:] == [
        ("entered", "Extract done?"),
        ("exited", "Extract done?"),
        ("entered", "Transform"),
    ]
    assert reported_at_start["load"][-2:] == [("exited", "Transform"), ("entered", "Load")]
    assert main_thread_reads == []
    assert _kinds(events)[-1] == ("exited", "Succeeded")


def test_past_its_timeout_the_execution_is_stopped_once_the_running_handler_returns():
    handlers, seen = _pipeline(extract_sleep=1.0)
    events: list[StateEvent] = []
    with LocalStepFunctions(handlers) as sfn:
        result = sfn.execute({}, name="too-slow", on_event=events.append, timeout_seconds=0.2)
    assert result.status == "ABORTED"
    assert [name for name, _, _ in seen] == ["extract"]
    assert result.output is None
    assert ("entered", "Transform") not in _kinds(events)


def test_a_configured_lambda_timeout_is_what_the_handler_counts_down_from():
    handlers, seen = _pipeline()
    with LocalStepFunctions(handlers, timeouts={"extract": 3}) as sfn:
        assert sfn.timeouts == {"extract": 3, "transform": 300, "load": 600}
        result = sfn.execute({}, name="short-extract")
    assert result.status == "SUCCEEDED", result
    remaining = {name: ms for name, _, ms in seen}
    assert 0 < remaining["extract"] <= 3000
    assert 3000 < remaining["transform"] <= 300_000
    assert 300_000 < remaining["load"] <= 600_000


@pytest.mark.parametrize("bad", [0, -1, math.nan, math.inf, "3", True])
def test_a_lambda_timeout_that_is_not_a_positive_number_of_seconds_is_refused(bad: Any):
    with pytest.raises(ValueError, match="extract"):
        LocalStepFunctions({}, timeouts={"extract": bad})
