"""Test tiers, one folder each (`make test-unit`, `test-data`, `test-model`, `test-integration`):

- unit: no data, no training, no servers; passes on a fresh clone before `dvc pull`;
- data: the DVC-pulled photos (data/, test_images/);
- model: trains, exports and quantizes small models (generated images; the
  pretrained-weights checks also use real photos);
- integration: real MLflow, Prefect and BentoML servers over HTTP.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from catdog_runtime.processes import ROOT

DATA = ROOT / "data"
TEST_IMAGES = ROOT / "test_images"
TIERS = ("unit", "data", "model", "integration")


def pytest_collection_modifyitems(items):
    for item in items:
        tier = Path(item.fspath).relative_to(ROOT / "tests").parts[0]
        if tier in TIERS:
            item.add_marker(getattr(pytest.mark, tier))


@pytest.fixture(scope="session")
def real_data():
    """The DVC-pulled photos. Fails (never skips) without them: run `make data`."""
    if not (DATA / "cat").is_dir() or not (TEST_IMAGES / "dog").is_dir():
        pytest.fail("data/ and test_images/ are missing: run `make data` (dvc pull) first")
    return DATA
