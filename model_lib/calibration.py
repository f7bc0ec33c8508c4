"""Calibration and "neither" figures (NumPy, SciPy, scikit-learn; no torch, no I/O).

- temperature scaling (Guo et al., ICML 2017): one scalar T fitted on validation
  logits by minimising the negative log-likelihood;
- expected calibration error over equal-width confidence bins;
- the pet-score threshold that answers `neither` for at most a given share of
  pet photos, and how well the score separates pets from other photos (AUROC,
  false-positive rate at 95 % true-positive rate).
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import minimize_scalar
from sklearn.metrics import roc_auc_score

from model_lib.preprocess import softmax

ECE_BINS = 15
# At most this share of pet photos may be answered `neither` (issue #19's target).
MAX_PET_REJECTION = 0.005


def negative_log_likelihood(logits: np.ndarray, labels: np.ndarray, temperature: float) -> float:
    scaled = np.asarray(logits, np.float64) / temperature
    shifted = scaled - scaled.max(axis=1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    return float(-log_probs[np.arange(len(labels)), labels].mean())


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The T > 0 minimising the NLL of softmax(logits / T) (searched over log T)."""
    result = minimize_scalar(
        lambda log_t: negative_log_likelihood(logits, labels, float(np.exp(log_t))),
        bounds=(np.log(0.05), np.log(20.0)),
        method="bounded",
    )
    return float(np.exp(result.x))


def reliability(confidence: np.ndarray, correct: np.ndarray, bins: int = ECE_BINS) -> dict:
    """Per equal-width confidence bin: count, mean confidence, accuracy (empty bins NaN)."""
    confidence = np.asarray(confidence, np.float64)
    correct = np.asarray(correct, np.float64)
    index = np.clip((confidence * bins).astype(int), 0, bins - 1)
    counts = np.bincount(index, minlength=bins)
    with np.errstate(invalid="ignore"):
        mean_confidence = np.bincount(index, confidence, bins) / counts
        accuracy = np.bincount(index, correct, bins) / counts
    return {"counts": counts, "confidence": mean_confidence, "accuracy": accuracy}


def expected_calibration_error(
    confidence: np.ndarray, correct: np.ndarray, bins: int = ECE_BINS
) -> float:
    """Sum over bins of (share of rows in the bin) x |accuracy - mean confidence|."""
    table = reliability(confidence, correct, bins)
    filled = table["counts"] > 0
    gaps = np.abs(table["accuracy"][filled] - table["confidence"][filled])
    return float((table["counts"][filled] / table["counts"].sum() * gaps).sum())


def threshold_for(pet_scores: np.ndarray, max_rejected: float = MAX_PET_REJECTION) -> float:
    """The highest threshold that answers `neither` (score < threshold) for at most
    `max_rejected` of these pet photos."""
    scores = np.sort(np.asarray(pet_scores, np.float64))
    allowed = int(np.floor(max_rejected * len(scores)))  # rows that may fall below
    return float(scores[min(allowed, len(scores) - 1)])


def separation(pet_scores: np.ndarray, other_scores: np.ndarray, threshold: float) -> dict:
    """How the pet score tells pets from other photos, and what `threshold` does."""
    pets = np.asarray(pet_scores, np.float64)
    others = np.asarray(other_scores, np.float64)
    truth = np.r_[np.ones(len(pets)), np.zeros(len(others))]
    at_95 = np.quantile(pets, 0.05)  # keeps 95 % of pets
    return {
        "auroc": float(roc_auc_score(truth, np.r_[pets, others])),
        "fpr_at_95_tpr": float((others >= at_95).mean()),
        "pets_rejected": float((pets < threshold).mean()),
        "others_rejected": float((others < threshold).mean()),
    }


def calibrated(logits: np.ndarray, temperature: float) -> np.ndarray:
    return softmax(np.asarray(logits, np.float64) / temperature)
