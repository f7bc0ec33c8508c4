"""Post-deploy evaluation: score a labelled folder through the live service, and
compare recent inference statistics with the training reference (Evidently)."""

from __future__ import annotations

import asyncio
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from model_lib.data import discover_images
from model_lib.image_stats import STAT_COLUMNS
from model_lib.metrics import classification_report, latency_percentiles

EVALUATION_SOURCE = "evaluation"  # X-Catdog-Source of our own requests: left out of drift


class ServiceDown(RuntimeError):
    """The service does not answer or is not ready; the message says what to do."""


def check_ready(url: str, timeout: float = 5.0) -> None:
    try:
        response = httpx.get(f"{url.rstrip('/')}/readyz", timeout=timeout)
    except httpx.HTTPError as exc:
        raise ServiceDown(
            f"the classifier service at {url} is unreachable ({exc.__class__.__name__}); "
            "start it with `make serve`"
        ) from None
    if response.status_code != 200:
        raise ServiceDown(
            f"the classifier service at {url} is up but not ready (/readyz answered "
            f"{response.status_code}); check its log: is a model packaged (`make package`)?"
        )


@dataclass
class Outcome:
    path: str
    true_label: str
    status: int
    predicted: str | None = None
    latency_ms: float | None = None
    model_version: str | None = None
    error: str | None = None


async def _classify(client, semaphore, url, path: Path, true_label: str) -> Outcome:
    async with semaphore:
        started = time.perf_counter()
        try:
            response = await client.post(
                f"{url.rstrip('/')}/classify",
                files={"image": (path.name, path.read_bytes(), "image/jpeg")},
                headers={"X-Catdog-Source": EVALUATION_SOURCE},
            )
        except httpx.HTTPError as exc:
            return Outcome(str(path), true_label, 0, error=f"{exc.__class__.__name__}: {exc}")
        latency = (time.perf_counter() - started) * 1000
        if response.status_code != 200:
            return Outcome(
                str(path),
                true_label,
                response.status_code,
                latency_ms=latency,
                error=response.text[:300],
            )
        body = response.json()
        return Outcome(
            str(path),
            true_label,
            200,
            body["label"],
            latency,
            str(body.get("model", {}).get("version")),
        )


async def _classify_all(url, labelled, concurrency, timeout):
    semaphore = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(timeout=timeout) as client:
        return await asyncio.gather(
            *(_classify(client, semaphore, url, path, label) for path, label in labelled)
        )


def classify_folder(url: str, folder: str | Path, concurrency: int = 8, timeout: float = 30.0):
    """POST every image of `folder/<class>/` to the service; returns (outcomes, class_names)."""
    items, class_names = discover_images(folder)
    labelled = [(item.path, class_names[item.label]) for item in items]
    return asyncio.run(_classify_all(url, labelled, concurrency, timeout)), class_names


@dataclass
class EvaluationResult:
    report: dict  # classification_report of the answered requests
    latency: dict  # latency_p50_ms ...
    errors: int
    requests: int
    model_versions: list[str] = field(default_factory=list)

    def metrics(self) -> dict[str, float]:
        flat = {
            "accuracy": self.report["accuracy"],
            "macro_f1": self.report["macro_f1"],
            "errors": float(self.errors),
            "requests": float(self.requests),
            **self.latency,
        }
        for name, values in self.report["per_class"].items():
            for key in ("precision", "recall", "f1"):
                flat[f"{name}_{key}"] = values[key]
        return flat


def evaluate_outcomes(outcomes: list[Outcome], class_names) -> EvaluationResult:
    answered = [o for o in outcomes if o.status == 200]
    index = {name: i for i, name in enumerate(class_names)}
    report = classification_report(
        [index[o.true_label] for o in answered], [index[o.predicted] for o in answered], class_names
    )
    # Accuracy is over everything sent: a failed request is not a correct answer.
    correct = sum(o.predicted == o.true_label for o in answered)
    report["accuracy"] = correct / len(outcomes) if outcomes else 0.0
    return EvaluationResult(
        report=report,
        latency=latency_percentiles([o.latency_ms for o in answered]),
        errors=len(outcomes) - len(answered),
        requests=len(outcomes),
        model_versions=sorted({o.model_version for o in answered if o.model_version}),
    )


