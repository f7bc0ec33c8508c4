"""The platform's Prefect API (`make up`) answers only clients that send its auth string.

REST and the events websocket refuse everyone else; cross-origin calls are allowed from
the UI's own origin only; a state-changing call needs a CSRF token as well. The secret
never shows in a started process's command line, in a pid file or in a log.
"""

from __future__ import annotations

import base64
import json
import uuid
from datetime import UTC, datetime

import httpx
import psutil
import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

from tests.integration.conftest import events_named, prefect_api, wait_for


def basic(auth: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(auth.encode()).decode()}


@pytest.fixture
def api(platform):
    with httpx.Client(base_url=platform["env"]["PREFECT_API_URL"], timeout=60) as http:
        yield http


@pytest.fixture
def own(platform) -> dict[str, str]:
    """The platform's own credentials, as its clients send them."""
    return basic(platform["env"]["PREFECT_API_AUTH_STRING"])


WRONG = basic("catdog:not-the-secret")


def test_rest_answers_401_without_the_auth_string_and_200_with_it(api, own, platform):
    # The health probe stays open (Kubernetes probes it); nothing else does.
    assert api.get("/health").status_code == 200
    for headers in ({}, WRONG):
        for path in ("/admin/version", "/deployments/name/train/baseline", "/csrf-token?client=x"):
            assert api.get(path, headers=headers).status_code == 401, (path, headers)
    assert api.get("/admin/version", headers=own).status_code == 200
    assert api.get("/deployments/name/train/baseline", headers=own).status_code == 200
    # The platform's own client (catdog_runtime.prefect_api) gets through, CSRF token and all.
    assert prefect_api(platform, "GET", "/deployments/name/train/baseline")["name"] == "baseline"
    assert isinstance(prefect_api(platform, "POST", "/deployments/filter", json={}), list)


def test_a_change_needs_the_auth_string_and_a_csrf_token(api, own):
    # Without credentials there is no CSRF token to get (401 above): refused either way.
    assert api.post("/deployments/filter", json={}).status_code == 403
    assert api.post("/deployments/filter", json={}, headers=own).json() == {
        "detail": "Missing CSRF token."
    }
    client = str(uuid.uuid4())
    token = api.get("/csrf-token", params={"client": client}, headers=own).json()["token"]
    csrf = {"Prefect-Csrf-Token": token, "Prefect-Csrf-Client": client}
    assert api.post("/deployments/filter", json={}, headers=csrf).status_code == 401
    assert api.post("/deployments/filter", json={}, headers={**WRONG, **csrf}).status_code == 401
    assert api.post("/deployments/filter", json={}, headers={**own, **csrf}).status_code == 200


def test_cross_origin_calls_only_from_the_ui_itself(api, platform):
    ui = platform["env"]["PREFECT_API_URL"].removesuffix("/api")
    preflight = {"Access-Control-Request-Method": "POST"}
    foreign = api.options(
        "/deployments/filter", headers={**preflight, "Origin": "http://a.example"}
    )
    assert "access-control-allow-origin" not in foreign.headers
    own_ui = api.options("/deployments/filter", headers={**preflight, "Origin": ui})
    assert own_ui.headers["access-control-allow-origin"] == ui


def event_socket(platform, path: str) -> str:
    return platform["env"]["PREFECT_API_URL"].replace("http://", "ws://", 1) + path


def closed_reason(url: str, token: str | None) -> str:
    """The server's reason for closing a `prefect` websocket that authenticates with `token`."""
    with connect(url, subprotocols=["prefect"], open_timeout=60) as socket:
        socket.send(json.dumps({"type": "auth", "token": token}))
        with pytest.raises(ConnectionClosed) as closed:
            socket.recv(timeout=60)
    assert closed.value.rcvd.code == 1008  # policy violation
    return closed.value.rcvd.reason


@pytest.mark.parametrize("path", ["/events/in", "/events/out"])
def test_events_websocket_refuses_a_client_without_the_auth_string(platform, path):
    url = event_socket(platform, path)
    # An old-style client (no `prefect` subprotocol, so no auth message) is turned away
    # at the handshake.
    with pytest.raises(InvalidStatus) as refused:
        connect(url, open_timeout=60)
    assert refused.value.response.status_code == 403
    assert "no token" in closed_reason(url, None)
    assert "Invalid token" in closed_reason(url, "catdog:not-the-secret")
    with connect(url, subprotocols=["prefect"], open_timeout=60) as socket:
        socket.send(
            json.dumps({"type": "auth", "token": platform["env"]["PREFECT_API_AUTH_STRING"]})
        )
        assert json.loads(socket.recv(timeout=60)) == {"type": "auth_success"}


def test_an_authenticated_client_emits_events_over_the_websocket(platform):
    """What flows do (emit_event): the event reaches the server, so automations see it."""
    name = f"catdog.test.auth-{uuid.uuid4().hex[:8]}"
    with connect(event_socket(platform, "/events/in"), subprotocols=["prefect"]) as socket:
        socket.send(
            json.dumps({"type": "auth", "token": platform["env"]["PREFECT_API_AUTH_STRING"]})
        )
        assert json.loads(socket.recv(timeout=60))["type"] == "auth_success"
        socket.send(
            json.dumps(
                {
                    "id": str(uuid.uuid4()),
                    "occurred": datetime.now(UTC).isoformat(),
                    "event": name,
                    "resource": {"prefect.resource.id": "catdog.test"},
                    "related": [],
                    "payload": {},
                }
            )
        )
    wait_for(lambda: events_named(platform, name), 120, f"event {name} on the server")


# ------------------------------------------------------------------ the secret out of sight
def started_processes(platform) -> dict[str, list[psutil.Process]]:
    """Every service the platform started (by its pid file), with its descendants."""
    found = {}
    for pid_file in sorted(platform["state"].glob("*.pid")):
        top = psutil.Process(json.loads(pid_file.read_text())["pid"])
        found[pid_file.stem] = [top, *top.children(recursive=True)]
    return found


def test_the_auth_string_is_in_no_command_line_pid_file_or_log(platform):
    auth = platform["env"]["PREFECT_API_AUTH_STRING"]
    secret = auth.split(":", 1)[1]
    forms = {secret, base64.b64encode(auth.encode()).decode()}
    assert len(secret) >= 32
    processes = started_processes(platform)
    assert {"prefect-server", "worker"} <= set(processes)
    # The server holds it in its environment, readable by its owner only: the very
    # processes checked below are the ones that know it.
    assert auth in processes["prefect-server"][0].environ().values()
    for service, members in processes.items():
        for process in members:
            argv = " ".join(process.cmdline())
            assert not any(form in argv for form in forms), f"{service}: in argv of {process.pid}"
    files = [*platform["state"].glob("*.pid"), *platform["state"].glob("logs/**/*.log")]
    assert any(f.name == "prefect-server.log" for f in files)
    for path in files:
        text = path.read_text(errors="replace")
        assert not any(form in text for form in forms), f"the Prefect secret is in {path}"
