"""How long a flow run takes to start through the worker, with the deployments' explicit
engine command (prefect.yaml) and with Prefect's default launcher (a workspace supervisor
process first), alternating.

    . scripts/env.sh && python -m bench.flow_start --rounds 5

Needs the platform up and deployed (`make up deploy`). Each round creates one run of
--deployment per variant, one after the other, and waits for its end. The default
deployment and parameters make a run that fails fast on purpose (`package/champion` of a
version that is not the champion: imports, one MLflow call), so the figures are the
launch, not a flow's work. Reported per variant from the server's own timestamps, median
over the rounds: created -> running (worker poll, process start, imports) and
running -> end (the flow).
"""

from __future__ import annotations

import argparse
import json
import statistics
from datetime import datetime

from catdog_runtime.prefect_api import PrefectAPI
from catdog_runtime.run_deployment import TERMINAL
from catdog_runtime.waits import poll

# The run's job variables: None leaves the command unset, as a deployment without one.
VARIANTS = {"explicit engine command": {}, "workspace supervisor": {"command": None}}


def seconds_between(start: str, end: str) -> float:
    return (datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds()


def timed_run(api: PrefectAPI, deployment_id: str, params: dict, job_variables: dict) -> dict:
    created = api.call(
        "POST",
        f"/deployments/{deployment_id}/create_flow_run",
        json={"parameters": params, "job_variables": job_variables},
    )
    final = poll(
        lambda: api.flow_run(created["id"]),
        lambda run: run["state_type"] in TERMINAL,
        timeout=900,
        interval=1,
    )
    if final["state_type"] not in TERMINAL or not final["start_time"]:
        raise SystemExit(f"run {created['id']} did not run to an end: {final['state_type']}")
    return {
        "to_running": seconds_between(final["created"], final["start_time"]),
        "running": seconds_between(final["start_time"], final["end_time"]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--deployment", default="package/champion")
    parser.add_argument("--params", default=json.dumps({"version": "999"}))
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    api = PrefectAPI()  # $PREFECT_API_URL and $PREFECT_API_AUTH_STRING
    deployment_id = api.deployment(args.deployment)["id"]
    params = json.loads(args.params)
    times: dict[str, list[dict]] = {name: [] for name in VARIANTS}
    for round_number in range(1, args.rounds + 1):
        for name, job_variables in VARIANTS.items():
            times[name].append(timed_run(api, deployment_id, params, job_variables))
            print(f"round {round_number}, {name}: {times[name][-1]}", flush=True)
    print(f"\n{args.deployment}, median of {args.rounds} rounds (seconds):")
    print("| launcher | created -> running | running -> end |\n| --- | --- | --- |")
    for name, rows in times.items():
        to_running = statistics.median(r["to_running"] for r in rows)
        running = statistics.median(r["running"] for r in rows)
        print(f"| {name} | {to_running:.1f} | {running:.1f} |")


if __name__ == "__main__":
    main()
