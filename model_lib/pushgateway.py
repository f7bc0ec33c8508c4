"""The evaluation's figures for Prometheus, pushed to a Pushgateway (PROFILE=scale).

A batch job has no /metrics to scrape: the evaluate flow pushes its last
result, Prometheus scrapes the Pushgateway, and monitoring/alerts.yml alerts
on accuracy, drift, the share of `neither` answers and staleness. One group
(job `catdog-evaluate`), replaced whole on every push: a figure the latest run
did not produce (drift, when too few requests were logged) disappears instead
of staying stale.

The Pushgateway asks for basic auth (PROFILE=scale): user `catdog`, the password
in $CATDOG_MONITORING_PASSWORD (scripts/env.sh makes it).
"""

from __future__ import annotations

import os
import time

from prometheus_client import CollectorRegistry, Gauge, push_to_gateway
from prometheus_client.exposition import basic_auth_handler, default_handler

ENV_URL = "CATDOG_PUSHGATEWAY_URL"
ENV_PASSWORD = "CATDOG_MONITORING_PASSWORD"
USER = "catdog"
JOB = "catdog-evaluate"
PUSH_TIMEOUT_SECONDS = 10


def pushgateway_url() -> str | None:
    return os.environ.get(ENV_URL) or None


def push_evaluation(
    url: str,
    *,
    accuracy: float,
    min_accuracy: float,
    errors: int,
    requests: int,
    window_requests: int,
    neither_share: float | None = None,
    max_neither_share: float | None = None,
    drift_share: float | None = None,
    drift_detected: bool | None = None,
    password: str | None = None,
) -> None:
    """Replace the `catdog-evaluate` group on the Pushgateway at `url` with these figures.

    `password`: of user `catdog` (default: $CATDOG_MONITORING_PASSWORD; none: no auth)."""
    registry = CollectorRegistry()

    def gauge(name: str, help_text: str, value: float) -> None:
        Gauge(name, help_text, registry=registry).set(value)

    gauge("catdog_evaluation_accuracy", "Accuracy on test_images/ through the service", accuracy)
    gauge("catdog_evaluation_min_accuracy", "The flow's accuracy threshold", min_accuracy)
    gauge("catdog_evaluation_errors", "Failed requests of the evaluation", errors)
    gauge("catdog_evaluation_requests", "Requests the evaluation sent", requests)
    gauge(
        "catdog_evaluation_window_requests",
        "Logged user requests in the drift window",
        window_requests,
    )
    if neither_share is not None:
        gauge(
            "catdog_evaluation_neither_share",
            "Share of the window's user requests answered neither (not a pet)",
            neither_share,
        )
    if max_neither_share is not None:
        gauge(
            "catdog_evaluation_max_neither_share",
            "The flow's warning level for the neither share",
            max_neither_share,
        )
    if drift_share is not None:
        gauge("catdog_evaluation_drift_share", "Share of image statistics drifted", drift_share)
        gauge("catdog_evaluation_drift_detected", "1 when drift was detected", int(drift_detected))
    gauge("catdog_evaluation_last_run_timestamp_seconds", "When the evaluation ran", time.time())
    password = password if password is not None else os.environ.get(ENV_PASSWORD)

    def handler(url, method, timeout, headers, data):
        if not password:
            return default_handler(url, method, timeout, headers, data)
        return basic_auth_handler(url, method, timeout, headers, data, USER, password)

    push_to_gateway(url, job=JOB, registry=registry, timeout=PUSH_TIMEOUT_SECONDS, handler=handler)
