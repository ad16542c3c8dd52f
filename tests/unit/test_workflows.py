"""The GitHub Actions workflows: `make lint-workflows` accepts them and rejects broken copies, and
they do what the README says (CI runs `make test` and `make synth`; deploy is manual, OIDC only).

They cannot run here, so the linter is the check: check-jsonschema with its vendored copy of
SchemaStore's github-workflow schema, run through the Makefile exactly as `make test` runs it.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import REPO_ROOT

WORKFLOWS = REPO_ROOT / ".github" / "workflows"
CI = WORKFLOWS / "ci.yml"
DEPLOY = WORKFLOWS / "deploy.yml"

needs_make = pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")


def _lint(*files: Path) -> subprocess.CompletedProcess[str]:
    """``make lint-workflows`` on ``files``, with this interpreter's venv, never reinstalling."""
    return subprocess.run(
        [
            "make",
            "--no-print-directory",
            "-o",
            ".venv/.installed-stamp",  # do not (re)install from inside a test
            "lint-workflows",
            f"BIN={Path(sys.executable).parent}",
            "WORKFLOWS=" + " ".join(str(f) for f in files),
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _load(path: Path) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    # YAML 1.1 reads the bare key `on` as the boolean True.
    data["on"] = data.pop(True, data.get("on"))
    return data


def _steps(workflow: dict[str, Any]) -> list[dict[str, Any]]:
    return [step for job in workflow["jobs"].values() for step in job["steps"]]


def _uses(workflow: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """action name (without the @ref) -> its ``with`` block."""
    return {
        step["uses"].split("@")[0]: step.get("with", {})
        for step in _steps(workflow)
        if "uses" in step
    }


def _runs(workflow: dict[str, Any]) -> str:
    return "\n".join(step["run"] for step in _steps(workflow) if "run" in step)


# --- the linter, through the Makefile --------------------------------------------------------


@needs_make
def test_make_lint_workflows_accepts_the_repository_workflows():
    done = _lint(CI, DEPLOY)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("ok -- validation done") == 2  # both schemas


def test_the_makefile_lints_every_workflow_file():
    assert sorted(WORKFLOWS.glob("*.yml")) == [CI, DEPLOY]
    assert not list(WORKFLOWS.glob("*.yaml"))  # the Makefile's wildcard is *.yml


# (what to break, replacement): each is a mistake a contributor could push.
BROKEN = {
    "misspelled runs-on": ("runs-on: ubuntu-24.04", "runs_on: ubuntu-24.04"),
    "unknown event": ("  pull_request:\n", "  pull_requests:\n"),
    "bad permission level": ("contents: read", "contents: readonly"),
    "timeout not a number": ("timeout-minutes: 60", "timeout-minutes: sixty"),
    "job without a timeout": ("    timeout-minutes: 60\n", ""),
    "step with both uses and run": (
        "      - uses: actions/checkout@v7\n",
        "      - uses: actions/checkout@v7\n        run: git status\n",
    ),
    "cancel-in-progress not a boolean": ("cancel-in-progress: true", "cancel-in-progress: maybe"),
}


@needs_make
@pytest.mark.parametrize("mistake", sorted(BROKEN))
def test_make_lint_workflows_rejects_a_broken_copy(tmp_path: Path, mistake: str):
    old, new = BROKEN[mistake]
    text = CI.read_text(encoding="utf-8")
    assert old in text, f"{mistake}: {old!r} not in ci.yml any more"
    broken = tmp_path / "ci.yml"
    broken.write_text(text.replace(old, new, 1), encoding="utf-8")
    done = _lint(broken)
    assert done.returncode != 0, f"{mistake} passed the lint:\n{done.stdout}"
    assert "Schema validation errors" in done.stdout + done.stderr
    # The untouched file still passes in the same run, so it is the mistake that failed it.
    assert _lint(CI).returncode == 0


# --- what the workflows do -------------------------------------------------------------------


def test_every_action_is_pinned_to_at_least_a_major_version():
    for path in (CI, DEPLOY):
        for step in _steps(_load(path)):
            if "uses" in step:
                assert re.fullmatch(
                    r"[\w.-]+/[\w./-]+@(v\d+(\.\d+){0,2}|[0-9a-f]{40})", step["uses"]
                ), f"{path.name}: {step['uses']}"


def test_ci_runs_the_readme_test_command_and_synth_on_pushes_and_pull_requests():
    ci = _load(CI)
    assert {"push", "pull_request"} <= set(ci["on"])
    assert ci["permissions"] == {"contents": "read"}
    runs = _runs(ci)
    assert re.search(r"^make test$", runs, re.MULTILINE)
    assert re.search(r"^make synth$", runs, re.MULTILINE)
    readme = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    assert "make test" in readme
    uses = _uses(ci)
    assert uses["actions/setup-python"]["cache"] == "pip"
    assert uses["actions/setup-node"]["cache"] == "npm"
    # The cache keys are files that exist (setup-* fail the job on a missing one).
    for action in ("actions/setup-python", "actions/setup-node"):
        for name in uses[action]["cache-dependency-path"].split():
            assert (REPO_ROOT / name).is_file(), name
    # The dashboard's browser test needs the paths it drives (tests/integration).
    assert "/usr/bin/chromium" in runs and "/usr/bin/chromedriver" in runs
    assert "chromium chromium-driver" in (REPO_ROOT / ".ci" / "run").read_text(encoding="utf-8")


def test_deploy_is_manual_and_uses_oidc_without_long_lived_keys():
    deploy = _load(DEPLOY)
    assert set(deploy["on"]) == {"workflow_dispatch"}
    inputs = deploy["on"]["workflow_dispatch"]["inputs"]
    assert inputs["environment"]["type"] == "environment"
    assert deploy["permissions"] == {"id-token": "write", "contents": "read"}
    (job,) = deploy["jobs"].values()
    assert job["environment"] == "${{ inputs.environment }}"
    aws = _uses(deploy)["aws-actions/configure-aws-credentials"]
    assert re.fullmatch(r"\$\{\{ (vars|secrets)\.\w+ \}\}", aws["role-to-assume"])
    assert not {"aws-access-key-id", "aws-secret-access-key", "aws-session-token"} & set(aws)
    text = DEPLOY.read_text(encoding="utf-8")
    assert "AWS_SECRET_ACCESS_KEY" not in text and "AWS_ACCESS_KEY_ID" not in text
    # The configure step comes before the deploy that needs its credentials.
    steps = job["steps"]
    configure = next(
        i for i, s in enumerate(steps) if "configure-aws-credentials" in s.get("uses", "")
    )
    make_deploy = next(i for i, s in enumerate(steps) if "make deploy" in s.get("run", ""))
    assert configure < make_deploy
    # Free-text input reaches the shell through env, never spliced into the script.
    assert "${{" not in steps[make_deploy]["run"]


def test_every_input_a_workflow_reads_is_declared():
    for path in (CI, DEPLOY):
        workflow = _load(path)
        triggers = workflow["on"] if isinstance(workflow["on"], dict) else {}
        declared = set(((triggers.get("workflow_dispatch") or {}).get("inputs") or {}).keys())
        used = set(re.findall(r"\binputs\.([\w-]+)", path.read_text(encoding="utf-8")))
        assert used <= declared, f"{path.name}: undeclared inputs {sorted(used - declared)}"


@needs_make
def test_every_make_target_a_workflow_runs_exists():
    for path in (CI, DEPLOY):
        for target in re.findall(r"^\s*make ([\w-]+)", _runs(_load(path)), re.MULTILINE):
            done = subprocess.run(
                ["make", "--no-print-directory", "-n", target],
                cwd=REPO_ROOT,
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
            assert done.returncode == 0, f"{path.name}: make {target}: {done.stderr}"
