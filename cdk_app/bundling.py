"""Lambda code assets without Docker: stage each function's code, pip-install its dependencies.

Each function's asset is ``functions/__init__.py`` + ``functions/common/`` + ``functions/<name>/``
(no tests, no other functions) plus the third-party packages in ``REQUIREMENTS[name]``, installed
by ``pip install --platform manylinux… --only-binary=:all: --python-version 3.12 --target …`` for
Lambda's arm64 / Amazon Linux 2023 runtime (``LocalPipBundler``, a CDK ``ILocalBundling``).
CDK uses Docker only if local bundling reports it cannot run (no pip), as it always does.

Every install is constrained by the repository's ``constraints.txt`` (``pip install -c``, as
``make install`` does for the laptop), so the bundles get the versions the tests ran against.
The file is copied into each staged source (``constraints.txt`` next to ``requirements.txt``) so
it is part of the asset hash and also reaches CDK's Docker fallback.

pandas is not bundled: the transform function gets it from the AWS SDK for pandas managed layer
(a constraint only limits versions, it never adds a package).
boto3 comes with the Lambda runtime (the Snowflake connector still pulls its own copy in).

The staged sources live in ``.build/lambda-src/<name>-<content hash>/`` and installed
dependencies are cached in ``.build/deps/<hash>/`` so a second bundled synth needs no network.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import aws_cdk as cdk
import jsii
from aws_cdk import aws_lambda as lambda_

REPO_ROOT = Path(__file__).resolve().parents[1]
BUILD_ROOT = REPO_ROOT / ".build"
# Version constraints shared by make install, the tests and the Lambda bundles.
CONSTRAINTS_NAME = "constraints.txt"

FUNCTION_NAMES: tuple[str, ...] = ("extract", "transform", "load")

# Third-party packages each function needs at runtime, pinned to the versions the local test
# suite runs against (pyproject.toml). Lambda's python3.12 runtime already has boto3.
_POWERTOOLS = "aws-lambda-powertools==3.37.0"
# Powertools Tracer needs the X-Ray SDK at runtime (it is not in Lambda's python3.12 runtime).
_XRAY = "aws-xray-sdk==2.15.0"
REQUIREMENTS: dict[str, tuple[str, ...]] = {
    "extract": ("requests==2.34.2", _POWERTOOLS, _XRAY),
    # pandas (and numpy) come from the AWS SDK for pandas layer, not from this bundle.
    "transform": ("orjson==3.13.0", _POWERTOOLS, _XRAY),
    "load": ("snowflake-connector-python==4.8.1", _POWERTOOLS, _XRAY),
}

# Lambda python3.12 runs on Amazon Linux 2023 (glibc 2.34): manylinux2014 (glibc 2.17) and
# manylinux_2_28 wheels both load there; allowing both lets pip pick whichever a package ships.
PIP_PLATFORM_ARGS: tuple[str, ...] = (
    "--platform",
    "manylinux2014_aarch64",
    "--platform",
    "manylinux_2_28_aarch64",
    "--implementation",
    "cp",
    "--python-version",
    "3.12",
    "--only-binary=:all:",
)

_SKIP_DIRS = {"__pycache__", "tests", ".pytest_cache"}
_SKIP_SUFFIXES = {".pyc", ".pyo"}


def _source_files(repo_root: Path, name: str) -> list[Path]:
    """Files (relative to ``repo_root``) that make up function ``name``'s code."""
    functions = repo_root / "functions"
    files: list[Path] = []
    if (functions / "__init__.py").is_file():
        files.append(Path("functions/__init__.py"))
    for sub in ("common", name):
        base = functions / sub
        if not base.is_dir():
            continue
        for path in sorted(base.rglob("*")):
            rel = path.relative_to(repo_root)
            if (
                path.is_file()
                and not _SKIP_DIRS.intersection(rel.parts)
                and path.suffix not in _SKIP_SUFFIXES
            ):
                files.append(rel)
    return files


def _digest(parts: Iterable[bytes]) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(len(part).to_bytes(8, "big"))
        h.update(part)
    return h.hexdigest()[:20]


def _publish_dir(build: Path, dest: Path) -> None:
    """Move a fully built ``build`` directory to ``dest`` (another process may have won)."""
    try:
        os.rename(build, dest)
    except OSError:
        if not dest.is_dir():
            raise
        shutil.rmtree(build, ignore_errors=True)


