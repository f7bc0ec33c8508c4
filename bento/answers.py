"""From the model's calibrated probabilities to the /classify answer (no BentoML here).

The decision is the model's own rule (`model_lib.decision`: temperature and
`neither` threshold, stored in the ONNX file); the service may only move the
threshold (CATDOG_NEITHER_THRESHOLD). Kept apart from bento/service.py so that
unit tests check it without starting BentoML.
"""

from __future__ import annotations

import numpy as np

from model_lib.decision import NEITHER, DecisionRule


def served_rule(stored: DecisionRule, threshold: float | None) -> tuple[DecisionRule, str | None]:
    """The rule the service answers with, and a warning when the setting cannot apply.

    `threshold` (the setting; None keeps the stored one) replaces the model's. A
    model without a `neither` output (exported before it existed) keeps answering
    cat or dog: a threshold has nothing to act on there, so 0 is reported."""
    if NEITHER in stored.outputs:
        return stored.with_threshold(threshold), None
    warning = None
    if threshold is not None:
        warning = (
            f"CATDOG_NEITHER_THRESHOLD={threshold} ignored: the model has no '{NEITHER}' "
            f"output (outputs {list(stored.outputs)}), so it answers cat or dog only"
        )
    return stored.with_threshold(0.0), warning


def answer(rule: DecisionRule, probabilities: np.ndarray) -> dict:
    """The JSON fields of one answer from one row of calibrated probabilities: label
    (cat, dog or neither), confidence (the probability of that label), the pet classes'
    probabilities, the pet score the decision used and the threshold it was held to."""
    (body,) = rule.answers(np.asarray(probabilities)[None])
    return {**body, "threshold": rule.threshold}
