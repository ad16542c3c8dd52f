"""cdk-nag AwsSolutionsChecks (no unacknowledged findings, no stale acknowledgments); cfn-lint."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from unittest import mock

import aws_cdk as cdk
import pytest
from cfnlint.api import ManualArgs, lint_file

from tests.infra.conftest import Synth, synthesize

pytestmark = pytest.mark.infra

# Plugins whose findings fail a synth (the construct-annotation plugin only carries warnings).
ENFORCING_PLUGINS = {"AwsSolutions", "CloudFormation Validate"}


def _violations(outdir: Path) -> set[tuple[str, str]]:
    """(rule id, violating construct path) of every error in validation-report.json."""
    report_path = outdir / "validation-report.json"
    if not report_path.exists():
        return set()
    report = json.loads(report_path.read_text())
    found = set()
    for plugin in report["pluginReports"]:
        if plugin["pluginName"] not in ENFORCING_PLUGINS:
            continue
        for violation in plugin["violations"]:
            for construct in violation["violatingConstructs"]:
                found.add((violation["ruleName"], construct["constructPath"]))
    return found


def test_cdk_nag_aws_solutions_has_no_unacknowledged_findings(tmp_path: Path) -> None:
    # app.synth() raises (and writes validation-report.json) on any unacknowledged finding.
    synth = synthesize(tmp_path, nag=True)
    assert _violations(synth.outdir) == set()


_REAL_VALIDATIONS_OF = cdk.Validations.of


class _Recorder:
    """Stands in for ``Validations.of(scope)``: records acknowledgments instead of applying them."""

    def __init__(self, scope: Any, log: list[tuple[str, str, str]]) -> None:
        self.scope = scope
        self.path = scope.node.path
        self.log = log

    def __getattr__(self, name: str) -> Any:  # add_plugins etc. go to the real object
        return getattr(_REAL_VALIDATIONS_OF(self.scope), name)

    def acknowledge(self, *acks: Any) -> None:
        for ack in acks:
            self.log.append((ack.id, self.path, ack.reason))


def test_every_acknowledgment_is_needed_and_has_a_reason(tmp_path: Path) -> None:
    """With acknowledgments switched off, the findings are exactly the acknowledged ones."""
    acks: list[tuple[str, str, str]] = []
    with (
        mock.patch.object(cdk.Validations, "of", lambda scope: _Recorder(scope, acks)),
        pytest.raises(RuntimeError, match=r"Validation ?[Ff]ailed"),
    ):
        synthesize(tmp_path, nag=True)
    findings = _violations(tmp_path)
    assert acks, "no acknowledgments recorded"
    for rule_id, path, reason in acks:
        assert len(reason) >= 40, f"{rule_id} on {path}: reason too thin: {reason!r}"
        covered = {
            p for r, p in findings if r == rule_id and (p == path or p.startswith(path + "/"))
        }
        assert covered, f"stale acknowledgment {rule_id} on {path}: nothing to acknowledge"
    for rule_id, construct_path in findings:
        assert any(
            r == rule_id and (construct_path == p or construct_path.startswith(p + "/"))
            for r, p, _ in acks
        ), f"{rule_id} on {construct_path} is not acknowledged"


def test_cfn_lint_reports_nothing(default_synth: Synth) -> None:
    template = default_synth.outdir / f"{default_synth.stack.artifact_id}.template.json"
    assert template.is_file()
    # W3005: CDK emits explicit DependsOn that cfn-lint considers redundant.
    matches = lint_file(
        template,
        config=ManualArgs(ignore_checks=["W3005"], regions=["us-east-1", "eu-west-1"]),
    )
    assert [f"{m.rule.id} {m.message}" for m in matches] == []


def test_cfn_lint_with_every_option(options_synth: Synth) -> None:
    template = options_synth.outdir / f"{options_synth.stack.artifact_id}.template.json"
    matches = lint_file(template, config=ManualArgs(ignore_checks=["W3005"]))
    assert [f"{m.rule.id} {m.message}" for m in matches] == []
