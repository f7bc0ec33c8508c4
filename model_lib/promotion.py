"""The champion gate: promote only a candidate that is better beyond noise.

Both models are scored on the same validation files, so their errors are
paired. Retraining on nearly the same data gives a candidate that differs from
the champion on a handful of images; a plain "higher accuracy wins" flips the
champion on that noise and ships a new bento every time. McNemar's exact test
looks only at the discordant images (one model right, the other wrong): under
"equally good" each discordant image is a fair coin, so the one-sided binomial
p-value of the candidate winning at least `b` of `b + c` says how likely such a
lead is by chance. The candidate is promoted when that p-value is below `alpha`.

Correct means: a pet photo answered with its class, a photo that is neither
answered `neither`. Guards then keep a candidate that wins overall from
trading one kind of answer for another: it is not promoted when the champion
is better beyond chance on one guarded figure alone (unseen kinds of photos
answered `neither`; pet photos answered with a pet), by the same test.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
from scipy.stats import binomtest


@dataclass(frozen=True)
class PromotionDecision:
    promoted: bool
    candidate_accuracy: float
    champion_version: str | None
    champion_accuracy: float | None  # the champion re-scored on the candidate's validation split
    reason: str

    def to_dict(self) -> dict:
        return asdict(self)


GATE_METHOD = "mcnemar-exact"
DEFAULT_ALPHA = 0.05


@dataclass(frozen=True)
class PairedGateDecision(PromotionDecision):
    method: str = GATE_METHOD
    alpha: float = DEFAULT_ALPHA
    candidate_only_correct: int = 0  # b: images only the candidate gets right
    champion_only_correct: int = 0  # c: images only the champion gets right
    p_value: float | None = None  # one-sided: P(>= b of b+c by chance)
    images: int = 0
    guards: dict = field(default_factory=dict)  # name -> {"candidate", "champion", "p_value"}


def mcnemar_exact(candidate_correct, champion_correct) -> tuple[int, int, float]:
    """(b, c, one-sided exact p-value that the candidate is better) on paired correctness."""
    candidate = np.asarray(candidate_correct, dtype=bool)
    champion = np.asarray(champion_correct, dtype=bool)
    if candidate.shape != champion.shape:
        raise ValueError(
            f"paired test needs the same images for both models: {candidate.shape} vs "
            f"{champion.shape}"
        )
    b = int(np.sum(candidate & ~champion))
    c = int(np.sum(~candidate & champion))
    if b + c == 0:
        return b, c, 1.0  # the models agree everywhere: no evidence either way
    return b, c, float(binomtest(b, b + c, 0.5, alternative="greater").pvalue)


def guard_results(guards: dict, alpha: float) -> tuple[dict, list[str]]:
    """Each guard's shares and the one-sided p-value that the champion is better on it;
    returns (figures, the names of the guards the candidate fails)."""
    figures, failed = {}, []
    for name, (candidate_good, champion_good) in (guards or {}).items():
        candidate_good = np.asarray(candidate_good, dtype=bool)
        if candidate_good.size == 0:
            continue
        champion_good = np.asarray(champion_good, dtype=bool)
        _, _, p_value = mcnemar_exact(champion_good, candidate_good)
        figures[name] = {
            "candidate": float(candidate_good.mean()),
            "champion": float(champion_good.mean()),
            "p_value": p_value,
        }
        if p_value < alpha:
            failed.append(name)
    return figures, failed


def decide(
    candidate_correct,
    champion_version: str | None,
    champion_correct,
    alpha: float = DEFAULT_ALPHA,
    guards: dict | None = None,
) -> PairedGateDecision:
    """The promotion decision with its statistics; the reason says which test decided.
    `guards`: name -> (candidate good, champion good), per image, paired."""
    candidate = np.asarray(candidate_correct, dtype=bool)
    candidate_accuracy = float(candidate.mean()) if candidate.size else 0.0
    if champion_version is None:
        return PairedGateDecision(
            promoted=True,
            candidate_accuracy=candidate_accuracy,
            champion_version=None,
            champion_accuracy=None,
            reason="no champion yet: the first registered model becomes champion",
            alpha=alpha,
            images=int(candidate.size),
        )
    champion = np.asarray(champion_correct, dtype=bool)
    b, c, p_value = mcnemar_exact(candidate, champion)
    champion_accuracy = float(champion.mean())
    guard_figures, failed = guard_results(guards, alpha)
    promoted = p_value < alpha and not failed
    verdict = "beats" if p_value < alpha else "does not beat"
    reason = (
        f"candidate {candidate_accuracy:.4f} vs champion v{champion_version} "
        f"{champion_accuracy:.4f} on the same {candidate.size} validation images: "
        f"{verdict} the champion beyond chance (McNemar exact, one-sided: candidate "
        f"alone right on {b}, champion alone on {c}, p={p_value:.4f}, alpha={alpha})"
    )
    for name in failed:
        figures = guard_figures[name]
        reason += (
            f"; but the champion is better beyond chance on {name} "
            f"({figures['champion']:.4f} vs {figures['candidate']:.4f}, "
            f"p={figures['p_value']:.4f}): not promoted"
        )
    return PairedGateDecision(
        promoted=promoted,
        candidate_accuracy=candidate_accuracy,
        champion_version=champion_version,
        champion_accuracy=champion_accuracy,
        reason=reason,
        alpha=alpha,
        candidate_only_correct=b,
        champion_only_correct=c,
        p_value=p_value,
        images=int(candidate.size),
        guards=guard_figures,
    )


def decision_markdown(model_name: str, version: str, decision: PairedGateDecision) -> str:
    """The decision as the Prefect artifact shows it."""
    rows = [
        ("decision", "**promoted**" if decision.promoted else "**rejected**"),
        ("method", f"{decision.method} (alpha {decision.alpha})"),
        ("candidate accuracy", f"{decision.candidate_accuracy:.4f}"),
        ("champion", f"v{decision.champion_version}" if decision.champion_version else "none"),
        (
            "champion accuracy (same files)",
            "" if decision.champion_accuracy is None else f"{decision.champion_accuracy:.4f}",
        ),
        ("only candidate right", str(decision.candidate_only_correct)),
        ("only champion right", str(decision.champion_only_correct)),
        ("p-value", "" if decision.p_value is None else f"{decision.p_value:.4g}"),
        ("validation images", str(decision.images)),
    ]
    for name, figures in decision.guards.items():
        rows.append(
            (
                f"guard: {name}",
                f"candidate {figures['candidate']:.4f}, champion {figures['champion']:.4f}, "
                f"p(champion better)={figures['p_value']:.4g}",
            )
        )
    table = "\n".join(f"| {k} | {v} |" for k, v in rows)
    return (
        f"# Champion gate: {model_name} v{version}\n\n{decision.reason}\n\n"
        f"| | |\n|---|---|\n{table}\n"
    )
