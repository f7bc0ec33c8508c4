"""The one Prefect REST client of the project (run_deployment, services, tests).

A thin httpx client, not `prefect.get_client()`: importing Prefect takes up to a
minute on a slow machine, and `make train` or `make up` should not pay that just to
create a run and follow it. A busy server (SQLite locked, a slow machine) can time
out or answer 5xx for a while: calls go through the one API retry policy
(`catdog_runtime.waits.api_retrying`) for `patience` seconds, then fail with a
message that says what to do.

Authentication (README "Security"): every call sends $PREFECT_API_AUTH_STRING as
basic auth, and every state-changing call a CSRF token fetched from the server,
as Prefect's own client does (PREFECT_SERVER_CSRF_PROTECTION_ENABLED).
"""

from __future__ import annotations

import base64
import os
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime

import httpx

from catdog_runtime.waits import api_retrying, transient_http_error


class PrefectAPIError(RuntimeError):
    """A call failed for good; the message names the call and what to do."""


def api_url() -> str:
    """$PREFECT_API_URL (scripts/env.sh derives it from PREFECT_PORT)."""
    url = os.environ.get("PREFECT_API_URL")
    if not url:
        raise PrefectAPIError("PREFECT_API_URL is not set: source scripts/env.sh first")
    return url


def auth_headers(auth: str | None = None) -> dict[str, str]:
    """The basic-auth header for `auth`, default $PREFECT_API_AUTH_STRING (none when unset)."""
    auth = auth or os.environ.get("PREFECT_API_AUTH_STRING")
    if not auth:
        return {}
    return {"Authorization": "Basic " + base64.b64encode(auth.encode()).decode()}


# Calls the server's CSRF check applies to (prefect.server.api.middleware).
CSRF_METHODS = {"POST", "PUT", "PATCH", "DELETE"}


def ui_url(api: str, flow_run_id: str) -> str:
    return f"{api.rstrip('/').removesuffix('/api')}/runs/flow-run/{flow_run_id}"


class PrefectAPI:
    """The REST calls the platform makes; `call` returns the decoded JSON answer."""

    def __init__(
        self,
        url: str | None = None,
        patience: float = 300,
        say: Callable[[str], None] | None = None,
        timeout: float = 30,
        auth: str | None = None,
    ):
        self.url = (url or api_url()).rstrip("/")
        self.patience = patience
        self.say = say
        self.http = httpx.Client(base_url=self.url, timeout=timeout, headers=auth_headers(auth))
        self.sleep = time.sleep  # the pause between retries (a test's clock replaces it)
        self.csrf_client = str(uuid.uuid4())
        self.csrf_token: dict | None = None  # {"token", "expiration"} from the server
        self.csrf_enabled = True  # until the server says it has no CSRF check

    def _csrf_headers(self) -> dict[str, str]:
        """The CSRF token headers, fetched anew when missing or expired."""
        if self.csrf_token is None or datetime.fromisoformat(
            self.csrf_token["expiration"]
        ) <= datetime.now(UTC):
            response = self.http.get("/csrf-token", params={"client": self.csrf_client})
            if response.status_code == 422 and "CSRF protection is disabled" in response.text:
                self.csrf_enabled = False
                return {}
            response.raise_for_status()
            self.csrf_token = response.json()
        return {
            "Prefect-Csrf-Token": self.csrf_token["token"],
            "Prefect-Csrf-Client": self.csrf_client,
        }

    def _request(self, method: str, path: str, **kwargs) -> httpx.Response:
        if method.upper() in CSRF_METHODS and self.csrf_enabled:
            kwargs["headers"] = {**kwargs.get("headers", {}), **self._csrf_headers()}
        response = self.http.request(method, path, **kwargs)
        if response.status_code == 403 and "Invalid CSRF token" in response.text:
            self.csrf_token = None  # the server forgot it (restarted, expired): once more
            kwargs["headers"] = {**kwargs["headers"], **self._csrf_headers()}
            response = self.http.request(method, path, **kwargs)
        response.raise_for_status()
        return response

    def call(self, method: str, path: str, **kwargs):
        retrying = api_retrying(
            self.patience,
            say=(lambda m: self.say(f"{method} {path}: {m}")) if self.say else None,
            sleep=self.sleep,
        )
        try:
            response = retrying(self._request, method, path, **kwargs)
        except httpx.TransportError as exc:
            raise PrefectAPIError(
                f"the Prefect API at {self.url} does not answer ({type(exc).__name__}: {exc}) "
                f"after {self.patience:.0f} s; start it with `make up`, check `make status`"
            ) from None
        except httpx.HTTPStatusError as exc:
            status = exc.response.status_code
            if status == 404 and path.startswith("/deployments/name/"):
                raise PrefectAPIError(
                    f"no deployment {path.removeprefix('/deployments/name/')} on {self.url}: "
                    "register the deployments with `make deploy`"
                ) from None
            retried = " (after retries)" if transient_http_error(exc) else ""
            raise PrefectAPIError(
                f"{method} {path} -> {status}: {exc.response.text[:300]}{retried}"
            ) from None
        return response.json() if response.content else None

    # ------------------------------------------------------------------ the calls
    def online_workers(self, pool: str) -> list[str]:
        workers = self.call("POST", f"/work_pools/{pool}/workers/filter", json={})
        return [w["name"] for w in workers if w.get("status") == "ONLINE"]

    def deployment(self, name: str) -> dict:
        return self.call("GET", f"/deployments/name/{name}")

    def flow_run(self, flow_run_id: str) -> dict:
        return self.call("GET", f"/flow_runs/{flow_run_id}")
