"""The one Prefect client (catdog_runtime.prefect_api) rides out a busy API, and says
so when it cannot."""

from __future__ import annotations

import base64

import httpx
import pytest

from catdog_runtime.prefect_api import PrefectAPI, PrefectAPIError


def api_answering(*answers, patience: float = 60) -> tuple[PrefectAPI, list, list]:
    """A PrefectAPI whose server gives these answers in turn (an int is a status, an
    exception class is raised); returns it, the requests it saw and the pauses it made."""
    seen, pending, pauses = [], list(answers), []

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/csrf-token"):  # what a server with CSRF checks hands out
            return httpx.Response(200, json={"token": "t-1", "expiration": "2999-01-01T00:00:00Z"})
        seen.append(request)
        answer = pending.pop(0) if len(pending) > 1 else pending[0]
        if isinstance(answer, type):
            raise answer("simulated", request=request)
        return httpx.Response(answer, json={"id": "run-1"} if answer < 400 else {"detail": "x"})

    api = PrefectAPI("http://prefect.test/api", patience=patience)
    transport = httpx.MockTransport(handler)
    api.http = httpx.Client(base_url=api.url, transport=transport, headers=api.http.headers)
    api.sleep = pauses.append
    return api, seen, pauses


def test_timeouts_and_5xx_are_retried_until_the_server_answers():
    api, seen, pauses = api_answering(httpx.ReadTimeout, 503, 500, 201)
    assert api.call("POST", "/deployments/d/create_flow_run", json={}) == {"id": "run-1"}
    assert len(seen) == 4
    assert pauses == sorted(pauses) and len(pauses) == 3  # backing off


def test_a_client_error_is_not_retried_and_names_the_call():
    api, seen, _ = api_answering(422)
    with pytest.raises(PrefectAPIError, match=r"POST /flow_runs/x/set_state -> 422"):
        api.call("POST", "/flow_runs/x/set_state", json={})
    assert len(seen) == 1


def test_a_server_that_never_answers_fails_after_the_patience_with_what_to_do():
    api, seen, pauses = api_answering(httpx.ConnectError, patience=60)
    with pytest.raises(PrefectAPIError, match=r"does not answer .*make up"):
        api.call("GET", "/deployments/name/train/baseline")
    assert 2 <= len(seen) <= 13
    assert sum(pauses) <= 60


def test_a_missing_deployment_says_how_to_register_it():
    api, _, _ = api_answering(404)
    with pytest.raises(PrefectAPIError, match="make deploy"):
        api.call("GET", "/deployments/name/train/nope")


def test_calls_carry_the_auth_string_and_changes_a_csrf_token(monkeypatch):
    monkeypatch.setenv("PREFECT_API_AUTH_STRING", "catdog:s3cret")
    api, seen, _ = api_answering(200)
    api.call("GET", "/flow_runs/x")
    api.call("POST", "/flow_runs/filter", json={})
    expected = "Basic " + base64.b64encode(b"catdog:s3cret").decode()
    assert [r.headers.get("Authorization") for r in seen] == [expected, expected]
    assert "Prefect-Csrf-Token" not in seen[0].headers
    assert seen[1].headers["Prefect-Csrf-Token"] == "t-1"
    assert seen[1].headers["Prefect-Csrf-Client"] == api.csrf_client
