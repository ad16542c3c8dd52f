"""Each handler's import time in an environment holding only its deployment bundle's packages.

Usage: python benchmarks/coldstart_bench.py [--runs 7] [--rebuild]

The Lambda bundles are arm64 (cdk_app/bundling.py) and do not import here, so for each function
this installs the same pinned requirements (``REQUIREMENTS[name]`` of cdk_app/bundling.py, with
``-c constraints.txt``) for THIS machine's platform into a ``pip install --target`` folder and
copies the function's code into it (``functions/__init__.py``, ``functions/common``,
``functions/<name>``), as the bundle does. What Lambda adds beside the bundle goes into folders
of their own, after it on ``sys.path``: boto3 (the python3.12 runtime ships it) for every
function, and pandas + numpy + pyarrow for transform (the AWS SDK for pandas layer), constrained
by constraints.txt. Installs are cached under ``.build/coldstart/`` keyed by the requirements,
the constraints and this interpreter, so reruns need no network.

Each measurement is a fresh process of the base interpreter (not the dev venv's) started with
``-S -E`` (no site-packages, no PYTHON* variables) whose ``sys.path`` gets only those folders; it
times ``import functions.<name>.handler`` with ``time.perf_counter`` (the interpreter's own
startup excluded; the process's wall time is printed too). One warm-up run (it compiles our
code's .pyc) is discarded, then the median of ``--runs`` is reported, beside the same import
in the dev venv (where the Snowflake connector imports pandas and pyarrow because they are
installed). Also: whether pandas got imported, and each bundle's unzipped size (the sum of its
file sizes, bytes; the layer and runtime folders are reported apart).

Targets (issue 13): extract handler import <= 300 ms; the load handler imports no pandas.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import hashlib
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CACHE = REPO / ".build" / "coldstart"
CONSTRAINTS = REPO / "constraints.txt"
BUNDLING = REPO / "cdk_app" / "bundling.py"
FUNCTIONS = ("extract", "transform", "load")
# Beside the bundle on Lambda: the runtime's boto3, and the AWS SDK for pandas layer's packages
# for transform (cdk_app/bundling.py: "pandas is not bundled").
RUNTIME_PACKAGES = ("boto3",)
PANDAS_LAYER_PACKAGES = ("pandas", "numpy", "pyarrow")
EXTRACT_TARGET_MS = 300.0

_PROBE = """
import json, sys, time
sys.path[:0] = {paths!r}
started = time.perf_counter()
import functions.{name}.handler
took = time.perf_counter() - started
print(json.dumps({{"import_s": took, "pandas": "pandas" in sys.modules,
                  "pyarrow": "pyarrow" in sys.modules, "modules": len(sys.modules)}}))
