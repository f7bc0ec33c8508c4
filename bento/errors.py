"""Every answer that is not a prediction: a JSON body {"error": reason, "detail": message}."""

from __future__ import annotations

import logging
import traceback

from fastapi.responses import JSONResponse

from bento.logs import log_json, log_request, service_log
from bento.metrics import REJECTED
from model_lib.preprocess import ImageRejected


class RequestError(Exception):
    """`reason` is machine-readable (also a metric label); `detail` says what to fix."""

    def __init__(self, status: int, reason: str, detail: str, headers: dict | None = None):
        super().__init__(detail)
        self.status, self.reason, self.detail = status, reason, detail
        self.headers = headers or {}

    def body(self) -> dict:
        return {"error": self.reason, "detail": self.detail}


def overloaded(detail: str) -> RequestError:
    return RequestError(503, "overloaded", f"{detail}; retry", {"Retry-After": "1"})


def as_request_error(exc: Exception, request_id: str) -> RequestError:
    """What a failed request answers: its own 4xx/503, a 422 for a rejected image, or a
    JSON 500 the client can quote for anything else (a bug or a model failure, never
    the upload's fault), logged with its traceback."""
    if isinstance(exc, RequestError):
        return exc
    if isinstance(exc, ImageRejected):
        if exc.__cause__ is not None:  # an error decode_image did not name: maybe ours
            trace = "".join(traceback.format_exception(exc.__cause__))
            log_json(service_log, logging.WARNING, event="decode_failed", trace=trace)
        return RequestError(exc.status, exc.reason, str(exc))
    trace = "".join(traceback.format_exception(exc))
    log_json(service_log, logging.ERROR, event="internal_error", request_id=request_id, trace=trace)
    return RequestError(500, "internal_error", f"unexpected server error (request {request_id})")


def error_response(error: RequestError, request_id: str, started: float) -> JSONResponse:
    """The JSON answer, its metric and its log line."""
    REJECTED.labels(error.reason).inc()
    log_request(request_id, error.status, started, error=error.reason, detail=error.detail)
    headers = {"X-Request-ID": request_id, **error.headers}
    return JSONResponse(error.body(), status_code=error.status, headers=headers)
