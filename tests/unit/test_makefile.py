"""The Makefile's targets and the packaging metadata do what the README says.

``make -n`` prints the commands a target would run without running them, so these tests read
exactly what ``make clean`` or ``make deploy ARGS=…`` would execute.
"""

from __future__ import annotations

import importlib.metadata
import re
import shutil
import subprocess
import tomllib

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.conftest import REPO_ROOT

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")


def _make(*args: str) -> list[str]:
    """The command lines ``make -n <args>`` would run, from the repository root."""
    done = subprocess.run(
        ["make", "--no-print-directory", "-n", *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return done.stdout.splitlines()


def _removed_by(target: str) -> set[str]:
    removed: set[str] = set()
    for line in _make(target):
        if line.startswith("rm "):
            removed.update(w for w in line.split()[1:] if not w.startswith("-"))
    return removed


def test_make_clean_removes_build_output_and_never_the_local_data():
    removed = _removed_by("clean")
    assert {"cdk.out", ".build"} <= removed
    assert not any(path.rstrip("/") in (".local", ".") for path in removed), removed


def test_make_clean_data_removes_only_the_local_data():
    assert _removed_by("clean-data") == {".local"}


def test_make_help_lists_each_target_with_an_honest_line():
    done = subprocess.run(
        ["make", "--no-print-directory", "help"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    lines = {ln.split(":", 1)[0]: ln.split(":", 1)[1] for ln in done.stdout.splitlines()}
    for target in ("demo", "test", "synth", "diff", "deploy", "destroy", "clean", "clean-data"):
        assert target in lines, done.stdout
    assert ".local" in lines["clean"] and "keeps" in lines["clean"]
    assert ".local" in lines["clean-data"] and "DELETE" in lines["clean-data"]
    # Every documented target exists (make -n fails on an unknown one).
    for target in lines:
        _make(target)


@pytest.mark.parametrize(
    ("target", "command"),
    [
        ("synth", "npx cdk synth --quiet -c bundling=false"),
        ("diff", "npx cdk diff"),
        ("deploy", "npx cdk deploy"),
        ("destroy", "npx cdk destroy"),
    ],
)
def test_cdk_targets_pass_args_through(target: str, command: str):
    args = '-c alert_email=you@example.com -c schedule="rate(6 hours)"'
    lines = [ln for ln in _make(target, f"ARGS={args}") if "npx cdk" in ln]
    assert len(lines) == 1, lines
    assert lines[0].endswith(f"{command} {args}"), lines[0]


def _big_install(venv: str) -> str:
    lines = [ln for ln in _make("-B", "install", f"VENV={venv}") if "pip install" in ln]
    lines = [ln for ln in lines if "-e " in ln]
    assert len(lines) == 1, lines
    return lines[0]


def test_the_first_install_shows_pip_progress_and_updates_are_quiet(tmp_path):
    quiet = re.compile(r"\s(-q|--quiet)\b")
    venv = tmp_path / "venv"
    # First install: no stamp yet, so pip's progress is shown.
    assert not quiet.search(_big_install(str(venv))), _big_install(str(venv))
    venv.mkdir()
    (venv / ".installed-stamp").touch()
    # pyproject.toml or constraints.txt changed since: the update is quiet.
    assert quiet.search(_big_install(str(venv)))


def _pyproject() -> dict:
    return tomllib.loads((REPO_ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def test_every_requested_extra_exists_in_the_installed_distribution():
    """pip only warns ("moto 5.2.5 does not provide the extra 'lambda'") and installs nothing."""
    project = _pyproject()["project"]
    requirements = list(project["dependencies"])
    for group in project["optional-dependencies"].values():
        requirements += group
    checked = 0
    for text in requirements:
        req = Requirement(text)
        if canonicalize_name(req.name) == canonicalize_name(project["name"]) or not req.extras:
            continue
        provided = {
            canonicalize_name(e)
            for e in importlib.metadata.metadata(req.name).get_all("Provides-Extra") or []
        }
        missing = {e for e in req.extras if canonicalize_name(e) not in provided}
        assert not missing, f"{req.name} does not provide the extras {sorted(missing)}"
        checked += 1
    assert checked >= 2  # moto and fakesnow at least


def test_license_is_an_spdx_string_and_the_backend_reads_it():
    data = _pyproject()
    assert isinstance(data["project"]["license"], str)
    # The table form is deprecated; setuptools reads the SPDX string from 77.0.0 on
    # (its changelog, v77.0.0: "Added initial support for license expression (PEP 639)").
    setuptools = [Requirement(r) for r in data["build-system"]["requires"]]
    spec = next(r.specifier for r in setuptools if r.name == "setuptools")
    assert "77.0.0" in spec and "76.999" not in spec
    classifiers = data["project"].get("classifiers", [])
    assert not [c for c in classifiers if c.startswith("License ::")]


def test_make_test_lints_every_workflow_against_both_schemas():
    """`make test` runs `make lint`, which checks .github/workflows/*.yml (tests/unit/
    test_workflows.py proves the check fails on a broken workflow)."""
    workflows = sorted(
        p.relative_to(REPO_ROOT).as_posix()
        for p in (REPO_ROOT / ".github" / "workflows").glob("*.yml")
    )
    assert workflows, "no workflow files"
    checks = [ln for ln in _make("test") if "check-jsonschema" in ln]
    schemas = {re.search(r"--builtin-schema (\S+)", ln).group(1): ln.split()[3:] for ln in checks}
    assert set(schemas) == {"vendor.github-workflows", "custom.github-workflows-require-timeout"}
    for files in schemas.values():
        assert sorted(files) == workflows
    # The linter is a dev dependency, so `make install` brings it.
    dev = [Requirement(r).name for r in _pyproject()["project"]["optional-dependencies"]["dev"]]
    assert "check-jsonschema" in dev
    assert importlib.metadata.version("check-jsonschema")
