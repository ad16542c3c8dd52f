"""Code and docs refer only to files the repository contains.

A fresh clone has no design notes or ``docs/`` folder beside it, and the shipped packages are
installed without ``../shared``: a comment, docstring or stack output pointing there sends a
reader nowhere.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from tests.conftest import REPO_ROOT

# Not sources: tool output, caches, local data, installed packages.
SKIP_DIRS = {
    ".git",
    ".venv",
    "node_modules",
    "cdk.out",
    ".build",
    ".local",
    ".pytest_cache",
    ".ruff_cache",
    "__pycache__",
    "build",
    "dist",
}
TEXT_SUFFIXES = {".py", ".md", ".toml", ".txt", ".sql", ".json", ".cfg", ".ini", ".sh", ""}
# Installed or deployed code: what runs outside this checkout.
SHIPPED = ("functions", "state_machine", "local_mode", "cdk_app")
# The recorded CoinGecko bodies are an optional folder beside the repository (tests skip without
# it); its index file is read from there, not from the repository.
OPTIONAL_DATA_FILES = {"SOURCES.md"}

MD_REF = re.compile(r"(?<![\w/.-])((?:[\w.-]+/)*[\w-]+\.md)\b")
URL = re.compile(r"\S+://\S+")
DOCS_REF = re.compile(r"(?<![\w.-])(docs/[\w./-]+)")


def _files() -> list[Path]:
    here = Path(__file__).resolve()
    out = []
    for folder, dirs, names in os.walk(REPO_ROOT):
        dirs[:] = [d for d in dirs if d not in SKIP_DIRS and not d.endswith(".egg-info")]
        for name in names:
            path = Path(folder) / name
            if path.suffix in TEXT_SUFFIXES and path.resolve() != here:
                out.append(path)
    return out


def _exists(ref: str, where: Path, names: set[str]) -> bool:
    if (REPO_ROOT / ref).exists() or (where.parent / ref).exists():
        return True
    return any(n == ref or n.endswith("/" + ref) for n in names)


def _dangling(pattern: re.Pattern[str]) -> list[str]:
    files = _files()
    names = {f.relative_to(REPO_ROOT).as_posix() for f in files}
    found = []
    for path in files:
        text = path.read_text(encoding="utf-8", errors="replace")
        for lineno, line in enumerate(text.splitlines(), 1):
            for ref in pattern.findall(URL.sub("", line)):
                if Path(ref).name in OPTIONAL_DATA_FILES:
                    continue
                if not _exists(ref.rstrip("/."), path, names):
                    found.append(f"{path.relative_to(REPO_ROOT)}:{lineno}: {ref}")
    return found


def test_every_markdown_file_mentioned_exists():
    names = {f.relative_to(REPO_ROOT).as_posix() for f in _files()}
    assert {"README.md", "Makefile", "functions/load/loader.py", "cdk_app/stack.py"} <= names
    assert _dangling(MD_REF) == []


def test_every_docs_path_mentioned_exists():
    assert _dangling(DOCS_REF) == []


def test_shipped_code_does_not_point_outside_the_repository():
    found = []
    for path in _files():
        rel = path.relative_to(REPO_ROOT)
        if rel.parts[0] not in SHIPPED:
            continue
        for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if "../shared" in line or "shared/data" in line:
                found.append(f"{rel}:{lineno}: {line.strip()}")
    assert found == []
