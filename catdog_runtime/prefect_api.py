"""The one Prefect REST client of the project (run_deployment, services, tests).

A thin httpx client, not `prefect.get_client()`: importing Prefect takes up to a
minute on a slow machine, and `make train` or `make up` should not pay that just to
create a run and follow it. A busy server (SQLite locked, a slow machine) can time
out or answer 5xx for a while: calls go through the one API retry policy
(`catdog_runtime.waits.api_retrying`) for `patience` seconds, then fail with a
message that says what to do.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

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
    ):
        self.url = (url or api_url()).rstrip("/")
        self.patience = patience
        self.say = say
        self.http = httpx.Client(base_url=self.url, timeout=timeout)
        self.sleep = time.sleep  # the pause between retries (a test's clock replaces it)

    def _request(self, method: str, path: str, **kwargs) -> httpx.Response:
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
