"""The load handler imports no pandas: its Lambda bundle has none (cdk_app/bundling.py).

In the dev venv pandas and pyarrow are installed, and the Snowflake connector tries them on
import (``snowflake.connector.options``; it carries on without them). So a fresh interpreter
here blocks them with a meta path finder, as their absence in the bundle does, and records who
asked: the import must work, leave no pandas in ``sys.modules``, and no module of our code
(``functions/``) may itself import pandas, pyarrow or numpy.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

_PROBE = r"""
import json, sys, traceback

BLOCKED = {"pandas", "pyarrow", "numpy"}
FUNCTIONS = sys.argv[1]
asked = []

class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            # The frame that asked: the innermost one outside the import machinery.
            frames = [f for f in traceback.extract_stack()[:-1]
                      if not f.filename.startswith("<frozen")
                      and not f.filename.endswith("importlib/__init__.py")]
            asked.append({"module": name, "by": f"{frames[-1].filename}:{frames[-1].lineno}"})
            raise ModuleNotFoundError(f"No module named {name!r} (blocked)", name=name)
        return None

sys.meta_path.insert(0, Block())
import functions.load.handler  # noqa: E402
import functions.load.loader  # noqa: E402
print(json.dumps({"asked": asked, "loaded": sorted(m for m in sys.modules
                                                   if m.split(".")[0] in BLOCKED)}))
"""


def test_the_load_handler_imports_without_pandas_and_our_code_never_asks_for_it():
    out = subprocess.run(
        [sys.executable, "-c", _PROBE, str(REPO / "functions")],
        capture_output=True,
        text=True,
        cwd=REPO,
        check=True,
    )
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["loaded"] == []
    assert [a for a in result["asked"] if a["by"].startswith(str(REPO / "functions"))] == []
    # The probe does see the connector's own attempt (so it would see ours).
    assert any(
        a["module"] == "pandas" and "snowflake/connector" in a["by"] for a in result["asked"]
    ), result["asked"]
