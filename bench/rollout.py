"""Rollout benchmark: what clients see while the platform changes what serves.

A closed-loop client (16 connections, asyncio + httpx, real photos from
test_images/) calls the balancer ($CATDOG_SERVICE_URL) the whole time, while:

  1. a good candidate (the production weights registered as a new version) is
     rolled out on 2 replicas (deploy/rollout);
  2. one of those two replicas is killed with SIGKILL (its whole process
     group); the watchdog restarts it;
  3. a broken candidate (its model answers "cat" whatever the photo) is
     rolled out and must be rolled back automatically (the run ends Failed);
  4. `deploy/rollback` puts the previous production version back.

For each: requests sent, failed (anything but 200), p50/p99 latency before,
during and after, the model versions clients saw, and for the rollout the
time from "bento built" to "100 % on the new version" (flow finished: the old
replicas drained and stopped). A benchmark, not a test: it reports figures.

    make up && make train && make package && make serve   (a platform serving)
    . scripts/env.sh && python -m bench.rollout [--settle 10]

It runs against the platform of scripts/env.sh (and refuses to start when nothing
serves there) and changes what it serves: step 4 leaves the version that served
before step 1. The candidates' bentos, BentoML models and MLflow versions are
deleted at the end, whatever happened (bench.candidates `remove_candidate`), so the
next `make serve` or `make bench` does not pick them up.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from model_lib.inference_log import BENCHMARK_SOURCE
from model_lib.metrics import latency_percentiles

ROOT = Path(__file__).resolve().parents[1]
MODEL = "catdog-classifier"


@dataclass
class Record:
    started: float
    finished: float
    status: int | str  # HTTP status, or the exception name when no answer came
    version: str = ""


@dataclass
class Load:
    """16 connections in a closed loop through the balancer, in a background thread."""

    url: str
    connections: int = 16
    source: str = BENCHMARK_SOURCE  # X-Catdog-Source: not user traffic, not in the drift window
    # Requests per second over all connections; None: each connection sends its next
    # request as soon as the answer comes. A paced client stays under the balancer's
    # per-client limit (CATDOG_LB_CLIENT_RATE), so every 429 it sees is a real failure.
    rate: float | None = None
    records: list[Record] = field(default_factory=list)

    def __post_init__(self):
        photos = sorted((ROOT / "test_images").rglob("*.jpg"))
        if not photos:
            raise SystemExit("no photos under test_images/: run `make data`")
        self._photos = itertools.cycle([(p.name, p.read_bytes()) for p in photos])
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)

    async def _one(self, client: httpx.AsyncClient) -> None:
        interval = self.connections / self.rate if self.rate else 0.0
        while not self._stop.is_set():
            name, payload = next(self._photos)
            started = time.monotonic()
            try:
                response = await client.post(
                    f"{self.url}/classify",
                    files={"image": (name, payload, "image/jpeg")},
                    headers={"X-Catdog-Source": self.source},
                )
                version = response.json()["model"]["version"] if response.is_success else ""
                record = Record(started, time.monotonic(), response.status_code, version)
            except httpx.HTTPError as exc:
                record = Record(started, time.monotonic(), type(exc).__name__)
            self.records.append(record)
            await asyncio.sleep(max(0.0, started + interval - time.monotonic()))

    async def _run(self) -> None:
        limits = httpx.Limits(max_connections=self.connections)
        async with httpx.AsyncClient(timeout=60, limits=limits) as client:
            await asyncio.gather(*(self._one(client) for _ in range(self.connections)))

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc_info):
        self._stop.set()
        self._thread.join(120)


def phase(records: list[Record], start: float, end: float) -> dict:
    chosen = [r for r in records if start <= r.started < end]
    latencies = [(r.finished - r.started) * 1000 for r in chosen if r.status == 200]
    pct = latency_percentiles(latencies)
    return {
        "requests": len(chosen),
        "failed": sum(r.status != 200 for r in chosen),
        "p50_ms": round(pct["latency_p50_ms"], 1),
        "p99_ms": round(pct["latency_p99_ms"], 1),
        "versions": sorted({r.version for r in chosen if r.version}),
    }


def run_flow(name: str, params: dict | None = None) -> tuple[bool, float]:
    """A deployment through the worker (catdog_runtime.run_deployment); (completed, seconds)."""
    started = time.monotonic()
    args = [sys.executable, "-m", "catdog_runtime.run_deployment", name]
    if params:
        args += ["--params", json.dumps(params)]
    result = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=1800)
    seconds = time.monotonic() - started
    tail = "\n".join(result.stdout.splitlines()[-6:] + result.stderr.splitlines()[-6:])
    indented = tail.replace("\n", "\n      ")
    print(f"    {name}: exit {result.returncode} after {seconds:.0f} s", flush=True)
    print(f"      {indented}", flush=True)
    return result.returncode == 0, seconds


def scenario(title: str, url: str, settle: float, action) -> dict:
    """`settle` s of load before, `action()` under load, `settle` s after; the figures."""
    print(f"\n== {title}", flush=True)
    with Load(url) as load:
        time.sleep(settle)
        begin = time.monotonic()
        outcome = action()
        end = time.monotonic()
        time.sleep(settle)
    stop = time.monotonic()
    figures = {
        "before": phase(load.records, 0, begin),
        "during": phase(load.records, begin, end),
        "after": phase(load.records, end, stop),
        "total": phase(load.records, 0, stop),
        **outcome,
    }
    errors = sorted({str(r.status) for r in load.records if r.status != 200})
    if errors:
        figures["error_kinds"] = errors
    return figures


def kill_one_replica() -> dict:
    from bench.faults import kill_replica
    from catdog_runtime import balancer

    replicas = balancer.load()
    if len(replicas) < 2:
        raise SystemExit(f"expected 2 replicas behind the balancer, found {len(replicas)}")
    return kill_replica(replicas[0])


SCENARIOS = ("rollout", "kill", "broken", "rollback")


def run_scenarios(args, chosen, url, client, stable, results, built, build_candidate) -> None:
    """The chosen scenarios in order; their figures go to `results`, the candidate
    versions made to `built` (as soon as each exists)."""
    with tempfile.TemporaryDirectory(prefix="bench-rollout-") as work:
        if "rollout" in chosen:
            good_version, good_bento = build_candidate(MODEL, stable, Path(work))
            built.append(good_version)
            built_at = time.monotonic()
            print(f"built good candidate v{good_version} ({good_bento})", flush=True)
        if "broken" in chosen:
            broken_version, broken_bento = build_candidate(
                MODEL, stable, Path(work), constant_label="cat"
            )
            built.append(broken_version)
            print(f"built broken candidate v{broken_version} ({broken_bento})", flush=True)

    def good():
        ok, seconds = run_flow("deploy/rollout", {"bento_tag": good_bento, "replicas": 2})
        return {"flow_completed": ok, "flow_seconds": round(seconds, 1)}

    def broken():
        ok, seconds = run_flow("deploy/rollout", {"bento_tag": broken_bento, "replicas": 1})
        reason = client.get_model_version(MODEL, broken_version).tags.get("rollout_reason")
        return {"flow_completed": ok, "flow_seconds": round(seconds, 1), "reason": reason}

    def back():
        ok, seconds = run_flow("deploy/rollback")
        return {"flow_completed": ok, "flow_seconds": round(seconds, 1)}

    for name in chosen:
        if name == "rollout":
            figures = results["rollout of a good candidate (2 replicas)"] = scenario(
                "rollout", url, args.settle, good
            )
            # From the good bento built to the flow's end (old replicas stopped); the
            # broken candidate's build and `settle` s of load came in between.
            figures["built_to_100pct_s_wall"] = round(time.monotonic() - built_at - args.settle, 1)
        elif name == "kill":
            results["kill -9 of one of two replicas"] = scenario(
                "kill -9", url, args.settle, kill_one_replica
            )
        elif name == "broken":
            results["broken candidate (constant 'cat')"] = scenario(
                "broken", url, args.settle, broken
            )
        else:
            results["rollback on demand"] = scenario("rollback", url, args.settle, back)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--settle", type=float, default=10, help="seconds of load before/after")
    parser.add_argument(
        "--scenarios",
        default=",".join(SCENARIOS),
        help=f"comma-separated, run in this order: {','.join(SCENARIOS)} "
        "(kill needs 2 replicas serving, rollback a previous production version)",
    )
    parser.add_argument("--output", type=Path, help="also write the figures as JSON here")
    args = parser.parse_args(argv)
    chosen = args.scenarios.split(",")
    if not set(chosen) <= set(SCENARIOS):
        parser.error(f"--scenarios: choose among {SCENARIOS}")
    from mlflow import MlflowClient

    from bench.candidates import build_candidate, remove_candidate
    from catdog_runtime.waits import http_ok

    url = os.environ["CATDOG_SERVICE_URL"]
    if not http_ok(f"{url}/readyz"):
        raise SystemExit(f"nothing serves at {url}: start the platform and `make serve` first")
    client = MlflowClient()
    stable = client.get_model_version_by_alias(MODEL, "production").version
    print(f"load average at start: {os.getloadavg()}; production is v{stable}", flush=True)
    results: dict[str, dict] = {}
    built: list[str] = []  # candidate versions, removed at the end whatever happens
    try:
        run_scenarios(args, chosen, url, client, stable, results, built, build_candidate)
    finally:
        for version in built:
            remove_candidate(MODEL, version)
    print(f"\nload average at end: {os.getloadavg()}")
    header = f"{'phase':7} {'sent':>6} {'failed':>6} {'p50 ms':>8} {'p99 ms':>8}  versions"
    print(f"\n{'scenario':40} {header}")
    phases = ("before", "during", "after", "total")
    for title, figures in results.items():
        for name in phases:
            row = figures[name]
            print(
                f"{title:40} {name:7} {row['requests']:6d} {row['failed']:6d} "
                f"{row['p50_ms']:8.1f} {row['p99_ms']:8.1f}  {','.join(row['versions'])}"
            )
        extra = {k: v for k, v in figures.items() if k not in phases}
        print(f"{'':40} {json.dumps(extra)}")
    if args.output:
        args.output.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
