from model_lib.promotion import decide_promotion, should_promote


def test_first_model_becomes_champion():
    assert should_promote(0.6, None)
    decision = decide_promotion(0.6, None, None)
    assert decision.promoted and "first" in decision.reason


def test_better_model_is_promoted():
    decision = decide_promotion(0.91, "3", 0.88)
    assert decision.promoted and "beats champion v3" in decision.reason


def test_worse_or_equal_model_is_not_promoted():
    assert not decide_promotion(0.88, "3", 0.91).promoted
    tie = decide_promotion(0.9, "3", 0.9)
    assert not tie.promoted and "does not beat" in tie.reason
