"""The service's failure paths and limits over HTTP, each on a `bentoml serve` with the
settings it tests: JSON 500, failed warm-up, in-flight 503s (requests and bytes), queue
503, a client that disconnects mid-upload, and bounded memory under many large
concurrent uploads."""

from __future__ import annotations

import asyncio
import io
import json
import socket
import threading
import time

import httpx
import psutil
import pytest
from PIL import Image

from catdog_runtime.waits import poll
from model_lib.client import metric_samples, metric_total
from tests.conftest import TEST_IMAGES
from tests.integration.service_runner import serving

FAULTY = "tests.integration.faulty_service:CatDogClassifier"
MiB = 1024 * 1024
PHOTO = sorted((TEST_IMAGES / "cat").glob("*.jpg"))[0]


def post(url: str, payload: bytes, timeout: float = 60, **kwargs) -> httpx.Response:
    files = {"image": ("photo.jpg", payload, "image/jpeg")}
    return httpx.post(f"{url}/classify", files=files, timeout=timeout, **kwargs)


def assert_json_error(response: httpx.Response, status: int, reason: str) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert body["error"] == reason and len(body["detail"]) > 10
    assert response.headers["x-request-id"]
    return body


def log_events(server, event: str) -> list[dict]:
    lines = server.log_tail(2000).splitlines()
    return [json.loads(x) for x in lines if f'"event":"{event}"' in x]


def test_a_model_failure_is_a_json_500_and_the_service_goes_on(model_store):
    flat = io.BytesIO()
    Image.new("RGB", (64, 64), (90, 90, 90)).save(flat, "PNG")
    with serving(
        model_store, target=FAULTY, TEST_MODEL_FAULT="flat", CATDOG_WORKERS="1"
    ) as service:
        response = post(service.url, flat.getvalue(), headers={"X-Request-ID": "boom-1"})
        body = assert_json_error(response, 500, "internal_error")
        assert "boom-1" in body["detail"] and "injected" not in body["detail"]  # no internals
        assert post(service.url, PHOTO.read_bytes()).status_code == 200
        (logged,) = log_events(service.server, "internal_error")
        assert logged["request_id"] == "boom-1" and "injected model failure" in logged["trace"]
        samples = metric_samples(service.url)
        assert metric_total(samples, "catdog_rejected_requests_total", reason="internal_error") == 1


def test_a_failed_warm_up_leaves_the_service_unready_and_saying_why(model_store):
    env = {"TEST_MODEL_FAULT": "always", "CATDOG_WORKERS": "1"}
    with serving(model_store, target=FAULTY, ready="/livez", **env) as service:
        assert httpx.get(f"{service.url}/readyz", timeout=10).status_code == 503
        body = assert_json_error(post(service.url, PHOTO.read_bytes()), 503, "model_unavailable")
        assert "failed its warm-up call" in body["detail"] and "injected" in body["detail"]
        (logged,) = log_events(service.server, "model_unavailable")
        assert logged["level"] == "error"


