"""The service's settings: one frozen object, read once from the environment."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field, fields
from pathlib import Path

from model_lib.config import MODEL_NAME
from model_lib.preprocess import DEFAULT_MAX_PIXELS

MiB = 1024 * 1024


def available_cpus(cgroup_root="/sys/fs/cgroup", proc_self="/proc/self") -> int:
    """The CPUs this process may use: its affinity, capped by a cgroup CPU quota.

    In a container (Kubernetes `resources.limits.cpu`, `docker --cpus`) the
    affinity is the whole node; the quota is what the process really gets."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cpus = os.cpu_count() or 1
    quota = cgroup_cpu_quota(Path(cgroup_root), Path(proc_self))
    if quota is not None:
        cpus = min(cpus, math.ceil(quota))
    return max(1, cpus)


def cgroup_cpu_quota(root: Path, proc_self: Path) -> float | None:
    """CPUs allowed by the tightest CFS quota on this process's cgroup or its
    ancestors (cgroup v2 `cpu.max`, v1 `cpu.cfs_quota_us`), None without one."""
    try:
        lines = (proc_self / "cgroup").read_text().splitlines()
    except OSError:
        return None
    quotas = []
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controllers == "":  # v2: "0::/path"
            base, names = root, [("cpu.max", None)]
        elif "cpu" in controllers.split(","):  # v1: "4:cpu,cpuacct:/path"
            base = next((root / n for n in ("cpu", "cpu,cpuacct") if (root / n).is_dir()), None)
            names = [("cpu.cfs_quota_us", "cpu.cfs_period_us")]
            if base is None:
                continue
        else:
            continue
        folder = base / path.lstrip("/")
        for here in (folder, *folder.parents):
            if not here.is_relative_to(base):
                break
            for quota_name, period_name in names:
                quotas.append(_read_quota(here, quota_name, period_name))
    quotas = [q for q in quotas if q is not None]
    return min(quotas) if quotas else None


def _read_quota(folder: Path, quota_name: str, period_name: str | None) -> float | None:
    try:
        if period_name is None:  # v2: "max 100000" or "150000 100000"
            quota, period = (folder / quota_name).read_text().split()[:2]
        else:
            quota = (folder / quota_name).read_text().strip()
            period = (folder / period_name).read_text().strip()
        if quota in ("max", "-1"):
            return None
        return int(quota) / int(period)
    except (OSError, ValueError, ZeroDivisionError):
        return None


ZERO_TURNS_OFF = frozenset(
    {"inference_log_queue", "inference_log_retention_days", "inference_log_max_rows"}
)


@dataclass(frozen=True)
class Settings:
    """Each field `name` is set by $CATDOG_<NAME>; every number must be >= 1
    except those in ZERO_TURNS_OFF (`inference_log_queue`: 0 turns the inference
    log off; the retention limits: 0 keeps rows forever / any number of rows)."""

    model_tag: str = f"{MODEL_NAME}:latest"
    max_upload_bytes: int = 10 * MiB
    max_pixels: int = DEFAULT_MAX_PIXELS
    # Thread and process layout (figures in README, "Serving"): one worker
    # process per core (per CPU of the cgroup quota in a container), ONNX Runtime
    # with one thread per call and as many parallel calls as cores, decode threads
    # for every core in each worker (keep-alive connections stay with the worker
    # that accepted them).
    workers: int = field(default_factory=available_cpus)
    batch_workers: int = field(default_factory=available_cpus)
    decode_threads: int = field(default_factory=available_cpus)
    ort_threads: int = 1
    max_batch_size: int = 32
    max_queue: int = 512
    # What one worker holds for uploads in progress: a request count, and the
    # bytes their bodies may take (Content-Length, or the whole upload limit
    # when the body is chunked).
    max_in_flight: int = 256
    max_in_flight_bytes: int = 64 * MiB
    # What one worker's images may take while they decode, reserved from each
    # header before a pixel is decoded (the decoded image plus one working copy;
    # model_lib.preprocess.Header.cost); beyond it a request waits up to
    # `decode_wait_seconds` for room, then answers 503.
    max_decoded_bytes: int = 256 * MiB
    decode_wait_seconds: int = 10
    # The whole body must arrive within this many seconds of the headers, or 408:
    # a client trickling a 10 MB body would otherwise hold 10 MB of the in-flight
    # byte budget for as long as it likes.
    upload_timeout_seconds: int = 60
    inference_log_queue: int = 1024
    # Inference-log retention (0 turns either off): rows older than this many days,
    # and all but this many of the newest rows, are deleted by the log's background
    # thread every few minutes, in small batches (never on a request's path).
    inference_log_retention_days: int = 30
    inference_log_max_rows: int = 1_000_000

    @classmethod
    def from_env(cls, environ=os.environ) -> Settings:
        values = {}
        for setting in fields(cls):
            name = f"CATDOG_{setting.name.upper()}"
            raw = environ.get(name, "")
            if raw == "":
                continue
            if setting.type == "str":
                values[setting.name] = raw
                continue
            try:
                value = int(raw)
            except ValueError:
                raise ValueError(f"{name} must be an integer, got {raw!r}") from None
            minimum = 0 if setting.name in ZERO_TURNS_OFF else 1
            if value < minimum:
                raise ValueError(f"{name} must be >= {minimum}, got {raw!r}")
            values[setting.name] = value
        return cls(**values)
