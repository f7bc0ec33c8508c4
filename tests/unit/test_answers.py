"""The /classify answer from calibrated probabilities (bento/answers.py), without BentoML."""

import numpy as np
import pytest

from bento.answers import answer, served_rule
from model_lib.decision import NEITHER, DecisionRule

RULE = DecisionRule(("cat", "dog", NEITHER), temperature=1.5, threshold=0.4)


@pytest.mark.parametrize(
    "probs, label, confidence",
    [
        ([0.7, 0.2, 0.1], "cat", 0.7),
        ([0.25, 0.35, 0.4], "dog", 0.35),  # pet score 0.6 >= 0.4: the likelier pet
        ([0.2, 0.15, 0.65], NEITHER, 0.65),  # pet score 0.35 < 0.4
    ],
)
def test_answer_is_the_likelier_pet_or_neither_below_the_threshold(probs, label, confidence):
    body = answer(RULE, np.array(probs, np.float32))
    assert body["label"] == label
    assert body["confidence"] == pytest.approx(confidence)  # the probability of that label
    assert set(body["probabilities"]) == {"cat", "dog"}  # the pets only, as before
    assert body["pet_score"] == pytest.approx(probs[0] + probs[1])
    assert sum(body["probabilities"].values()) == pytest.approx(body["pet_score"])
    assert body["threshold"] == 0.4
    assert set(body) == {"label", "confidence", "probabilities", "pet_score", "threshold"}


def test_the_setting_overrides_the_stored_threshold():
    probs = np.array([0.2, 0.15, 0.65])
    assert served_rule(RULE, None) == (RULE, None)  # unset: the model's own
    stricter, warning = served_rule(RULE, 0.3)
    assert warning is None
    assert stricter.threshold == 0.3 and stricter.temperature == RULE.temperature
    assert answer(stricter, probs)["label"] == "cat"  # 0.35 >= 0.3
    never, _ = served_rule(RULE, 0.0)
    assert answer(never, np.array([0.01, 0.0, 0.99]))["label"] == "cat"
    always, _ = served_rule(RULE, 1.0)
    assert answer(always, np.array([0.6, 0.3, 0.1]))["label"] == NEITHER


def test_a_model_without_neither_keeps_answering_cat_or_dog():
    old = DecisionRule.pets_only(("cat", "dog"))
    rule, warning = served_rule(old, None)
    assert warning is None and rule.threshold == 0.0
    body = answer(rule, np.array([0.3, 0.7]))
    assert (body["label"], body["confidence"], body["pet_score"]) == ("dog", 0.7, 1.0)
    assert body["probabilities"] == {"cat": pytest.approx(0.3), "dog": pytest.approx(0.7)}
    # A threshold cannot apply to such a model: it is ignored, with a warning to log.
    rule, warning = served_rule(old, 0.9)
    assert answer(rule, np.array([0.3, 0.7]))["label"] == "dog"
    assert "CATDOG_NEITHER_THRESHOLD=0.9 ignored" in warning


def test_an_old_client_reading_only_the_label_never_gets_a_wrong_pet():
    """A photo of something else: the label says `neither`, not the likelier pet."""
    body = answer(RULE, np.array([0.3, 0.05, 0.65]))
    assert body["label"] == NEITHER and body["label"] not in body["probabilities"]