async def stalled_upload(client: httpx.AsyncClient, url: str, release: asyncio.Event):
    """An upload that sends its headers and half its body, then waits for `release`."""
    payload = PHOTO.read_bytes()
    head = b'--b\r\nContent-Disposition: form-data; name="image"; filename="a.jpg"\r\n\r\n'
    body = head + payload + b"\r\n--b--\r\n"

    async def chunks():
        yield body[: len(body) // 2]
        await release.wait()
        yield body[len(body) // 2 :]

    headers = {"Content-Type": "multipart/form-data; boundary=b", "Content-Length": str(len(body))}
    return await client.post(f"{url}/classify", content=chunks(), headers=headers)


@pytest.fixture(scope="module")
def limited(model_store):
    """One worker, room for 3 uploads in flight or 32 MiB of them (each test using it
    leaves every slot free again, and checks so)."""
    settings = {"CATDOG_WORKERS": "1", "CATDOG_MAX_IN_FLIGHT": "3"}
    settings["CATDOG_MAX_IN_FLIGHT_BYTES"] = str(32 * MiB)
    with serving(model_store, **settings) as service:
        yield service


def test_uploads_in_flight_beyond_the_limit_get_a_json_503(limited):
    async def scenario():
        release = asyncio.Event()
        async with httpx.AsyncClient(timeout=60) as client:
            held = [
                asyncio.create_task(stalled_upload(client, limited.url, release)) for _ in range(3)
            ]
            await asyncio.sleep(2)  # the three are in flight, mid-body
            extra = await client.post(
                f"{limited.url}/classify",
                files={"image": ("b.jpg", PHOTO.read_bytes(), "image/jpeg")},
            )
            release.set()
            return extra, await asyncio.gather(*held)

    extra, held = asyncio.run(scenario())
    body = assert_json_error(extra, 503, "overloaded")
    assert "3 requests are in progress" in body["detail"] and extra.headers["retry-after"] == "1"
    assert [r.status_code for r in held] == [200, 200, 200]
    assert post(limited.url, PHOTO.read_bytes()).status_code == 200  # the slots are free again


def test_a_client_that_disconnects_mid_upload_frees_its_slot(limited):
    host, port = limited.url.removeprefix("http://").split(":")
    for _ in range(5):  # more than the 3 slots: a slot kept by a gone client would show
        with socket.create_connection((host, int(port)), timeout=10) as sock:
            sock.sendall(
                b"POST /classify HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n"
                b"Content-Type: multipart/form-data; boundary=b\r\n\r\n--b\r\n" + b"x" * 1000
            )
            time.sleep(0.3)  # the service is reading the body when the client goes
    gone = poll(
        lambda: metric_total(
            metric_samples(limited.url),
            "catdog_rejected_requests_total",
            reason="client_disconnected",
        ),
        lambda count: count == 5,
        timeout=20,
    )
    assert gone == 5
    assert post(limited.url, PHOTO.read_bytes()).status_code == 200


def test_the_model_queue_beyond_its_bound_is_a_json_503(model_store):
    settings = {"CATDOG_WORKERS": "1", "CATDOG_BATCH_WORKERS": "1", "CATDOG_MAX_BATCH_SIZE": "1"}
    settings |= {"CATDOG_MAX_QUEUE": "1", "TEST_MODEL_DELAY": "0.5"}
    with serving(model_store, target=FAULTY, **settings) as service:

        async def burst():
            async with httpx.AsyncClient(timeout=60) as client:
                files = {"image": ("a.jpg", PHOTO.read_bytes(), "image/jpeg")}
                return await asyncio.gather(
                    *(client.post(f"{service.url}/classify", files=files) for _ in range(6))
                )

        responses = asyncio.run(burst())
    statuses = sorted(r.status_code for r in responses)
    assert set(statuses) == {200, 503}, statuses
    for response in responses:
        if response.status_code == 503:
            assert "busy" in assert_json_error(response, 503, "overloaded")["detail"]


# ---------------------------------------------------------------- bounded memory
BUDGET = 32 * MiB
UPLOAD = 8 * MiB
CONCURRENT = 64  # 512 MiB offered at once, 16 times the budget
# Bodies the limit admits (the budget), a copy of each being decoded (one per decode
# thread), server buffers and allocator slack: 2 x budget + 48 MiB. Without the byte
# limit, the 64 uploads alone would hold 512 MiB.
RSS_BOUND = 2 * BUDGET + 48 * MiB


def large_upload() -> bytes:
    """A real photo followed by 8 MB of padding: a large upload, a small image to
    decode, so what is measured is the memory held by uploads, not by decoding."""
    photo = PHOTO.read_bytes()
    head = b'--b\r\nContent-Disposition: form-data; name="image"; filename="a.jpg"\r\n\r\n'
    return head + photo + b"\0" * (UPLOAD - len(photo)) + b"\r\n--b--\r\n"


def tree_rss(pid: int) -> int:
    process = psutil.Process(pid)
    total = 0
    for member in [process, *process.children(recursive=True)]:
        try:
            total += member.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return total


def test_many_large_uploads_keep_memory_bounded_and_the_service_answering(model_store):
    settings = {"CATDOG_WORKERS": "1", "CATDOG_MAX_IN_FLIGHT_BYTES": str(BUDGET)}
    with serving(model_store, **settings) as service:
        pid = service.server.process.pid
        assert post(service.url, PHOTO.read_bytes()).status_code == 200
        baseline = tree_rss(pid)
        peak, sampling = [baseline], threading.Event()

        def sample():
            while not sampling.is_set():
                peak[0] = max(peak[0], tree_rss(pid))
                time.sleep(0.02)

        sampler = threading.Thread(target=sample)
        body = large_upload()
        headers = {"Content-Type": "multipart/form-data; boundary=b"}

        async def burst():
            limits = httpx.Limits(max_connections=CONCURRENT)
            async with httpx.AsyncClient(timeout=120, limits=limits) as client:
                return await asyncio.gather(
                    *(
                        client.post(f"{service.url}/classify", content=body, headers=headers)
                        for _ in range(CONCURRENT)
                    )
                )

        sampler.start()
        try:
            responses = asyncio.run(burst())
        finally:
            sampling.set()
            sampler.join()
        growth = peak[0] - baseline
        print(f"RSS baseline {baseline / MiB:.0f} MiB, peak growth {growth / MiB:.0f} MiB")
        statuses = [r.status_code for r in responses]
        assert set(statuses) == {200, 503}, statuses  # the limit engaged, and work went on
        for response in responses:
            if response.status_code == 503:
                assert "CATDOG_MAX_IN_FLIGHT_BYTES" in response.json()["detail"]
        assert growth < RSS_BOUND, f"RSS grew {growth / MiB:.0f} MiB (bound {RSS_BOUND / MiB:.0f})"
        assert post(service.url, PHOTO.read_bytes()).status_code == 200
        assert httpx.get(f"{service.url}/readyz", timeout=10).status_code == 200
