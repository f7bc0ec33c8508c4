"""TrainConfig refuses a parameter combination before any data is read."""

import pytest

from model_lib.config import TrainConfig


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({"architecture": "baseline_cnn", "trained_blocks": 1}, "trained_blocks"),
        ({"architecture": "efficientnet_lite0", "trained_blocks": -1}, "trained_blocks"),
        ({"architecture": "resnet50"}, "architecture"),
        ({"val_percent": 60, "test_percent": 40}, "val_percent"),
        ({"data_fraction": 0}, "data_fraction"),
        ({"epochs": 0}, "epochs"),
        ({"training_precision": "fp16"}, "training_precision"),
    ],
)
def test_a_config_that_cannot_train_is_refused_with_the_field_named(fields, named):
    with pytest.raises(ValueError, match=named):
        TrainConfig(**fields)


def test_the_last_blocks_can_train_with_a_transfer_model():
    assert TrainConfig(architecture="efficientnet_lite2", trained_blocks=1).trained_blocks == 1
