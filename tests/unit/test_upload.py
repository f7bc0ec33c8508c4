"""The upload parser's whole 4xx matrix, fed by an ASGI `receive` stub (no server)."""

from __future__ import annotations

import asyncio
import time

import pytest

from bento.errors import RequestError
from bento.upload import FORM_OVERHEAD_BYTES, MAX_FORM_PARTS, Body, check_headers, read_image
from tests.images import BOUNDARY, multipart_body

MULTIPART = f"multipart/form-data; boundary={BOUNDARY}"
MAX_UPLOAD = 1000
PHOTO = bytes(range(256)) * 3  # any bytes: the parser never looks inside the file


class Receiver:
    """ASGI `receive`: the body in `chunk`-byte messages, then (optionally) a disconnect."""

    def __init__(self, body: bytes, chunk: int = 7, disconnect_at: int | None = None):
        self.messages = []
        end = len(body) if disconnect_at is None else disconnect_at
        for start in range(0, end, chunk):
            piece = body[start : min(start + chunk, end)]
            last = start + chunk >= end and disconnect_at is None
            self.messages.append({"type": "http.request", "body": piece, "more_body": not last})
        if disconnect_at is not None:
            self.messages.append({"type": "http.disconnect"})
        if not self.messages:
            self.messages.append({"type": "http.request", "body": b"", "more_body": False})
        self.calls = 0

    async def __call__(self) -> dict:
        self.calls += 1
        return self.messages.pop(0)


def upload(body: bytes, content_type=MULTIPART, chunked=False, **receiver) -> bytes:
    headers = {"content-type": content_type}
    headers |= {"transfer-encoding": "chunked"} if chunked else {"content-length": str(len(body))}
    return asyncio.run(parse(headers, Receiver(body, **receiver)))


async def parse(headers: dict, receive: Receiver) -> bytes:
    form_headers = check_headers(headers, MAX_UPLOAD)
    return bytes(await read_image(form_headers, Body(receive), MAX_UPLOAD))


def refused(call) -> tuple[int, str]:
    with pytest.raises(RequestError) as caught:
        call()
    assert len(caught.value.detail) > 10  # says what is wrong
    return caught.value.status, caught.value.reason


@pytest.mark.parametrize("chunk", [1, 7, 4096])
@pytest.mark.parametrize("chunked", [False, True])
def test_the_image_comes_back_byte_for_byte(chunk, chunked):
    body = multipart_body(("note", None, b"hello"), ("image", "cat.jpg", PHOTO))
    assert upload(body, chunk=chunk, chunked=chunked) == PHOTO


def test_an_image_field_without_filename_is_accepted():
    assert upload(multipart_body(("image", None, PHOTO))) == PHOTO


@pytest.mark.parametrize(
    "headers, reason, status",
    [
        ({"content-length": "12x", "content-type": MULTIPART}, "bad_request", 400),
        ({"content-type": MULTIPART}, "empty_body", 400),  # neither length nor chunked
        ({"content-length": "0", "content-type": MULTIPART}, "empty_body", 400),
        (
            {"content-length": "5", "content-type": "application/json"},
            "unsupported_media_type",
            415,
        ),
        ({"content-length": "5", "content-type": "text/plain"}, "unsupported_media_type", 415),
        ({"content-length": "5"}, "unsupported_media_type", 415),
        (
            {"content-length": "5", "content-type": "multipart/form-data"},
            "malformed_multipart",
            400,
        ),
        (
            {
                "content-length": str(MAX_UPLOAD + FORM_OVERHEAD_BYTES + 1),
                "content-type": MULTIPART,
            },
            "too_large",
            413,
        ),
    ],
)
def test_refused_from_the_headers_before_any_body_is_read(headers, reason, status):
    receive = Receiver(b"x" * 10)
    assert refused(lambda: asyncio.run(parse(headers, receive))) == (status, reason)
    assert receive.calls == 0


