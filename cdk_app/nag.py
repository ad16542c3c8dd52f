"""cdk-nag (3.x) acknowledgments: every suppression carries its reason, next to the resource.

cdk-nag 3 reports findings through CDK's policy-validation framework: ``AwsSolutionsChecks`` is a
validation plugin (``Validations.of(app).add_plugins(...)``) and a finding is acknowledged with
``Validations.of(construct).acknowledge(Acknowledgment(id=..., reason=...))``. Findings about a
specific wildcard carry it in the id, e.g. ``AwsSolutions-IAM5[Resource::<Bucket.Arn>/raw/*]``.
"""

from __future__ import annotations

from collections.abc import Sequence

import aws_cdk as cdk
from constructs import IConstruct


def acknowledge(scope: IConstruct, rule: str, reason: str, findings: Sequence[str] = ()) -> None:
    """Acknowledge ``rule`` (or only its listed ``findings``) on ``scope`` with ``reason``."""
    if len(reason.strip()) < 20:
        raise ValueError(f"acknowledgment of {rule} needs a real reason, got {reason!r}")
    ids = [f"{rule}[{finding}]" for finding in findings] or [rule]
    cdk.Validations.of(scope).acknowledge(
        *[cdk.Acknowledgment(id=finding_id, reason=reason) for finding_id in ids]
    )


def arn_ref(resource: IConstruct, attribute: str = "Arn") -> str:
    """How cdk-nag spells ``Fn::GetAtt [<logical id>, <attribute>]`` inside a finding id."""
    default_child = resource.node.default_child
    if not isinstance(default_child, cdk.CfnElement):
        raise TypeError(f"{resource.node.path} has no CloudFormation resource")
    logical_id = cdk.Stack.of(resource).get_logical_id(default_child)
    return f"<{logical_id}.{attribute}>"
