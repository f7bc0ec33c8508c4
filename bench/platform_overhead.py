"""What the platform's own services cost on this machine, and what that does to training.

    . scripts/env.sh && python -m bench.platform_overhead --rounds 3     (make bench-platform)

1. Idle: CPU time of each running service (its whole process group, children
   included, read from /proc) over --idle-seconds, as % of one core.
2. Training: a fixed workload (--steps SGD steps of the baseline CNN on a
   synthetic batch of 64 at 224 px, one process, all cores) timed with the
   platform stopped and with it running, alternating in --rounds rounds so
   each ratio compares runs seconds apart; the services' CPU during the
   "running" runs is reported too.

It stops and starts the platform of $CATDOG_RUN_DIR itself (scripts/services.py),
and leaves it running at the end.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from scripts import services

TRAIN_SNIPPET = """
import sys, time, torch
from model_lib.models import build_model
torch.manual_seed(0)
model = build_model("baseline_cnn", 2)
optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
images, labels = torch.randn(64, 3, 224, 224), torch.randint(0, 2, (64,))
loss_fn = torch.nn.CrossEntropyLoss()
def step():
    optimizer.zero_grad()
    loss_fn(model(images), labels).backward()
    optimizer.step()
step()  # warm-up: allocator, kernels
started = time.perf_counter()
for _ in range(int(sys.argv[1])):
    step()
print(time.perf_counter() - started)
"""
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def group_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of `pid` and all its descendants, alive now."""
    total = 0
    for member in services.descendants(pid):
        try:
            fields = Path(f"/proc/{member}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / CLOCK_TICKS


def running_services() -> dict[str, int]:
    found = {}
    for name, service in services.services().items():
        pid = services.owned_pid(service)
        if pid is not None:
            found[name] = pid
    return found


def cpu_during(action, pids: dict[str, int]):
    """Run `action()`; return its result and each service's % of one core meanwhile."""
    before = {name: group_cpu_seconds(pid) for name, pid in pids.items()}
    started = time.monotonic()
    result = action()
    wall = time.monotonic() - started
    return result, {
        name: 100 * (group_cpu_seconds(pid) - before[name]) / wall for name, pid in pids.items()
    }


def train_seconds(steps: int) -> float:
    result = subprocess.run(
        [sys.executable, "-c", TRAIN_SNIPPET, str(steps)],
        capture_output=True,
        text=True,
        check=True,
        cwd=services.ROOT,
    )
    return float(result.stdout.strip().splitlines()[-1])


def table(rows: list[tuple], header: tuple) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--idle-seconds", type=float, default=60)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)

    services.up()
    time.sleep(10)  # let start-up work (migrations, first scheduler pass) finish
    pids = running_services()
    print(f"idle: measuring {sorted(pids)} for {args.idle_seconds:.0f} s ...", flush=True)
    _, idle = cpu_during(lambda: time.sleep(args.idle_seconds), pids)

    ratios, during = [], {name: [] for name in pids}
    rows = []
    for round_number in range(1, args.rounds + 1):
        services.down()
        alone = train_seconds(args.steps)
        services.up()
        time.sleep(10)
        pids = running_services()
        beside, cpu = cpu_during(lambda: train_seconds(args.steps), pids)
        for name, share in cpu.items():
            during[name].append(share)
        ratios.append(alone / beside)
        rows.append(
            (
                round_number,
                f"{args.steps * 64 / alone:.1f}",
                f"{args.steps * 64 / beside:.1f}",
                f"{alone / beside:.3f}",
            )
        )
        print(f"round {round_number}: alone {alone:.1f} s, beside the platform {beside:.1f} s")

    print("\nPlatform CPU, % of one core (idle; median while training):")
    print(
        table(
            [(name, f"{idle[name]:.1f}", f"{statistics.median(during[name]):.1f}") for name in pids]
            + [
                (
                    "total",
                    f"{sum(idle.values()):.1f}",
                    f"{sum(statistics.median(v) for v in during.values()):.1f}",
                )
            ],
            ("service", "idle", "during training"),
        )
    )
    print(f"\nTraining (baseline CNN, batch 64, 224 px, {args.steps} steps), images/s:")
    print(table(rows, ("round", "platform stopped", "platform running", "ratio")))
    print(f"median ratio (running / stopped speed): {statistics.median(ratios):.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