@dataclass
class DriftResult:
    drifted_columns: list[str]
    p_values: dict[str, float]
    share: float
    drift_share: float
    detected: bool
    current_rows: int
    reference_rows: int


def drift_report(
    reference, current, html_path: str | Path, drift_share: float = 0.3, threshold: float = 0.05
) -> DriftResult:
    """Evidently data-drift report on the image statistic columns.

    The test is pinned to Kolmogorov-Smirnov (Evidently would otherwise switch
    method with sample size), and dataset drift is declared when at least
    `drift_share` of the 11 columns drift: a darker or greyscale stream moves
    4-7 of them, chance alone rarely moves more than one at p < 0.05.
    """
    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset

    columns = list(STAT_COLUMNS)
    definition = DataDefinition(numerical_columns=columns)
    report = Report(
        [DataDriftPreset(num_method="ks", num_threshold=threshold, drift_share=drift_share)]
    )
    with warnings.catch_warnings():
        # Constant columns (all training photos are 200x200) make numpy warn
        # about a zero std in correlations; the KS test itself is fine.
        warnings.simplefilter("ignore", RuntimeWarning)
        snapshot = report.run(
            current_data=Dataset.from_pandas(current[columns], data_definition=definition),
            reference_data=Dataset.from_pandas(reference[columns], data_definition=definition),
        )
    snapshot.save_html(str(html_path))
    p_values, share = {}, 0.0
    for metric in snapshot.dict()["metrics"]:
        config = metric["config"]
        if config["type"].endswith("ValueDrift"):
            p_values[config["column"]] = float(metric["value"])
        elif config["type"].endswith("DriftedColumnsCount"):
            share = float(metric["value"]["share"])
    drifted = sorted(c for c, p in p_values.items() if p < threshold)
    return DriftResult(
        drifted, p_values, share, drift_share, share >= drift_share, len(current), len(reference)
    )


SHIFTS = ("none", "darker", "blurred", "grayscale", "resized")


def apply_shift(payload: bytes, shift: str) -> bytes:
    """Re-encode a photo with a simulated shift in what users upload (traffic generator)."""
    import io

    from PIL import Image, ImageEnhance, ImageFilter

    if shift == "none":
        return payload
    image = Image.open(io.BytesIO(payload)).convert("RGB")
    if shift == "darker":
        image = ImageEnhance.Brightness(image).enhance(0.45)
    elif shift == "blurred":
        image = image.filter(ImageFilter.GaussianBlur(3))
    elif shift == "grayscale":
        image = image.convert("L").convert("RGB")
    elif shift == "resized":
        image = image.resize((image.width * 2, image.height * 2), Image.Resampling.BICUBIC)
    else:
        raise ValueError(f"unknown shift {shift!r}; choose one of {SHIFTS}")
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def send_traffic(
    url: str,
    folder: str | Path,
    count: int,
    shift: str = "none",
    concurrency: int = 4,
    source: str = "traffic-generator",
    timeout: float = 30.0,
) -> dict[int, int]:
    """Send `count` images from `folder` (cycling) to /classify; returns status -> count."""
    paths = sorted(Path(folder).rglob("*.jpg"))
    if not paths:
        raise FileNotFoundError(f"no .jpg images under {folder}: run `make data`")
    payloads = [apply_shift(paths[i % len(paths)].read_bytes(), shift) for i in range(count)]

    async def run():
        semaphore = asyncio.Semaphore(concurrency)
        async with httpx.AsyncClient(timeout=timeout) as client:

            async def one(index, payload):
                async with semaphore:
                    response = await client.post(
                        f"{url.rstrip('/')}/classify",
                        files={"image": (f"traffic-{index}.jpg", payload, "image/jpeg")},
                        headers={"X-Catdog-Source": source},
                    )
                    return response.status_code

            return await asyncio.gather(*(one(i, p) for i, p in enumerate(payloads)))

    statuses: dict[int, int] = {}
    for status in asyncio.run(run()):
        statuses[status] = statuses.get(status, 0) + 1
    return statuses
