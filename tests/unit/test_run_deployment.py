"""scripts/run_deployment.py rides out a busy Prefect API, and says so when it cannot."""

from __future__ import annotations

import httpx
import pytest

from scripts import run_deployment


def api_answering(*answers, patience: float = 60) -> tuple[run_deployment.PrefectAPI, list]:
    """A PrefectAPI whose server gives these answers in turn (an int is a status, an
    exception class is raised); returns it and the list of requests it saw."""
    seen, pending = [], list(answers)

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        answer = pending.pop(0) if len(pending) > 1 else pending[0]
        if isinstance(answer, type):
            raise answer("simulated", request=request)
        return httpx.Response(answer, json={"id": "run-1"} if answer < 400 else {"detail": "x"})

    api = run_deployment.PrefectAPI("http://prefect.test/api", patience=patience)
    api.http = httpx.Client(base_url=api.url, transport=httpx.MockTransport(handler))
    return api, seen


@pytest.fixture(autouse=True)
def no_sleeping(monkeypatch):
    monkeypatch.setattr(run_deployment.time, "sleep", lambda seconds: None)


def test_timeouts_and_5xx_are_retried_until_the_server_answers():
    api, seen = api_answering(httpx.ReadTimeout, 503, 500, 201)
    assert api.call("POST", "/deployments/d/create_flow_run", json={}) == {"id": "run-1"}
    assert len(seen) == 4


def test_a_client_error_is_not_retried_and_names_the_call():
    api, seen = api_answering(422)
    with pytest.raises(run_deployment.RunProblem, match=r"POST /flow_runs/x/set_state -> 422"):
        api.call("POST", "/flow_runs/x/set_state", json={})
    assert len(seen) == 1


def test_a_server_that_never_answers_fails_after_the_patience_with_what_to_do(monkeypatch):
    clock = iter(range(0, 10_000, 5))
    monkeypatch.setattr(run_deployment.time, "monotonic", lambda: next(clock))
    api, seen = api_answering(httpx.ConnectError, patience=60)
    with pytest.raises(run_deployment.RunProblem, match=r"does not answer .*make up"):
        api.call("GET", "/deployments/name/train/baseline")
    assert 2 <= len(seen) <= 13


def test_a_missing_deployment_says_how_to_register_it():
    api, _ = api_answering(404)
    with pytest.raises(run_deployment.RunProblem, match="make deploy"):
        api.call("GET", "/deployments/name/train/nope")
