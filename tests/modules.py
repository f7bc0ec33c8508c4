"""What model_lib's modules are, and what importing one of them loads (tests' helper)."""

from __future__ import annotations

import json
import subprocess
import sys

from catdog_runtime.processes import ROOT

MODEL_LIB = sorted(p.stem for p in (ROOT / "model_lib").glob("*.py") if p.stem != "__init__")
# The training stack, bottom to top: each may import only those before it.
LAYERS = ["efficientnet", "models", "export", "training", "transfer", "pipeline"]
TORCH_FREE = set(MODEL_LIB) - set(LAYERS)

PROBE = """
import importlib, json, sys
for module in sys.argv[1:]:
    importlib.import_module(module)
files = sorted(getattr(m, "__file__", None) or "" for m in list(sys.modules.values()))
print(json.dumps({"torch": "torch" in sys.modules, "pandas": "pandas" in sys.modules,
                  "files": files}))
"""


def probe(*modules: str) -> dict:
    """Import `modules` in a fresh interpreter; what did they load?"""
    result = subprocess.run(
        [sys.executable, "-c", PROBE, *modules],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, f"import {' '.join(modules)} failed:\n{result.stderr[-3000:]}"
    return json.loads(result.stdout.splitlines()[-1])
