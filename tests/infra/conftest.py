"""Synthesize the CDK app in-process (no CLI, no Docker, no network) for the infra tests."""

from __future__ import annotations

import os

# Node 20 makes jsii print an end-of-life banner on every import; silence it (the value is
# Node's major version).
os.environ.setdefault("JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION", "20")

import json
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aws_cdk as cdk
import pytest
from aws_cdk import assertions

from cdk_app.app import build_app, cdk_json_context
from cdk_app.stack import CryptoEtlStack


@dataclass
class Synth:
    """One synthesized app: the stack object, its template as a dict, and where it was written."""

    app: cdk.App
    stack: CryptoEtlStack
    template: assertions.Template
    data: dict[str, Any]
    outdir: Path
    seconds: float

    def resources(self, type_: str) -> dict[str, dict[str, Any]]:
        return {k: v for k, v in self.data["Resources"].items() if v["Type"] == type_}

    def logical_id(self, construct: Any) -> str:
        element = (
            construct if isinstance(construct, cdk.CfnElement) else construct.node.default_child
        )
        return self.stack.get_logical_id(element)


def synthesize(outdir: Path, *, nag: bool = False, **overrides: Any) -> Synth:
    """Build the app with cdk.json's context plus ``overrides`` (bundling off unless given)."""
    context = cdk_json_context()
    context["bundling"] = False
    context.update(overrides)
    started = time.perf_counter()
    app, stack = build_app(context, str(outdir), nag=nag)
    assembly = app.synth()
    seconds = time.perf_counter() - started
    data = assembly.get_stack_artifact(stack.artifact_id).template
    return Synth(
        app=app,
        stack=stack,
        template=assertions.Template.from_json(data),
        data=data,
        outdir=outdir,
        seconds=seconds,
    )


@pytest.fixture(scope="package")
def default_synth(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Synth]:
    """The stack with cdk.json's defaults (bundling off), synthesized once for all infra tests."""
    yield synthesize(tmp_path_factory.mktemp("cdk-default"))


@pytest.fixture(scope="package")
def options_synth(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Synth]:
    """The stack with every optional feature switched on from context."""
    yield synthesize(
        tmp_path_factory.mktemp("cdk-options"),
        schedule="rate(6 hours)",
        execution_input=json.dumps({"vs_currency": "eur", "max_coins": 500}),
        alert_email="ops@example.com",
        snowflake_warehouse="ETL_WH",
        snowflake_role="ETL_ROLE",
        coingecko_api_plan="demo",
        coingecko_max_retry_wait_seconds="60",
        coingecko_rate_limit="30/60",
        aws_sdk_pandas_layer_arn=(
            "arn:aws:lambda:eu-west-1:336392948345:layer:AWSSDKPandas-Python312-Arm64:20"
        ),
        lake_removal_policy="destroy",
        raw_retention_days="90",
        log_retention_days="14",
    )


# --- helpers to read IAM out of the template -------------------------------------------------


def flatten(value: Any) -> str:
    """Render an ARN expression as text: GetAtt → ``<Id.Attr>``, Ref → ``<Id>``, Join → concat."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and len(value) == 1:
        ((fn, arg),) = value.items()
        if fn == "Fn::GetAtt":
            return f"<{arg[0]}.{arg[1]}>"
        if fn == "Ref":
            return f"<{arg}>"
        if fn == "Fn::Join":
            return arg[0].join(flatten(part) for part in arg[1])
    raise ValueError(f"cannot flatten {value!r}")


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


@dataclass(frozen=True)
class Statement:
    effect: str
    actions: tuple[str, ...]
    resources: tuple[str, ...]
    condition: str  # JSON of the Condition block ("" if none)


def role_statements(synth: Synth, role_logical_id: str) -> list[Statement]:
    """Every statement of every inline/attached AWS::IAM::Policy of one role."""
    found: list[Statement] = []
    for policy in synth.resources("AWS::IAM::Policy").values():
        props = policy["Properties"]
        if {"Ref": role_logical_id} not in props.get("Roles", []):
            continue
        for st in props["PolicyDocument"]["Statement"]:
            found.append(
                Statement(
                    effect=st["Effect"],
                    actions=tuple(sorted(_as_list(st["Action"]))),
                    resources=tuple(sorted(flatten(r) for r in _as_list(st["Resource"]))),
                    condition=json.dumps(st.get("Condition", {}), sort_keys=True)
                    if "Condition" in st
                    else "",
                )
            )
    return found


def _glob(pattern: str, text: str) -> bool:
    regex = "^" + ".*".join(re.escape(part) for part in pattern.split("*")) + "$"
    return re.match(regex, text) is not None


def is_allowed(statements: list[Statement], action: str, resource: str) -> bool:
    """A small IAM evaluator for unconditioned Allow statements (no Deny in these policies)."""
    return any(
        st.effect == "Allow"
        and not st.condition
        and any(_glob(a, action) for a in st.actions)
        and any(_glob(r, resource) for r in st.resources)
        for st in statements
    )
