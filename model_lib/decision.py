"""From logits to an answer: cat, dog or neither (NumPy only; the service runs this).

A model trained with photos that are neither (outlier exposure, `transfer.py`)
has one output per pet class plus `neither`. Its logits are divided by a
temperature fitted on validation (`calibration.fit_temperature`), so that a
probability means what it says; the *pet score* is the calibrated probability
that the photo shows a pet (cat + dog). Below `threshold` the answer is
`neither`; otherwise the more probable pet class. The rule travels inside the
ONNX file beside the preprocessing, so the service and validation decide alike.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace

import numpy as np

from model_lib.preprocess import softmax

NEITHER = "neither"


@dataclass(frozen=True)
class DecisionRule:
    outputs: tuple[str, ...]  # the model's outputs in order, e.g. ("cat", "dog", "neither")
    temperature: float = 1.0
    threshold: float = 0.0  # lowest pet score answered with a pet; 0 never answers neither

    @property
    def pets(self) -> tuple[str, ...]:
        return tuple(name for name in self.outputs if name != NEITHER)

    @property
    def pet_columns(self) -> list[int]:
        return [i for i, name in enumerate(self.outputs) if name != NEITHER]

    def probabilities(self, logits: np.ndarray) -> np.ndarray:
        """Calibrated probabilities over `outputs` (N, len(outputs))."""
        return softmax(np.asarray(logits, np.float64) / self.temperature)

    def pet_score(self, probabilities: np.ndarray) -> np.ndarray:
        return probabilities[:, self.pet_columns].sum(axis=1)

    def labels(self, probabilities: np.ndarray) -> np.ndarray:
        """Output index per row: the most probable pet, or `neither` below the threshold."""
        pets = np.asarray(self.pet_columns)
        chosen = pets[probabilities[:, pets].argmax(axis=1)]
        if NEITHER in self.outputs:
            below = self.pet_score(probabilities) < self.threshold
            chosen = np.where(below, self.outputs.index(NEITHER), chosen)
        return chosen

    def answers(self, probabilities: np.ndarray) -> list[dict]:
        """One dict per row of calibrated `probabilities`: label, confidence (the
        probability of that label), the pet classes' probabilities, and the pet score
        the decision used."""
        probabilities = np.atleast_2d(probabilities)
        rows = zip(
            probabilities, self.labels(probabilities), self.pet_score(probabilities), strict=True
        )
        return [
            {
                "label": self.outputs[label],
                "confidence": float(row[label]),
                "probabilities": {self.outputs[i]: float(row[i]) for i in self.pet_columns},
                "pet_score": float(score),
            }
            for row, label, score in rows
        ]

    def with_threshold(self, threshold: float | None) -> DecisionRule:
        """The same rule with another threshold (a service setting); None keeps it."""
        return self if threshold is None else replace(self, threshold=float(threshold))

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> DecisionRule:
        raw = json.loads(text)
        return cls(
            outputs=tuple(raw["outputs"]),
            temperature=float(raw["temperature"]),
            threshold=float(raw["threshold"]),
        )

    @classmethod
    def pets_only(cls, class_names: tuple[str, ...]) -> DecisionRule:
        """A model without a `neither` output (trained before outlier exposure)."""
        return cls(outputs=tuple(class_names))
