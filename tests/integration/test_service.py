"""The BentoML service through a real `bentoml serve`, with a trained model in a temp store.

Every answer is checked against model_lib run directly on the same bytes
(decode_image -> to_model_input -> OnnxClassifier): the service restates no
preprocessing, so the probabilities must agree to 1e-5.
"""

from __future__ import annotations

import asyncio
import functools
import io
import json
import re
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from catdog_runtime.processes import BIN, ROOT, run
from catdog_runtime.waits import poll
from model_lib.client import metric_samples, metric_total
from model_lib.image_stats import STAT_COLUMNS
from model_lib.inference_log import InferenceLog
from model_lib.monitoring import inference_frame
from model_lib.onnx_model import OnnxClassifier
from model_lib.preprocess import decode_image, to_model_input
from tests.conftest import TEST_IMAGES, unseen_kind_photos
from tests.images import multipart_body
from tests.integration.service_runner import MLFLOW_VERSION, save_to_store, serving, store_env

TEN_MB = 10 * 1024 * 1024


@pytest.fixture(scope="module")
def served(model_onnx, tmp_path_factory):
    """`bentoml serve` from the project root, the model saved into a temp store by packaging."""
    state = tmp_path_factory.mktemp("service")
    model_tag = save_to_store(model_onnx, state)
    with serving(state) as service:
        yield {
            "url": service.url,
            "server": service.server,
            "log": state / "inference_log.sqlite",
            "env": service.env,
            "model_tag": model_tag,
        }


@pytest.fixture(scope="module")
def url(served) -> str:
    return served["url"]


@pytest.fixture(scope="module")
def reference(model_onnx):
    return OnnxClassifier(model_onnx)


def expected_probs(reference: OnnxClassifier, payload: bytes) -> np.ndarray:
    image = decode_image(payload)
    return reference.predict_proba(to_model_input(image, reference.preprocessing)[None])[0]


def expected_label(reference: OnnxClassifier, payload: bytes) -> str:
    """The answer model_lib's decision rule gives for these bytes: cat, dog or neither."""
    probs = expected_probs(reference, payload)
    return reference.class_names[int(reference.decision.labels(probs[None])[0])]


def assert_same_answer(reference: OnnxClassifier, payload: bytes, body: dict) -> None:
    """The service's figures are model_lib's on the same bytes (1e-5)."""
    probs = expected_probs(reference, payload)
    pets = reference.decision.pets
    served = np.array([body["probabilities"][n] for n in pets])
    np.testing.assert_allclose(served, probs[reference.decision.pet_columns], atol=1e-5)
    assert body["pet_score"] == pytest.approx(
        reference.decision.pet_score(probs[None])[0], abs=1e-5
    )


def photos(label: str) -> list[Path]:
    return sorted((TEST_IMAGES / label).glob("*.jpg"))


def post_image(url: str, payload: bytes, name="photo.jpg", mime="image/jpeg", headers=None):
    return httpx.post(
        f"{url}/classify",
        files={"image": (name, payload, mime)},
        headers=headers or {},
        timeout=30,
    )


