"""``crypto-etl aws run`` against AWS APIs emulated by moto (never real AWS).

The deployed stack is a CloudFormation stack whose ``StateMachineArn`` output names a state
machine created through moto's Step Functions; for the pipeline cases it is the real ASL
definition (the local runner deploys it into moto, with stand-in handlers for the Lambdas).
"""

from __future__ import annotations

import io
import json
import os
import time
from collections.abc import Iterator
from typing import Any
from unittest import mock

import boto3
import pytest

from functions.common.errors import SourceError
from local_mode import aws_command
from local_mode.cli import main
from state_machine.local_runner import REGION, LocalStepFunctions

ROLE = "arn:aws:iam::123456789012:role/sfn"


def _run(argv: list[str]) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of ``crypto-etl <argv>``, argparse's exits included."""
    out, err = io.StringIO(), io.StringIO()
    with mock.patch("sys.stderr", err), mock.patch("sys.stdout", out):
        try:
            code = main(argv, out=out)
        except SystemExit as exc:
            code = int(exc.code or 0)
    return code, out.getvalue(), err.getvalue()


def _stack(outputs: dict[str, str], name: str = "CryptoEtl") -> None:
    template = {
        "Resources": {"Topic": {"Type": "AWS::SNS::Topic"}},
        "Outputs": {k: {"Value": v} for k, v in outputs.items()},
    }
    boto3.client("cloudformation", region_name=REGION).create_stack(
        StackName=name, TemplateBody=json.dumps(template)
    )


def _handlers(fail: bool = False, loops: int = 0) -> dict[str, Any]:
    """Stand-ins; the extract answers ``done: false`` ``loops`` times first (deadline loop)."""
    calls = []

    def extract(event: dict[str, Any], context: Any) -> dict[str, Any]:
        if fail:
            raise SourceError("CoinGecko answered 401: invalid API key")
        calls.append(1)
        if len(calls) <= loops:
            return {"done": False, "next_page": len(calls) + 1, "pages": len(calls),
                    "invocations": len(calls)}  # fmt: skip
        return {
            **event["input"],
            "done": True,
            "bucket": "lake-bucket",
            "coin_count": 3,
            "pages": 1,
            "api_calls": 2,
            "retries": 1,
        }

    def transform(event: dict[str, Any], context: Any) -> dict[str, Any]:
        return {
            **event,
            "row_count": 3,
            "rejected_count": 0,
            "duplicate_count": 0,
            "processed_key": "processed/x.csv.gz",
        }

    def load(event: dict[str, Any], context: Any) -> dict[str, Any]:
        return {**event, "rows_inserted": 0, "rows_replaced": 5, "table": "CRYPTO_DATA"}

    return {"extract": extract, "transform": transform, "load": load}


@pytest.fixture
def deployed() -> Iterator[LocalStepFunctions]:
    """The real definition in moto, behind a stack with a StateMachineArn output."""
    with LocalStepFunctions(_handlers(), retry_sleep=lambda s: None) as sfn:
        _stack({"StateMachineArn": sfn.state_machine_arn, "LakeBucketName": "lake-bucket"})
        yield sfn


@pytest.fixture
def deployed_looping() -> Iterator[LocalStepFunctions]:
    with LocalStepFunctions(_handlers(loops=2), retry_sleep=lambda s: None) as sfn:
        _stack({"StateMachineArn": sfn.state_machine_arn, "LakeBucketName": "lake-bucket"})
        yield sfn


@pytest.fixture
def deployed_failing() -> Iterator[LocalStepFunctions]:
    with LocalStepFunctions(_handlers(fail=True), retry_sleep=lambda s: None) as sfn:
        _stack({"StateMachineArn": sfn.state_machine_arn})
        yield sfn


FAST = ["--poll-interval", "0.02", "--timeout", "30"]


def test_run_starts_the_deployed_state_machine_and_reports_success(deployed):
    code, out, err = _run(
        ["aws", "run", *FAST, "--snapshot-id", "smoke-1", "--input", '{"max_coins": 3}']
    )
    assert code == 0, out + err
    # The execution really ran, with the input we gave and the snapshot id in it.
    extract_event = deployed.invocations[0]["event"]
    assert extract_event["input"] == {"max_coins": 3, "snapshot_id": "smoke-1"}
    assert extract_event["execution"]["name"].startswith("smoke-1-")
    lines = out.splitlines()
    progress = [ln.split()[1] for ln in lines if ln[:1] in ("▶", "✓")]
    assert progress == ["Extract", "Extract", "Transform", "Transform", "Load", "Load"]
    assert "1 page, 2 API calls, 1 retry" in out
    assert "Execution SUCCEEDED" in out
    assert "3 rows for the snapshot (replacing 5)" in out
    assert "s3://lake-bucket/processed/x.csv.gz" in out
    assert "Traceback" not in out + err


