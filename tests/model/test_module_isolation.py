"""Every model_lib module imports alone (no hidden order), and the torch-free ones stay so.

In the model tier because each probe is a fresh interpreter importing torch,
MLflow or Evidently: about a minute on 2 cores.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from tests.modules import MODEL_LIB, TORCH_FREE, probe


def test_every_model_lib_module_imports_alone_and_the_torch_free_ones_stay_so():
    with ThreadPoolExecutor(2) as pool:
        loaded = dict(
            zip(MODEL_LIB, pool.map(probe, [f"model_lib.{m}" for m in MODEL_LIB]), strict=True)
        )
    torch_users = sorted(m for m in TORCH_FREE if loaded[m]["torch"])
    assert torch_users == [], f"these must not import torch: {torch_users}"
    assert all(loaded[m]["torch"] for m in set(MODEL_LIB) - TORCH_FREE)  # the list is up to date
