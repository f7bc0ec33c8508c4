"""BentoML service: POST /classify -> cat, dog or neither, with ONNX Runtime on the CPU (no torch).

`bentoml serve` (bentofile.yaml names `bento.service:CatDogClassifier`) loads
the model from the BentoML model store, where the `package` flow puts it; a
built bento serves the version it was built with. Preprocessing is
`model_lib.preprocess` with the parameters stored inside the ONNX file; the
answer is the model's own decision rule (temperature and `neither` threshold,
`model_lib.decision`), also stored in the file; CATDOG_NEITHER_THRESHOLD
overrides the threshold.

/classify is a FastAPI route mounted on the service (`bentoml.asgi_app`)
rather than a `@bentoml.api`: it reads the raw request, so every bad upload
gets its own 4xx and JSON body, and the size limits hold while the body
streams in. Settings: bento/settings.py; design and figures: README, "Serving".
"""

from __future__ import annotations

import asyncio
import io
import logging
import os
import re
import time
from concurrent.futures import ThreadPoolExecutor

import bentoml
import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from PIL import Image

from bento import metrics
from bento.admission import DecodeBudget, InFlight
from bento.answers import answer, served_rule
from bento.batching import MicroBatcher, Overloaded
from bento.errors import RequestError, as_request_error, error_response, overloaded
from bento.logs import configure, log_json, log_once, log_request, service_log
from bento.model_store import LocalBentoModel, ModelMissing, model_info, served_model
from bento.schema import CLASSIFY
from bento.settings import Settings
from bento.upload import Body, body_limit, check_headers, read_image
from model_lib.inference_log import InferenceLog, InferenceRecorder, Retention
from model_lib.onnx_model import OnnxClassifier
from model_lib.preprocess import prepare_header, read_header

# Read at import: BentoML takes the worker count and the model from the class definition.
SETTINGS = Settings.from_env()
REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
SOURCE = re.compile(r"^[a-z0-9_-]{1,32}$")
api = FastAPI(title="catdog-classifier", docs_url=None, redoc_url=None, openapi_url=None)