def encode(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


# ---------------------------------------------------------------- good requests
def test_clear_photos_get_the_right_label(url, reference):
    """Cats and dogs the model under test gets right through model_lib, through the service."""
    checked = {}
    for label in ("cat", "dog"):
        right = []
        for path in photos(label):
            probs = expected_probs(reference, path.read_bytes())
            best = expected_label(reference, path.read_bytes())
            if best == label and probs.max() >= 0.55:
                right.append(path)
        assert len(right) >= 3, f"the model under test gets only {len(right)} clear {label}s right"
        checked[label] = right[:4]
    for label, paths in checked.items():
        for path in paths:
            response = post_image(url, path.read_bytes(), path.name)
            assert response.status_code == 200, response.text
            assert response.json()["label"] == label, (path.name, response.json())


def test_response_body_and_request_id(url, reference):
    payload = photos("dog")[0].read_bytes()
    response = post_image(url, payload)
    assert response.status_code == 200
    body = response.json()
    assert set(body) == {
        "label",
        "confidence",
        "probabilities",
        "pet_score",
        "threshold",
        "model",
        "latency_ms",
    }
    assert set(body["probabilities"]) == {"cat", "dog"}  # the pets; `neither` is the rest
    assert sum(body["probabilities"].values()) == pytest.approx(body["pet_score"], abs=1e-5)
    assert body["threshold"] == pytest.approx(reference.decision.threshold)
    assert body["label"] == expected_label(reference, payload)
    if body["label"] == "neither":
        assert body["confidence"] == pytest.approx(1 - body["pet_score"], abs=1e-5)
    else:
        assert body["confidence"] == max(body["probabilities"].values())
        assert body["label"] == max(body["probabilities"], key=body["probabilities"].get)
    assert body["model"] == {
        "name": "catdog-classifier",
        "version": MLFLOW_VERSION,
        "precision": "float32",
    }
    assert 0 < body["latency_ms"] < 30_000
    assert re.fullmatch(r"[0-9a-f]{32}", response.headers["x-request-id"])
    echoed = post_image(url, payload, headers={"X-Request-ID": "client-id-123"})
    assert echoed.headers["x-request-id"] == "client-id-123"


def test_service_probabilities_equal_model_lib_on_the_same_bytes(url, reference):
    """Preprocessing parity: the service restates nothing."""
    for path in photos("cat")[:6] + photos("dog")[:6]:
        payload = path.read_bytes()
        body = post_image(url, payload, path.name).json()
        assert_same_answer(reference, payload, body)
        assert body["label"] == expected_label(reference, payload)


def _odd_uploads() -> dict[str, tuple[bytes, str]]:
    photo = Image.open(photos("cat")[1]).convert("RGB")
    gray16 = np.asarray(photo.convert("L"), dtype=np.uint16) * 257
    rgba = photo.convert("RGBA")
    rgba.putalpha(Image.linear_gradient("L").resize(photo.size))
    frames = [photo, photo.transpose(Image.Transpose.ROTATE_90)]
    return {
        "cmyk.jpg": (encode(photo.convert("CMYK"), "JPEG"), "image/jpeg"),
        "gray.jpg": (encode(photo.convert("L"), "JPEG"), "image/jpeg"),
        "gray16.png": (encode(Image.fromarray(gray16), "PNG"), "image/png"),
        "palette.png": (encode(photo.convert("P"), "PNG"), "image/png"),
        "rgba.png": (encode(rgba, "PNG"), "image/png"),
        "animated.gif": (
            encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100),
            "image/gif",
        ),
        "photo.webp": (encode(photo, "WEBP"), "image/webp"),
        "photo.bmp": (encode(photo, "BMP"), "image/bmp"),
    }


ODD_UPLOADS = (
    "animated.gif",
    "cmyk.jpg",
    "gray.jpg",
    "gray16.png",
    "palette.png",
    "photo.bmp",
    "photo.webp",
    "rgba.png",
)


def test_odd_upload_cases_are_all_listed():
    assert sorted(_odd_uploads()) == sorted(ODD_UPLOADS)


@pytest.mark.parametrize("name", ODD_UPLOADS)
def test_odd_modes_and_formats_are_classified(url, reference, name):
    payload, mime = _odd_uploads()[name]
    response = post_image(url, payload, name, mime)
    assert response.status_code == 200, response.text
    assert_same_answer(reference, payload, response.json())


def test_exif_rotated_photo_is_classified_upright(url):
    """A phone photo stored sideways with an EXIF orientation: same answer as upright."""
    upright = Image.open(photos("dog")[2]).convert("RGB").crop((0, 20, 200, 170))  # not square
    sideways = upright.transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation 6: display after rotating 90 degrees clockwise
    rotated_png = encode(sideways, "PNG", exif=exif)  # lossless, so the pixels compare exactly
    assert np.array_equal(np.asarray(decode_image(rotated_png)), np.asarray(upright))
    straight = post_image(url, encode(upright, "PNG"), "up.png", "image/png").json()
    turned = post_image(url, rotated_png, "side.png", "image/png").json()
    for label, p in straight["probabilities"].items():
        assert turned["probabilities"][label] == pytest.approx(p, abs=1e-5)
    rotated_jpeg = encode(sideways, "JPEG", exif=exif, quality=95)
    assert post_image(url, rotated_jpeg, "side.jpg").status_code == 200


