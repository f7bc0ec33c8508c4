"""Every model_lib module imports alone (no hidden order), and the torch-free ones stay so.

In the model tier because each probe is a fresh interpreter importing torch,
MLflow or Evidently: about a minute on 2 cores.
"""

from __future__ import annotations

import fnmatch
from concurrent.futures import ThreadPoolExecutor

import yaml

from catdog_runtime.processes import ROOT
from tests.modules import MODEL_LIB, TORCH_FREE, probe


def test_every_model_lib_module_imports_alone_and_the_torch_free_ones_stay_so():
    with ThreadPoolExecutor(2) as pool:
        loaded = dict(
            zip(MODEL_LIB, pool.map(probe, [f"model_lib.{m}" for m in MODEL_LIB]), strict=True)
        )
    torch_users = sorted(m for m in TORCH_FREE if loaded[m]["torch"])
    assert torch_users == [], f"these must not import torch: {torch_users}"
    assert all(loaded[m]["torch"] for m in set(MODEL_LIB) - TORCH_FREE)  # the list is up to date


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
