"""bench.serving's report: a compared model's figures are taken within each round."""

from __future__ import annotations

import pytest

from bench.serving import LoadResult, report


def result(server, clients, rps, p50_ms, round_index) -> LoadResult:
    return LoadResult(
        server, clients, int(rps * 10), 10.0, 0, p50_ms, p50_ms, p50_ms, None, round_index
    )


def test_a_compared_model_is_reported_as_a_share_of_the_measured_one_round_by_round():
    results = [
        result("service", 1, 30, 20.0, 0),
        result("service", 16, 100, 90.0, 0),
        result("compare1", 1, 60, 10.0, 0),
        result("compare1", 16, 200, 50.0, 0),
        # The machine got slower in round 2: the absolute figures halve, the ratio holds.
        result("service", 1, 15, 40.0, 1),
        result("service", 16, 50, 180.0, 1),
        result("compare1", 1, 30, 14.0, 1),
        result("compare1", 16, 110, 100.0, 1),
    ]
    ceilings = [{"1 thread": 120.0}, {"1 thread": 60.0}]
    summary = report(ceilings, results, "wrk", "lite2", {"compare1": "catdog-classifier:lite0"})

    compared = summary["ratios"]["compare1"]
    assert compared["model"] == "catdog-classifier:lite0"
    assert compared["throughput_over_service"] == pytest.approx((2.0 + 2.2) / 2)
    assert compared["p50_1_client_ms"] == pytest.approx(12.0)


def test_without_a_compared_model_the_report_has_no_comparison():
    results = [result("service", 1, 30, 20.0, 0), result("service", 16, 100, 90.0, 0)]
    summary = report([{"1 thread": 120.0}], results, "wrk", "lite2")
    assert not any(key.startswith("compare") for key in summary["ratios"])
