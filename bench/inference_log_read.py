"""The evaluation flow's read of its window: PostgreSQL vs SQLite, side by side.

Both stores get the same rows: `--window` records of the last hour (what the
evaluate flow reads) plus `--older` records before it (what the time index
must skip). Rounds alternate between the stores and time
`InferenceLog.read(since=now - 1 h)`, exactly the call of the flow's
`recent_inferences` task; the drift report on that frame is timed once for
scale. The PostgreSQL cluster is started here by the platform's own code
(catdog_runtime.services), unless --pg-url names a database.

    . scripts/env.sh && python -m bench.inference_log_read --window 10000 --repeat 5
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import statistics
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from model_lib.image_stats import STAT_COLUMNS
from model_lib.inference_log import InferenceLog

BATCH = 500  # rows per append_many: the recorder writes batches too


def records(count: int, start: datetime, span: timedelta, seed: int) -> list[dict]:
    rng = random.Random(seed)
    step = span / count
    return [
        {
            "timestamp": start + i * step,
            "request_id": f"{seed}-{i}",
            "source": "user",
            "label": rng.choice(("cat", "dog")),
            "confidence": rng.uniform(0.5, 1.0),
            "model_name": "catdog-classifier",
            "model_version": "7",
            **{c: rng.uniform(0, 255) for c in STAT_COLUMNS},
        }
        for i in range(count)
    ]


def fill(log: InferenceLog, rows: list[dict]) -> float:
    started = time.perf_counter()
    for first in range(0, len(rows), BATCH):
        log.append_many(rows[first : first + BATCH])
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--window", type=int, default=10_000, help="records in the last hour")
    parser.add_argument("--older", type=int, default=20_000, help="records before the window")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--pg-url", help="an empty PostgreSQL database (default: start one)")
    args = parser.parse_args(argv)

    now = datetime.now(UTC)
    older = records(args.older, now - timedelta(days=2), timedelta(hours=46), seed=1)
    recent = records(args.window, now - timedelta(minutes=59), timedelta(minutes=58), seed=2)
    with contextlib.ExitStack() as stack:
        if args.pg_url:
            pg_url = args.pg_url
        else:
            from catdog_runtime.postgres import postgres_cluster

            pg_url = stack.enter_context(postgres_cluster()) + "/catdog"
        folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="catdog-bench-")))
        stores = {
            "sqlite": InferenceLog(folder / "inference_log.sqlite"),
            "postgresql": InferenceLog(pg_url),
        }
        for name, log in stores.items():
            seconds = fill(log, older + recent)
            rate = (len(older) + len(recent)) / seconds
            print(
                f"{name:>10}: wrote {len(older) + len(recent)} rows in {seconds:.1f} s "
                f"({rate:.0f} rows/s in batches of {BATCH})"
            )
        since = now - timedelta(hours=1)
        for log in stores.values():  # untimed: the first read imports pandas
            log.read(since=since)
        times: dict[str, list[float]] = {name: [] for name in stores}
        frame = None
        for _ in range(args.repeat):
            for name, log in stores.items():  # alternate: load changes hit both
                started = time.perf_counter()
                frame = log.read(since=since)
                times[name].append(time.perf_counter() - started)
                if len(frame) != args.window:
                    raise SystemExit(f"{name} read {len(frame)} rows, expected {args.window}")
        medians = {name: statistics.median(t) for name, t in times.items()}
        for name, seconds in medians.items():
            spread = f"{min(times[name]) * 1000:.0f}-{max(times[name]) * 1000:.0f}"
            print(
                f"{name:>10}: read {args.window} rows of the window in "
                f"{seconds * 1000:.0f} ms (median of {args.repeat}, range {spread} ms)"
            )
        print(f"postgresql / sqlite read time: {medians['postgresql'] / medians['sqlite']:.2f}x")

        from model_lib.drift import drift_report

        reference = frame[list(STAT_COLUMNS)].sample(n=min(500, len(frame)), random_state=0)
        started = time.perf_counter()
        drift_report(reference, frame, folder / "drift.html")
        drift_seconds = time.perf_counter() - started
        print(f"for scale: the drift report on that window took {drift_seconds:.1f} s")
    print(f"load average: {' '.join(f'{x:.2f}' for x in os.getloadavg())} ({os.cpu_count()} cores)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