def test_the_extract_deadline_loop_shows_as_one_state_with_its_invocations(deployed_looping):
    code, out, err = _run(["aws", "run", *FAST])
    assert code == 0, out + err
    assert [i["function"] for i in deployed_looping.invocations] == [
        "extract", "extract", "extract", "transform", "load",
    ]  # fmt: skip
    progress = [ln.split()[1] for ln in out.splitlines() if ln[:1] in ("▶", "✓")]
    assert progress == ["Extract", "Extract", "Transform", "Transform", "Load", "Load"]
    assert "↺ invocation 1 stopped before page 2 (Lambda deadline) with 1 page" in out
    assert "↺ invocation 2 stopped before page 3" in out


def test_json_prints_one_object_on_stdout_and_progress_on_stderr(deployed):
    code, out, err = _run(["aws", "run", *FAST, "--json"])
    assert code == 0, out + err
    doc = json.loads(out)  # the whole of stdout is one JSON document
    assert doc["status"] == "SUCCEEDED"
    assert doc["state_machine_arn"] == deployed.state_machine_arn
    assert doc["snapshot_id"] == doc["execution_name"]
    assert doc["snapshot_id"].startswith("snap-")
    assert doc["counts"] == {
        "coin_count": 3,
        "pages": 1,
        "api_calls": 2,
        "retries": 1,
        "row_count": 3,
        "rejected_count": 0,
        "duplicate_count": 0,
        "rows_inserted": 0,
        "rows_replaced": 5,
    }
    assert doc["error"] is None and doc["failed_state"] is None
    assert "▶ Extract" in err and "✓ Load" in err


def test_a_failed_execution_names_the_state_and_error_and_exits_1(deployed_failing):
    code, out, err = _run(["aws", "run", *FAST, "--json"])
    assert code == 1
    doc = json.loads(out)
    assert doc["status"] == "FAILED"
    assert doc["failed_state"] == "Extract"
    assert doc["error"] == "SourceError"
    assert doc["cause"] == "CoinGecko answered 401: invalid API key"
    assert "✗ Extract: SourceError: CoinGecko answered 401: invalid API key" in err
    assert "publishing the failure alert" in err
    assert len(deployed_failing.alerts()) == 1

    code, out, _ = _run(["aws", "run", *FAST])
    assert code == 1
    assert "Execution FAILED" in out
    assert "failed state  Extract" in out
    assert "SourceError: CoinGecko answered 401: invalid API key" in out
    assert "warehouse     unchanged" in out


def _one_line_error(err: str, *needles: str) -> None:
    assert "Traceback" not in err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    for needle in needles:
        assert needle in lines[0], err


def test_a_missing_stack_is_one_line_and_exit_2(deployed):
    code, out, err = _run(["aws", "run", *FAST, "--stack-name", "Nope"])
    assert code == 2
    _one_line_error(err, "no stack Nope in us-east-1")
    assert out == ""  # nothing was started
    assert deployed.invocations == []


def test_a_stack_without_the_output_is_one_line_and_exit_2(deployed):
    _stack({"LakeBucketName": "b"}, name="Other")
    code, _, err = _run(["aws", "run", *FAST, "--stack-name", "Other"])
    assert code == 2
    _one_line_error(err, "no StateMachineArn output", "outputs: LakeBucketName")


