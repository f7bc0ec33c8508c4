"""Throughput through the balancer with one replica and with two, side by side.

    make all (a platform serving), then: make bench-replicas
    . scripts/env.sh && python -m bench.replicas [--duration 15 --rounds 3 --clients 16]

On the running platform: starts two replicas of the bento that serves now
(each with --replica-workers worker processes), puts them behind HAProxy and
takes the serving replicas out of rotation (weight 0 through HAProxy's
runtime API; they keep running and come back at the end). Then, in --rounds
alternating rounds, `wrk` (as in bench/serving.py) loads the balancer for
--duration seconds with only the first bench replica weighted, and with both.
The ratio of each round compares runs seconds apart. At the end the serving
replicas get their weights back and the bench replicas are drained and
stopped. A benchmark, not a test: it reports figures.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from bench.serving import run_wrk
from catdog_runtime import balancer, services
from catdog_runtime.processes import ROOT


def set_weights(replicas: list[balancer.Replica], weight: int) -> None:
    """Runtime weight only: the recorded state (what serves) does not change."""
    for replica in replicas:
        balancer.checked(f"set server {balancer.BACKEND}/{replica.name} weight {weight}")


def requests_served(replicas: list[balancer.Replica]) -> list[int]:
    """HAProxy's count of requests each replica has answered so far."""
    stats = balancer.server_stats()
    return [int(stats[r.name]["hrsp_2xx"] or 0) for r in replicas]


def measure(
    url: str, photos: list[Path], clients: int, duration: float, work: Path, replicas: list
) -> dict:
    time.sleep(2)  # connections HAProxy holds to a server that lost its weight wind down
    before = requests_served(replicas)
    figures = run_wrk(url, photos, clients, duration, work)
    figures["images_per_second"] = (figures["requests"] - figures["errors"]) / figures["seconds"]
    # Which replicas answered: shows the weights did what the phase says.
    figures["per_replica"] = [b - a for a, b in zip(before, requests_served(replicas), strict=True)]
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=15, help="seconds of load per phase")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--clients", type=int, default=16, help="wrk connections")
    parser.add_argument(
        "--replica-workers",
        type=int,
        default=None,
        help="worker processes per bench replica (default: the service's, one per core)",
    )
    args = parser.parse_args(argv)
    url = os.environ["CATDOG_SERVICE_URL"]
    photos = sorted((ROOT / "test_images").rglob("*.jpg"))
    if not photos:
        raise SystemExit("no photos under test_images/: run `make data`")
    serving = balancer.load()
    if not serving:
        raise SystemExit("nothing serves behind the balancer: `make serve` first")
    bento_tag = serving[0].bento_tag
    if args.replica_workers:
        os.environ["CATDOG_WORKERS"] = str(args.replica_workers)
    print(
        f"load average at start: {os.getloadavg()}; {os.cpu_count()} cores; bento {bento_tag}; "
        f"worker processes per replica: {os.environ.get('CATDOG_WORKERS', 'one per core')}",
        flush=True,
    )
    rows = []
    with balancer.exclusive("bench replicas"), tempfile.TemporaryDirectory() as work:
        bench_replicas = balancer.start_replicas(bento_tag, 2)
        try:
            first, second = (balancer.attach(r, 0) for r in bench_replicas)
            set_weights(serving, 0)
            for round_number in range(1, args.rounds + 1):
                results = {}
                for count in (1, 2):
                    set_weights([first], balancer.FULL_WEIGHT)
                    set_weights([second], balancer.FULL_WEIGHT if count == 2 else 0)
                    figures = results[count] = measure(
                        url, photos, args.clients, args.duration, Path(work), [first, second]
                    )
                    print(
                        f"round {round_number}, {count} replica(s): "
                        f"{figures['images_per_second']:.1f} img/s, p50 {figures['p50_ms']:.0f} ms,"
                        f" p99 {figures['p99_ms']:.0f} ms, {figures['errors']} errors, "
                        f"answered per replica {figures['per_replica']}",
                        flush=True,
                    )
                rows.append(results)
        finally:
            set_weights(serving, balancer.FULL_WEIGHT)
            for replica in bench_replicas:
                if services.owned_pid(replica.service) is not None:
                    balancer.retire(replica)

    def median(count: int, key: str) -> float:
        return statistics.median(r[count][key] for r in rows)

    ratios = [r[2]["images_per_second"] / r[1]["images_per_second"] for r in rows]
    print(f"\nThrough HAProxy, {args.clients} wrk connections, medians of {args.rounds} rounds:")
    print("replicas  img/s   p50 ms  p99 ms  errors")
    for count in (1, 2):
        errors = sum(r[count]["errors"] for r in rows)
        print(
            f"{count:8d}  {median(count, 'images_per_second'):6.1f}  "
            f"{median(count, 'p50_ms'):6.0f}  {median(count, 'p99_ms'):6.0f}  {errors:6d}"
        )
    print(
        f"2 / 1 replicas: {statistics.median(ratios):.2f}x "
        f"(rounds: {', '.join(f'{x:.2f}' for x in ratios)})"
    )
    print(f"load average at end: {os.getloadavg()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
