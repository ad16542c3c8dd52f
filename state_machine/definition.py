"""Load and render the ASL definitions. CDK and the local runner both use exactly these files.

Two state machines: ``pipeline`` (``definition.asl.json``: Extract -> Transform -> Load, one
snapshot) and ``backfill`` (``backfill.asl.json``: Plan -> Fetch, a Distributed Map -> LoadHistory,
daily history). Every function takes the definition's name; the default is the pipeline.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

DEFINITION_PATH = Path(__file__).with_name("definition.asl.json")
BACKFILL_PATH = Path(__file__).with_name("backfill.asl.json")

PIPELINE = "pipeline"
BACKFILL = "backfill"
PATHS: dict[str, Path] = {PIPELINE: DEFINITION_PATH, BACKFILL: BACKFILL_PATH}

# Placeholder -> what it stands for. CDK passes these as ``definition_substitutions``.
SUBSTITUTIONS: dict[str, str] = {
    "ExtractFunctionArn": "ARN of the extract Lambda function",
    "TransformFunctionArn": "ARN of the transform Lambda function",
    "LoadFunctionArn": "ARN of the load Lambda function",
    "AlertTopicArn": "ARN of the SNS topic that receives failure alerts",
}
# The backfill reuses the extract (plan_backfill, fetch_history) and load (load_history)
# functions through their ``action`` member; it has no transform step.
BACKFILL_SUBSTITUTIONS: dict[str, str] = {
    name: SUBSTITUTIONS[name] for name in ("ExtractFunctionArn", "LoadFunctionArn", "AlertTopicArn")
}
SUBSTITUTIONS_OF: dict[str, dict[str, str]] = {
    PIPELINE: SUBSTITUTIONS,
    BACKFILL: BACKFILL_SUBSTITUTIONS,
}

_PLACEHOLDER = re.compile(r"\$\{([A-Za-z0-9_]+)\}")


def _path(name: str) -> Path:
    try:
        return PATHS[name]
    except KeyError:
        raise KeyError(f"no state machine {name!r}: one of {sorted(PATHS)}") from None


def definition_template(name: str = PIPELINE) -> str:
    """The definition ``name`` (``pipeline`` or ``backfill``) as stored, with ``${Placeholder}``
    markers. Raises KeyError for another name."""
    return _path(name).read_text(encoding="utf-8")


def placeholders(template: str | None = None, name: str = PIPELINE) -> set[str]:
    """The ``${...}`` placeholder names in ``template`` (default: the stored ``name``)."""
    return set(_PLACEHOLDER.findall(definition_template(name) if template is None else template))


def render(substitutions: dict[str, str], name: str = PIPELINE) -> str:
    """Fill every placeholder; a missing or unknown one is an error (KeyError), not a silent
    blank."""
    template = definition_template(name)
    needed = placeholders(template)
    missing = needed - substitutions.keys()
    unknown = substitutions.keys() - needed
    if missing or unknown:
        raise KeyError(f"substitutions: missing {sorted(missing)}, unknown {sorted(unknown)}")
    return _PLACEHOLDER.sub(lambda m: substitutions[m.group(1)], template)


def render_dict(substitutions: dict[str, str], name: str = PIPELINE) -> dict[str, Any]:
    """:func:`render`, parsed."""
    return json.loads(render(substitutions, name))