@bentoml.service(
    workers=SETTINGS.workers,
    traffic={"timeout": 30},
    logging={"access": {"enabled": False}},  # replaced by a JSON line per request
)
@bentoml.asgi_app(api, path="/")
class CatDogClassifier:
    """Cat, dog or neither? Upload a photo to POST /classify (multipart field `image`)."""

    model_ref = LocalBentoModel(SETTINGS.model_tag)

    def __init__(self) -> None:
        configure()
        self.ready, self.unavailable = False, "the model is loading"
        self.classifier = self.batcher = self.recorder = self.decision = None
        self.in_flight = InFlight(SETTINGS.max_in_flight, SETTINGS.max_in_flight_bytes)
        self.decoding = DecodeBudget(SETTINGS.max_decoded_bytes, SETTINGS.decode_wait_seconds)
        self.decode_pool = ThreadPoolExecutor(SETTINGS.decode_threads, thread_name_prefix="decode")
        api.state.service = self
        try:
            self.load_model()
        except Exception as exc:  # noqa: BLE001 - logged once; the service runs unready (503)
            self.unavailable = f"model {SETTINGS.model_tag} could not be loaded: {exc}"
            log_once("model_unavailable", self.unavailable)

    def load_model(self) -> None:
        try:
            stored = served_model(type(self).model_ref, CatDogClassifier.bento)  # bento: if built
        except ModelMissing as exc:
            self.unavailable = str(exc)
            return log_once("model_missing", self.unavailable)
        self.classifier = OnnxClassifier(stored.path_of("model.onnx"), SETTINGS.ort_threads)
        names = self.classifier.class_names  # the outputs, as packaging wrote them in the store
        if tuple(stored.info.metadata.get("class_names", names)) != names:
            raise ValueError(f"the store's class names are not the ONNX file's {names}")
        self.decision, warning = served_rule(self.classifier.decision, SETTINGS.neither_threshold)
        pets = self.classifier.preprocessing.class_names
        if self.decision.pets != pets:
            raise ValueError(f"the model's outputs {self.decision.outputs} do not match {pets}")
        if warning:
            log_once("threshold_ignored", warning)
        for label in self.decision.outputs:  # every label's series exists from the start, at 0
            metrics.PREDICTIONS.labels(label)
        self.model_tag, self.model_info = str(stored.tag), model_info(stored)
        self.batcher = MicroBatcher(
            self.classifier.predict_proba,
            SETTINGS.max_batch_size,
            SETTINGS.max_queue,
            SETTINGS.batch_workers,
            on_batch=metrics.BATCH_SIZE.observe,
        )
        if SETTINGS.inference_log_queue:  # 0 turns the log off (to measure what it costs)
            self.recorder = InferenceRecorder(
                InferenceLog(),
                max_pending=SETTINGS.inference_log_queue,
                on_drop=metrics.LOG_DROPPED.inc,
                on_error=lambda _exc: metrics.LOG_ERRORS.inc(),
                retention=Retention(
                    SETTINGS.inference_log_retention_days, SETTINGS.inference_log_max_rows
                ),
            )
        log_json(
            service_log,
            logging.INFO,
            event="model_loaded",
            model=self.model_tag,
            outputs=list(self.decision.outputs),
            temperature=self.decision.temperature,
            neither_threshold=self.decision.threshold,
        )

    @bentoml.on_startup
    async def warm_up(self) -> None:
        """One generated photo through the whole path: ready only if the answer is sane."""
        if self.classifier is None:
            return
        self.batcher.start()
        buffer = io.BytesIO()
        gradient = np.linspace(0, 255, 64 * 64 * 3).reshape(64, 64, 3).astype(np.uint8)
        Image.fromarray(gradient).save(buffer, "JPEG")
        try:
            _, probs, _ = await self.predict(buffer.getvalue())
            outputs = self.decision.outputs
            if probs.shape != (len(outputs),) or not np.isfinite(probs).all():
                raise ValueError(f"warm-up returned {probs!r} for the outputs {outputs}")
            if abs(probs.sum() - 1) > 1e-4:
                raise ValueError(f"warm-up probabilities {probs!r} do not add up to 1")
            body = answer(self.decision, probs)
            if body["label"] not in outputs or not 0 <= body["pet_score"] <= 1 + 1e-6:
                raise ValueError(f"warm-up answered {body!r}")
        except Exception as exc:  # noqa: BLE001 - logged once; the service runs unready (503)
            self.unavailable = f"model {self.model_tag} failed its warm-up call: {exc}"
            return log_once("model_unavailable", self.unavailable)
        self.ready = True
        log_json(service_log, logging.INFO, event="ready", model=self.model_tag)

    @bentoml.on_shutdown
    async def close(self) -> None:
        if self.batcher is not None:
            await self.batcher.stop()
        if self.recorder is not None:
            await asyncio.get_running_loop().run_in_executor(None, self.recorder.close)
        self.decode_pool.shutdown(wait=False)

    async def __is_ready__(self) -> bool:
        return self.ready

    async def predict(self, payload: bytes) -> tuple[Image.Image, np.ndarray, tuple]:
        """Decoding on the pool (Pillow and NumPy release the GIL), within the decode
        budget reserved from the image's header, then the batched model."""
        started, loop = time.perf_counter(), asyncio.get_running_loop()
        prep = self.classifier.preprocessing
        header = await loop.run_in_executor(
            self.decode_pool, read_header, payload, SETTINGS.max_pixels, prep.resize_size
        )
        async with self.decoding.reserve(header.cost):
            image, model_input = await loop.run_in_executor(
                self.decode_pool, prepare_header, header, prep
            )
        metrics.PREPROCESS_SECONDS.observe(time.perf_counter() - started)
        try:
            return image, await self.batcher.predict(model_input), header.source_size
        except Overloaded as exc:
            raise overloaded(f"the service is busy ({exc})") from None

    async def classify(self, request: Request) -> JSONResponse:
        started, headers = time.perf_counter(), request.headers
        request_id = headers.get("x-request-id", "")
        request_id = request_id if REQUEST_ID.match(request_id) else os.urandom(16).hex()
        source = headers.get("x-catdog-source", "user").strip().lower()
        body = Body(request.receive, SETTINGS.upload_timeout_seconds)
        try:
            if not SOURCE.match(source):
                detail = f"X-Catdog-Source must match {SOURCE.pattern}, got {source!r}"
                raise RequestError(400, "bad_source", detail)
            if not self.ready:
                raise RequestError(
                    503, "model_unavailable", self.unavailable, {"Retry-After": "30"}
                )
            form = check_headers(headers, SETTINGS.max_upload_bytes)
            # Held from the headers on; a chunked body may grow to the whole limit.
            with self.in_flight.hold(form.content_length or form.body_limit):
                payload = await read_image(form, body, SETTINGS.max_upload_bytes)
                image, probs, source_size = await self.predict(payload)
        except Exception as exc:  # noqa: BLE001 - every failure answers with a JSON error
            error = as_request_error(exc, request_id)
            if error.status in (413, 503) and headers.get("expect", "").lower() != "100-continue":
                await body.drain(4 * body_limit(SETTINGS.max_upload_bytes))  # a sender reads it
            return error_response(error, request_id, started)
        return self.respond(probs, image, len(payload), source, request_id, started, source_size)

    def respond(self, probs, image, size, source, request_id, started, source_size=None):
        """`image` as decoded (reduced when large), `source_size` the upload's own size.
        The batcher returns calibrated probabilities over the outputs; the rule decides."""
        body = answer(self.decision, probs)
        label, confidence = body["label"], body["confidence"]
        metrics.PREDICTIONS.labels(label).inc()
        metrics.CONFIDENCE.observe(confidence)
        metrics.PET_SCORE.observe(body["pet_score"])
        if self.recorder is not None:
            model = {
                "model_name": self.model_info["name"],
                "model_version": self.model_info["version"],
            }
            record = dict(request_id=request_id, source=source, label=label, confidence=confidence)
            record |= {**model, "timestamp": time.time()}
            self.recorder.submit(image, size, record, source_size=source_size)
        log_request(
            request_id,
            200,
            started,
            source=source,
            label=label,
            confidence=round(confidence, 4),
            pet_score=round(body["pet_score"], 4),
        )
        return JSONResponse(
            {
                **body,
                "model": self.model_info,
                "latency_ms": round((time.perf_counter() - started) * 1000, 3),
            },
            headers={"X-Request-ID": request_id},
        )


@api.post("/classify", **CLASSIFY)
async def classify(request: Request) -> JSONResponse:
    # The service registers itself on the app when BentoML creates it; a FastAPI
    # class view (BentoML's `self` dependency) would cost a thread hop.
    return await request.app.state.service.classify(request)