"""


def bundle_requirements(path: Path = BUNDLING) -> dict[str, tuple[str, ...]]:
    """``REQUIREMENTS`` of cdk_app/bundling.py, read without importing aws_cdk (seconds + node).

    Evaluates the module-level assignments of plain literals and names defined before them.
    Raises ValueError if REQUIREMENTS is not found.
    """
    env: dict[str, object] = {}
    for node in ast.parse(path.read_text()).body:
        targets = [node.target] if isinstance(node, ast.AnnAssign) else getattr(node, "targets", [])
        if not isinstance(node, ast.Assign | ast.AnnAssign) or node.value is None:
            continue
        for target in targets:
            if isinstance(target, ast.Name):
                with contextlib.suppress(Exception):  # not a literal: not needed here
                    code = compile(ast.Expression(node.value), str(path), "eval")
                    env[target.id] = eval(code, {"__builtins__": {}}, env)  # noqa: S307
    requirements = env.get("REQUIREMENTS")
    if not isinstance(requirements, dict):
        raise ValueError(f"no REQUIREMENTS dict found in {path}")
    return {k: tuple(v) for k, v in requirements.items()}


def _install(label: str, packages: tuple[str, ...], *, rebuild: bool) -> Path:
    """pip-install ``packages`` (with -c constraints.txt) into a cached ``--target`` folder."""
    key_text = "\n".join(
        [
            *packages,
            CONSTRAINTS.read_text(),
            sys.version,
            sysconfig.get_platform(),
        ]
    )
    key = hashlib.sha256(key_text.encode()).hexdigest()[:12]
    folder = CACHE / f"{label}-{key}"
    if folder.is_dir() and not rebuild:
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    CACHE.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=f"{label}-", dir=CACHE))
    cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    cmd += ["--no-input", "--target", str(partial), "-c", str(CONSTRAINTS), *packages]
    print(f"installing {label}: {' '.join(packages)}", flush=True)
    started = time.perf_counter()
    subprocess.run(cmd, check=True)
    partial.rename(folder)  # only a complete install is cached
    print(f"  done in {time.perf_counter() - started:.0f}s -> {folder.relative_to(REPO)}")
    return folder


def _copy_code(folder: Path, name: str) -> None:
    """functions/__init__.py + common + <name>, fresh each run (as cdk_app/bundling.py stages)."""
    dest = folder / "functions"
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir()
    shutil.copy2(REPO / "functions" / "__init__.py", dest / "__init__.py")
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "tests")
    for sub in ("common", name):
        shutil.copytree(REPO / "functions" / sub, dest / sub, ignore=ignore)


def tree_bytes(folder: Path) -> int:
    """Sum of the file sizes under ``folder`` (bytes): the unzipped size of a bundle."""
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file() and not p.is_symlink())


def _base_python() -> str:
    """The interpreter the venv was made from (so the venv's site-packages are not involved)."""
    return getattr(sys, "_base_executable", None) or sys.executable


def probe(python: str, flags: list[str], name: str, paths: list[str]) -> dict[str, object]:
    """One fresh process importing ``functions.<name>.handler``; its figures and wall time."""
    code = _PROBE.format(paths=paths, name=name)
    env = {"PATH": os.environ.get("PATH", ""), "POWERTOOLS_LOG_LEVEL": "WARNING"}
    started = time.perf_counter()
    out = subprocess.run(
        [python, *flags, "-c", code],
        capture_output=True,
        text=True,
        env=env,
        cwd=tempfile.gettempdir(),
    )
    wall = time.perf_counter() - started
    if out.returncode != 0:
        raise RuntimeError(f"import of functions.{name}.handler failed:\n{out.stderr[-2000:]}")
    result = json.loads(out.stdout.strip().splitlines()[-1])
    result["wall_s"] = wall
    return result


def top_imports(python: str, name: str, paths: list[str], count: int = 6) -> list[tuple[str, int]]:
    """The top-level packages taking the most cumulative import time (``-X importtime``, µs)."""
    code = f"import sys; sys.path[:0] = {paths!r}; import functions.{name}.handler"
    out = subprocess.run(
        [python, "-S", "-E", "-X", "importtime", "-c", code],
        capture_output=True,
        text=True,
        env={"PATH": os.environ.get("PATH", "")},
        cwd=tempfile.gettempdir(),
    )
    totals: dict[str, int] = {}
    line_re = re.compile(r"import time:\s+\d+ \|\s+(\d+) \|\s*(\S+)")
    for line in out.stderr.splitlines():
        m = line_re.match(line)
        top = m.group(2).split(".")[0] if m else "functions"
        if m and top != "functions":  # packages overlap (one imports another): max, not sum
            totals[top] = max(totals.get(top, 0), int(m.group(1)))
    return sorted(totals.items(), key=lambda kv: -kv[1])[:count]


def _median(runs: list[dict[str, object]], key: str) -> float:
    return statistics.median(float(r[key]) for r in runs)  # type: ignore[arg-type]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7, help="measured runs per function")
    parser.add_argument("--rebuild", action="store_true", help="reinstall the cached folders")
    args = parser.parse_args()

    requirements = bundle_requirements()
    runtime = _install("runtime", RUNTIME_PACKAGES, rebuild=args.rebuild)
    layer = _install("pandas-layer", PANDAS_LAYER_PACKAGES, rebuild=args.rebuild)
    base = _base_python()
    print(
        f"\nmachine: {platform.machine()} {platform.system()}, {os.cpu_count()} CPUs;"
        f" interpreter {base} (Python {platform.python_version()}; Lambda runs 3.12 on arm64)"
    )
    print(f"runtime folder (boto3): {tree_bytes(runtime) / 1e6:.1f} MB;"
          f" pandas layer folder: {tree_bytes(layer) / 1e6:.1f} MB\n")  # fmt: skip
    rows = []
    for name in FUNCTIONS:
        bundle = _install(name, requirements[name], rebuild=args.rebuild)
        _copy_code(bundle, name)
        size = tree_bytes(bundle)
        paths = [str(bundle), *([str(layer)] if name == "transform" else []), str(runtime)]
        probe(base, ["-S", "-E"], name, paths)  # warm-up: compiles our code's .pyc
        bundle_runs = [probe(base, ["-S", "-E"], name, paths) for _ in range(args.runs)]
        dev_runs = [probe(sys.executable, ["-E"], name, [str(REPO)]) for _ in range(args.runs)]
        rows.append((name, requirements[name], size, bundle_runs, dev_runs, paths))

    print(f"median of {args.runs} fresh processes each (ms); import = the import statement alone")
    head = (
        f"{'function':<10} {'bundle MB':>9} {'import':>8} {'process':>8} {'pandas':>7}"
        f" {'modules':>7} | {'dev venv import':>15} {'pandas':>7} | target"
    )
    print(head)
    print("-" * len(head))
    for name, _, size, runs, dev, _ in rows:
        imp, wall = _median(runs, "import_s") * 1000, _median(runs, "wall_s") * 1000
        target = ""
        if name == "extract":
            ok = imp <= EXTRACT_TARGET_MS
            target = f"import <= {EXTRACT_TARGET_MS:.0f} ms: {'met' if ok else 'MISSED'}"
        elif name == "load":
            target = f"no pandas: {'met' if not runs[0]['pandas'] else 'MISSED'}"
        print(
            f"{name:<10} {size / 1e6:>9.1f} {imp:>8.0f} {wall:>8.0f} {runs[0]['pandas']!s:>7}"
            f" {runs[0]['modules']:>7} | {_median(dev, 'import_s') * 1000:>15.0f}"
            f" {dev[0]['pandas']!s:>7} | {target}"
        )
    print("\nslowest top-level imports in the bundle environment (cumulative ms, -X importtime):")
    for name, reqs, _, _, _, paths in rows:
        tops = ", ".join(f"{mod} {us / 1000:.0f}" for mod, us in top_imports(base, name, paths))
        print(f"  {name:<10} {tops}")
        print(f"  {'':<10} bundle requirements: {' '.join(reqs)}")


if __name__ == "__main__":
    main()
