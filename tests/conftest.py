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
OTHER_IMAGES = ROOT / "other_images"  # photos that are neither a cat nor a dog
TIERS = ("unit", "data", "model", "integration")


# `make test` hands whole files to two processes (pytest-xdist, --dist loadfile) in
# collection order. The longest files (notes/tests.md has the per-file times) go first
# and the quick tiers last, so that no long file starts when the other process is
# nearly done and leaves it idle.
LONGEST_FILES = (
    "integration/test_rollout.py",
    "integration/test_loop.py",
    "integration/test_scale_platform.py",
    "integration/test_evaluate_flow.py",
    "integration/test_auth_mlflow.py",
)
TIERS_LONGEST_FIRST = ("integration", "model", "data", "unit")


def start_order(item) -> tuple[int, int]:
    path = Path(item.fspath).relative_to(ROOT / "tests")
    if path.as_posix() in LONGEST_FILES:
        return (LONGEST_FILES.index(path.as_posix()), 0)
    tier = path.parts[0]
    rank = TIERS_LONGEST_FIRST.index(tier) if tier in TIERS_LONGEST_FIRST else 0
    return (len(LONGEST_FILES), rank)


def pytest_collection_modifyitems(items):
    for item in items:
        tier = Path(item.fspath).relative_to(ROOT / "tests").parts[0]
        if tier in TIERS:
            item.add_marker(getattr(pytest.mark, tier))
    items.sort(key=start_order)  # stable: a file's tests keep their order


@pytest.fixture(scope="session")
def real_data():
    """The DVC-pulled photos. Fails (never skips) without them: run `make data`."""
    if not all(p.is_dir() for p in (DATA / "cat", TEST_IMAGES / "dog", OTHER_IMAGES)):
        pytest.fail(
            "data/, test_images/ or other_images/ are missing: run `make data` (dvc pull) first"
        )
    return DATA


def unseen_kind_photos() -> list[Path]:
    """Photos that are neither a cat nor a dog, of kinds no model trains on:
    other_images/'s held-out test kinds (model_lib.data splits them by kind)."""
    from model_lib import data

    outliers, kinds = data.discover_outliers(OTHER_IMAGES, label=2)
    test_kinds = data.split(
        outliers, data.OUTLIER_VAL_PERCENT, data.OUTLIER_TEST_PERCENT, 1.0, kinds
    ).test
    return [item.path for item in test_kinds]
