"""The training flow's one config object: its fields are the flow's parameters."""

from __future__ import annotations

from dataclasses import asdict, dataclass

ARCHITECTURES = ("baseline_cnn", "efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2")
# How a training step's forward pass computes (PyTorch Lightning's names): "32-true" in
# float32, "bf16-mixed" under bfloat16 autocast (weights, gradients and the exported
# model stay float32). Measured figures: notes/models.md.
TRAINING_PRECISIONS = ("32-true", "bf16-mixed")
# The MLflow registered model and the BentoML model share this name.
MODEL_NAME = "catdog-classifier"
CHAMPION_ALIAS = "champion"
# The version that serves users; moved by the deploy flow, last, once traffic follows.
PRODUCTION_ALIAS = "production"


@dataclass(frozen=True)
class TrainConfig:
    # Defaults are a float32 baseline's; prefect.yaml's deployments set their own
    # (the baseline's: 13 epochs in bf16-mixed; timings and accuracy in the README).
    architecture: str = "baseline_cnn"
    epochs: int = 12
    batch_size: int = 64
    learning_rate: float = 0.05  # peak of the one-cycle schedule
    weight_decay: float = 5e-4
    image_size: int = 224
    # Transfer models only: how many of the last MBConv blocks train with the head
    # (0: the head alone). Each block costs a backward pass through it every step.
    trained_blocks: int = 0
    seed: int = 42
    # Where the CPU has no native bfloat16, "bf16-mixed" falls back to "32-true" (emulated
    # bfloat16 is slower than float32); the run logs what it used.
    training_precision: str = "32-true"
    # Share of the pool used (every split shrinks; subsets are nested, so a
    # small run's validation or test images are never another run's training images).
    data_fraction: float = 1.0
    # Validation chooses (epochs, temperature, threshold, INT8 or float32, the
    # champion gate); the test split is only ever reported (model_lib.data.split).
    val_percent: int = 15
    test_percent: int = 10
    data_dir: str = "data"
    # Photos that are neither a cat nor a dog: the model learns a third answer
    # from them (outlier exposure). "" trains a cat/dog-only model.
    outlier_dir: str = "other_images"
    registered_model_name: str = MODEL_NAME
    experiment_name: str = "catdog-training"

    def __post_init__(self):
        if self.architecture not in ARCHITECTURES:
            raise ValueError(
                f"architecture must be one of {ARCHITECTURES}, got {self.architecture!r}"
            )
        if self.training_precision not in TRAINING_PRECISIONS:
            raise ValueError(
                f"training_precision must be one of {TRAINING_PRECISIONS}, "
                f"got {self.training_precision!r}"
            )
        if not 0 < self.data_fraction <= 1:
            raise ValueError(f"data_fraction must be in (0, 1], got {self.data_fraction}")
        if not 0 < self.val_percent < 100 or not 0 <= self.test_percent < 100:
            raise ValueError(
                f"val_percent must be in (0, 100) and test_percent in [0, 100), "
                f"got {self.val_percent} and {self.test_percent}"
            )
        if self.val_percent + self.test_percent >= 100:
            raise ValueError(
                f"val_percent + test_percent must leave images to train on, got "
                f"{self.val_percent} + {self.test_percent}"
            )
        if self.trained_blocks < 0 or (self.trained_blocks and self.architecture == "baseline_cnn"):
            raise ValueError(
                f"trained_blocks must be >= 0, and 0 for baseline_cnn (it trains every "
                f"layer), got {self.trained_blocks} for {self.architecture}"
            )
        for name in ("epochs", "batch_size", "image_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")

    def to_params(self) -> dict:
        return asdict(self)
