"""The synthesized template: every resource with its security properties, IAM by prefix, the ASL."""

from __future__ import annotations

import json
import re

import pytest
from aws_cdk.assertions import Match

from cdk_app import data_lake
from cdk_app.bundling import FUNCTION_NAMES
from cdk_app.pipeline_functions import SPECS
from functions.common import keys
from state_machine.definition import SUBSTITUTIONS, definition_template, render
from tests.infra.conftest import Statement, Synth, flatten, is_allowed, role_statements

pytestmark = pytest.mark.infra


def test_resource_inventory(default_synth: Synth) -> None:
    t = default_synth.template
    t.resource_count_is("AWS::S3::Bucket", 2)  # lake + its access-log bucket
    t.resource_count_is("AWS::Lambda::Function", 3)
    t.resource_count_is("AWS::SecretsManager::Secret", 2)
    t.resource_count_is("AWS::StepFunctions::StateMachine", 2)  # pipeline + history backfill
    t.resource_count_is("AWS::SNS::Topic", 1)
    t.resource_count_is("AWS::CloudWatch::Alarm", 7)  # 3 page, 4 console-only (alerting.py)
    t.resource_count_is("AWS::Logs::MetricFilter", 1)  # FailedWithoutAlert
    t.resource_count_is("AWS::CloudWatch::Dashboard", 1)  # monitoring.py
    t.resource_count_is("AWS::Scheduler::Schedule", 0)  # off by default
    t.resource_count_is("AWS::SNS::Subscription", 0)  # no e-mail by default
    # The figures the issue asks for (shown with -s).
    count = len(default_synth.data["Resources"])
    print(f"\nsynth {default_synth.seconds:.1f}s in-process, {count} resources")


def test_lake_prefixes_match_the_key_layout() -> None:
    assert (data_lake.RAW, data_lake.PROCESSED, data_lake.REJECTED, data_lake.SNAPSHOTS) == (
        keys.RAW,
        keys.PROCESSED,
        keys.REJECTED,
        keys.SNAPSHOTS,
    )


# --- data lake --------------------------------------------------------------------------------


def _lake(synth: Synth) -> dict:
    return synth.data["Resources"][synth.logical_id(synth.stack.lake.bucket)]


def test_lake_bucket_is_private_encrypted_versioned_logged_and_retained(
    default_synth: Synth,
) -> None:
    lake = _lake(default_synth)
    props = lake["Properties"]
    assert props["PublicAccessBlockConfiguration"] == {
        "BlockPublicAcls": True,
        "BlockPublicPolicy": True,
        "IgnorePublicAcls": True,
        "RestrictPublicBuckets": True,
    }
    assert props["BucketEncryption"]["ServerSideEncryptionConfiguration"][0][
        "ServerSideEncryptionByDefault"
    ] == {"SSEAlgorithm": "AES256"}
    assert props["VersioningConfiguration"] == {"Status": "Enabled"}
    logs_id = default_synth.logical_id(default_synth.stack.lake.access_logs)
    assert props["LoggingConfiguration"]["DestinationBucketName"] == {"Ref": logs_id}
    assert lake["DeletionPolicy"] == "Retain"
    assert lake["UpdateReplacePolicy"] == "Retain"


def test_lake_removal_policy_is_configurable(options_synth: Synth) -> None:
    assert _lake(options_synth)["DeletionPolicy"] == "Delete"


