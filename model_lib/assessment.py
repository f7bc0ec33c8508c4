"""What an exported model file does on validation and test (ONNX Runtime; no torch).

Scoring the file itself, not the PyTorch module, measures what the service
will run (float32 or INT8 alike). Validation chooses: the temperature and the
`neither` threshold are fitted on it and written into the file
(`calibrate`). The test split is only reported: nothing is chosen on it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx

from model_lib.calibration import (
    expected_calibration_error,
    fit_temperature,
    reliability,
    separation,
    threshold_for,
)
from model_lib.data import PreparedData
from model_lib.decision import NEITHER, DecisionRule
from model_lib.metrics import classification_report, flat_metrics
from model_lib.onnx_model import DECISION_KEY, OnnxClassifier
from model_lib.preprocess import Preprocessing


def calibrate(outputs: tuple[str, ...], logits: np.ndarray, labels: np.ndarray) -> DecisionRule:
    """The decision rule fitted on validation: temperature on every validation image,
    threshold on the pet photos (at most calibration.MAX_PET_REJECTION answered neither)."""
    rule = DecisionRule(outputs, temperature=fit_temperature(logits, labels))
    if NEITHER not in outputs:
        return rule
    pets = labels != outputs.index(NEITHER)
    scores = rule.pet_score(rule.probabilities(logits[pets]))
    return rule.with_threshold(threshold_for(scores))


def set_decision_rule(path: str | Path, rule: DecisionRule) -> Path:
    """Store (or replace) the decision rule in an exported file's metadata."""
    model = onnx.load(str(path))
    kept = [entry for entry in model.metadata_props if entry.key != DECISION_KEY]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    entry = model.metadata_props.add()
    entry.key, entry.value = DECISION_KEY, rule.to_json()
    onnx.save(model, str(path))
    return Path(path)


@dataclass
class SplitFigures:
    """One split scored under one decision rule."""

    report: dict  # classification_report over the outputs (neither included)
    metrics: dict[str, float]  # flat, unprefixed: accuracy, pets_rejected, auroc, ece, ...
    answers: np.ndarray  # output index answered per image
    confidence: np.ndarray  # calibrated probability of the answer
    pet_scores: np.ndarray
    labels: np.ndarray
    reliability_before: dict = field(default_factory=dict)
    reliability_after: dict = field(default_factory=dict)

    @property
    def correct(self) -> np.ndarray:
        return self.answers == self.labels


def score(rule: DecisionRule, logits: np.ndarray, labels: np.ndarray) -> SplitFigures:
    """Accuracy on pets (an answer `neither` to a pet counts as wrong), the `neither`
    figures, and calibration on pets before (T = 1) and after temperature scaling."""
    probabilities = rule.probabilities(logits)
    answers = rule.labels(probabilities)
    confidence = probabilities[np.arange(len(answers)), answers]
    pet_scores = rule.pet_score(probabilities)
    pets = np.isin(labels, rule.pet_columns)
    report = classification_report(labels, answers, rule.outputs)
    metrics = {
        "accuracy": float((answers[pets] == labels[pets]).mean()) if pets.any() else 0.0,
        **{k: v for k, v in flat_metrics(report).items() if k != "accuracy"},
    }
    for name in rule.pets:  # per-class accuracy on pets = recall of that class
        metrics[f"{name}_accuracy"] = report["per_class"][name]["recall"]
    raw = DecisionRule(rule.outputs).probabilities(logits[pets])
    before = (raw.max(1), raw.argmax(1) == labels[pets])
    after = (probabilities[pets].max(1), probabilities[pets].argmax(1) == labels[pets])
    metrics["ece_before_calibration"] = expected_calibration_error(*before)
    metrics["ece"] = expected_calibration_error(*after)
    if NEITHER in rule.outputs and (~pets).any():
        figures = separation(pet_scores[pets], pet_scores[~pets], rule.threshold)
        metrics |= {
            "pets_answered_neither": figures["pets_rejected"],
            "others_answered_neither": figures["others_rejected"],
            "auroc_pets_vs_others": figures["auroc"],
            "fpr_at_95_tpr": figures["fpr_at_95_tpr"],
        }
    return SplitFigures(
        report,
        metrics,
        answers,
        confidence,
        pet_scores,
        labels,
        reliability(*before),
        reliability(*after),
    )


@dataclass
class Assessment:
    rule: DecisionRule
    val: SplitFigures
    test: SplitFigures

    def metrics(self, suffix: str = "") -> dict[str, float]:
        """val_* and test_* figures (MLflow names), plus the rule's two numbers."""
        flat = {f"val_{k}{suffix}": v for k, v in self.val.metrics.items()}
        flat |= {f"test_{k}{suffix}": v for k, v in self.test.metrics.items()}
        flat[f"temperature{suffix}"] = self.rule.temperature
        flat[f"neither_threshold{suffix}"] = self.rule.threshold
        return flat


def test_logits(model: OnnxClassifier, data: PreparedData, prep: Preprocessing) -> np.ndarray:
    """Normalised a chunk at a time: the test pixels stay uint8 in memory."""
    chunks = [
        model.logits(data.test_inputs(prep, start, start + 256))
        for start in range(0, len(data.test_labels), 256)
    ]
    return np.concatenate(chunks) if chunks else np.zeros((0, len(model.class_names)))


def assess(path: str | Path, data: PreparedData, outputs: tuple[str, ...]) -> Assessment:
    """Fit the decision rule of the file at `path` on validation, store it in the file,
    and score validation and test with it."""
    model = OnnxClassifier(path)
    val_logits = model.logits(data.val_inputs)
    rule = calibrate(outputs, val_logits, data.val_labels)
    set_decision_rule(path, rule)
    return Assessment(
        rule,
        score(rule, val_logits, data.val_labels),
        score(rule, test_logits(model, data, model.preprocessing), data.test_labels),
    )
