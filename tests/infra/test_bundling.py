"""Lambda assets: what goes into each function's code, and (opt-in) the bundled sizes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from cdk_app import bundling
from cdk_app.bundling import (
    CONSTRAINTS_NAME,
    FUNCTION_NAMES,
    REQUIREMENTS,
    LocalPipBundler,
    install_dependencies,
    pip_install_command,
    stage_function_source,
)
from cdk_app.pipeline_functions import LAMBDA_UNZIPPED_LIMIT_BYTES, PANDAS_LAYER_UNZIPPED_BYTES
from tests.infra.conftest import Synth, synthesize

pytestmark = pytest.mark.infra

REPO_ROOT = Path(__file__).resolve().parents[2]
FAKE_CONSTRAINTS = "pandas>=2.2,<3\nrequests<3\n"


def _fake_repo(root: Path) -> Path:
    files = {
        "functions/__init__.py": "",
        "functions/common/__init__.py": "",
        "functions/common/keys.py": "RAW = 'raw/'\n",
        "functions/common/__pycache__/keys.cpython-311.pyc": "junk",
        "functions/extract/__init__.py": "",
        "functions/extract/handler.py": "def handler(event, context):\n    return {}\n",
        "functions/extract/paging.py": "PAGE = 250\n",
        "functions/extract/tests/test_paging.py": "def test(): pass\n",
        "functions/extract/__pycache__/handler.cpython-311.pyc": "junk",
        "functions/load/handler.py": "def handler(event, context):\n    return {}\n",
        "tests/unit/test_x.py": "",
        "constraints.txt": FAKE_CONSTRAINTS,
    }
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def _tree(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}


def test_staging_takes_only_the_function_its_common_code_and_requirements(tmp_path: Path) -> None:
    repo = _fake_repo(tmp_path / "repo")
    staged = stage_function_source("extract", repo_root=repo, build_root=tmp_path / "build")
    assert _tree(staged) == {
        "functions/__init__.py",
        "functions/common/__init__.py",
        "functions/common/keys.py",
        "functions/extract/__init__.py",
        "functions/extract/handler.py",
        "functions/extract/paging.py",
        "requirements.txt",
        "constraints.txt",
    }
    assert (staged / "requirements.txt").read_text().split() == list(REQUIREMENTS["extract"])
    assert (staged / "constraints.txt").read_text() == FAKE_CONSTRAINTS


def test_staging_is_content_addressed(tmp_path: Path) -> None:
    repo = _fake_repo(tmp_path / "repo")
    build = tmp_path / "build"
    first = stage_function_source("extract", repo_root=repo, build_root=build)
    assert stage_function_source("extract", repo_root=repo, build_root=build) == first
    (repo / "functions/extract/paging.py").write_text("PAGE = 100\n")
    second = stage_function_source("extract", repo_root=repo, build_root=build)
    assert second != first
    assert (second / "functions/extract/paging.py").read_text() == "PAGE = 100\n"
    assert not first.exists()  # the stale copy of the same function is pruned
    # A change in another function does not touch this one's asset.
    (repo / "functions/load/handler.py").write_text("# changed\n")
    assert stage_function_source("extract", repo_root=repo, build_root=build) == second
    # New constraints make a new asset (its dependencies are reinstalled).
    (repo / "constraints.txt").write_text("requests<2.33\n")
    third = stage_function_source("extract", repo_root=repo, build_root=build)
    assert third != second
    assert (third / "constraints.txt").read_text() == "requests<2.33\n"


def test_staging_refuses_a_repo_without_constraints(tmp_path: Path) -> None:
    repo = _fake_repo(tmp_path / "repo")
    (repo / "constraints.txt").unlink()
    with pytest.raises(FileNotFoundError, match=r"constraints\.txt is missing"):
        stage_function_source("extract", repo_root=repo, build_root=tmp_path / "build")


def test_staging_tolerates_a_function_not_written_yet(tmp_path: Path) -> None:
    repo = _fake_repo(tmp_path / "repo")
    staged = stage_function_source("transform", repo_root=repo, build_root=tmp_path / "build")
    assert not any(p.startswith("functions/transform") for p in _tree(staged))
    assert "functions/common/keys.py" in _tree(staged)


def test_unknown_function_is_refused(tmp_path: Path) -> None:
    with pytest.raises(KeyError, match="unknown Lambda function 'report'"):
        stage_function_source("report", repo_root=tmp_path, build_root=tmp_path)


def test_local_bundler_copies_dependencies_and_code(tmp_path: Path) -> None:
    repo = _fake_repo(tmp_path / "repo")
    build = tmp_path / "build"
    staged = stage_function_source("load", repo_root=repo, build_root=build)
    # Pre-populate the dependency cache as pip would have, so no network is needed here.
    deps = install_dependencies((), staged / CONSTRAINTS_NAME, build_root=build)
    (deps / "fakepkg").mkdir()
    (deps / "fakepkg/__init__.py").write_text("VERSION = 1\n")
    out = tmp_path / "out"
    out.mkdir()
    assert LocalPipBundler(staged, (), build).try_bundle(str(out), None) is True
    assert _tree(out) == {
        "fakepkg/__init__.py",
        "functions/__init__.py",
        "functions/common/__init__.py",
        "functions/common/keys.py",
        "functions/load/handler.py",
    }


def test_local_bundler_defers_to_docker_when_pip_is_missing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(bundling.sys, "executable", str(tmp_path / "no-python-here"))
    out = tmp_path / "out"
    out.mkdir()
    assert LocalPipBundler(tmp_path, ("requests",), tmp_path).try_bundle(str(out), None) is False
    assert list(out.iterdir()) == []


def test_pip_command_targets_lambda_arm64_python312() -> None:
    cmd = pip_install_command(["requests==2.34.2"], "/out", constraints="/repo/constraints.txt")
    joined = " ".join(cmd)
    assert cmd[:4] == [sys.executable, "-m", "pip", "install"]
    assert "--platform manylinux2014_aarch64" in joined
    assert "--only-binary=:all:" in cmd
    assert "--python-version 3.12" in joined
    assert "--target /out" in joined
    assert "-c /repo/constraints.txt" in joined
    assert cmd[-1] == "requests==2.34.2"


@pytest.mark.parametrize("name", FUNCTION_NAMES)
def test_each_function_is_installed_with_the_repo_constraints(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    """The pip command the local bundler really runs carries ``-c`` with the repo's file."""
    commands: list[list[str]] = []
    real_run = subprocess.run

    def recording_run(cmd: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        if cmd[3:4] == ["install"]:  # record the install; pip --version really runs
            commands.append(list(cmd))
            return subprocess.CompletedProcess(cmd, 0, "", "")
        return real_run(cmd, **kwargs)

    monkeypatch.setattr(bundling.subprocess, "run", recording_run)
    staged = stage_function_source(name, build_root=tmp_path / "build")
    out = tmp_path / "out"
    out.mkdir()
    assert LocalPipBundler(staged, REQUIREMENTS[name], tmp_path / "build").try_bundle(str(out))
    (cmd,) = commands
    constraints = Path(cmd[cmd.index("-c") + 1])
    assert constraints == staged / "constraints.txt"
    assert constraints.read_bytes() == (REPO_ROOT / "constraints.txt").read_bytes()
    assert cmd[-len(REQUIREMENTS[name]) :] == list(REQUIREMENTS[name])
    # The constraints file and the requirements list never ship in the asset itself.
    assert not (out / "constraints.txt").exists() and not (out / "requirements.txt").exists()


def _constraints() -> dict[str, Requirement]:
    found = {}
    for line in (REPO_ROOT / "constraints.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            req = Requirement(line)
            found[canonicalize_name(req.name)] = req
    return found


def test_constraints_keep_pandas_below_3_like_the_layer() -> None:
    # The AWS SDK for pandas layer (awswrangler 3.x) requires pandas < 3 (its pyproject:
    # "pandas>=1.2.5,<3.0.0"), so the laptop and the tests must not run pandas 3.
    pandas = _constraints()["pandas"].specifier
    assert "2.2.3" in pandas
    for version in ("3.0.0", "3.0.0rc0", "3.1.0"):
        assert not pandas.contains(version, prereleases=True), version


def test_pinned_requirements_satisfy_the_constraints() -> None:
    # A pin outside the constraints would make every bundled synth fail in pip's resolver.
    constraints = _constraints()
    for name in FUNCTION_NAMES:
        for line in REQUIREMENTS[name]:
            req = Requirement(line)
            (pin,) = req.specifier
            limit = constraints.get(canonicalize_name(req.name))
            if limit is not None:
                assert limit.specifier.contains(pin.version, prereleases=True), (name, line)


def test_no_function_bundles_pandas() -> None:
    for name in FUNCTION_NAMES:
        assert not any(r.lower().startswith(("pandas", "numpy")) for r in REQUIREMENTS[name])


def test_only_cdk_app_imports_aws_cdk() -> None:
    offenders = []
    for folder in ("functions", "state_machine", "local_mode", "benchmarks", "looker"):
        for path in (REPO_ROOT / folder).rglob("*.py"):
            text = path.read_text(encoding="utf-8")
            if "import aws_cdk" in text or "from aws_cdk" in text or "import cdk_nag" in text:
                offenders.append(str(path.relative_to(REPO_ROOT)))
    assert offenders == []


# --- bundled sizes (opt-in: needs PyPI) ---------------------------------------------------------


def _dir_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file() and not p.is_symlink())


@pytest.fixture(scope="module")
def bundled_synth(tmp_path_factory: pytest.TempPathFactory) -> Synth:
    if os.environ.get("CRYPTO_ETL_TEST_BUNDLING") != "1":
        pytest.skip(
            "bundled-size check needs pip to download Linux arm64 wheels from PyPI; "
            "run with CRYPTO_ETL_TEST_BUNDLING=1"
        )
    return synthesize(tmp_path_factory.mktemp("cdk-bundled"), bundling=True)


def test_bundled_functions_fit_in_lambda_with_their_layers(bundled_synth: Synth) -> None:
    sizes = {}
    for name, fn in bundled_synth.stack.functions.functions.items():
        props = bundled_synth.data["Resources"][bundled_synth.logical_id(fn)]["Properties"]
        asset = bundled_synth.outdir / f"asset.{props['Code']['S3Key'].removesuffix('.zip')}"
        files = {p.relative_to(asset).as_posix() for p in asset.rglob("*") if p.is_file()}
        code = _dir_bytes(asset)
        layers = PANDAS_LAYER_UNZIPPED_BYTES * len(props.get("Layers", []))
        sizes[name] = (code, layers)
        assert code + layers < LAMBDA_UNZIPPED_LIMIT_BYTES, (name, code, layers)
        assert f"functions/{name}/handler.py" in files
        others = set(FUNCTION_NAMES) - {name}
        assert not any(f.split("/")[1] in others for f in files if f.startswith("functions/"))
        # Our own tests never ship (a dependency's own tests/ folder, e.g. certifi's, may).
        assert not any(f.startswith(("tests/", "local_mode/", "cdk_app/")) for f in files)
        assert not any(f.endswith(".pyc") for f in files)
        assert not any(f.startswith(("pandas/", "numpy/")) for f in files)
        assert any(f.startswith("aws_lambda_powertools/") for f in files)
    print("\nunzipped bytes (code, layers):", sizes)


def test_bundled_versions_satisfy_the_constraints(bundled_synth: Synth) -> None:
    constraints = _constraints()
    checked = 0
    for fn in bundled_synth.stack.functions.functions.values():
        props = bundled_synth.data["Resources"][bundled_synth.logical_id(fn)]["Properties"]
        asset = bundled_synth.outdir / f"asset.{props['Code']['S3Key'].removesuffix('.zip')}"
        for metadata in asset.glob("*.dist-info/METADATA"):
            fields = dict(
                line.split(": ", 1)
                for line in metadata.read_text(errors="replace").splitlines()[:10]
                if line.startswith(("Name: ", "Version: "))
            )
            limit = constraints.get(canonicalize_name(fields["Name"]))
            if limit is not None:
                assert limit.specifier.contains(fields["Version"], prereleases=True), fields
                checked += 1
    assert checked, "no bundled package is named in constraints.txt"


EXPECTED_PACKAGES = {
    "extract": "requests/",
    "transform": "aws_lambda_powertools/",
    "load": "snowflake/connector/",
}


def test_bundles_carry_their_own_dependencies(bundled_synth: Synth) -> None:
    for name, fn in bundled_synth.stack.functions.functions.items():
        props = bundled_synth.data["Resources"][bundled_synth.logical_id(fn)]["Properties"]
        asset = bundled_synth.outdir / f"asset.{props['Code']['S3Key'].removesuffix('.zip')}"
        files = {p.relative_to(asset).as_posix() for p in asset.rglob("*") if p.is_file()}
        assert any(f.startswith(EXPECTED_PACKAGES[name]) for f in files), name
        if name != "load":
            assert not any(f.startswith("snowflake/") for f in files), name


def test_bundled_native_libraries_are_aarch64(bundled_synth: Synth) -> None:
    so_files = list(bundled_synth.outdir.glob("asset.*/**/*.so"))
    assert so_files, "the load bundle should contain cryptography's native library"
    for so in so_files:
        header = so.read_bytes()[:20]
        assert header[:4] == b"\x7fELF", so
        # ELF e_machine (offset 18, little endian): 183 = AArch64, 62 = x86-64.
        assert int.from_bytes(header[18:20], "little") == 183, so
