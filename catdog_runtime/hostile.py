"""Hostile uploads, written once for the memory tests and the soak benchmark.

- `decompression_tricks()`: flat PNGs, small on the wire and huge once decoded;
- `trickle()`: a client that declares a large body and sends it 1 KB a second;
- `huge_upload()`: a body over the service's byte limit.
"""

from __future__ import annotations

import io
import select
import socket
import time

from PIL import Image

from model_lib.settings import MiB

# Names ending in this are over the default pixel limit: refused from the header (413).
OVER_PIXEL_LIMIT = "-6300"


def png(mode: str, side: int, color) -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, (side, side), color).save(buffer, "PNG")
    return buffer.getvalue()


def decompression_tricks() -> dict[str, bytes]:
    """Flat PNGs: 90-170 KB uploads that decode to 80-160 MB (6300x6300, over the
    pixel limit) or 32-64 MB (4000x4000, just under it, so they do decode)."""
    return {
        "rgb-6300": png("RGB", 6300, (90, 120, 30)),
        "rgba-6300": png("RGBA", 6300, (90, 120, 30, 100)),
        "gray16-6300": png("I;16", 6300, 40000),
        "rgb-4000": png("RGB", 4000, (90, 120, 30)),
        "rgba-4000": png("RGBA", 4000, (90, 120, 30, 100)),
        "gray16-4000": png("I;16", 4000, 40000),
    }


def huge_upload(limit: int) -> bytes:
    """A JPEG-looking body 1 MiB over `limit` (CATDOG_MAX_UPLOAD_BYTES): never decoded."""
    return b"\xff\xd8\xff\xe0" + b"\0" * (limit + MiB)


def trickle(url: str, declared: int, seconds: float) -> tuple[float, bytes]:
    """A client that declares `declared` bytes of body and sends 1 KB a second until
    the server answers (or `seconds` + 30 s pass); (seconds taken, raw answer)."""
    host, port = url.removeprefix("http://").rstrip("/").split(":")
    started = time.monotonic()
    with socket.create_connection((host, int(port)), timeout=seconds + 30) as sock:
        sock.sendall(
            b"POST /classify HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; "
            b"boundary=b\r\nContent-Length: " + str(declared).encode() + b"\r\n\r\n"
            b'--b\r\nContent-Disposition: form-data; name="image"; filename="a.jpg"\r\n\r\n'
        )
        # Read before sending more: data sent to a socket the server closed draws a
        # reset, which discards an answer not yet read.
        answer = b""
        while time.monotonic() - started < seconds + 30:
            readable, _, _ = select.select([sock], [], [], 1.0)
            if not readable:
                sock.sendall(b"x" * 1024)
                continue
            chunk = sock.recv(65536)
            if not chunk:
                break
            answer += chunk
        return time.monotonic() - started, answer


def status_of(answer: bytes) -> int | None:
    """The status code of a raw HTTP answer, None when there was none."""
    parts = answer.split(b" ", 2)
    if len(parts) >= 2 and parts[0].startswith(b"HTTP/") and parts[1].isdigit():
        return int(parts[1])
    return None
