"""Model-tier fixtures: small models trained in seconds on generated images."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from model_lib.config import TrainConfig
from model_lib.pipeline import load_dataset, train
from tests.images import write_dataset, write_outliers


def tiny_training(tmp_path, **config) -> SimpleNamespace:
    """`pipeline.train` on 16 generated images a class (two colours) and photos that are
    neither (a third colour, five kinds)."""
    config = TrainConfig(
        **{
            "epochs": 3,
            "batch_size": 8,
            "image_size": 32,
            "learning_rate": 0.01,
            "outlier_dir": str(write_outliers(tmp_path / "other")),
            **config,
        },
        data_dir=str(write_dataset(tmp_path / "data", per_class=16)),
        val_percent=25,
        test_percent=20,
    )
    dataset = load_dataset(config)
    events = []
    result = train(config, dataset, on_progress=events.append)
    return SimpleNamespace(
        config=config, dataset=dataset, result=result, events=events, prep=result.preprocessing
    )


@pytest.fixture
def tiny_run(tmp_path):
    """A baseline trained for 3 epochs at 32 px on generated images."""
    return tiny_training(tmp_path)