def test_every_bucket_denies_plain_http(default_synth: Synth) -> None:
    for bucket_id in default_synth.resources("AWS::S3::Bucket"):
        policies = [
            p
            for p in default_synth.resources("AWS::S3::BucketPolicy").values()
            if p["Properties"]["Bucket"] == {"Ref": bucket_id}
        ]
        assert len(policies) == 1, bucket_id
        statements = policies[0]["Properties"]["PolicyDocument"]["Statement"]
        assert any(
            st["Effect"] == "Deny"
            and st["Action"] == "s3:*"
            and st["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}
            for st in statements
        ), bucket_id


def _rules(synth: Synth) -> dict[str, dict]:
    rules = _lake(synth)["Properties"]["LifecycleConfiguration"]["Rules"]
    return {r["Id"]: r for r in rules}


def test_lifecycle_raw_and_rejected_go_to_ia_after_30_days_then_expire(
    default_synth: Synth, options_synth: Synth
) -> None:
    rules = _rules(default_synth)
    for rule_id, prefix in (
        ("raw-to-ia-then-expire", "raw/"),
        ("rejected-to-ia-then-expire", "rejected/"),
    ):
        rule = rules[rule_id]
        assert rule["Prefix"] == prefix
        assert rule["Status"] == "Enabled"
        assert rule["Transitions"] == [{"StorageClass": "STANDARD_IA", "TransitionInDays": 30}]
        assert rule["ExpirationInDays"] == 365  # cdk.json default
    # raw_retention_days=90 from context; rejected keeps the default.
    assert _rules(options_synth)["raw-to-ia-then-expire"]["ExpirationInDays"] == 90
    assert _rules(options_synth)["rejected-to-ia-then-expire"]["ExpirationInDays"] == 365
    # processed/ is the warehouse's source and snapshots/ names the loaded run: neither expires.
    for kept in ("processed/", "snapshots/"):
        assert not any(
            "ExpirationInDays" in r and kept.startswith(r.get("Prefix", "")) for r in rules.values()
        ), kept


def test_lifecycle_expires_noncurrent_versions(default_synth: Synth) -> None:
    rule = _rules(default_synth)["expire-noncurrent-versions"]
    assert "Prefix" not in rule  # whole bucket
    assert rule["NoncurrentVersionExpiration"] == {"NoncurrentDays": 30}


# --- functions --------------------------------------------------------------------------------


def _functions(synth: Synth) -> dict[str, dict]:
    return {
        name: synth.data["Resources"][synth.logical_id(fn)]
        for name, fn in synth.stack.functions.functions.items()
    }


def test_functions_runtime_arch_handler_sizing_and_logs(default_synth: Synth) -> None:
    fns = _functions(default_synth)
    assert set(fns) == set(FUNCTION_NAMES)
    log_groups = default_synth.resources("AWS::Logs::LogGroup")
    for name, fn in fns.items():
        props = fn["Properties"]
        assert props["Runtime"] == "python3.12"
        assert props["Architectures"] == ["arm64"]
        assert props["Handler"] == f"functions.{name}.handler.handler"
        assert props["MemorySize"] == SPECS[name].memory_mb
        assert props["Timeout"] == SPECS[name].timeout_s
        log_group_id = props["LoggingConfig"]["LogGroup"]["Ref"]
        assert log_groups[log_group_id]["Properties"]["RetentionInDays"] == 30


def test_function_environment(default_synth: Synth, options_synth: Synth) -> None:
    lake_ref = {"Ref": default_synth.logical_id(default_synth.stack.lake.bucket)}
    secrets = default_synth.stack.secrets
    env = {
        n: f["Properties"]["Environment"]["Variables"] for n, f in _functions(default_synth).items()
    }
    for name, variables in env.items():
        assert variables["LAKE_BUCKET"] == lake_ref
        assert variables["POWERTOOLS_SERVICE_NAME"] == f"crypto-etl-{name}"
        assert variables["POWERTOOLS_LOG_LEVEL"] == "INFO"
    assert env["extract"]["COINGECKO_API_KEY_SECRET_ARN"] == {
        "Ref": default_synth.logical_id(secrets.coingecko)
    }
    assert env["extract"]["COINGECKO_API_PLAN"] == "public"
    assert "COINGECKO_MAX_RETRY_WAIT_SECONDS" not in env["extract"]
    assert "COINGECKO_RATE_LIMIT" not in env["extract"]  # the plan's default budget
    assert env["load"]["SNOWFLAKE_SECRET_ARN"] == {
        "Ref": default_synth.logical_id(secrets.snowflake)
    }
    assert env["load"]["SNOWFLAKE_DATABASE"] == "CRYPTO_ETL_DB"
    assert env["load"]["SNOWFLAKE_SCHEMA"] == "PUBLIC"
    assert "SNOWFLAKE_WAREHOUSE" not in env["load"] and "SNOWFLAKE_ROLE" not in env["load"]
    # Secrets are only where they are needed.
    assert not any("SECRET" in k for k in env["transform"])
    assert "SNOWFLAKE_SECRET_ARN" not in env["extract"]
    assert "COINGECKO_API_KEY_SECRET_ARN" not in env["load"]

    opt = {
        n: f["Properties"]["Environment"]["Variables"] for n, f in _functions(options_synth).items()
    }
    assert opt["extract"]["COINGECKO_API_PLAN"] == "demo"
    assert opt["extract"]["COINGECKO_MAX_RETRY_WAIT_SECONDS"] == "60"
    assert opt["extract"]["COINGECKO_RATE_LIMIT"] == "30/60"
    assert opt["load"]["SNOWFLAKE_WAREHOUSE"] == "ETL_WH"
    assert opt["load"]["SNOWFLAKE_ROLE"] == "ETL_ROLE"


def test_only_transform_has_the_pandas_layer_resolved_from_ssm_at_deploy_time(
    default_synth: Synth, options_synth: Synth
) -> None:
    fns = _functions(default_synth)
    assert "Layers" not in fns["extract"]["Properties"]
    assert "Layers" not in fns["load"]["Properties"]
    (layer,) = fns["transform"]["Properties"]["Layers"]
    # A CloudFormation dynamic reference, resolved in the deploying region: no synth-time lookup.
    # The public parameter has no region segment (SSM parameters are regional already), so the
    # reference is a plain string, not a Join over AWS::Region.
    assert layer == "{{resolve:ssm:/aws/service/aws-sdk-pandas/3.16.0/py3.12/arm64/layer-arn}}"
    assert not (default_synth.outdir / "cdk.context.json").exists()
    # An explicit ARN in context replaces the lookup.
    opt_layers = _functions(options_synth)["transform"]["Properties"]["Layers"]
    assert opt_layers == [
        "arn:aws:lambda:eu-west-1:336392948345:layer:AWSSDKPandas-Python312-Arm64:20"
    ]


def test_each_function_has_its_own_role_without_managed_policies(default_synth: Synth) -> None:
    roles = {f["Properties"]["Role"]["Fn::GetAtt"][0] for f in _functions(default_synth).values()}
    assert len(roles) == 3
    for role_id in roles:
        role = default_synth.data["Resources"][role_id]["Properties"]
        assert "ManagedPolicyArns" not in role
        assert role["AssumeRolePolicyDocument"]["Statement"] == [
            {
                "Action": "sts:AssumeRole",
                "Effect": "Allow",
                "Principal": {"Service": "lambda.amazonaws.com"},
            }
        ]


# --- least privilege ---------------------------------------------------------------------------


def _function_statements(synth: Synth, name: str) -> list[Statement]:
    fn = synth.data["Resources"][synth.logical_id(synth.stack.functions.functions[name])]
    return role_statements(synth, fn["Properties"]["Role"]["Fn::GetAtt"][0])


def _expected(synth: Synth, name: str) -> set[Statement]:
    bucket = f"<{synth.logical_id(synth.stack.lake.bucket)}.Arn>"
    log_group = f"<{synth.logical_id(synth.stack.functions.log_groups[name])}.Arn>"
    secrets = synth.stack.secrets

    def objects(*prefixes: str) -> tuple[str, ...]:
        return tuple(sorted(f"{bucket}/{p}*" for p in prefixes))

    def listing(*prefixes: str) -> Statement:
        condition = {"StringLike": {"s3:prefix": sorted(f"{p}*" for p in prefixes)}}
        return Statement("Allow", ("s3:ListBucket",), (bucket,), json.dumps(condition))

    def secret(resource: object) -> Statement:
        return Statement(
            "Allow",
            ("secretsmanager:DescribeSecret", "secretsmanager:GetSecretValue"),
            (f"<{synth.logical_id(resource)}>",),
            "",
        )

    logs = Statement("Allow", ("logs:CreateLogStream", "logs:PutLogEvents"), (log_group,), "")
    # Active tracing (the handlers' Powertools Tracer): X-Ray takes no resource-level scope.
    xray = Statement("Allow", ("xray:PutTelemetryRecords", "xray:PutTraceSegments"), ("*",), "")
    return {
        "extract": {
            logs,
            xray,
            # The snapshot index: read to reuse the snapshot's partition date, created on run 1;
            # raw/: its own progress.json, between the invocations of the deadline loop.
            Statement("Allow", ("s3:GetObject",), objects("raw/", "snapshots/"), ""),
            Statement("Allow", ("s3:PutObject",), objects("raw/", "snapshots/"), ""),
            # processed/: listed (never read) by the backfill plan to date the latest snapshot.
            listing("processed/", "raw/", "snapshots/"),
            secret(secrets.coingecko),
        },
        "transform": {
            logs,
            xray,
            # snapshots/: the quality gate finds the previous snapshot's row count.
            Statement("Allow", ("s3:GetObject",), objects("raw/", "snapshots/"), ""),
            Statement("Allow", ("s3:PutObject",), objects("processed/", "rejected/"), ""),
            listing("raw/", "processed/", "rejected/", "snapshots/"),
        },
        "load": {
            logs,
            xray,
            # raw/history/: the backfill's market_chart bodies, items file and map results.
            Statement(
                "Allow",
                ("s3:GetObject",),
                objects("processed/", "snapshots/", "raw/history/"),
                "",
            ),
            # Switches the snapshot index to the loaded run after COMMIT.
            Statement("Allow", ("s3:PutObject",), objects("snapshots/"), ""),
            listing("processed/", "snapshots/", "raw/history/"),
            secret(secrets.snowflake),
        },
    }[name]


@pytest.mark.parametrize("name", FUNCTION_NAMES)
def test_function_policy_grants_exactly_its_prefixes(default_synth: Synth, name: str) -> None:
    statements = _function_statements(default_synth, name)
    assert len(statements) == len(set(statements))
    assert set(statements) == _expected(default_synth, name)


def test_negative_permissions(default_synth: Synth) -> None:
    bucket = f"<{default_synth.logical_id(default_synth.stack.lake.bucket)}.Arn>"
    key = "dt=2026-01-01/snapshot=s1/run=r1/x.json"
    index = f"{bucket}/snapshots/s1.json"
    st = {name: _function_statements(default_synth, name) for name in FUNCTION_NAMES}

    # The evaluator itself: what is granted is allowed.
    assert is_allowed(st["extract"], "s3:PutObject", f"{bucket}/raw/{key}")
    assert is_allowed(st["transform"], "s3:GetObject", f"{bucket}/raw/{key}")
    assert is_allowed(st["load"], "s3:GetObject", f"{bucket}/processed/{key}")
    # The snapshot index: extract and load read and write it; transform only reads it (the
    # quality gate's previous snapshot).
    for name in ("extract", "load"):
        assert is_allowed(st[name], "s3:GetObject", index), name
        assert is_allowed(st[name], "s3:PutObject", index), name
    assert is_allowed(st["transform"], "s3:GetObject", index)
    assert not is_allowed(st["transform"], "s3:PutObject", index)

    # extract reads raw/ (its own progress.json, between invocations of the deadline loop) and
    # the index, not processed/ or rejected/; writes only raw/ and the index.
    assert is_allowed(st["extract"], "s3:GetObject", f"{bucket}/raw/{key}")
    for prefix in ("processed/", "rejected/", ""):
        assert not is_allowed(st["extract"], "s3:GetObject", f"{bucket}/{prefix}{key}")
    for prefix in ("processed/", "rejected/", ""):
        assert not is_allowed(st["extract"], "s3:PutObject", f"{bucket}/{prefix}{key}")
    # transform cannot write raw/ nor read processed/.
    assert not is_allowed(st["transform"], "s3:PutObject", f"{bucket}/raw/{key}")
    assert not is_allowed(st["transform"], "s3:GetObject", f"{bucket}/processed/{key}")
    # load writes only the index, and reads only processed/ and the index.
    for prefix in ("raw/", "processed/", "rejected/", ""):
        assert not is_allowed(st["load"], "s3:PutObject", f"{bucket}/{prefix}{key}")
    assert not is_allowed(st["load"], "s3:GetObject", f"{bucket}/raw/{key}")
    assert not is_allowed(st["load"], "s3:GetObject", f"{bucket}/rejected/{key}")
    # Nobody may delete, change bucket settings, or list without a prefix condition.
    for name in FUNCTION_NAMES:
        for action in ("s3:DeleteObject", "s3:DeleteObjectVersion", "s3:PutBucketPolicy"):
            assert not is_allowed(st[name], action, f"{bucket}/raw/{key}")
            assert not is_allowed(st[name], action, bucket)
        assert not is_allowed(st[name], "s3:ListBucket", bucket)  # only with s3:prefix
    # Each function reads at most its own secret.
    snowflake = f"<{default_synth.logical_id(default_synth.stack.secrets.snowflake)}>"
    coingecko = f"<{default_synth.logical_id(default_synth.stack.secrets.coingecko)}>"
    assert not is_allowed(st["extract"], "secretsmanager:GetSecretValue", snowflake)
    assert not is_allowed(st["transform"], "secretsmanager:GetSecretValue", snowflake)
    assert not is_allowed(st["transform"], "secretsmanager:GetSecretValue", coingecko)
    assert not is_allowed(st["load"], "secretsmanager:GetSecretValue", coingecko)


# --- secrets ----------------------------------------------------------------------------------


def test_secrets_are_created_empty_with_documented_names(default_synth: Synth) -> None:
    secrets = default_synth.resources("AWS::SecretsManager::Secret")
    names = set()
    for secret in secrets.values():
        props = secret["Properties"]
        assert "SecretString" not in props
        assert "GenerateSecretString" not in props
        names.add(props["Name"])
    assert names == {"CryptoEtl/snowflake", "CryptoEtl/coingecko-api-key"}
    snowflake = secrets[default_synth.logical_id(default_synth.stack.secrets.snowflake)]
    for field in ("account", "user", "private_key", "password"):
        assert f'"{field}"' in snowflake["Properties"]["Description"]


# --- state machine ----------------------------------------------------------------------------


def _state_machine(synth: Synth) -> dict:
    """The pipeline's state machine (the backfill's: tests/infra/test_backfill_stack.py)."""
    machines = synth.resources("AWS::StepFunctions::StateMachine")
    return machines[synth.logical_id(synth.stack.pipeline.state_machine)]["Properties"]


def test_state_machine_definition_is_the_one_local_mode_executes(default_synth: Synth) -> None:
    props = _state_machine(default_synth)
    assert props["DefinitionString"] == definition_template()
    subs = props["DefinitionSubstitutions"]
    assert set(subs) == set(SUBSTITUTIONS)

    fns = default_synth.stack.functions.functions
    topic_id = default_synth.logical_id(default_synth.stack.alerting.topic)
    assert subs == {
        "ExtractFunctionArn": {"Fn::GetAtt": [default_synth.logical_id(fns["extract"]), "Arn"]},
        "TransformFunctionArn": {"Fn::GetAtt": [default_synth.logical_id(fns["transform"]), "Arn"]},
        "LoadFunctionArn": {"Fn::GetAtt": [default_synth.logical_id(fns["load"]), "Arn"]},
        "AlertTopicArn": {"Ref": topic_id},
    }

    # Resolve the tokens to fixed ARNs, substitute as CloudFormation does, and compare with what
    # the local runner renders from the same mapping.
    mapping = {name: f"arn:aws:test:::{flatten(value).strip('<>')}" for name, value in subs.items()}
    deployed = re.sub(
        r"\$\{([A-Za-z0-9_]+)\}", lambda m: mapping[m.group(1)], props["DefinitionString"]
    )
    assert deployed == render(mapping)
    assert json.loads(deployed)["States"]["Extract"]["Parameters"]["FunctionName"] == (
        f"arn:aws:test:::{default_synth.logical_id(fns['extract'])}.Arn"
    )


def test_definition_has_no_stray_substitution_markers(default_synth: Synth) -> None:
    # CloudFormation/cfn-lint treat any ${...} in DefinitionString as a substitution variable.
    markers = set(re.findall(r"\$\{([^}]*)\}", _state_machine(default_synth)["DefinitionString"]))
    assert markers == set(SUBSTITUTIONS), f"unexpected markers: {markers - set(SUBSTITUTIONS)}"


def test_state_machine_logging_tracing_and_timeout(default_synth: Synth) -> None:
    props = _state_machine(default_synth)
    assert props["TracingConfiguration"] == {"Enabled": True}
    logging = props["LoggingConfiguration"]
    assert logging["Level"] == "ALL"
    assert logging["IncludeExecutionData"] is True
    (destination,) = logging["Destinations"]
    log_group_id = destination["CloudWatchLogsLogGroup"]["LogGroupArn"]["Fn::GetAtt"][0]
    log_group = default_synth.data["Resources"][log_group_id]["Properties"]
    assert log_group["RetentionInDays"] == 30
    assert log_group["LogGroupName"].startswith("/aws/vendedlogs/states/")
    assert json.loads(props["DefinitionString"])["TimeoutSeconds"] > 0


def test_state_machine_role_invokes_exactly_the_three_functions_and_publishes(
    default_synth: Synth,
) -> None:
    props = _state_machine(default_synth)
    role_id = props["RoleArn"]["Fn::GetAtt"][0]
    statements = role_statements(default_synth, role_id)
    fn_arns = {
        f"<{default_synth.logical_id(fn)}.Arn>"
        for fn in default_synth.stack.functions.functions.values()
    }
    invoke = [s for s in statements if any(a.startswith("lambda:") for a in s.actions)]
    assert [s.actions for s in invoke] == [("lambda:InvokeFunction",)]
    assert set(invoke[0].resources) == fn_arns | {f"{a}:*" for a in fn_arns}

    topic = f"<{default_synth.logical_id(default_synth.stack.alerting.topic)}>"
    key = f"<{default_synth.logical_id(default_synth.stack.alerting.key)}.Arn>"
    assert is_allowed(statements, "sns:Publish", topic)
    assert not is_allowed(statements, "sns:Publish", "arn:aws:sns:us-east-1:1:other")
    assert is_allowed(statements, "kms:GenerateDataKey", key)
    # Nothing else: no S3, no secrets, no other service.
    services = {a.split(":")[0] for s in statements for a in s.actions}
    assert services == {"lambda", "sns", "kms", "logs", "xray"}


# --- alerting ---------------------------------------------------------------------------------


def test_topic_is_encrypted_with_a_rotated_key_and_tls_only(default_synth: Synth) -> None:
    alerting = default_synth.stack.alerting
    topic = default_synth.data["Resources"][default_synth.logical_id(alerting.topic)]
    key_id = default_synth.logical_id(alerting.key)
    assert topic["Properties"]["KmsMasterKeyId"] == {"Fn::GetAtt": [key_id, "Arn"]}
    key = default_synth.data["Resources"][key_id]["Properties"]
    assert key["EnableKeyRotation"] is True
    assert any(
        st.get("Principal") == {"Service": "cloudwatch.amazonaws.com"}
        and set(st["Action"]) == {"kms:Decrypt", "kms:GenerateDataKey*"}
        for st in key["KeyPolicy"]["Statement"]
    )
    default_synth.template.has_resource_properties(
        "AWS::SNS::TopicPolicy",
        {
            "PolicyDocument": {
                "Statement": Match.array_with(
                    [
                        Match.object_like(
                            {
                                "Effect": "Deny",
                                "Action": "sns:Publish",
                                "Condition": {"Bool": {"aws:SecureTransport": "false"}},
                            }
                        ),
                        Match.object_like(
                            {
                                "Effect": "Allow",
                                "Principal": {"Service": "cloudwatch.amazonaws.com"},
                                "Action": "sns:Publish",
                            }
                        ),
                    ]
                )
            }
        },
    )


def _alarms_by_metric(synth: Synth) -> dict[tuple[str, str], dict]:
    """(metric name, what it watches) -> the alarm's properties."""
    out: dict[tuple[str, str], dict] = {}
    for alarm in synth.resources("AWS::CloudWatch::Alarm").values():
        props = alarm["Properties"]
        assert props["Threshold"] == 1
        assert props["ComparisonOperator"] == "GreaterThanOrEqualToThreshold"
        assert props["TreatMissingData"] == "notBreaching"
        dims = props.get("Dimensions") or []
        watched = dims[0]["Value"]["Ref"] if dims else props["Namespace"]
        out[(props["MetricName"], watched)] = props
    return out


def test_exactly_the_alarms_for_failures_the_catch_path_cannot_report_page(
    default_synth: Synth,
) -> None:
    """Which alarms have the topic as their action: timed-out and aborted executions (no Catch
    runs) and FailedWithoutAlert (the failure message was not sent); every other alarm has no
    action at all (console only)."""
    topic_ref = {"Ref": default_synth.logical_id(default_synth.stack.alerting.topic)}
    sm_id = default_synth.logical_id(default_synth.stack.pipeline.state_machine)
    namespace = f"crypto-etl/{default_synth.stack.stack_name}"
    alarms = _alarms_by_metric(default_synth)
    paging = {key for key, props in alarms.items() if props.get("AlarmActions")}
    silent = set(alarms) - paging
    assert paging == {
        ("ExecutionsTimedOut", sm_id),
        ("ExecutionsAborted", sm_id),
        ("FailedWithoutAlert", namespace),
    }
    for key in paging:
        assert alarms[key]["AlarmActions"] == [topic_ref], key
    assert silent == {("ExecutionsFailed", sm_id)} | {
        ("Errors", default_synth.logical_id(fn))
        for fn in default_synth.stack.functions.functions.values()
    }
    for key in silent:
        props = alarms[key]
        assert not props.get("OKActions") and not props.get("InsufficientDataActions"), key
    assert default_synth.stack.alerting.paging == {
        "ExecutionsTimedOut",
        "ExecutionsAborted",
        "FailedWithoutAlert",
    }


def test_failed_without_alert_counts_only_failures_the_catch_path_did_not_publish(
    default_synth: Synth,
) -> None:
    """The metric filter reads the state machine's own execution log (level ALL or ERROR logs
    TaskFailed/ExecutionFailed events) and counts a failed or timed-out SNS task (only "Notify
    failure" publishes to SNS) and an execution failure no Catch can catch."""
    (mf,) = default_synth.resources("AWS::Logs::MetricFilter").values()
    props = mf["Properties"]
    log_group_id = default_synth.logical_id(default_synth.stack.pipeline.log_group)
    assert props["LogGroupName"] == {"Ref": log_group_id}
    assert props["MetricTransformations"] == [
        {
            "MetricName": "FailedWithoutAlert",
            "MetricNamespace": f"crypto-etl/{default_synth.stack.stack_name}",
            "MetricValue": "1",
        }
    ]
    pattern = props["FilterPattern"]
    for needle in (
        '$.type = "TaskFailed"',
        '$.type = "TaskTimedOut"',
        '$.details.resourceType = "sns"',
        '$.type = "ExecutionFailed"',
        '$.details.error = "States.Runtime"',
        '$.details.error = "States.DataLimitExceeded"',
    ):
        assert needle in pattern
    # A Lambda task's failure (caught, then published) is not counted: no lambda, no
    # ExecutionFailed without one of the two uncatchable error names.
    assert "lambda" not in pattern
    assert _state_machine(default_synth)["LoggingConfiguration"]["Level"] in ("ALL", "ERROR")


def test_one_failure_sends_one_notification(default_synth: Synth) -> None:
    """A task that fails (after its retries) is caught by ``States.ALL`` and routed, through
    its ``<State> failed`` Pass state, to the one SNS publish (``Notify failure``), then to
    ``Failed``: that publish is one message. The same failure also raises the function's
    Errors metric and ExecutionsFailed, but those alarms have no action; the paging alarms
    watch metrics this path does not move (TimedOut, Aborted: the execution failed, it was
    not timed out or stopped; FailedWithoutAlert: the publish succeeded and the error was a
    caught one). So the topic receives exactly one message per caught failure, and one (from
    an alarm) per failure the Catch path could not report."""
    states = json.loads(_state_machine(default_synth)["DefinitionString"])["States"]
    publishers = [n for n, s in states.items() if "sns:publish" in s.get("Resource", "")]
    assert publishers == ["Notify failure"]
    assert "Retry" not in states["Notify failure"]  # a failed publish is a message not sent
    for name, state in states.items():
        for catch in state.get("Catch", []):
            if name == "Notify failure":
                assert catch["Next"] == "Failed"
                continue
            # every other catcher reaches the single publish (through steps that publish
            # nothing themselves, e.g. Pass states naming the failed state)
            nxt, seen = catch["Next"], set()
            while nxt != "Notify failure":
                assert nxt not in seen and "Next" in states[nxt], (name, nxt)
                seen.add(nxt)
                nxt = states[nxt]["Next"]
    alarms = _alarms_by_metric(default_synth)
    moved_by_a_caught_failure = {"ExecutionsFailed", "Errors"}
    for (metric, _), props in alarms.items():
        if metric in moved_by_a_caught_failure:
            assert not props.get("AlarmActions"), metric


def test_email_subscription_only_when_configured(options_synth: Synth) -> None:
    options_synth.template.has_resource_properties(
        "AWS::SNS::Subscription",
        {
            "Protocol": "email",
            "Endpoint": "ops@example.com",
            "TopicArn": {"Ref": options_synth.logical_id(options_synth.stack.alerting.topic)},
        },
    )


# --- schedule ---------------------------------------------------------------------------------


def test_schedule_from_context_starts_only_this_state_machine(options_synth: Synth) -> None:
    (schedule,) = options_synth.resources("AWS::Scheduler::Schedule").values()
    props = schedule["Properties"]
    sm_ref = {"Ref": options_synth.logical_id(options_synth.stack.pipeline.state_machine)}
    assert props["ScheduleExpression"] == "rate(6 hours)"
    assert props["State"] == "ENABLED"
    target = props["Target"]
    assert target["Arn"] == sm_ref
    assert json.loads(target["Input"]) == {"vs_currency": "eur", "max_coins": 500}
    role_id = target["RoleArn"]["Fn::GetAtt"][0]
    role = options_synth.data["Resources"][role_id]["Properties"]
    principals = [s["Principal"] for s in role["AssumeRolePolicyDocument"]["Statement"]]
    assert principals == [{"Service": "scheduler.amazonaws.com"}]
    statements = role_statements(options_synth, role_id)
    assert statements == [
        Statement(
            "Allow",
            ("states:StartExecution",),
            (f"<{options_synth.logical_id(options_synth.stack.pipeline.state_machine)}>",),
            "",
        )
    ]


# --- outputs ----------------------------------------------------------------------------------


def test_outputs(default_synth: Synth) -> None:
    outputs = default_synth.data["Outputs"]
    stack = default_synth.stack
    sm_id = default_synth.logical_id(stack.pipeline.state_machine)
    assert outputs["StateMachineArn"]["Value"] == {"Ref": sm_id}
    assert flatten(outputs["StateMachineConsoleUrl"]["Value"]) == (
        "https://<AWS::Region>.console.aws.amazon.com/states/home?region=<AWS::Region>"
        f"#/statemachines/view/<{sm_id}>"
    )
    assert outputs["LakeBucketName"]["Value"] == {
        "Ref": default_synth.logical_id(stack.lake.bucket)
    }
    assert outputs["AccessLogsBucketName"]["Value"] == {
        "Ref": default_synth.logical_id(stack.lake.access_logs)
    }
    assert outputs["SnowflakeSecretName"]["Value"] == "CryptoEtl/snowflake"
    assert outputs["CoinGeckoSecretName"]["Value"] == "CryptoEtl/coingecko-api-key"
    assert outputs["AlertTopicArn"]["Value"] == {
        "Ref": default_synth.logical_id(stack.alerting.topic)
    }


def test_each_function_traces_actively(default_synth: Synth) -> None:
    # The handlers' Powertools Tracer sends segments only when Lambda's active tracing is on.
    for name, fn in _functions(default_synth).items():
        assert fn["Properties"]["TracingConfig"] == {"Mode": "Active"}, name
