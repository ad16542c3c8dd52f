"""Both state machines pass an independent ASL validator: asl-validator from npm (package.json;
``make node_modules/.package-lock.json`` or ``npm install`` installs it), run as a subprocess on
the stored files and on the definitions rendered with real-looking ARNs."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from state_machine.definition import BACKFILL, PATHS, SUBSTITUTIONS_OF, definition_template, render

pytestmark = pytest.mark.infra

REPO = Path(__file__).resolve().parents[2]
VALIDATOR = REPO / "node_modules" / ".bin" / "asl-validator"

ARNS = {
    "ExtractFunctionArn": "arn:aws:lambda:us-east-1:123456789012:function:crypto-etl-extract",
    "TransformFunctionArn": "arn:aws:lambda:us-east-1:123456789012:function:crypto-etl-transform",
    "LoadFunctionArn": "arn:aws:lambda:us-east-1:123456789012:function:crypto-etl-load",
    "AlertTopicArn": "arn:aws:sns:us-east-1:123456789012:crypto-etl-alerts",
}


@pytest.fixture(scope="module")
def validator() -> Path:
    if shutil.which("node") is None:
        pytest.skip("Node.js is not installed (README: prerequisites)")
    if not VALIDATOR.exists():
        pytest.skip("asl-validator is not installed: run `npm install` (package.json)")
    return VALIDATOR


def _validate(validator: Path, path: Path) -> tuple[int, str]:
    proc = subprocess.run(
        [str(validator), "--json-path", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return proc.returncode, proc.stdout + proc.stderr


@pytest.mark.parametrize("name", sorted(PATHS))
def test_the_stored_definition_is_valid(validator: Path, name: str) -> None:
    code, out = _validate(validator, PATHS[name])
    assert code == 0, out
    assert "is valid" in out


@pytest.mark.parametrize("name", sorted(PATHS))
def test_the_rendered_definition_is_valid(validator: Path, name: str, tmp_path: Path) -> None:
    subs = {k: v for k, v in ARNS.items() if k in SUBSTITUTIONS_OF[name]}
    path = tmp_path / f"{name}.json"
    path.write_text(render(subs, name))
    code, out = _validate(validator, path)
    assert code == 0, out


def _broken(tmp_path: Path, change: Any) -> Path:
    asl = json.loads(definition_template(BACKFILL))
    change(asl["States"]["Fetch"])
    path = tmp_path / "broken.json"
    path.write_text(json.dumps(asl))
    return path


@pytest.mark.parametrize(
    ("change", "complaint"),
    [
        (lambda m: m.update(ToleratedFailurePercentage=150), "ToleratedFailurePercentage"),
        (lambda m: m["ItemBatcher"].update(MaxItemsPerBatch="ten"), "MaxItemsPerBatch"),
        (lambda m: m.update(Next="Nowhere"), "Nowhere"),
    ],
    ids=["tolerance-over-100", "batch-size-not-a-number", "next-state-missing"],
)
def test_the_validator_refuses_a_broken_map(
    validator: Path, tmp_path: Path, change: Any, complaint: str
) -> None:
    """It checks the Map's fields, so a pass above means something."""
    code, out = _validate(validator, _broken(tmp_path, change))
    assert code != 0
    assert complaint in out, out
