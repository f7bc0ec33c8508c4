"""The torch-free model_lib modules stay so at run time, and the service imports neither
torch nor pandas.

Imported in one fresh interpreter, the torch-free modules load no torch: so none of
them does alone, since a module loads the same imports alone as beside others when
there is no cycle and no import inside a function (tests/unit/test_imports.py checks
both). Only when torch shows up are they probed one by one, to name the culprits.
In the model tier because each probe is a fresh interpreter importing MLflow or
Evidently.
"""

from __future__ import annotations

import fnmatch

import yaml

from catdog_runtime.processes import ROOT
from tests.modules import MODEL_LIB, TORCH_FREE, probe


def test_the_torch_free_model_lib_modules_load_no_torch():
    modules = [f"model_lib.{m}" for m in sorted(TORCH_FREE)]
    if probe(*modules)["torch"]:
        culprits = [m for m in modules if probe(m)["torch"]]
        raise AssertionError(f"these must not import torch: {culprits}")


def test_the_service_imports_neither_torch_nor_pandas_and_the_bento_holds_its_modules():
    loaded = probe("bento.service")
    assert not loaded["torch"] and not loaded["pandas"]
    ours = {
        str(p.relative_to(ROOT))
        for p in (ROOT / f for f in loaded["files"] if f.startswith(str(ROOT)))
        if ".venv" not in p.parts
    }
    assert "bento/service.py" in ours
    include = yaml.safe_load((ROOT / "bentofile.yaml").read_text())["include"]
    missing = sorted(f for f in ours if not any(fnmatch.fnmatch(f, g) for g in include))
    assert missing == [], f"bentofile.yaml's include misses {missing}"
    packed = [f for f in MODEL_LIB if f"model_lib/{f}.py" in include]
    assert set(packed) <= TORCH_FREE
