"""Oversized or malformed execution input is refused by the Extract's ``parse_event`` (the first
state) with a ValidationError naming the field, before anything is fetched, stored or logged;
and under moto the real definition fails such an execution at Extract with one alert."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from functions.common.errors import ValidationError
from functions.extract import handler as extract
from local_mode.replay_server import ReplayServer
from state_machine.local_runner import LocalStepFunctions

EXECUTION = {
    "name": "exec-0001",
    "id": "arn:aws:states:us-east-1:123456789012:execution:crypto-etl:exec-0001",
    "start_time": "2024-05-01T23:59:58.123Z",
}


def event(data: Any) -> dict[str, Any]:
    return {"input": data, "execution": dict(EXECUTION)}


def refused(data: Any) -> ValidationError:
    with pytest.raises(ValidationError) as info:
        extract.parse_event(event(data))
    return info.value


def _json_bytes(data: Any) -> int:
    return len(json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode())


def _padded(total_bytes: int) -> dict[str, Any]:
    """A valid input whose compact JSON is exactly ``total_bytes`` bytes (a long Comment)."""
    base = {"max_coins": 10, "Comment": ""}
    data = {**base, "Comment": "x" * (total_bytes - _json_bytes(base))}
    assert _json_bytes(data) == total_bytes
    return data


# --- size -------------------------------------------------------------------------------------


def test_input_at_the_size_limit_is_accepted():
    request = extract.parse_event(event(_padded(extract.MAX_INPUT_BYTES)))
    assert request.max_coins == 10
    assert request.ignored_input == ("Comment",)


def test_input_one_byte_over_the_limit_is_refused_without_echoing_it():
    error = refused(_padded(extract.MAX_INPUT_BYTES + 1))
    assert error.field == "input"
    assert str(error) == (
        f"invalid input: is {extract.MAX_INPUT_BYTES + 1} bytes of JSON; "
        f"the limit is {extract.MAX_INPUT_BYTES} bytes"
    )


def test_size_counts_utf8_bytes_not_characters():
    # 3000 euro signs are 3000 characters but 9000 bytes of UTF-8.
    error = refused({"Comment": "€" * 3000})
    assert error.field == "input"
    assert "bytes of JSON" in error.problem


def test_an_oversized_known_member_is_refused_for_its_size_first():
    # Without the size check the vs_currency error would echo 100 KB back into the alert.
    error = refused({"vs_currency": "u" * 100_000})
    assert error.field == "input"
    assert len(str(error)) < 200


def test_deeply_nested_input_is_refused():
    nested: Any = []
    for _ in range(100_000):
        nested = [nested]
    error = refused({"Comment": nested})
    assert error.field == "input"


def test_input_that_is_not_json_is_refused():
    # A Lambda event is always JSON; a direct call (tests, tools) may pass anything.
    error = refused({"Comment": object()})
    assert (error.field, error.problem) == ("input", "is not serializable JSON (TypeError)")


# --- shape ------------------------------------------------------------------------------------


@pytest.mark.parametrize("data", [[], ["usd"], "usd", "{}", 42, 1.5, True])
def test_input_that_is_not_an_object_is_refused(data):
    error = refused(data)
    assert error.field == "input"
    assert "must be a JSON object" in error.problem


def test_null_input_means_the_defaults():
    request = extract.parse_event(event(None))
    assert (request.vs_currency, request.max_coins, request.per_page) == ("usd", 1000, 250)


def test_too_many_members_are_refused():
    ok = {f"note{i}": i for i in range(extract.MAX_INPUT_MEMBERS)}
    assert len(extract.parse_event(event(ok)).ignored_input) == extract.MAX_INPUT_MEMBERS
    error = refused({**ok, "one_more": 1})
    assert error.field == "input"
    assert error.problem == (
        f"has {extract.MAX_INPUT_MEMBERS + 1} members; the limit is {extract.MAX_INPUT_MEMBERS}"
    )


@pytest.mark.parametrize(
    "name", ["", "x" * (extract.MAX_INPUT_NAME_CHARS + 1), "bad\nname", "tab\tname", "\x1b[31m"]
)
def test_member_names_must_be_short_and_printable(name):
    error = refused({name: 1})
    assert error.field == "input"
    assert error.problem.startswith("member name ")
    assert len(str(error)) < 200


# --- member types -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"vs_currency": 840}, "input.vs_currency"),
        ({"vs_currency": ["usd"]}, "input.vs_currency"),
        ({"vs_currency": None}, "input.vs_currency"),
        ({"max_coins": "1000"}, "input.max_coins"),
        ({"max_coins": [1000]}, "input.max_coins"),
        ({"max_coins": {"n": 1}}, "input.max_coins"),
        ({"max_coins": 1e3}, "input.max_coins"),
        ({"per_page": "250"}, "input.per_page"),
        ({"per_page": 250.0}, "input.per_page"),
        ({"per_page": False}, "input.per_page"),
        ({"snapshot_id": 123}, "input.snapshot_id"),
        ({"snapshot_id": ["a"]}, "input.snapshot_id"),
        ({"snapshot_id": {"id": "a"}}, "input.snapshot_id"),
        ({"snapshot_id": True}, "input.snapshot_id"),
    ],
)
def test_a_member_of_the_wrong_type_is_refused_naming_it(data, field):
    assert refused(data).field == field


# --- under moto: the real definition ------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"Comment": "x" * 9000}, "input"),
        ({"per_page": "250"}, "input.per_page"),
    ],
)
def test_malformed_input_fails_the_execution_at_extract_with_one_alert(
    tmp_path: Path, data: dict[str, Any], field: str
):
    """The real definition and handlers under moto: the execution fails at Extract with a
    ValidationError naming the field, the Catch path publishes exactly one alert, and nothing
    is fetched or stored."""
    with ReplayServer.synthetic(coins=10) as server:
        env = {
            "LAKE_LOCAL_DIR": str(tmp_path / "lake"),
            "LAKE_BUCKET": "crypto-etl-local",
            "COINGECKO_BASE_URL": server.base_url,
            "COINGECKO_API_PLAN": "public",
            "COINGECKO_API_KEY": "",
            "COINGECKO_API_KEY_SECRET_ARN": "",
        }
        with LocalStepFunctions(env=env, retry_sleep=lambda s: None) as sfn:
            result = sfn.execute(data, name="bad-input")
        assert server.requests == []
    assert result.status == "FAILED"
    assert result.failed_state == "Extract"
    assert result.error == "ValidationError"
    assert f"invalid {field}:" in (result.cause or "")
    assert len(result.alerts) == 1
    alert = result.alerts[0]
    assert (alert["failed_state"], alert["error"]) == ("Extract", "ValidationError")
    assert f"invalid {field}:" in alert["cause"]
    assert not (tmp_path / "lake").exists() or not any((tmp_path / "lake").rglob("*.*"))
