"""BentoML service: POST /classify -> cat or dog, with ONNX Runtime on the CPU (no torch).

Start it from the project root with `bentoml serve` (bentofile.yaml names
`bento.service:CatDogClassifier`); the model comes from the BentoML model
store (`catdog-classifier:latest`, or $CATDOG_MODEL_TAG), put there by the
`package` flow; a built bento serves the version it was built with.
Preprocessing is `model_lib.preprocess` with the parameters stored inside the
ONNX file: nothing about it is restated here.

Design, measured on the shared 2-core machine (bench/serving.py):

* /classify is a FastAPI route mounted on the BentoML service
  (`bentoml.asgi_app`, documented in BentoML 1.4) rather than a
  `@bentoml.api`: it reads the raw request, so every bad upload gets its
  precise 4xx and a JSON body {"error", "detail"}, and the size limit is
  enforced from Content-Length or while the body streams in. BentoML's
  /healthz /livez /readyz /metrics and its OpenAPI page at / (which includes
  mounted FastAPI routes) are unchanged.
* Batching is an in-process asyncio micro-batcher (`MicroBatcher`), not a
  `batchable=True` BentoML API. In BentoML 1.4 a batchable method batches only
  requests that reach it over HTTP: calling it from another method goes
  through the service's own HTTP client (serialising the tensor), a batchable
  /classify would decode whole batches on one thread and could not answer
  each bad upload with its own status, and the two-service design dropped
  requests under load here ("process is overloaded" 503s, disconnects). The
  micro-batcher never waits for a batch to fill: each model call takes
  everything that queued up while the previous calls ran, so a lone client
  gets batch 1 and no added latency, and concurrent clients share calls
  (catdog_batch_size). It sheds load only beyond its queue bound, with a JSON
  503, never a 500.
* Decoding and preprocessing run on a thread pool (Pillow and NumPy release
  the GIL), never on the event loop; the inference log's image statistics on
  a low-priority background thread with a bounded queue (model_lib.inference_log).

Settings (environment): CATDOG_MODEL_TAG, CATDOG_MAX_UPLOAD_BYTES (10 MB),
CATDOG_MAX_PIXELS (40 M), CATDOG_INFERENCE_LOG (.run/inference_log.sqlite),
CATDOG_INFERENCE_LOG_QUEUE (1024; 0 = off), CATDOG_WORKERS (one per core),
CATDOG_BATCH_WORKERS / CATDOG_DECODE_THREADS (cores), CATDOG_ORT_THREADS (1),
CATDOG_MAX_BATCH_SIZE (32), CATDOG_MAX_QUEUE (512), CATDOG_MAX_IN_FLIGHT (256).
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import re
import sys
import time
import traceback
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

import bentoml
import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from prometheus_client import Counter, Histogram
from pydantic import BaseModel, Field

from model_lib.inference_log import InferenceLog, InferenceRecorder
from model_lib.preprocess import DEFAULT_MAX_PIXELS, ImageRejected, decode_image, to_model_input

MODEL_NAME = "catdog-classifier"
MODEL_TAG = os.environ.get("CATDOG_MODEL_TAG") or f"{MODEL_NAME}:latest"
DEFAULT_MAX_UPLOAD_BYTES = 10 * 1024 * 1024
# Room for the multipart framing (boundaries, part headers, small extra fields).
FORM_OVERHEAD_BYTES = 64 * 1024
MAX_FORM_PARTS = 16
IMAGE_FIELD = "image"
SOURCE_HEADER = "x-catdog-source"
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
_SOURCE = re.compile(r"^[a-z0-9_-]{1,32}$")

# ---------------------------------------------------------------- metrics
# Created once, at import: BentoML serves them on its own /metrics (in
# multi-worker mode through prometheus_client's multiprocess directory).
PREDICTIONS = Counter("catdog_predictions_total", "Classified images by predicted label", ["label"])
CONFIDENCE = Histogram(
    "catdog_confidence",
    "Probability of the predicted label",
    buckets=(0.5, 0.55, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0),
)
REJECTED = Counter(
    "catdog_rejected_requests_total", "Requests answered with an error, by reason", ["reason"]
)
PREPROCESS_SECONDS = Histogram(
    "catdog_preprocess_seconds",
    "Decoding plus preprocessing time of one upload",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
)
BATCH_SIZE = Histogram(
    "catdog_batch_size",
    "Images per ONNX Runtime call (micro-batching)",
    buckets=(1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64),
)
LOG_DROPPED = Counter(
    "catdog_inference_log_dropped_total",
    "Inference-log records dropped because the writer queue was full",
)
LOG_ERRORS = Counter(
    "catdog_inference_log_errors_total", "Inference-log batches that failed to be written"
)

# One JSON object per line on stderr, configured by the service (not at import).
request_log = logging.getLogger("catdog.requests")
service_log = logging.getLogger("catdog.service")


def _configure_logging() -> None:
    for logger in (request_log, service_log, logging.getLogger("catdog.inference_log")):
        if not any(getattr(h, "_catdog", False) for h in logger.handlers):
            handler = logging.StreamHandler(sys.stderr)
            handler.setFormatter(logging.Formatter("%(message)s"))
            handler._catdog = True  # type: ignore[attr-defined]
            logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False


def _log_json(logger: logging.Logger, level: int, **fields) -> None:
    fields = {
        "ts": datetime.now(UTC).isoformat(timespec="milliseconds"),
        "level": logging.getLevelName(level).lower(),
        **fields,
    }
    logger.log(level, json.dumps(fields, separators=(",", ":"), default=str))


def _log_unavailable(event: str, message: str) -> None:
    """The reason the service cannot classify: logged once, by the first worker
    process (every worker finds the same), not once per worker."""
    if bentoml.server_context.worker_index in (None, 1):
        _log_json(service_log, logging.ERROR, event=event, message=message)


def _available_cpus() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def _int_env(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    value = int(raw)
    if value < 1:
        raise ValueError(f"{name} must be a positive integer, got {raw!r}")
    return value


# Thread and process layout, measured on 2 cores (bench/serving.py, wrk, 16 clients):
# - one worker process per core: the HTTP, multipart and JSON work holds the GIL,
#   so 2 processes beat 1 process with the same threads;
# - ONNX Runtime with 1 thread per call, and as many parallel calls as cores:
#   a 2-thread session was the slowest layout on this shared CPU;
# - yet each worker has threads for every core: keep-alive connections stay
#   with the worker that accepted them, and one worker often holds most of
#   them (seen with 16 wrk connections), so a worker must be able to use both.
CPUS = _available_cpus()
WORKERS = _int_env("CATDOG_WORKERS", CPUS)


# ---------------------------------------------------------------- batching
class Overloaded(RuntimeError):
    """More requests are waiting for the model than the queue holds."""


class MicroBatcher:
    """Concurrent requests share one model call, without waiting for a batch to fill.

    `predict` takes (N, ...) and returns (N, ...). `workers` inference loops
    take turns: each one takes every queued input (up to `max_batch_size`),
    runs `predict` on a thread and hands each request its row.
    """

    def __init__(
        self,
        predict: Callable[[np.ndarray], np.ndarray],
        max_batch_size: int = 32,
        max_queue: int = 512,
        workers: int = 1,
        on_batch: Callable[[int], None] | None = None,
    ):
        self._predict = predict
        self.max_batch_size = max_batch_size
        self.max_queue = max_queue
        self.workers = workers
        self._on_batch = on_batch
        self._queue: asyncio.Queue | None = None
        self._tasks: list[asyncio.Task] = []
        self._executor = ThreadPoolExecutor(workers, thread_name_prefix="onnx")

    def start(self) -> None:
        """Start the inference loops on the running event loop."""
        self._queue = asyncio.Queue()
        self._tasks = [asyncio.create_task(self._loop()) for _ in range(self.workers)]

    async def predict(self, item: np.ndarray) -> np.ndarray:
        if self._queue is None:
            raise RuntimeError("MicroBatcher.start() was not called")
        if self._queue.qsize() >= self.max_queue:
            raise Overloaded(f"{self._queue.qsize()} requests are already waiting for the model")
        future = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((item, future))
        return await future

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        queue = self._queue
        while True:
            items = [await queue.get()]
            while len(items) < self.max_batch_size and not queue.empty():
                items.append(queue.get_nowait())
            items = [(x, f) for x, f in items if not f.done()]  # requests that gave up
            if not items:
                continue
            try:
                batch = np.stack([x for x, _ in items])
                if self._on_batch:
                    self._on_batch(len(items))
                outputs = await loop.run_in_executor(self._executor, self._predict, batch)
                if len(outputs) != len(items):
                    raise RuntimeError(f"the model returned {len(outputs)} rows for {len(items)}")
            except Exception as exc:  # noqa: BLE001 - every waiting request gets the error
                for _, future in items:
                    if not future.done():
                        future.set_exception(exc)
                continue
            for (_, future), output in zip(items, outputs, strict=True):
                if not future.done():
                    future.set_result(output)

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        while self._queue is not None and not self._queue.empty():
            _, future = self._queue.get_nowait()
            if not future.done():
                future.set_exception(RuntimeError("the service is shutting down"))
        self._executor.shutdown(wait=True)


# ---------------------------------------------------------------- request parsing
class RequestError(Exception):
    """A request answered with a 4xx/5xx JSON error {"error": reason, "detail": message}."""

    def __init__(self, status: int, reason: str, detail: str, headers: dict | None = None):
        super().__init__(detail)
        self.status, self.reason, self.detail, self.headers = status, reason, detail, headers


def _too_large(size_text: str, limit: int) -> RequestError:
    return RequestError(
        413,
        "too_large",
        f"{size_text}; uploads are limited to {limit} bytes (CATDOG_MAX_UPLOAD_BYTES)",
    )


def _empty_body() -> RequestError:
    return RequestError(
        400,
        "empty_body",
        f"the request has no body: send the photo as multipart field '{IMAGE_FIELD}' "
        f"(e.g. curl -F {IMAGE_FIELD}=@photo.jpg .../classify)",
    )


class BodyReader:
    """The request body as chunks, straight from ASGI `receive`, with a byte count."""

    def __init__(self, request: Request):
        self._receive = request.receive
        self.received = 0
        self.finished = False

    async def chunks(self):
        while not self.finished:
            message = await self._receive()
            if message["type"] == "http.disconnect":
                raise RequestError(400, "client_disconnected", "the client went away mid-upload")
            chunk = message.get("body", b"")
            self.finished = not message.get("more_body", False)
            self.received += len(chunk)
            if chunk:
                yield chunk

    async def drain(self, budget: int) -> None:
        """Read and discard up to `budget` more bytes, so that a client still sending
        its body reads our 413 rather than a reset connection. A bigger body is not
        read: the server closes the connection after answering."""
        async for chunk in self.chunks():
            budget -= len(chunk)
            if budget <= 0:
                return


async def read_upload(request: Request, max_upload: int) -> bytes:
    """The one image of a multipart/form-data request (field `image`), read with a
    bounded buffer; raises RequestError with the precise reason otherwise."""
    body_limit = max_upload + FORM_OVERHEAD_BYTES
    reader = BodyReader(request)
    try:
        return await _read_upload(request, reader, max_upload, body_limit)
    except RequestError as exc:
        expects_continue = request.headers.get("expect", "").lower() == "100-continue"
        if exc.status == 413 and not expects_continue:
            await reader.drain(4 * body_limit)
        raise


async def _read_upload(request: Request, reader: BodyReader, max_upload: int, body_limit: int):
    from python_multipart.exceptions import MultipartParseError
    from python_multipart.multipart import MultipartParser, parse_options_header

    declared = request.headers.get("content-length")
    if declared is not None and not declared.isdigit():
        raise RequestError(400, "bad_request", f"invalid Content-Length {declared!r}")
    # HTTP/1.1: without Content-Length or Transfer-Encoding a request has no body.
    if declared is None:
        if "transfer-encoding" not in request.headers:
            raise _empty_body()
    elif int(declared) == 0:
        raise _empty_body()

    content_type, params = parse_options_header(request.headers.get("content-type", ""))
    content_type = content_type.decode("latin-1").lower()
    if content_type != "multipart/form-data":
        raise RequestError(
            415,
            "unsupported_media_type",
            f"Content-Type is {content_type or 'missing'!r}; send the photo as multipart/form-data "
            f"with the file in field '{IMAGE_FIELD}' (e.g. curl -F {IMAGE_FIELD}=@photo.jpg "
            ".../classify)",
        )
    boundary = params.get(b"boundary")
    if not boundary:
        raise RequestError(400, "malformed_multipart", "multipart/form-data without a boundary")
    # Refused from the header, before any of the body is read.
    if declared is not None and int(declared) > body_limit:
        raise _too_large(f"the request body is {declared} bytes", max_upload)

    parts: list[dict] = []
    current: dict = {}
    header_field, header_value = bytearray(), bytearray()
    finished = False

    def on_part_begin():
        nonlocal current
        current = {"headers": {}, "data": bytearray()}
        parts.append(current)
        if len(parts) > MAX_FORM_PARTS:
            raise RequestError(
                400, "too_many_parts", f"the form has more than {MAX_FORM_PARTS} parts"
            )

    def on_header_field(data, start, end):
        header_field.extend(data[start:end])

    def on_header_value(data, start, end):
        header_value.extend(data[start:end])

    def on_header_end():
        current["headers"][bytes(header_field).lower()] = bytes(header_value)
        header_field.clear()
        header_value.clear()

    def on_part_data(data, start, end):
        current["data"].extend(data[start:end])
        if len(current["data"]) > max_upload:
            raise _too_large(f"the file in the form is over {max_upload} bytes", max_upload)

    def on_end():
        nonlocal finished
        finished = True

    parser = MultipartParser(
        boundary,
        {
            "on_part_begin": on_part_begin,
            "on_header_field": on_header_field,
            "on_header_value": on_header_value,
            "on_header_end": on_header_end,
            "on_part_data": on_part_data,
            "on_end": on_end,
        },
    )
    try:
        async for chunk in reader.chunks():
            if reader.received > body_limit:  # no Content-Length (chunked upload)
                raise _too_large(f"the request body is over {body_limit} bytes", max_upload)
            parser.write(chunk)
        parser.finalize()
    except MultipartParseError as exc:
        raise RequestError(
            400, "malformed_multipart", f"the multipart body is malformed ({exc})"
        ) from None
    if reader.received == 0:
        raise _empty_body()
    if not finished:
        raise RequestError(
            400, "malformed_multipart", "the multipart body ended before its closing boundary"
        )

    names, files = [], 0
    for part in parts:
        _, disposition = parse_options_header(part["headers"].get(b"content-disposition", b""))
        part["name"] = disposition.get(b"name", b"").decode("utf-8", "replace")
        names.append(part["name"])
        files += b"filename" in disposition
    if files > 1:
        raise RequestError(
            400, "too_many_files", f"send one image per request; the form holds {files} files"
        )
    images = [p for p in parts if p["name"] == IMAGE_FIELD]
    if not images:
        raise RequestError(
            400,
            "missing_field",
            f"the form has no field '{IMAGE_FIELD}' (fields: {names}); "
            f"e.g. curl -F {IMAGE_FIELD}=@photo.jpg .../classify",
        )
    if len(images) > 1:
        raise RequestError(
            400, "too_many_files", f"the form has {len(images)} '{IMAGE_FIELD}' fields"
        )
    return bytes(images[0]["data"])


# ---------------------------------------------------------------- API schema (OpenAPI)
class ModelInfo(BaseModel):
    name: str = Field(description="MLflow registered model name")
    version: str = Field(description="MLflow model version")
    precision: str = Field(description="weights of the served ONNX file: int8 or float32")


class Classification(BaseModel):
    label: str = Field(description="predicted class", examples=["dog"])
    confidence: float = Field(description="probability of the predicted class")
    probabilities: dict[str, float] = Field(description="probability per class name")
    model: ModelInfo
    latency_ms: float = Field(description="time spent in the service for this request")


class ErrorBody(BaseModel):
    error: str = Field(description="machine-readable reason (also a metric label)")
    detail: str = Field(description="what was wrong and how to fix it")


_ERRORS = {
    400: "empty body or file, missing 'image' field, more than one file, malformed form",
    413: "upload over CATDOG_MAX_UPLOAD_BYTES (10 MB) or image over the pixel limit",
    415: "not multipart/form-data, or the file is not a supported image",
    422: "truncated or corrupt image",
    503: "no model loaded yet, or the service is overloaded",
}
api = FastAPI(title="catdog-classifier", docs_url=None, redoc_url=None, openapi_url=None)


def _error_response(error: RequestError, request_id: str, started: float) -> JSONResponse:
    REJECTED.labels(error.reason).inc()
    latency_ms = (time.perf_counter() - started) * 1000
    level = logging.WARNING if error.status >= 500 else logging.INFO
    _log_json(
        request_log,
        level,
        event="classify",
        request_id=request_id,
        status=error.status,
        error=error.reason,
        detail=error.detail,
        latency_ms=round(latency_ms, 2),
    )
    return JSONResponse(
        {"error": error.reason, "detail": error.detail},
        status_code=error.status,
        headers={"X-Request-ID": request_id, **(error.headers or {})},
    )


def _prepare(data: bytes, prep, max_pixels: int):
    """Runs on the decode thread pool: bytes -> (RGB image, model input, seconds)."""
    started = time.perf_counter()
    try:
        image = decode_image(data, max_pixels=max_pixels)
    except ImageRejected:
        raise
    except Exception as exc:
        # decode_image maps the errors Pillow documents; a crafted file can still
        # trip another one inside a format plugin. It is the upload's fault, so a
        # 422, but logged with its traceback in case it is ours.
        _log_json(
            service_log,
            logging.WARNING,
            event="decode_failed",
            error=repr(exc),
            traceback=traceback.format_exc(),
        )
        raise ImageRejected(
            "undecodable", f"the image could not be decoded ({type(exc).__name__}: {exc})", 422
        ) from exc
    return image, to_model_input(image, prep), time.perf_counter() - started


# ---------------------------------------------------------------- the service
class LocalBentoModel(bentoml.models.BentoModel):
    """A `BentoModel` (so `bentoml build` packs the model into the bento) that
    resolves from the local store only.

    `bentoml serve` resolves every declared model before it starts, and a
    plain BentoModel missing from the store stops the server (after trying
    BentoCloud). This service must start without its model, log one clear
    error and answer 503 until the model is packaged, so a missing model
    resolves to None here; `bentoml build` still fails without it.
    """

    def resolve(self, base_path=None):
        if self.stored is None:
            return None
        return super().resolve(base_path)


@bentoml.service(
    workers=WORKERS,
    traffic={"timeout": 30},
    # The JSON line per request below replaces BentoML's plain-text access log.
    logging={"access": {"enabled": False}},
)
@bentoml.asgi_app(api, path="/")
class CatDogClassifier:
    """Cat or dog? Upload a photo to POST /classify (multipart field `image`)."""

    # Declared as a class attribute so `bentoml build` packs this model into the bento.
    model_ref = LocalBentoModel(MODEL_TAG)

    def __init__(self) -> None:
        _configure_logging()
        self.ready = False
        self.unavailable = "the model is loading"
        self.max_upload = _int_env("CATDOG_MAX_UPLOAD_BYTES", DEFAULT_MAX_UPLOAD_BYTES)
        self.max_pixels = _int_env("CATDOG_MAX_PIXELS", DEFAULT_MAX_PIXELS)
        self.decode_pool = ThreadPoolExecutor(
            _int_env("CATDOG_DECODE_THREADS", CPUS), thread_name_prefix="decode"
        )
        self.classifier = None
        self.batcher = None
        self.recorder = None
        self.in_flight = 0
        self.max_in_flight = _int_env("CATDOG_MAX_IN_FLIGHT", 256)
        api.state.service = self
        try:
            self._load_model()
        except Exception as exc:  # noqa: BLE001 - logged once; the service runs unready (503)
            self.unavailable = f"model {MODEL_TAG} could not be loaded: {exc}"
            _log_unavailable("model_unavailable", self.unavailable)

    def _load_model(self) -> None:
        from model_lib.onnx_model import OnnxClassifier

        ref = type(self).model_ref
        bento = CatDogClassifier.bento  # the built bento this runs from, if any
        if bento is not None:
            # A bento serves the model version it was built with, not the store's latest.
            pinned = [m.tag for m in bento.info.all_models if m.tag.name == ref.tag.name]
            if pinned:
                ref = LocalBentoModel(pinned[0])
        stored = ref.stored  # local store only: no BentoCloud lookup
        if stored is None:
            home = os.environ.get("BENTOML_HOME") or str(Path.home() / "bentoml")
            self.unavailable = (
                f"no model '{MODEL_TAG}' in the BentoML store at {home}: run "
                "`prefect deployment run package/champion --watch` (after training a champion), "
                "or set CATDOG_MODEL_TAG / BENTOML_HOME to where the model is"
            )
            _log_unavailable("model_missing", self.unavailable)
            return
        batch_workers = _int_env("CATDOG_BATCH_WORKERS", CPUS)
        ort_threads = _int_env("CATDOG_ORT_THREADS", 1)
        classifier = OnnxClassifier(stored.path_of("model.onnx"), threads=ort_threads)
        metadata = stored.info.metadata
        expected = metadata.get("class_names")
        if expected is not None and tuple(expected) != classifier.class_names:
            raise ValueError(
                f"class names in the store metadata {expected} differ from the ONNX file's "
                f"{list(classifier.class_names)}"
            )
        self.classifier = classifier
        self.model_info = {
            "name": str(metadata.get("mlflow_model_name", stored.tag.name)),
            "version": str(metadata.get("mlflow_model_version", stored.tag.version)),
            "precision": str(metadata.get("precision", "float32")),
        }
        self.model_tag = str(stored.tag)
        self.batcher = MicroBatcher(
            classifier.predict_proba,
            max_batch_size=_int_env("CATDOG_MAX_BATCH_SIZE", 32),
            max_queue=_int_env("CATDOG_MAX_QUEUE", 512),
            workers=batch_workers,
            on_batch=BATCH_SIZE.observe,
        )
        # Records waiting for their statistics; 0 turns the inference log off
        # (to measure what it costs: bench/serving.py).
        log_queue = int(os.environ.get("CATDOG_INFERENCE_LOG_QUEUE") or 1024)
        if log_queue < 0:
            raise ValueError(f"CATDOG_INFERENCE_LOG_QUEUE must be >= 0, got {log_queue}")
        if log_queue:
            self.recorder = InferenceRecorder(
                InferenceLog(),
                max_pending=log_queue,
                on_drop=LOG_DROPPED.inc,
                on_error=lambda _exc: LOG_ERRORS.inc(),
            )
        _log_json(
            service_log,
            logging.INFO,
            event="model_loaded",
            model=self.model_tag,
            mlflow=self.model_info,
            classes=list(classifier.class_names),
            image_size=classifier.preprocessing.image_size,
            batch_workers=batch_workers,
            ort_threads=ort_threads,
            inference_log=str(self.recorder.log.path) if self.recorder else "off",
        )

    @bentoml.on_startup
    async def warm_up(self) -> None:
        """Start the batcher and push one generated photo through the whole path;
        /readyz answers 200 only after this call returned sane probabilities."""
        if self.classifier is None:
            return
        from PIL import Image

        self.batcher.start()
        buffer = io.BytesIO()
        gradient = np.linspace(0, 255, 64 * 64 * 3, dtype=np.float64).reshape(64, 64, 3)
        Image.fromarray(gradient.astype(np.uint8)).save(buffer, "JPEG")
        try:
            _, model_input, _ = await asyncio.get_running_loop().run_in_executor(
                self.decode_pool,
                _prepare,
                buffer.getvalue(),
                self.classifier.preprocessing,
                self.max_pixels,
            )
            probs = await self.batcher.predict(model_input)
            if probs.shape != (len(self.classifier.class_names),) or not np.isclose(
                probs.sum(), 1.0, atol=1e-4
            ):
                raise ValueError(f"warm-up returned {probs!r}")
        except Exception as exc:  # noqa: BLE001 - logged once; the service runs unready (503)
            self.unavailable = f"model {self.model_tag} failed its warm-up call: {exc}"
            _log_unavailable("model_unavailable", self.unavailable)
            return
        self.ready = True
        _log_json(service_log, logging.INFO, event="ready", model=self.model_tag)

    @bentoml.on_shutdown
    async def close(self) -> None:
        if self.batcher is not None:
            await self.batcher.stop()
        if self.recorder is not None:
            await asyncio.get_running_loop().run_in_executor(None, self.recorder.close)
        self.decode_pool.shutdown(wait=False)

    async def __is_ready__(self) -> bool:
        return self.ready

    async def classify(self, request: Request) -> JSONResponse:
        started = time.perf_counter()
        request_id = request.headers.get("x-request-id", "")
        if not _REQUEST_ID.match(request_id):
            request_id = os.urandom(16).hex()
        if self.in_flight >= self.max_in_flight:  # bounds the memory held by uploads
            return _error_response(
                RequestError(
                    503,
                    "overloaded",
                    f"{self.in_flight} requests are in progress in this worker; retry",
                    {"Retry-After": "1"},
                ),
                request_id,
                started,
            )
        self.in_flight += 1
        try:
            return await self._classify(request, request_id, started)
        except Exception as exc:
            # A bug or a model failure, never the upload's fault: a JSON 500 the
            # client can quote, and the traceback in the log.
            _log_json(
                service_log,
                logging.ERROR,
                event="internal_error",
                request_id=request_id,
                error=repr(exc),
                traceback=traceback.format_exc(),
            )
            return _error_response(
                RequestError(
                    500, "internal_error", f"unexpected server error (request id {request_id})"
                ),
                request_id,
                started,
            )
        finally:
            self.in_flight -= 1

    async def _classify(self, request: Request, request_id: str, started: float) -> JSONResponse:
        try:
            source = request.headers.get(SOURCE_HEADER, "user").strip().lower()
            if not _SOURCE.match(source):
                raise RequestError(
                    400,
                    "bad_source",
                    f"{SOURCE_HEADER} must match {_SOURCE.pattern}, got {source!r}",
                )
            if not self.ready:
                raise RequestError(
                    503, "model_unavailable", self.unavailable, {"Retry-After": "30"}
                )
            payload = await read_upload(request, self.max_upload)
            loop = asyncio.get_running_loop()
            try:
                image, model_input, seconds = await loop.run_in_executor(
                    self.decode_pool,
                    _prepare,
                    payload,
                    self.classifier.preprocessing,
                    self.max_pixels,
                )
            except ImageRejected as exc:
                raise RequestError(exc.status, exc.reason, str(exc)) from None
            PREPROCESS_SECONDS.observe(seconds)
            try:
                probs = await self.batcher.predict(model_input)
            except Overloaded as exc:
                raise RequestError(
                    503, "overloaded", f"the service is busy ({exc}); retry", {"Retry-After": "1"}
                ) from None
        except RequestError as exc:
            return _error_response(exc, request_id, started)

        names = self.classifier.class_names
        best = int(np.argmax(probs))
        label, confidence = names[best], float(probs[best])
        latency_ms = (time.perf_counter() - started) * 1000
        PREDICTIONS.labels(label).inc()
        CONFIDENCE.observe(confidence)
        if self.recorder is not None:
            self.recorder.submit(
                image,
                len(payload),
                {
                    "timestamp": time.time(),
                    "request_id": request_id,
                    "source": source,
                    "label": label,
                    "confidence": confidence,
                    "model_name": self.model_info["name"],
                    "model_version": self.model_info["version"],
                },
            )
        _log_json(
            request_log,
            logging.INFO,
            event="classify",
            request_id=request_id,
            status=200,
            source=source,
            label=label,
            confidence=round(confidence, 4),
            latency_ms=round(latency_ms, 2),
        )
        return JSONResponse(
            {
                "label": label,
                "confidence": confidence,
                "probabilities": {n: float(p) for n, p in zip(names, probs, strict=True)},
                "model": self.model_info,
                "latency_ms": round(latency_ms, 3),
            },
            headers={"X-Request-ID": request_id},
        )


@api.post(
    "/classify",
    summary="Classify one photo as cat or dog",
    description=(
        "Upload one image as multipart/form-data field `image` "
        "(`curl -F image=@dog.jpg http://127.0.0.1:3000/classify`). JPEG, PNG, GIF (first "
        "frame), WEBP and BMP are accepted; EXIF rotation is applied. Optional header "
        "`X-Catdog-Source` marks the traffic (default `user`); `X-Request-ID` is echoed "
        "or generated."
    ),
    response_model=None,
    responses={
        200: {"model": Classification, "description": "the prediction"},
        **{code: {"model": ErrorBody, "description": text} for code, text in _ERRORS.items()},
    },
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "required": [IMAGE_FIELD],
                        "properties": {IMAGE_FIELD: {"type": "string", "format": "binary"}},
                    }
                }
            },
        }
    },
)
async def classify(request: Request) -> JSONResponse:
    # The service instance registers itself on the app when BentoML creates it;
    # a FastAPI class view (BentoML's `self` dependency) would cost a thread hop.
    return await request.app.state.service.classify(request)
