"""The canary verdict (model_lib.rollout): metrics parsing, quantiles, each check."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, Histogram, generate_latest

from model_lib.rollout import (
    Evidence,
    RolloutConfig,
    Window,
    canary_weights,
    judge,
    parse_metrics,
)


def metrics_text(observations: dict[tuple[str, str], list[float]]) -> str:
    """/metrics as BentoML writes it: (endpoint, status) -> request durations in seconds."""
    registry = CollectorRegistry()
    histogram = Histogram(
        "bentoml_service_request_duration_seconds",
        "API HTTP request duration in seconds",
        ["endpoint", "service_name", "service_version", "http_response_code"],
        registry=registry,
    )
    for (endpoint, status), durations in observations.items():
        for seconds in durations:
            histogram.labels(endpoint, "catdog-classifier", "v1", status).observe(seconds)
    return generate_latest(registry).decode()


def test_parse_counts_classify_requests_and_5xx_only():
    text = metrics_text(
        {
            ("/classify", "200"): [0.02] * 90,
            ("/classify", "503"): [0.001] * 3,
            ("/classify", "422"): [0.001] * 7,  # the upload's fault, not the replica's
            ("/readyz", "200"): [0.001] * 50,
        }
    )
    window = parse_metrics(text)
    assert window.requests == 100
    assert window.server_errors == 3
    assert window.error_rate == pytest.approx(0.03)


def test_difference_of_two_readings_is_the_window_between_them():
    before = parse_metrics(metrics_text({("/classify", "200"): [0.3] * 50}))
    after = parse_metrics(metrics_text({("/classify", "200"): [0.3] * 50 + [0.02] * 100}))
    window = after - before
    assert window.requests == 100
    # All of the window's requests were fast: p95 inside the 0.01-0.025 s bucket.
    assert 10 <= window.quantile_ms(0.95) <= 25


def test_quantile_of_an_empty_window_is_none():
    assert Window().quantile_ms(0.95) is None


def side(accuracy, requests=100, errors=0, seconds=0.02):
    observations = {("/classify", "200"): [seconds] * (requests - errors)}
    if errors:
        observations[("/classify", "500")] = [seconds] * errors
    return Evidence(accuracy, parse_metrics(metrics_text(observations)))


CONFIG = RolloutConfig()


def test_a_candidate_as_good_as_the_stable_version_is_promoted():
    verdict = judge(CONFIG, side(0.90), side(0.91))
    assert verdict.promote, verdict.reasons
    assert verdict.reason == "all canary checks passed"


def test_accuracy_below_the_stable_version_rolls_back():
    verdict = judge(CONFIG, side(0.50), side(0.90))
    assert not verdict.promote
    assert "below the stable version's 0.900" in verdict.reason


def test_server_errors_roll_back():
    verdict = judge(CONFIG, side(0.9, requests=100, errors=5), side(0.9))
    assert not verdict.promote
    assert "error rate 5.000% (5 of 100 requests answered 5xx)" in verdict.reason


def test_slow_canary_rolls_back():
    verdict = judge(CONFIG, side(0.9, seconds=2.0), side(0.9, seconds=0.02))
    assert not verdict.promote
    assert "p95 latency" in verdict.reason


def test_too_few_requests_cannot_be_judged():
    verdict = judge(CONFIG, side(0.9, requests=5), side(0.9))
    assert not verdict.promote
    assert "answered only 5 requests" in verdict.reason


def test_first_deployment_is_judged_against_the_floor():
    assert judge(CONFIG, side(0.9), None).promote
    verdict = judge(CONFIG, side(0.4), None)
    assert not verdict.promote
    assert "below the floor 0.500" in verdict.reason


def test_every_failed_check_is_a_reason():
    verdict = judge(CONFIG, side(0.5, errors=10, seconds=2.0), side(0.9))
    assert len(verdict.reasons) == 3


@pytest.mark.parametrize(
    ("share", "stable", "canary", "expected"),
    [
        (0.1, 1, 1, (100, 11)),
        (0.1, 2, 1, (100, 22)),
        (0.5, 1, 1, (100, 100)),
        (0.1, 0, 1, (100, 100)),
    ],
)
def test_canary_weights_give_the_canaries_their_share(share, stable, canary, expected):
    assert canary_weights(share, stable, canary) == expected


def test_config_refuses_a_share_of_everything():
    with pytest.raises(ValueError, match="canary_share"):
        RolloutConfig(canary_share=1.0)


def test_a_canary_answering_one_class_for_everything_rolls_back():
    stable = Evidence(0.52, side(0.52).window, ("cat", "dog"))
    canary = Evidence(0.50, side(0.50).window, ("cat",))
    verdict = judge(CONFIG, canary, stable)  # within the accuracy margin of a weak stable model
    assert not verdict.promote
    assert verdict.reasons == (
        "it answers one class ('cat') for every photo of test_images, where the stable "
        "version answers 2",
    )
    assert judge(CONFIG, Evidence(0.5, side(0.5).window, ("cat",)), None).reasons == (
        "it answers one class ('cat') for every photo of test_images",
    )


def test_windows_of_two_replicas_add_up_bucket_by_bucket():
    a = Window(10, 1, ((0.1, 4.0), (float("inf"), 10.0)))
    b = Window(5, 0, ((0.1, 5.0), (0.5, 5.0), (float("inf"), 5.0)))
    total = a + b
    assert (total.requests, total.server_errors) == (15, 1)
    assert total.buckets == ((0.1, 9.0), (0.5, 5.0), (float("inf"), 15.0))
    assert (total - b).requests == a.requests


def test_bentoml_metric_names_are_the_installed_bentomls():
    """The names model_lib.rollout (and the alerting test's fake replica) use are BentoML's:
    its HTTP middleware's metric names under its configuration's default namespace."""
    import importlib.util
    from pathlib import Path

    import yaml

    from model_lib import rollout

    package = Path(importlib.util.find_spec("bentoml").origin).parent / "_internal"
    defaults = yaml.safe_load((package / "configuration/v2/default_configuration.yaml").read_text())
    assert defaults["services"]["metrics"]["namespace"] == rollout.BENTOML_NAMESPACE
    instruments = (package / "server/http/instruments.py").read_text()
    for name in (rollout.DURATION_METRIC, rollout.REQUEST_TOTAL.split("_", 2)[2]):
        assert f'name="{name}"' in instruments
    for label in rollout.REQUEST_LABELS:
        assert f'"{label}"' in instruments
