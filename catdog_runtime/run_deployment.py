"""Run a Prefect deployment through the worker and follow it to the end.

    python -m catdog_runtime.run_deployment train/baseline [--params JSON]

What `prefect deployment run NAME --watch` does, plus what a make target
needs on a busy machine: the run's own log lines stream to the terminal, a run
that no worker picks up within $CATDOG_PICKUP_TIMEOUT seconds is cancelled
with a message that says why (is a worker online in the pool?), and the wait
for the result is bounded by $CATDOG_RUN_TIMEOUT; an API call that times out
or answers 5xx is retried for $CATDOG_API_PATIENCE seconds
(catdog_runtime.prefect_api). Exit status 0 only for a Completed run.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import uuid
from datetime import UTC, datetime

from catdog_runtime.prefect_api import PrefectAPI, PrefectAPIError, ui_url
from catdog_runtime.waits import WaitTimeout, poll, wait_until
from model_lib.settings import PlatformSettings

TERMINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}
POLL_SECONDS = 2
LOG_TAIL_SECONDS = 20


class RunProblem(RuntimeError):
    """The run could not be started or did not complete; the message says why."""


def say(message: str) -> None:
    print(f"[run] {message}", flush=True)


def print_new_logs(api: PrefectAPI, flow_run_id: str, after: str | None) -> str | None:
    """Print the run's log lines newer than `after`; return the newest timestamp seen."""
    query = {"logs": {"flow_run_id": {"any_": [flow_run_id]}}, "sort": "TIMESTAMP_ASC"}
    if after:
        query["logs"]["timestamp"] = {"after_": after}
    for entry in api.call("POST", "/logs/filter", json={**query, "limit": 200}):
        if entry["timestamp"] == after:
            continue
        stamp = entry["timestamp"][11:19]
        print(f"  {stamp} | {entry['message']}", flush=True)
        after = entry["timestamp"]
    return after


def tail_logs(api: PrefectAPI, run_id: str, after: str | None) -> None:
    """The run's last lines: Prefect ships logs in batches, the last ones after the run's
    state is final. Printed until two polls in a row bring none (at most LOG_TAIL_SECONDS)."""
    quiet, newest = [0], [after]

    def fetch() -> int:
        seen = print_new_logs(api, run_id, newest[0])
        quiet[0] = quiet[0] + 1 if seen == newest[0] else 0
        newest[0] = seen
        return quiet[0]

    poll(fetch, lambda polls: polls >= 2, LOG_TAIL_SECONDS, interval=POLL_SECONDS)


def cancel_unclaimed(api: PrefectAPI, run_id: str, pool: str | None, waited: float) -> str:
    """Cancel a run no worker picked up (so that it does not start later by surprise);
    the message says why it may have happened."""
    online = api.online_workers(pool) if pool else []
    api.call(
        "POST",
        f"/flow_runs/{run_id}/set_state",
        json={"state": {"type": "CANCELLED", "message": "no worker picked it up"}, "force": True},
    )
    why = (
        f"workers {online} are online in pool {pool!r} but busy or not polling"
        if online
        else f"no worker is online in work pool {pool!r}: start one with `make up` "
        f"(log: $CATDOG_RUN_DIR/logs/worker.log)"
    )
    return (
        f"no worker picked up flow run {run_id} within {waited} s; {why}. "
        "The run was cancelled so that it does not start later by surprise "
        "(CATDOG_PICKUP_TIMEOUT sets the wait)."
    )


def run(name: str, parameters: dict) -> int:
    try:
        settings = PlatformSettings.from_env()
    except ValueError as error:
        raise RunProblem(str(error)) from None
    api = PrefectAPI(patience=settings.api_patience, say=say)
    pickup_timeout, run_timeout = settings.pickup_timeout, settings.run_timeout
    deployment = api.call("GET", f"/deployments/name/{name}")
    pool = deployment.get("work_pool_name")
    # The key makes a retried create (its first answer lost in a timeout) return the same
    # run instead of starting a second one.
    flow_run = api.call(
        "POST",
        f"/deployments/{deployment['id']}/create_flow_run",
        json={"parameters": parameters, "idempotency_key": str(uuid.uuid4())},
    )
    run_id = flow_run["id"]
    say(f"{name}: flow run '{flow_run['name']}' ({run_id}) in work pool {pool!r}")
    say(f"follow it in the UI: {ui_url(api.url, run_id)}")

    started = time.monotonic()
    # What the polls saw: the state, its name as last printed, the newest log line, and
    # whether a worker ever took the run (a retry's AwaitingRetry is SCHEDULED again).
    seen = {"state": {"type": "SCHEDULED", "name": "Scheduled"}, "name": None, "log": None}
    seen["picked_up"] = False

    def finished() -> bool:
        """Print what is new (log lines, a state change); true once the state is final."""
        flow_run = api.call("GET", f"/flow_runs/{run_id}")
        state = seen["state"] = flow_run["state"] or seen["state"]
        seen["log"] = print_new_logs(api, run_id, seen["log"])
        seen["picked_up"] = seen["picked_up"] or state["type"] != "SCHEDULED"
        if state["name"] != seen["name"]:
            seen["name"] = state["name"]
            say(
                f"state: {state['name']}"
                + (f" ({state['message']})" if state.get("message") else "")
            )
        return state["type"] in TERMINAL

    def picked_up_in_time() -> None:
        if seen["picked_up"] or time.monotonic() - started <= pickup_timeout:
            return
        raise RunProblem(cancel_unclaimed(api, run_id, pool, pickup_timeout))

    try:
        wait_until(
            finished,
            f"flow run {run_id}",
            run_timeout,
            interval=POLL_SECONDS,
            check=picked_up_in_time,
        )
    except WaitTimeout:
        raise RunProblem(
            f"flow run {run_id} is still {seen['state']['name']} after {run_timeout} s; it goes "
            f"on in the worker: follow it at {ui_url(api.url, run_id)} (CATDOG_RUN_TIMEOUT sets "
            "this wait)"
        ) from None
    state = seen["state"]

    tail_logs(api, run_id, seen["log"])
    elapsed = time.monotonic() - started
    if state["type"] != "COMPLETED":
        raise RunProblem(
            f"{name} ended {state['name']} after {elapsed:.0f} s: {state.get('message') or ''}"
            f" (logs: {ui_url(api.url, run_id)})"
        )
    say(f"{name}: Completed in {elapsed:.0f} s ({datetime.now(UTC):%H:%M:%S} UTC)")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("deployment", help="FLOW/DEPLOYMENT, e.g. train/baseline")
    parser.add_argument("--params", default="{}", help="JSON object of flow parameters")
    args = parser.parse_args(argv)
    try:
        parameters = json.loads(args.params)
        if not isinstance(parameters, dict):
            raise ValueError("not a JSON object")
    except ValueError as exc:
        print(f"[run] ERROR: --params must be a JSON object ({exc})", file=sys.stderr)
        return 2
    try:
        return run(args.deployment, parameters)
    except (RunProblem, PrefectAPIError) as problem:
        print(f"[run] ERROR: {problem}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