@pytest.fixture
def no_aws_config(tmp_path, monkeypatch):
    """No credentials or region anywhere boto3 looks, and nowhere to send a request."""
    for key in list(os.environ):
        if key.startswith("AWS_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    # Were a request sent anyway, it would go to a closed local port, not to AWS.
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")


def test_no_credentials_is_one_line_and_exit_2(no_aws_config):
    code, _, err = _run(["aws", "run", *FAST, "--region", "eu-west-1"])
    assert code == 2
    _one_line_error(err, "AWS credentials", "aws configure")


def test_no_region_is_one_line_and_exit_2(no_aws_config):
    code, _, err = _run(["aws", "run", *FAST])
    assert code == 2
    _one_line_error(err, "AWS region", "AWS_REGION")


def test_an_unknown_profile_is_one_line_and_exit_2(no_aws_config, monkeypatch):
    monkeypatch.setenv("AWS_PROFILE", "nosuchprofile")
    code, _, err = _run(["aws", "run", *FAST, "--region", "eu-west-1"])
    assert code == 2
    _one_line_error(err, "nosuchprofile")


@pytest.mark.parametrize(
    "args",
    [
        ["--input", "{not json"],
        ["--input", "[1, 2]"],
        ["--snapshot-id", "a b"],
        ["--snapshot-id", ""],
        ["--timeout", "0"],
        ["--timeout", "-5"],
        ["--timeout", "nan"],
        ["--poll-interval", "abc"],
        ["--stack-name", "1bad"],
        ["--snapshot-id", "a", "--input", '{"snapshot_id": "b"}'],
        ["--input", '{"snapshot_id": "../x"}'],
    ],
)
def test_bad_arguments_exit_2_before_any_aws_call(args, no_aws_config):
    code, out, err = _run(["aws", "run", *args])
    assert code == 2, out + err
    assert "Traceback" not in out + err
    # Refused before boto3 was asked for credentials or a region.
    assert "AWS credentials" not in err and "AWS region" not in err


def _wait_machine(seconds: int) -> str:
    definition = {
        "StartAt": "Extract",
        "States": {"Extract": {"Type": "Wait", "Seconds": seconds, "End": True}},
    }
    return boto3.client("stepfunctions", region_name=REGION).create_state_machine(
        name="slow", definition=json.dumps(definition), roleArn=ROLE
    )["stateMachineArn"]


@pytest.fixture
def slow_stack(monkeypatch) -> Iterator[str]:
    from moto import mock_aws

    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    with mock_aws(config={"stepfunctions": {"execute_state_machine": True}}):
        arn = _wait_machine(2)
        _stack({"StateMachineArn": arn})
        yield arn
        # Let moto's execution thread finish inside the mock.
        sfn = boto3.client("stepfunctions", region_name=REGION)
        for _ in range(100):
            runs = sfn.list_executions(stateMachineArn=arn)["executions"]
            if all(r["status"] != "RUNNING" for r in runs):
                break
            time.sleep(0.05)


def test_timeout_stops_waiting_without_stopping_the_execution(slow_stack):
    started = time.monotonic()
    code, out, err = _run(["aws", "run", "--poll-interval", "0.05", "--timeout", "0.3", "--json"])
    assert time.monotonic() - started < 1.8
    assert code == 1, out + err
    doc = json.loads(out)
    assert doc["status"] == "RUNNING"
    sfn = boto3.client("stepfunctions", region_name=REGION)
    assert sfn.describe_execution(executionArn=doc["execution_arn"])["status"] == "RUNNING"

    code, out, _ = _run(["aws", "run", "--poll-interval", "0.05", "--timeout", "0.3"])
    assert code == 1
    assert "still RUNNING after --timeout 0.3s; it was not stopped" in out


def test_ctrl_c_while_waiting_exits_130_quietly(slow_stack, monkeypatch):
    def interrupt(seconds: float) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(aws_command, "_sleep", interrupt)
    code, out, err = _run(["aws", "run", "--poll-interval", "0.05"])
    assert code == 130
    assert "Traceback" not in out + err
    assert "goes on in AWS" in err
    sfn = boto3.client("stepfunctions", region_name=REGION)
    runs = sfn.list_executions(stateMachineArn=slow_stack)["executions"]
    assert [r["status"] for r in runs] == ["RUNNING"]


def test_execution_plan_names_and_snapshot_ids():
    name, data = aws_command.execution_plan(None, {"max_coins": 5})
    assert name == data["snapshot_id"] and name.startswith("snap-")
    assert data["max_coins"] == 5
    name, data = aws_command.execution_plan(None, {"snapshot_id": "daily"})
    assert data["snapshot_id"] == "daily" and name.startswith("daily-")
    long_id = "x" * 80
    name, data = aws_command.execution_plan(long_id, None)
    assert data["snapshot_id"] == long_id
    assert len(name) == 80  # Step Functions' limit on execution names
