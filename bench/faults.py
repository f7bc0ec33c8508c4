"""Faults the benchmarks inject into a running platform."""

from __future__ import annotations

import time

from catdog_runtime import balancer, processes, services
from catdog_runtime.waits import http_ok


def kill_replica(victim: balancer.Replica) -> dict:
    """SIGKILL a replica's whole process tree, then wait for the watchdog to restart it
    and for HAProxy to put it back in rotation; how long each took."""
    pid = services.owned_pid(victim.service)
    if pid is None:
        raise SystemExit(f"replica {victim.name} is not running: nothing to kill")
    # The whole replica: `bentoml serve` and its workers (which run in sessions of their own).
    tree = processes.descendants(pid)
    processes.kill_all(tree)
    killed = time.monotonic()
    print(f"    killed replica {victim.name} (pids {sorted(tree)}) with SIGKILL", flush=True)
    balancer.wait_for(
        lambda: services.owned_pid(victim.service) not in (None, pid),
        "the watchdog restarting the replica",
        timeout=120,
    )
    restarted = time.monotonic()
    balancer.wait_for(
        lambda: http_ok(victim.service.health_url) and balancer.checked_up(victim.name),
        "the restarted replica back in HAProxy",
        timeout=900,
    )
    return {
        "restart_started_after_s": round(restarted - killed, 1),
        "back_in_rotation_after_s": round(time.monotonic() - killed, 1),
    }