# ---------------------------------------------------------------- neither
@pytest.fixture(scope="module")
def refused(reference) -> list[Path]:
    """Unseen-kind photos that model_lib answers `neither` with the model under test."""
    assert reference.class_names == ("cat", "dog", "neither")
    paths = unseen_kind_photos()
    sample = paths[:: max(1, len(paths) // 60)]  # about 60, spread over the kinds
    found = [p for p in sample if expected_label(reference, p.read_bytes()) == "neither"]
    assert len(found) >= 5, f"the model under test refuses only {len(found)} of {len(sample)}"
    return found[:5]


def test_a_photo_of_something_else_is_answered_neither(served, reference, refused):
    """Counted under label="neither" and logged as such: never a cat or dog by default."""
    url = served["url"]
    before = metric_samples(url)
    for i, path in enumerate(refused):
        payload = path.read_bytes()
        response = post_image(url, payload, path.name, headers={"X-Request-ID": f"neither-{i}"})
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["label"] == "neither", (path, body)
        assert body["pet_score"] < body["threshold"] == pytest.approx(reference.decision.threshold)
        assert body["confidence"] == pytest.approx(1 - body["pet_score"], abs=1e-5)
        assert_same_answer(reference, payload, body)
    after = metric_samples(url)
    counted = metric_total(after, "catdog_predictions_total", label="neither")
    assert counted - metric_total(before, "catdog_predictions_total", label="neither") == 5
    log = InferenceLog(served["log"])

    def logged():
        frame = inference_frame(log)
        return frame[frame["request_id"].str.startswith("neither-")].to_dict("records")

    rows = poll(logged, lambda rows: len(rows) >= 5, 20, interval=0.2)
    assert [r["label"] for r in rows] == ["neither"] * 5


def test_the_threshold_setting_overrides_the_model_s(model_store, reference, refused):
    """CATDOG_NEITHER_THRESHOLD=0: never `neither`; the answer says which threshold held."""
    with serving(model_store, CATDOG_NEITHER_THRESHOLD="0") as service:
        for path in refused[:2]:
            body = post_image(service.url, path.read_bytes()).json()
            assert body["label"] in ("cat", "dog") and body["threshold"] == 0.0
            assert body["confidence"] == max(body["probabilities"].values())
            assert_same_answer(reference, path.read_bytes(), body)


# ---------------------------------------------------------------- bad requests
@functools.cache
def _bomb_png() -> bytes:
    return encode(Image.new("L", (8000, 6000)), "PNG")  # 48 MP in ~50 kB


def _chunked_oversize():
    boundary = "chunkedboundary"
    disposition = 'Content-Disposition: form-data; name="image"; filename="x.jpg"'
    yield f"--{boundary}\r\n{disposition}\r\n\r\n".encode()
    block = b"\xff" * (1024 * 1024)
    for _ in range(11):
        yield block
    yield f"\r\n--{boundary}--\r\n".encode()


def bad_requests() -> dict[str, tuple[dict, int, str]]:
    """name -> (httpx.post kwargs, expected status, expected error reason)."""
    jpeg = photos("cat")[0].read_bytes()
    mp = "multipart/form-data; boundary=testboundary42"
    return {
        "not_an_image": (
            {"files": {"image": ("notes.jpg", b"just some text, not a photo", "image/jpeg")}},
            415,
            "not_an_image",
        ),
        "truncated_jpeg": (
            {"files": {"image": ("cut.jpg", jpeg[: len(jpeg) // 2], "image/jpeg")}},
            422,
            "corrupt",
        ),
        "empty_file": ({"files": {"image": ("empty.jpg", b"", "image/jpeg")}}, 400, "empty"),
        "empty_body": ({}, 400, "empty_body"),
        "missing_image_field": (
            {"files": {"photo": ("cat.jpg", jpeg, "image/jpeg")}},
            400,
            "missing_field",
        ),
        "json_body": ({"json": {"image": "cat.jpg"}}, 415, "unsupported_media_type"),
        "text_body": (
            {"content": b"cat.jpg", "headers": {"Content-Type": "text/plain"}},
            415,
            "unsupported_media_type",
        ),
        "two_files": (
            {
                "files": [
                    ("image", ("a.jpg", jpeg, "image/jpeg")),
                    ("image2", ("b.jpg", jpeg, "image/jpeg")),
                ]
            },
            400,
            "too_many_files",
        ),
        "two_image_fields": (
            {
                "content": multipart_body(("image", None, jpeg), ("image", None, jpeg)),
                "headers": {"Content-Type": mp},
            },
            400,
            "too_many_files",
        ),
        "over_10_mb": (
            {"files": {"image": ("big.jpg", b"\xff" * (TEN_MB + 1), "image/jpeg")}},
            413,
            "too_large",
        ),
        "over_10_mb_chunked": (
            {
                "content": _chunked_oversize(),
                "headers": {"Content-Type": "multipart/form-data; boundary=chunkedboundary"},
            },
            413,
            "too_large",
        ),
        "decompression_bomb": (
            {"files": {"image": ("bomb.png", _bomb_png(), "image/png")}},
            413,
            "too_many_pixels",
        ),
        "tiff": (
            {
                "files": {
                    "image": ("x.tif", encode(Image.new("RGB", (20, 20)), "TIFF"), "image/tiff")
                }
            },
            415,
            "unsupported_format",
        ),
        "no_boundary": (
            {"content": b"abc", "headers": {"Content-Type": "multipart/form-data"}},
            400,
            "malformed_multipart",
        ),
        "unterminated_multipart": (
            {
                "content": multipart_body(("image", "a.jpg", jpeg))[:-30],
                "headers": {"Content-Type": mp},
            },
            400,
            "malformed_multipart",
        ),
        "bad_source_header": (
            {
                "files": {"image": ("cat.jpg", jpeg, "image/jpeg")},
                "headers": {"X-Catdog-Source": "no spaces allowed!"},
            },
            400,
            "bad_source",
        ),
    }


BAD_CASES = (
    "bad_source_header",
    "decompression_bomb",
    "empty_body",
    "empty_file",
    "json_body",
    "missing_image_field",
    "no_boundary",
    "not_an_image",
    "over_10_mb",
    "over_10_mb_chunked",
    "text_body",
    "tiff",
    "truncated_jpeg",
    "two_files",
    "two_image_fields",
    "unterminated_multipart",
)


def test_bad_request_cases_are_all_listed():
    assert sorted(bad_requests()) == sorted(BAD_CASES)


@pytest.mark.parametrize("case", BAD_CASES)
def test_bad_request_gets_its_4xx_and_a_json_error(url, case):
    kwargs, status, reason = bad_requests()[case]
    response = httpx.post(f"{url}/classify", timeout=60, **kwargs)
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert body["error"] == reason
    assert isinstance(body["detail"], str) and len(body["detail"]) > 10
    assert response.headers["x-request-id"]


def test_bad_requests_do_not_disturb_good_ones(url, reference):
    """Bad uploads interleaved with good ones from 12 threads: every good one answered right."""
    good = [(p.read_bytes(), p.name) for p in photos("cat")[:20] + photos("dog")[:20]]
    bad = bad_requests()
    bad.pop("over_10_mb_chunked")  # a generator body can be sent once only
    jobs = [("good", g) for g in good] + [("bad", b) for b in list(bad.items()) * 2]
    jobs = [jobs[i] for i in np.random.default_rng(0).permutation(len(jobs))]

    def send(job):
        kind, item = job
        if kind == "good":
            payload, name = item
            return kind, item, post_image(url, payload, name)
        _, (kwargs, _, _) = item
        return kind, item, httpx.post(f"{url}/classify", timeout=60, **kwargs)

    with ThreadPoolExecutor(12) as pool:
        results = list(pool.map(send, jobs))
    for kind, item, response in results:
        assert response.status_code < 500, response.text
        if kind == "good":
            payload, name = item
            assert response.status_code == 200, (name, response.text)
            assert response.json()["label"] == expected_label(reference, payload)
        else:
            case, (_, status, reason) = item
            assert (response.status_code, response.json()["error"]) == (status, reason), case


# ---------------------------------------------------------------- observability
def test_metrics_count_predictions_rejections_and_batches(url):
    before = metric_samples(url)
    labels = [post_image(url, p.read_bytes()).json()["label"] for p in photos("dog")[:5]]
    post_image(url, b"definitely not an image")

    async def burst():  # concurrent requests, so the micro-batcher can share model calls
        async with httpx.AsyncClient(timeout=60) as client:
            return await asyncio.gather(
                *(
                    client.post(
                        f"{url}/classify", files={"image": ("x.jpg", p.read_bytes(), "image/jpeg")}
                    )
                    for p in photos("cat")[:24]
                )
            )

    responses = asyncio.run(burst())
    assert [r.status_code for r in responses] == [200] * 24
    labels += [r.json()["label"] for r in responses]
    after = metric_samples(url)

    def delta(name, **labels_):
        return metric_total(after, name, **labels_) - metric_total(before, name, **labels_)

    for label in set(labels):
        assert delta("catdog_predictions_total", label=label) == labels.count(label)
    assert delta("catdog_rejected_requests_total", reason="not_an_image") == 1
    assert delta("catdog_confidence_count") == 29
    assert delta("catdog_preprocess_seconds_count") == 29
    # Every image goes through exactly one model call; calls hold one or more images.
    assert delta("catdog_batch_size_sum") == 29
    assert 1 <= delta("catdog_batch_size_count") <= 29
    # BentoML's own metrics are still served on the same page.
    assert any(name.startswith("bentoml_") for name, _ in after)
    for probe in ("/healthz", "/livez", "/readyz"):
        assert httpx.get(f"{url}{probe}", timeout=10).status_code == 200


def test_one_json_log_line_per_request(served):
    url = served["url"]
    ok = post_image(url, photos("cat")[3].read_bytes(), headers={"X-Request-ID": "log-ok-1"})
    bad = post_image(url, b"nope", headers={"X-Request-ID": "log-bad-1"})
    assert (ok.status_code, bad.status_code) == (200, 415)

    def logged():
        lines = served["server"].log_path.read_text(errors="replace").splitlines()
        return [json.loads(x) for x in lines if '"request_id":"log-' in x]

    mine = poll(logged, lambda found: len(found) >= 2, timeout=10, interval=0.2)
    by_id = {entry["request_id"]: entry for entry in mine}
    assert len(mine) == 2
    good = by_id["log-ok-1"]
    assert good["status"] == 200 and good["label"] == ok.json()["label"]
    assert good["confidence"] == pytest.approx(ok.json()["confidence"], abs=1e-4)
    assert good["latency_ms"] > 0 and good["source"] == "user"
    assert by_id["log-bad-1"]["status"] == 415 and by_id["log-bad-1"]["error"] == "not_an_image"
    assert all(len(json.dumps(entry)) < 1000 for entry in mine)  # never image bytes


def test_inference_log_rows_with_their_source(served):
    url = served["url"]
    user = post_image(url, photos("dog")[5].read_bytes(), headers={"X-Request-ID": "il-user"})
    evaluation = post_image(
        url,
        photos("cat")[5].read_bytes(),
        headers={"X-Request-ID": "il-eval", "X-Catdog-Source": "evaluation"},
    )
    assert user.status_code == evaluation.status_code == 200
    log = InferenceLog(served["log"])

    def logged():
        if not served["log"].exists():
            return {}
        frame = inference_frame(log, exclude_sources=())
        return {
            r["request_id"]: r for r in frame.to_dict("records") if r["request_id"][:3] == "il-"
        }

    rows = poll(logged, lambda found: len(found) >= 2, timeout=20, interval=0.2)
    assert set(rows) == {"il-user", "il-eval"}
    assert rows["il-user"]["source"] == "user" and rows["il-eval"]["source"] == "evaluation"
    for request_id, response in (("il-user", user), ("il-eval", evaluation)):
        row = rows[request_id]
        assert row["label"] == response.json()["label"]
        assert row["confidence"] == pytest.approx(response.json()["confidence"])
        assert row["model_version"] == MLFLOW_VERSION and row["model_name"] == "catdog-classifier"
        assert row["width"] == 200 and row["height"] == 200
        assert all(np.isfinite(row[c]) for c in STAT_COLUMNS)
    # The monitoring flow's default read leaves the evaluation traffic out.
    assert "il-eval" not in set(inference_frame(log)["request_id"])
    assert "il-user" in set(inference_frame(log)["request_id"])


def test_openapi_page_documents_classify(url):
    assert httpx.get(f"{url}/", timeout=10).status_code == 200
    spec = httpx.get(f"{url}/docs.json", timeout=10).json()
    operation = spec["paths"]["/classify"]["post"]
    body = operation["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert body["required"] == ["image"] and body["properties"]["image"]["format"] == "binary"
    assert {"200", "400", "413", "415", "422", "503"} <= set(operation["responses"])


def test_a_built_bento_holds_and_serves_the_model_version_it_was_built_with(model_onnx, tmp_path):
    """The model is a BentoModel class attribute: the bento packs it, and serves it even
    after a newer version became the store's latest."""
    built_with = save_to_store(model_onnx, tmp_path, version="42")
    build = [str(BIN / "bentoml"), "build", "-f", "bentofile.yaml", "--output", "tag", str(ROOT)]
    result = run(build, store_env(tmp_path), timeout=300)
    tag = [x for x in result.stdout.splitlines() if x.startswith("__tag__:")][-1][len("__tag__:") :]
    code = (
        "import sys, bentoml; "
        "print(' '.join(str(m.tag) for m in bentoml.get(sys.argv[1]).info.all_models))"
    )
    assert run([sys.executable, "-c", code, tag], store_env(tmp_path)).stdout.split() == [
        built_with
    ]
    save_to_store(model_onnx, tmp_path, version="43")  # now the store's latest
    photo = photos("cat")[0].read_bytes()
    with serving(tmp_path, target=tag) as bento:
        assert post_image(bento.url, photo).json()["model"]["version"] == "42"
    with serving(tmp_path) as latest:  # the same store, without the bento: the latest
        assert post_image(latest.url, photo).json()["model"]["version"] == "43"


# ---------------------------------------------------------------- without a model
def test_service_without_a_model_starts_unready_and_says_why(tmp_path):
    # Two workers: each finds no model; the error must still appear once.
    with serving(tmp_path, ready="/livez", CATDOG_WORKERS="2") as service:
        base, server = service.url, service.server
        assert httpx.get(f"{base}/readyz", timeout=10).status_code == 503
        response = post_image(base, photos("cat")[0].read_bytes())
        assert response.status_code == 503
        assert response.json()["error"] == "model_unavailable"
        home = tmp_path / "bentoml"
        message = f"no model 'catdog-classifier:latest' in the BentoML store at {home}"
        assert message in response.json()["detail"]
        assert "prefect deployment run package/champion" in response.json()["detail"]
        log = poll(  # both workers up (the second may start later)
            lambda: server.log_tail(400).splitlines(),
            lambda lines: sum("Service CatDogClassifier initialized" in x for x in lines) == 2,
            timeout=60,
        )
        startup_errors = [json.loads(x) for x in log if '"event":"model_missing"' in x]
        assert len(startup_errors) == 1, log  # one clear error, not a traceback per worker
        assert startup_errors[0]["level"] == "error" and message in startup_errors[0]["message"]
        assert not (tmp_path / "inference_log.sqlite").exists()
