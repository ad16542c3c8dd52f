"""The history backfill's state machine in the template: the Distributed Map as written in
state_machine/backfill.asl.json, and its role's least privilege."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from state_machine.definition import BACKFILL, BACKFILL_SUBSTITUTIONS, definition_template, render
from tests.infra.conftest import Statement, Synth, flatten, is_allowed

pytestmark = pytest.mark.infra


def _flat(value: Any) -> str:
    """``flatten`` plus the state machine name CDK takes from its ARN (Fn::Select/Fn::Split)."""
    if isinstance(value, dict) and "Fn::Select" in value:
        index, split = value["Fn::Select"]
        sep, source = split["Fn::Split"]
        if index == 6 and sep == ":":
            return f"<name of {flatten(source).strip('<>')}>"
    if isinstance(value, dict) and "Fn::Join" in value:
        sep, parts = value["Fn::Join"]
        return sep.join(_flat(p) for p in parts)
    return flatten(value)


def _statements(synth: Synth, role_id: str) -> list[Statement]:
    found = []
    for policy in synth.resources("AWS::IAM::Policy").values():
        props = policy["Properties"]
        if {"Ref": role_id} not in props.get("Roles", []):
            continue
        for st in props["PolicyDocument"]["Statement"]:
            actions = st["Action"] if isinstance(st["Action"], list) else [st["Action"]]
            resources = st["Resource"] if isinstance(st["Resource"], list) else [st["Resource"]]
            found.append(
                Statement(
                    st["Effect"],
                    tuple(sorted(actions)),
                    tuple(sorted(_flat(r) for r in resources)),
                    json.dumps(st["Condition"], sort_keys=True) if "Condition" in st else "",
                )
            )
    return found


def _backfill(synth: Synth) -> dict[str, Any]:
    machines = synth.resources("AWS::StepFunctions::StateMachine")
    return machines[synth.logical_id(synth.stack.backfill.state_machine)]["Properties"]


def test_the_backfill_definition_is_the_one_local_mode_executes(default_synth: Synth) -> None:
    props = _backfill(default_synth)
    assert props["DefinitionString"] == definition_template(BACKFILL)
    subs = props["DefinitionSubstitutions"]
    fns = default_synth.stack.functions.functions
    assert subs == {
        "ExtractFunctionArn": {"Fn::GetAtt": [default_synth.logical_id(fns["extract"]), "Arn"]},
        "LoadFunctionArn": {"Fn::GetAtt": [default_synth.logical_id(fns["load"]), "Arn"]},
        "AlertTopicArn": {"Ref": default_synth.logical_id(default_synth.stack.alerting.topic)},
    }
    assert set(subs) == set(BACKFILL_SUBSTITUTIONS)
    mapping = {k: f"arn:aws:test:::{flatten(v).strip('<>')}" for k, v in subs.items()}
    deployed = re.sub(
        r"\$\{([A-Za-z0-9_]+)\}", lambda m: mapping[m.group(1)], props["DefinitionString"]
    )
    assert deployed == render(mapping, BACKFILL)
    markers = set(re.findall(r"\$\{([^}]*)\}", props["DefinitionString"]))
    assert markers == set(BACKFILL_SUBSTITUTIONS)


def test_the_template_holds_the_distributed_map_with_reader_batcher_concurrency_and_tolerance(
    default_synth: Synth,
) -> None:
    states = json.loads(_backfill(default_synth)["DefinitionString"])["States"]
    fetch = states["Fetch"]
    assert fetch["Type"] == "Map"
    assert fetch["ItemProcessor"]["ProcessorConfig"] == {
        "Mode": "DISTRIBUTED",
        "ExecutionType": "STANDARD",
    }
    assert fetch["ItemReader"]["Resource"] == "arn:aws:states:::s3:getObject"
    assert fetch["ItemReader"]["ReaderConfig"] == {"InputType": "JSON"}
    assert fetch["ItemReader"]["Parameters"] == {"Bucket.$": "$.bucket", "Key.$": "$.items_key"}
    assert fetch["ItemBatcher"]["MaxItemsPerBatchPath"] == "$.batch_size"
    assert set(fetch["ItemBatcher"]["BatchInput"]) >= {
        "bucket.$",
        "vs_currency.$",
        "days.$",
        "history_prefix.$",
        "child_rate_limit.$",
    }
    assert fetch["MaxConcurrencyPath"] == "$.max_concurrency"
    assert 0 < fetch["ToleratedFailurePercentage"] < 100
    assert fetch["ResultWriter"]["Resource"] == "arn:aws:states:::s3:putObject"
    assert fetch["ResultWriter"]["Parameters"]["Prefix.$"] == "$.results_prefix"
    assert fetch["ResultPath"] == "$.fetch"
    child = fetch["ItemProcessor"]["States"]["Fetch batch"]
    assert child["Parameters"]["FunctionName"] == "${ExtractFunctionArn}"
    assert child["Parameters"]["Payload"] == {"action": "fetch_history", "batch.$": "$"}
    # Plan -> Fetch -> LoadHistory; every task's failure reaches the one SNS publish.
    assert states["Plan"]["Next"] == "Fetch" and fetch["Next"] == "LoadHistory"
    assert "load_history" in states["LoadHistory"]["Parameters"]["Payload.$"]
    for name in ("Plan", "Fetch", "LoadHistory"):
        (catch,) = states[name]["Catch"]
        assert catch["ErrorEquals"] == ["States.ALL"]
        assert states[catch["Next"]]["Next"] == "Notify failure"
    assert states["Notify failure"]["Next"] == "Failed"
    publishers = [n for n, s in states.items() if "sns:publish" in s.get("Resource", "")]
    assert publishers == ["Notify failure"]


def test_the_backfill_is_logged_traced_and_bounded(default_synth: Synth) -> None:
    props = _backfill(default_synth)
    assert props["StateMachineType"] == "STANDARD"  # Distributed Map parents must be standard
    assert props["TracingConfiguration"] == {"Enabled": True}
    assert props["LoggingConfiguration"]["Level"] == "ALL"
    (destination,) = props["LoggingConfiguration"]["Destinations"]
    group_id = destination["CloudWatchLogsLogGroup"]["LogGroupArn"]["Fn::GetAtt"][0]
    group = default_synth.data["Resources"][group_id]["Properties"]
    assert group["LogGroupName"] == "/aws/vendedlogs/states/CryptoEtl-backfill"
    assert group["RetentionInDays"] == 30
    assert json.loads(props["DefinitionString"])["TimeoutSeconds"] == 3 * 24 * 3600
    out = default_synth.data["Outputs"]["BackfillStateMachineArn"]["Value"]
    assert out == {"Ref": default_synth.logical_id(default_synth.stack.backfill.state_machine)}


def test_the_backfill_role_has_exactly_what_the_map_and_its_tasks_need(
    default_synth: Synth,
) -> None:
    s = default_synth
    props = _backfill(s)
    statements = _statements(s, props["RoleArn"]["Fn::GetAtt"][0])
    fns = s.stack.functions.functions
    sm = s.logical_id(s.stack.backfill.state_machine)
    bucket = f"<{s.logical_id(s.stack.lake.bucket)}.Arn>"
    executions = (
        f"arn:<AWS::Partition>:states:<AWS::Region>:<AWS::AccountId>:execution:<name of {sm}>/*"
    )
    arns = {n: f"<{s.logical_id(fns[n])}.Arn>" for n in fns}
    expected_non_log = {
        Statement(
            "Allow",
            ("lambda:InvokeFunction",),
            tuple(sorted(x for n in ("extract", "load") for x in (arns[n], f"{arns[n]}:*"))),
            "",
        ),
        Statement("Allow", ("sns:Publish",), (f"<{s.logical_id(s.stack.alerting.topic)}>",), ""),
        Statement(
            "Allow",
            ("kms:Decrypt", "kms:GenerateDataKey*"),
            (f"<{s.logical_id(s.stack.alerting.key)}.Arn>",),
            "",
        ),
        Statement("Allow", ("s3:GetObject",), (f"{bucket}/raw/history/*/items.json",), ""),
        Statement(
            "Allow",
            (
                "s3:AbortMultipartUpload",
                "s3:GetObject",
                "s3:ListMultipartUploadParts",
                "s3:PutObject",
            ),
            (f"{bucket}/raw/history/*/results/*",),
            "",
        ),
        Statement("Allow", ("states:StartExecution",), (f"<{sm}>",), ""),
        Statement("Allow", ("states:DescribeExecution", "states:StopExecution"), (executions,), ""),
    }
    services = {a.split(":")[0] for st in statements for a in st.actions}
    assert services == {"lambda", "sns", "kms", "s3", "states", "logs", "xray"}
    assert {st for st in statements if st.actions[0].split(":")[0] not in ("logs", "xray")} == (
        expected_non_log
    )

    # Negative: not the transform function, no other lake object, no other state machine.
    assert not is_allowed(statements, "lambda:InvokeFunction", arns["transform"])
    allowed_get = f"{bucket}/raw/history/backfill=b1/items.json"
    assert is_allowed(statements, "s3:GetObject", allowed_get)
    assert not is_allowed(statements, "s3:PutObject", allowed_get)
    results = f"{bucket}/raw/history/backfill=b1/results/0f3c/manifest.json"
    assert is_allowed(statements, "s3:PutObject", results)
    for key in (
        "raw/history/backfill=b1/coins/bitcoin.json",
        "raw/dt=2026-01-01/snapshot=s/run=r/markets/page-0001.json",
        "processed/dt=2026-01-01/snapshot=s/run=r/crypto_data.csv.gz",
        "snapshots/s.json",
    ):
        for action in ("s3:GetObject", "s3:PutObject", "s3:DeleteObject"):
            assert not is_allowed(statements, action, f"{bucket}/{key}"), (action, key)
    assert not is_allowed(statements, "s3:ListBucket", bucket)
    pipeline = f"<{s.logical_id(s.stack.pipeline.state_machine)}>"
    assert not is_allowed(statements, "states:StartExecution", pipeline)
    assert not is_allowed(
        statements,
        "states:StopExecution",
        "arn:<AWS::Partition>:states:<AWS::Region>:<AWS::AccountId>:execution:other/x:1",
    )


def test_the_load_function_reads_the_history_prefix_but_the_pipeline_role_does_not(
    default_synth: Synth,
) -> None:
    s = default_synth
    bucket = f"<{s.logical_id(s.stack.lake.bucket)}.Arn>"
    key = f"{bucket}/raw/history/backfill=b1/coins/bitcoin.json"
    load = s.data["Resources"][s.logical_id(s.stack.functions.load)]
    load_statements = _statements(s, load["Properties"]["Role"]["Fn::GetAtt"][0])
    assert is_allowed(load_statements, "s3:GetObject", key)
    assert not is_allowed(load_statements, "s3:PutObject", key)
    extract = s.data["Resources"][s.logical_id(s.stack.functions.extract)]
    extract_statements = _statements(s, extract["Properties"]["Role"]["Fn::GetAtt"][0])
    assert is_allowed(extract_statements, "s3:PutObject", key)  # raw/ covers raw/history/
    machines = s.resources("AWS::StepFunctions::StateMachine")
    pipeline = machines[s.logical_id(s.stack.pipeline.state_machine)]["Properties"]
    pipeline_statements = _statements(s, pipeline["RoleArn"]["Fn::GetAtt"][0])
    actions = {a for st in pipeline_statements for a in st.actions}
    assert not any(a.startswith(("s3:", "states:")) for a in actions)
