"""The one HTTP client of the service: POST /classify, /readyz and /metrics.

Used by the evaluation flow (`monitoring`), the traffic generator
(`traffic`, catdog_runtime.traffic) and the benchmark (bench/serving.py).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import httpx
from prometheus_client.parser import text_string_to_metric_families

from model_lib.rollout import Window, parse_metrics


class ServiceDown(RuntimeError):
    """The service does not answer or is not ready; the message says what to do."""


@dataclass
class Answer:
    """One /classify call: `status` 0 when no HTTP answer came (refused, timed out)."""

    status: int
    latency_ms: float
    body: dict | None = None
    error: str | None = None

    @property
    def label(self) -> str | None:
        return self.body["label"] if self.status == 200 else None

    @property
    def model_version(self) -> str | None:
        return str(self.body["model"]["version"]) if self.status == 200 else None


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


async def classify(
    client: httpx.AsyncClient, url: str, payload: bytes, name: str = "photo.jpg", source=None
) -> Answer:
    """POST one photo as multipart field `image`; `source` sets X-Catdog-Source."""
    headers = {"X-Catdog-Source": source} if source else {}
    started = time.perf_counter()
    try:
        response = await client.post(
            f"{url.rstrip('/')}/classify",
            files={"image": (name, payload, "image/jpeg")},
            headers=headers,
        )
    except httpx.HTTPError as exc:
        latency = (time.perf_counter() - started) * 1000
        return Answer(0, latency, error=f"{exc.__class__.__name__}: {exc}")
    latency = (time.perf_counter() - started) * 1000
    if response.status_code != 200:
        return Answer(response.status_code, latency, error=response.text[:300])
    return Answer(200, latency, response.json())


def classify_all(
    url: str, photos, source=None, concurrency: int = 8, timeout: float = 30.0
) -> list[Answer]:
    """POST every (name, payload) of `photos`, `concurrency` at a time; answers in order."""

    async def run():
        semaphore = asyncio.Semaphore(concurrency)
        async with httpx.AsyncClient(timeout=timeout) as client:

            async def one(name, payload):
                async with semaphore:
                    return await classify(client, url, payload, name, source)

            return await asyncio.gather(*(one(name, payload) for name, payload in photos))

    return asyncio.run(run())


def metrics_window(urls: list[str], timeout: float = 30) -> Window:
    """The /classify counts of these replicas' /metrics, summed (model_lib.rollout.Window)."""
    total = Window()
    for url in urls:
        total = total + parse_metrics(httpx.get(f"{url.rstrip('/')}/metrics", timeout=timeout).text)
    return total


def metric_samples(url: str) -> dict[tuple[str, tuple], float]:
    """The service's /metrics: (sample name, sorted label pairs) -> value."""
    text = httpx.get(f"{url.rstrip('/')}/metrics", timeout=10).text
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def metric_total(samples: dict, name: str, **labels) -> float:
    """Sum of `name` over the label sets that include `labels` (workers, versions...)."""
    return sum(
        value
        for (sample, sample_labels), value in samples.items()
        if sample == name and set(labels.items()) <= set(sample_labels)
    )
