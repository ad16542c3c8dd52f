"""Load and render the ASL definition. CDK and the local runner both use exactly this file."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

DEFINITION_PATH = Path(__file__).with_name("definition.asl.json")

# Placeholder -> what it stands for. CDK passes these as ``definition_substitutions``.
SUBSTITUTIONS: dict[str, str] = {
    "ExtractFunctionArn": "ARN of the extract Lambda function",
    "TransformFunctionArn": "ARN of the transform Lambda function",
    "LoadFunctionArn": "ARN of the load Lambda function",
    "AlertTopicArn": "ARN of the SNS topic that receives failure alerts",
}

_PLACEHOLDER = re.compile(r"\$\{([A-Za-z0-9_]+)\}")


def definition_template() -> str:
    """The definition as stored, with ``${Placeholder}`` markers."""
    return DEFINITION_PATH.read_text(encoding="utf-8")


def placeholders(template: str | None = None) -> set[str]:
    return set(_PLACEHOLDER.findall(definition_template() if template is None else template))


def render(substitutions: dict[str, str]) -> str:
    """Fill every placeholder; a missing or unknown one is an error, not a silent blank."""
    template = definition_template()
    needed = placeholders(template)
    missing = needed - substitutions.keys()
    unknown = substitutions.keys() - needed
    if missing or unknown:
        raise KeyError(f"substitutions: missing {sorted(missing)}, unknown {sorted(unknown)}")
    return _PLACEHOLDER.sub(lambda m: substitutions[m.group(1)], template)


def render_dict(substitutions: dict[str, str]) -> dict[str, Any]:
    return json.loads(render(substitutions))
