"""Reading the one photo of a multipart/form-data request, with bounded memory.

Starlette's `request.form()` is not used: it has no size limit for files
(they spool to temporary files on disk past 1 MB), decodes fields without a
filename as text, and reports every problem as one generic exception, where
this service answers each bad upload with its own status and reason. The
parser is python-multipart's streaming `MultipartParser`, which Starlette uses
underneath.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header

from bento.errors import RequestError

IMAGE_FIELD = "image"
# Room for the multipart framing (boundaries, part headers, small extra fields).
FORM_OVERHEAD_BYTES = 64 * 1024
MAX_FORM_PARTS = 16
CURL_HINT = f"e.g. curl -F {IMAGE_FIELD}=@photo.jpg .../classify"

Receive = Callable[[], Awaitable[dict]]


def too_large(size_text: str, limit: int) -> RequestError:
    return RequestError(
        413,
        "too_large",
        f"{size_text}; uploads are limited to {limit} bytes (CATDOG_MAX_UPLOAD_BYTES)",
    )


def empty_body() -> RequestError:
    return RequestError(
        400,
        "empty_body",
        f"the request has no body: send the photo as multipart field '{IMAGE_FIELD}' ({CURL_HINT})",
    )


def body_limit(max_upload: int) -> int:
    return max_upload + FORM_OVERHEAD_BYTES


@dataclass(frozen=True)
class FormHeaders:
    boundary: bytes
    content_length: int | None  # None: a chunked body of unknown size
    body_limit: int  # the most bytes the body may have


def check_headers(headers: Mapping[str, str], max_upload: int) -> FormHeaders:
    """Everything that can be refused before the body is read (lower-case header names)."""
    declared = headers.get("content-length")
    if declared is not None and not declared.isdigit():
        raise RequestError(400, "bad_request", f"invalid Content-Length {declared!r}")
    # HTTP/1.1: without Content-Length or Transfer-Encoding a request has no body.
    if (declared is None and "transfer-encoding" not in headers) or declared == "0":
        raise empty_body()
    content_type, params = parse_options_header(headers.get("content-type", ""))
    content_type = content_type.decode("latin-1").lower()
    if content_type != "multipart/form-data":
        raise RequestError(
            415,
            "unsupported_media_type",
            f"Content-Type is {content_type or 'missing'!r}; send the photo as "
            f"multipart/form-data with the file in field '{IMAGE_FIELD}' ({CURL_HINT})",
        )
    boundary = params.get(b"boundary")
    if not boundary:
        raise RequestError(400, "malformed_multipart", "multipart/form-data without a boundary")
    limit = body_limit(max_upload)
    length = int(declared) if declared is not None else None
    if length is not None and length > limit:
        raise too_large(f"the request body is {length} bytes", max_upload)
    return FormHeaders(boundary, length, limit)


def upload_timeout(seconds: float, received: int) -> RequestError:
    return RequestError(
        408,
        "upload_timeout",
        f"the upload did not arrive within {seconds:g} s ({received} bytes received; "
        "CATDOG_UPLOAD_TIMEOUT_SECONDS): send it again over a faster connection",
        {"Connection": "close"},
    )


class Body:
    """The request body as chunks, straight from ASGI `receive`, with a byte count.

    The whole body must arrive within `timeout` seconds of the Body's creation (when
    the headers are in): else RequestError 408, so that a client trickling its body
    cannot hold its share of the in-flight byte budget for long."""

    def __init__(self, receive: Receive, timeout: float | None = None):
        self._receive = receive
        self.received = 0
        self.finished = False
        self.timeout = timeout
        self._deadline = None if timeout is None else time.monotonic() + timeout

    async def _next(self) -> dict:
        if self._deadline is None:
            return await self._receive()
        try:
            return await asyncio.wait_for(self._receive(), self._deadline - time.monotonic())
        except TimeoutError:
            raise upload_timeout(self.timeout, self.received) from None

    async def chunks(self):
        while not self.finished:
            message = await self._next()
            if message["type"] == "http.disconnect":
                raise RequestError(400, "client_disconnected", "the client went away mid-upload")
            chunk = message.get("body", b"")
            self.finished = not message.get("more_body", False)
            self.received += len(chunk)
            if chunk:
                yield chunk

    async def drain(self, budget: int) -> None:
        """Read and discard up to `budget` more bytes, so that a client still sending
        its body reads our answer rather than a reset connection. A bigger body is
        not read: the server closes the connection after answering; nor is a body that
        stops arriving (the upload deadline) or a client that went away."""
        try:
            async for chunk in self.chunks():
                budget -= len(chunk)
                if budget <= 0:
                    return
        except RequestError:
            return


class _Form:
    """python-multipart callbacks collecting the parts (headers and data)."""

    def __init__(self, max_upload: int):
        self.max_upload = max_upload
        self.parts: list[tuple[dict[bytes, bytes], bytearray]] = []
        self.finished = False
        self._field, self._value = bytearray(), bytearray()

    def callbacks(self) -> dict:
        return {
            "on_part_begin": self.on_part_begin,
            "on_header_field": lambda data, start, end: self._field.extend(data[start:end]),
            "on_header_value": lambda data, start, end: self._value.extend(data[start:end]),
            "on_header_end": self.on_header_end,
            "on_part_data": self.on_part_data,
            "on_end": self.on_end,
        }

    def on_part_begin(self) -> None:
        self.parts.append(({}, bytearray()))
        if len(self.parts) > MAX_FORM_PARTS:
            raise RequestError(
                400, "too_many_parts", f"the form has more than {MAX_FORM_PARTS} parts"
            )

    def on_header_end(self) -> None:
        self.parts[-1][0][bytes(self._field).lower()] = bytes(self._value)
        self._field.clear()
        self._value.clear()

    def on_part_data(self, data, start, end) -> None:
        content = self.parts[-1][1]
        content.extend(data[start:end])
        if len(content) > self.max_upload:
            raise too_large(
                f"the file in the form is over {self.max_upload} bytes", self.max_upload
            )

    def on_end(self) -> None:
        self.finished = True

    def image(self) -> bytearray:
        names, files, images = [], 0, []
        for headers, content in self.parts:
            _, disposition = parse_options_header(headers.get(b"content-disposition", b""))
            name = disposition.get(b"name", b"").decode("utf-8", "replace")
            names.append(name)
            files += b"filename" in disposition
            if name == IMAGE_FIELD:
                images.append(content)
        if files > 1:
            raise RequestError(
                400, "too_many_files", f"send one image per request; the form holds {files} files"
            )
        if not images:
            raise RequestError(
                400,
                "missing_field",
                f"the form has no field '{IMAGE_FIELD}' (fields: {names}); {CURL_HINT}",
            )
        if len(images) > 1:
            raise RequestError(
                400, "too_many_files", f"the form has {len(images)} '{IMAGE_FIELD}' fields"
            )
        return images[0]


async def read_image(form_headers: FormHeaders, body: Body, max_upload: int) -> bytearray:
    """The bytes of field `image`; RequestError with the precise reason otherwise."""
    form = _Form(max_upload)
    parser = MultipartParser(form_headers.boundary, form.callbacks())
    try:
        async for chunk in body.chunks():
            if body.received > form_headers.body_limit:  # a chunked body has no Content-Length
                raise too_large(
                    f"the request body is over {form_headers.body_limit} bytes", max_upload
                )
            parser.write(chunk)
        parser.finalize()
    except MultipartParseError as exc:
        raise RequestError(
            400, "malformed_multipart", f"the multipart body is malformed ({exc})"
        ) from None
    if body.received == 0:
        raise empty_body()
    if not form.finished:
        raise RequestError(
            400, "malformed_multipart", "the multipart body ended before its closing boundary"
        )
    return form.image()
