"""What the platform's own services cost on this machine, and what that does to training.

    . scripts/env.sh && python -m bench.platform_overhead --rounds 3     (make bench-platform)

1. Idle: CPU time of each running service (its whole process group, children
   included, read from /proc) over --idle-seconds, as % of one core, with the
   project's settings (scripts/env.sh) and with the servers' own defaults
   (MLflow's 4 workers and job runner, Prefect's loop intervals), alternating.
2. Training: a fixed workload (--steps SGD steps of the baseline CNN on a
   synthetic batch of 64 at 224 px, one process, all cores) timed with the
   platform stopped and with it running, alternating in --rounds rounds so
   each ratio compares runs seconds apart; the services' CPU during the
   "running" runs is reported too.

It stops and starts the platform of $CATDOG_RUN_DIR itself (catdog_runtime.services),
and leaves it running at the end. CPU seconds of a service hardly depend on other
load; the training ratio does: read it with the load average it prints.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from catdog_runtime import processes, services

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
    for member in processes.descendants(pid):
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


# What the servers run with when this project's settings (scripts/env.sh) are not applied.
UPSTREAM = {"MLFLOW_WORKERS": "4", "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "true"}
PROJECT_ONLY_PREFIX = "PREFECT_SERVER_SERVICES_"


def restart(settings: str) -> dict[str, int]:
    """Restart the platform with the project's settings or the servers' own defaults."""
    services.down()
    saved = dict(os.environ)
    if settings == "upstream":
        for key in [k for k in os.environ if k.startswith(PROJECT_ONLY_PREFIX)]:
            del os.environ[key]
        os.environ.update(UPSTREAM)
    try:
        services.up()
    finally:
        os.environ.clear()
        os.environ.update(saved)
    time.sleep(15)  # start-up work (migrations, first scheduler passes) is not idle cost
    return running_services()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--idle-seconds", type=float, default=60)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=3)
    skip = parser.add_mutually_exclusive_group()
    skip.add_argument(
        "--idle-only", action="store_true", help="skip the training runs (a busy machine)"
    )
    skip.add_argument("--training-only", action="store_true", help="skip the idle rounds")
    args = parser.parse_args(argv)

    idle = {"project": {}, "upstream": {}}
    for round_number in range(1, 0 if args.training_only else args.rounds + 1):
        for settings in ("upstream", "project"):
            pids = restart(settings)
            print(
                f"idle round {round_number}, {settings} settings: {args.idle_seconds:.0f} s",
                flush=True,
            )
            _, cpu = cpu_during(lambda: time.sleep(args.idle_seconds), pids)
            for name, share in cpu.items():
                idle[settings].setdefault(name, []).append(share)

    ratios, during, rows = [], {}, []
    for round_number in range(1, 0 if args.idle_only else args.rounds + 1):
        services.down()
        alone = train_seconds(args.steps)
        pids = restart("project")
        beside, cpu = cpu_during(lambda: train_seconds(args.steps), pids)
        for name, share in cpu.items():
            during.setdefault(name, []).append(share)
        ratios.append(alone / beside)
        rows.append(
            (
                round_number,
                f"{args.steps * 64 / alone:.1f}",
                f"{args.steps * 64 / beside:.1f}",
                f"{alone / beside:.3f}",
            )
        )
        print(
            f"round {round_number}: alone {alone:.1f} s, beside the platform {beside:.1f} s",
            flush=True,
        )

    def median(values: list[float]) -> str:
        return f"{statistics.median(values):.1f}"

    columns = [
        ("idle, servers' defaults", idle["upstream"]),
        ("idle, scripts/env.sh", idle["project"]),
    ]
    if during:
        columns.append(("while training", during))
    if args.training_only:
        columns = columns[2:]
    names = list(during or idle["project"])
    print(f"\nPlatform CPU, % of one core, medians of {args.rounds} rounds:")
    body = [(name, *(median(column[name]) for _, column in columns)) for name in names]
    total = [f"{sum(statistics.median(v) for v in column.values()):.1f}" for _, column in columns]
    print(table(body + [("total", *total)], ("service", *(title for title, _ in columns))))
    if ratios:
        print(f"\nTraining (baseline CNN, batch 64, 224 px, {args.steps} steps), images/s:")
        print(table(rows, ("round", "platform stopped", "platform running", "ratio")))
        print(f"median ratio (running / stopped speed): {statistics.median(ratios):.3f}")
    print(f"load average at the end: {os.getloadavg()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
