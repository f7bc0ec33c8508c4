"""The champion gate's decision (plain logic; `tracking` scores the champion and applies it)."""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class PromotionDecision:
    promoted: bool
    candidate_accuracy: float
    champion_version: str | None
    champion_accuracy: float | None  # the champion re-scored on the candidate's validation split
    reason: str

    def to_dict(self) -> dict:
        return asdict(self)


def should_promote(candidate_accuracy: float, champion_accuracy: float | None) -> bool:
    """The first model wins; later ones must be strictly better on the same split."""
    return champion_accuracy is None or candidate_accuracy > champion_accuracy


def decide_promotion(candidate_accuracy, champion_version, champion_accuracy) -> PromotionDecision:
    promoted = should_promote(candidate_accuracy, champion_accuracy)
    if champion_version is None:
        reason = "no champion yet: the first registered model becomes champion"
    elif promoted:
        reason = (
            f"val accuracy {candidate_accuracy:.4f} beats champion v{champion_version} "
            f"({champion_accuracy:.4f}) on the same split"
        )
    else:
        reason = (
            f"val accuracy {candidate_accuracy:.4f} does not beat champion "
            f"v{champion_version} ({champion_accuracy:.4f}) on the same split"
        )
    return PromotionDecision(
        promoted, candidate_accuracy, champion_version, champion_accuracy, reason
    )
