"""The service's settings: one frozen object, read once from the environment."""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields

from model_lib.config import MODEL_NAME
from model_lib.preprocess import DEFAULT_MAX_PIXELS

MiB = 1024 * 1024


def available_cpus() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


@dataclass(frozen=True)
class Settings:
    """Each field `name` is set by $CATDOG_<NAME>; every integer must be >= 1
    except `inference_log_queue`, where 0 turns the inference log off;
    `neither_threshold` is a probability (0..1)."""

    model_tag: str = f"{MODEL_NAME}:latest"
    max_upload_bytes: int = 10 * MiB
    max_pixels: int = DEFAULT_MAX_PIXELS
    # Thread and process layout (figures in README, "Serving"): one worker
    # process per core, ONNX Runtime with one thread per call and as many
    # parallel calls as cores, decode threads for every core in each worker
    # (keep-alive connections stay with the worker that accepted them).
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
    inference_log_queue: int = 1024
    # The lowest pet score answered with a pet (0..1); unset (empty) keeps the
    # threshold stored with the model (chosen on validation, model_lib.decision).
    neither_threshold: float | None = None

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
            if setting.type == "float | None":
                values[setting.name] = _probability(name, raw)
                continue
            try:
                value = int(raw)
            except ValueError:
                raise ValueError(f"{name} must be an integer, got {raw!r}") from None
            minimum = 0 if setting.name == "inference_log_queue" else 1
            if value < minimum:
                raise ValueError(f"{name} must be >= {minimum}, got {raw!r}")
            values[setting.name] = value
        return cls(**values)


def _probability(name: str, raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{name} must be a number between 0 and 1, got {raw!r}") from None
    if not 0.0 <= value <= 1.0:  # also refuses nan
        raise ValueError(f"{name} must be between 0 and 1, got {raw!r}")
    return value