def stage_function_source(
    name: str, repo_root: Path = REPO_ROOT, build_root: Path = BUILD_ROOT
) -> Path:
    """Copy function ``name``'s code, requirements and constraints into a content-addressed
    directory.

    Returns ``<build_root>/lambda-src/<name>-<hash>/`` containing ``functions/…``,
    ``requirements.txt`` and ``constraints.txt`` (a copy of ``<repo_root>/constraints.txt``).
    A missing ``functions/<name>/`` is tolerated (the stack warns); a missing constraints file
    raises ``FileNotFoundError`` (bundles must not drift from the tested versions).
    """
    if name not in REQUIREMENTS:
        raise KeyError(f"unknown Lambda function {name!r}; expected one of {FUNCTION_NAMES}")
    constraints_path = repo_root / CONSTRAINTS_NAME
    if not constraints_path.is_file():
        raise FileNotFoundError(
            f"{constraints_path} is missing: the Lambda bundles are installed with "
            f"pip -c {CONSTRAINTS_NAME} so they get the versions the tests use"
        )
    constraints = constraints_path.read_bytes()
    files = _source_files(repo_root, name)
    requirements = "\n".join(REQUIREMENTS[name]) + "\n"
    digest = _digest(
        [requirements.encode(), constraints]
        + [p.as_posix().encode() + b"\0" + (repo_root / p).read_bytes() for p in files]
    )
    staging_root = build_root / "lambda-src"
    dest = staging_root / f"{name}-{digest}"
    if not dest.is_dir():
        staging_root.mkdir(parents=True, exist_ok=True)
        build = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=staging_root))
        for rel in files:
            target = build / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(repo_root / rel, target)
        (build / "requirements.txt").write_text(requirements, encoding="utf-8")
        (build / CONSTRAINTS_NAME).write_bytes(constraints)
        _publish_dir(build, dest)
    for stale in staging_root.glob(f"{name}-*"):
        if stale != dest:
            shutil.rmtree(stale, ignore_errors=True)
    return dest


def pip_install_command(
    requirements: Sequence[str], target: str, *, constraints: Path | str
) -> list[str]:
    """The pip command that installs ``requirements`` for Lambda arm64 / Python 3.12 into
    ``target``, every version limited by the ``constraints`` file (``pip -c``)."""
    return [
        sys.executable,
        "-m",
        "pip",
        "install",
        "--quiet",
        "--disable-pip-version-check",
        "--no-compile",
        *PIP_PLATFORM_ARGS,
        "-c",
        str(constraints),
        "--target",
        target,
        *requirements,
    ]


def _pip_available() -> bool:
    try:
        result = subprocess.run(
            [sys.executable, "-m", "pip", "--version"], capture_output=True, check=False
        )
    except OSError:
        return False
    return result.returncode == 0


def install_dependencies(
    requirements: Sequence[str], constraints: Path, build_root: Path = BUILD_ROOT
) -> Path:
    """Install ``requirements`` (limited by the ``constraints`` file) once into
    ``<build_root>/deps/<hash>/`` and return that folder; the hash covers the constraints' text.
    Raises ``RuntimeError`` with pip's message if pip fails."""
    key = _digest(
        [r.encode() for r in (*requirements, *PIP_PLATFORM_ARGS)] + [constraints.read_bytes()]
    )
    deps_root = build_root / "deps"
    dest = deps_root / key
    if dest.is_dir():
        return dest
    deps_root.mkdir(parents=True, exist_ok=True)
    build = Path(tempfile.mkdtemp(prefix=".deps-", dir=deps_root))
    if requirements:
        result = subprocess.run(
            pip_install_command(requirements, str(build), constraints=constraints),
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            shutil.rmtree(build, ignore_errors=True)
            raise RuntimeError(
                f"pip could not install {list(requirements)} for Lambda arm64/py3.12 "
                f"(exit {result.returncode}):\n{result.stderr.strip()}\n"
                "Synthesizing without dependencies: add '-c bundling=false'."
            )
    _publish_dir(build, dest)
    return dest


@jsii.implements(cdk.ILocalBundling)
class LocalPipBundler:
    """CDK local bundling: cached ``pip install --platform …`` output plus the function code."""

    def __init__(self, source_dir: Path, requirements: Sequence[str], build_root: Path) -> None:
        self.source_dir = source_dir
        self.requirements = tuple(requirements)
        self.build_root = build_root

    def try_bundle(self, output_dir: str, options: Any = None) -> bool:
        """Fill ``output_dir``; ``False`` (pip unavailable) lets CDK fall back to Docker."""
        if not _pip_available():
            return False
        deps = install_dependencies(
            self.requirements, self.source_dir / CONSTRAINTS_NAME, self.build_root
        )
        shutil.copytree(deps, output_dir, dirs_exist_ok=True)
        shutil.copytree(
            self.source_dir / "functions", Path(output_dir) / "functions", dirs_exist_ok=True
        )
        return True


def function_code(name: str, *, bundling: bool, build_root: Path = BUILD_ROOT) -> lambda_.Code:
    """The code asset of function ``name``: bundled with its dependencies, or code only."""
    source = stage_function_source(name, build_root=build_root)
    if not bundling:
        return lambda_.Code.from_asset(str(source), exclude=["requirements.txt", CONSTRAINTS_NAME])
    requirements = REQUIREMENTS[name]
    docker_pip = " ".join(
        [
            "pip",
            "install",
            "--quiet",
            "--no-compile",
            *PIP_PLATFORM_ARGS,
            "-c",
            CONSTRAINTS_NAME,
            "-r",
            "requirements.txt",
        ]
    )
    return lambda_.Code.from_asset(
        str(source),
        asset_hash_type=cdk.AssetHashType.SOURCE,
        bundling=cdk.BundlingOptions(
            # Only used if local bundling cannot run: CDK's own Docker fallback.
            image=lambda_.Runtime.PYTHON_3_12.bundling_image,
            command=[
                "bash",
                "-c",
                f"{docker_pip} --target /asset-output && cp -r functions /asset-output/",
            ],
            local=LocalPipBundler(source, requirements, build_root),
        ),
    )
