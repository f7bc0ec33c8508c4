"""The paired champion gate (model_lib.promotion): McNemar's exact test on per-image correctness."""

import numpy as np
import pytest

from model_lib.promotion import decide, decision_markdown, mcnemar_exact


def paired(both: int, candidate_only: int, champion_only: int, neither: int):
    candidate = [1] * both + [1] * candidate_only + [0] * champion_only + [0] * neither
    champion = [1] * both + [0] * candidate_only + [1] * champion_only + [0] * neither
    return np.array(candidate, bool), np.array(champion, bool)


def test_discordant_counts_and_exact_p_value():
    b, c, p = mcnemar_exact(*paired(80, 8, 1, 11))
    assert (b, c) == (8, 1)
    # P(X >= 8 | X ~ Binomial(9, 0.5)) = (C(9,8) + C(9,9)) / 2**9 = 10 / 512
    assert p == pytest.approx(10 / 512)


def test_identical_models_give_no_evidence():
    assert mcnemar_exact(*paired(90, 0, 0, 10)) == (0, 0, 1.0)


def test_a_small_lead_on_noise_does_not_churn_the_champion():
    # 2 more images right out of 400: higher accuracy, but a coin would do that often.
    decision = decide(*paired(350, 6, 4, 40)[:1], "3", paired(350, 6, 4, 40)[1])
    assert decision.candidate_accuracy > decision.champion_accuracy
    assert not decision.promoted
    assert "does not beat" in decision.reason and "McNemar" in decision.reason
    assert decision.p_value > 0.05


def test_a_clear_win_is_promoted_with_its_statistics():
    candidate, champion = paired(300, 30, 5, 65)
    decision = decide(candidate, "7", champion)
    assert decision.promoted and decision.p_value < 0.001
    assert (decision.candidate_only_correct, decision.champion_only_correct) == (30, 5)
    assert decision.method == "mcnemar-exact" and decision.images == 400
    assert decision.to_dict()["champion_version"] == "7"
    assert "**promoted**" in decision_markdown("catdog-classifier", "8", decision)


def test_a_worse_candidate_is_rejected():
    candidate, champion = paired(300, 2, 30, 68)
    assert not decide(candidate, "7", champion).promoted


def test_first_model_becomes_champion_without_a_test():
    decision = decide(np.array([1, 0, 1], bool), None, None)
    assert decision.promoted and "first" in decision.reason and decision.p_value is None


def test_unpaired_inputs_are_refused():
    with pytest.raises(ValueError, match="same images"):
        mcnemar_exact(np.ones(5, bool), np.ones(6, bool))


def test_a_candidate_that_lets_more_unseen_kinds_through_is_not_promoted():
    """Better overall (pets), but the champion refuses unseen kinds of photos more often."""
    candidate = np.r_[np.ones(100, bool), np.zeros(10, bool)]
    champion = np.r_[np.zeros(100, bool), np.ones(10, bool)]
    neither_candidate = np.r_[np.zeros(30, bool), np.ones(70, bool)]
    neither_champion = np.ones(100, bool)
    decision = decide(
        candidate,
        "1",
        champion,
        guards={"unseen kinds answered neither": (neither_candidate, neither_champion)},
    )
    assert not decision.promoted
    assert "unseen kinds answered neither" in decision.reason
    assert decision.guards["unseen kinds answered neither"]["champion"] == 1.0


def test_guards_do_not_block_a_candidate_level_with_the_champion_on_them():
    candidate = np.r_[np.ones(30, bool), np.zeros(2, bool)]
    champion = np.r_[np.zeros(30, bool), np.ones(2, bool)]
    same = np.ones(50, bool)
    decision = decide(candidate, "1", champion, guards={"pets answered with a pet": (same, same)})
    assert decision.promoted and decision.guards["pets answered with a pet"]["p_value"] == 1.0
