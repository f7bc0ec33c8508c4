"""One JSON object per line on stderr: a line per request, and the service's events."""

from __future__ import annotations

import json
import logging
import sys
import time
from datetime import UTC, datetime

import bentoml

request_log = logging.getLogger("catdog.requests")
service_log = logging.getLogger("catdog.service")


def configure() -> None:
    """Called by the service's __init__ (never at import); safe to call again."""
    for logger in (request_log, service_log, logging.getLogger("catdog.inference_log")):
        if not any(getattr(h, "_catdog", False) for h in logger.handlers):
            handler = logging.StreamHandler(sys.stderr)
            handler.setFormatter(logging.Formatter("%(message)s"))
            handler._catdog = True  # type: ignore[attr-defined]
            logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False


def log_json(logger: logging.Logger, level: int, **fields) -> None:
    fields = {
        "ts": datetime.now(UTC).isoformat(timespec="milliseconds"),
        "level": logging.getLevelName(level).lower(),
        **fields,
    }
    logger.log(level, json.dumps(fields, separators=(",", ":"), default=str))


def log_once(event: str, message: str) -> None:
    """An error every worker process finds alike (no model, failed warm-up):
    logged by the first worker only, not once per worker."""
    if bentoml.server_context.worker_index in (None, 1):
        log_json(service_log, logging.ERROR, event=event, message=message)


def log_request(request_id: str, status: int, started: float, **fields) -> None:
    """The one line per /classify request (a 5xx at warning level)."""
    latency_ms = round((time.perf_counter() - started) * 1000, 2)
    level = logging.WARNING if status >= 500 else logging.INFO
    log_json(
        request_log,
        level,
        event="classify",
        request_id=request_id,
        status=status,
        latency_ms=latency_ms,
        **fields,
    )
