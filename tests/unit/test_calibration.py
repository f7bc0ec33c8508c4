"""Calibration maths and the decision rule (NumPy only)."""

import numpy as np
import pytest

from model_lib import calibration
from model_lib.decision import NEITHER, DecisionRule


def overconfident_logits(seed: int = 0, count: int = 4000):
    """Two-class logits whose true probabilities are softmax(z / 2.5): a model that is
    too sure of itself by a temperature of 2.5."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 6, (count, 2))
    truth = calibration.calibrated(logits, 2.5)
    labels = (rng.random(count) < truth[:, 1]).astype(int)
    return logits, labels


def test_temperature_scaling_recovers_the_true_temperature_and_fixes_ece():
    logits, labels = overconfident_logits()
    temperature = calibration.fit_temperature(logits, labels)
    assert temperature == pytest.approx(2.5, rel=0.1)
    before = calibration.calibrated(logits, 1.0)
    after = calibration.calibrated(logits, temperature)
    ece_before = calibration.expected_calibration_error(before.max(1), before.argmax(1) == labels)
    ece_after = calibration.expected_calibration_error(after.max(1), after.argmax(1) == labels)
    assert ece_after < 0.02 < ece_before


def test_ece_by_hand():
    # Two bins used: 0.9 confidence with 50 % right (gap 0.4), 0.3 with 0 % right (gap 0.3).
    confidence = np.array([0.9, 0.9, 0.3, 0.3])
    correct = np.array([1, 0, 0, 0])
    assert calibration.expected_calibration_error(confidence, correct) == pytest.approx(0.35)
    table = calibration.reliability(confidence, correct, bins=10)
    assert table["counts"].sum() == 4 and table["accuracy"][9] == 0.5


def test_threshold_rejects_at_most_the_allowed_share_of_pets():
    scores = np.linspace(0.01, 1.0, 1000)
    threshold = calibration.threshold_for(scores, max_rejected=0.005)
    assert (scores < threshold).mean() <= 0.005
    assert (scores < np.nextafter(threshold, 2)).mean() > 0.005  # and no lower than needed
    assert calibration.threshold_for(np.array([0.7, 0.9]), 0.005) == 0.7  # too few to reject any


def test_separation_figures():
    pets = np.array([0.9, 0.95, 0.99, 0.97])
    others = np.array([0.1, 0.2, 0.96])
    figures = calibration.separation(pets, others, threshold=0.5)
    assert figures["pets_rejected"] == 0 and figures["others_rejected"] == pytest.approx(2 / 3)
    assert figures["auroc"] == pytest.approx(10 / 12)  # 0.96 outranks two pets
    assert figures["fpr_at_95_tpr"] == pytest.approx(1 / 3)


def test_decision_rule_answers_neither_below_the_threshold():
    rule = DecisionRule(("cat", "dog", NEITHER), temperature=1.0, threshold=0.5)
    logits = np.array([[4.0, 0.0, 0.0], [0.0, 0.0, 4.0], [1.0, 1.2, 0.0]])
    answers = rule.answers(rule.probabilities(logits))
    assert [a["label"] for a in answers] == ["cat", NEITHER, "dog"]
    assert set(answers[1]["probabilities"]) == {"cat", "dog"}  # old clients see pet classes
    assert answers[1]["pet_score"] < 0.5 and answers[1]["confidence"] > 0.9
    for answer in answers:
        assert answer["pet_score"] == pytest.approx(sum(answer["probabilities"].values()))
    # A higher threshold (the service setting) turns the uncertain pet into neither.
    stricter = rule.with_threshold(0.9)
    assert stricter.answers(stricter.probabilities(logits))[2]["label"] == NEITHER
    assert rule.with_threshold(None) is rule
    assert DecisionRule.from_json(rule.to_json()) == rule


def test_temperature_changes_confidence_not_the_pet_answer():
    logits = np.array([[2.0, 0.5, -1.0]])
    sharp = DecisionRule(("cat", "dog", NEITHER), temperature=0.5)
    soft = DecisionRule(("cat", "dog", NEITHER), temperature=3.0)
    assert sharp.answers(sharp.probabilities(logits))[0]["label"] == "cat"
    assert soft.answers(soft.probabilities(logits))[0]["label"] == "cat"
    assert (
        sharp.answers(sharp.probabilities(logits))[0]["confidence"]
        > soft.answers(soft.probabilities(logits))[0]["confidence"]
    )


def test_a_model_without_neither_keeps_answering_cat_or_dog():
    rule = DecisionRule.pets_only(("cat", "dog"))
    answers = rule.answers(rule.probabilities(np.array([[0.1, 0.0], [-3.0, 3.0]])))
    assert [a["label"] for a in answers] == ["cat", "dog"]
    assert all(a["pet_score"] == pytest.approx(1.0) for a in answers)