def test_content_length_at_the_limit_is_not_refused_from_the_headers():
    headers = {"content-length": str(MAX_UPLOAD + FORM_OVERHEAD_BYTES), "content-type": MULTIPART}
    assert check_headers(headers, MAX_UPLOAD).content_length == MAX_UPLOAD + FORM_OVERHEAD_BYTES


@pytest.mark.parametrize(
    "body, reason, status",
    [
        (multipart_body(("image", "big.jpg", b"x" * (MAX_UPLOAD + 1))), "too_large", 413),
        (multipart_body(("photo", "cat.jpg", PHOTO)), "missing_field", 400),
        (
            multipart_body(("image", "a.jpg", PHOTO), ("image2", "b.jpg", PHOTO)),
            "too_many_files",
            400,
        ),
        (multipart_body(("image", None, PHOTO), ("image", None, PHOTO)), "too_many_files", 400),
        (
            multipart_body(*[(f"f{i}", None, b"v") for i in range(MAX_FORM_PARTS + 1)]),
            "too_many_parts",
            400,
        ),
        (multipart_body(("image", "a.jpg", PHOTO))[:-30], "malformed_multipart", 400),
        (b"this is not multipart at all", "malformed_multipart", 400),
    ],
    ids=[
        "file_over_limit",
        "missing_field",
        "two_files",
        "two_image_fields",
        "too_many_parts",
        "unterminated",
        "garbage",
    ],
)
def test_refused_while_reading_the_body(body, reason, status):
    assert refused(lambda: upload(body)) == (status, reason)


def test_a_chunked_body_over_the_limit_is_refused_while_it_streams():
    body = multipart_body(("image", "big.jpg", b"x" * (MAX_UPLOAD + FORM_OVERHEAD_BYTES)))
    receive = Receiver(body, chunk=4096)
    headers = {"content-type": MULTIPART, "transfer-encoding": "chunked"}
    assert refused(lambda: asyncio.run(parse(headers, receive))) == (413, "too_large")
    assert receive.messages  # stopped before the end of the body


def test_an_empty_chunked_body_is_an_empty_body():
    assert refused(lambda: upload(b"", chunked=True)) == (400, "empty_body")


def test_a_client_that_disconnects_mid_upload():
    body = multipart_body(("image", "cat.jpg", PHOTO))
    assert refused(lambda: upload(body, disconnect_at=len(body) // 2)) == (
        400,
        "client_disconnected",
    )


def test_drain_reads_up_to_its_budget_and_no_more():
    receive = Receiver(b"x" * 100, chunk=10)
    body = Body(receive)
    asyncio.run(body.drain(35))
    assert body.received == 40 and not body.finished
    asyncio.run(body.drain(1000))
    assert body.received == 100 and body.finished


class Trickle:
    """ASGI `receive` of a client that sends a chunk and then nothing more."""

    def __init__(self, first: bytes):
        self.first = first

    async def __call__(self) -> dict:
        if self.first:
            chunk, self.first = self.first, b""
            return {"type": "http.request", "body": chunk, "more_body": True}
        await asyncio.sleep(3600)
        raise AssertionError("unreachable")


def test_a_body_that_stops_arriving_is_a_408_at_the_deadline():
    body = multipart_body(("image", "cat.jpg", PHOTO))
    headers = {"content-type": MULTIPART, "content-length": str(len(body))}

    async def scenario():
        form_headers = check_headers(headers, MAX_UPLOAD)
        return await read_image(form_headers, Body(Trickle(body[:50]), timeout=0.2), MAX_UPLOAD)

    started = time.monotonic()
    with pytest.raises(RequestError) as caught:
        asyncio.run(scenario())
    assert time.monotonic() - started < 2
    error = caught.value
    assert (error.status, error.reason) == (408, "upload_timeout")
    assert "50 bytes received" in error.detail and "CATDOG_UPLOAD_TIMEOUT_SECONDS" in error.detail
    assert error.headers == {"Connection": "close"}


def test_draining_a_body_that_stops_arriving_gives_up_quietly():
    async def scenario():
        await Body(Trickle(b"x" * 10), timeout=0.1).drain(10_000)

    asyncio.run(scenario())  # no exception
