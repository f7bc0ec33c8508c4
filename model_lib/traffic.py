"""Simulated user traffic, optionally shifted, to watch drift being detected."""

from __future__ import annotations

import io
from collections import Counter
from pathlib import Path

from PIL import Image, ImageEnhance, ImageFilter

from model_lib.client import classify_all

SHIFTS = ("none", "darker", "blurred", "grayscale", "resized")


def apply_shift(payload: bytes, shift: str) -> bytes:
    """Re-encode a photo with a simulated shift in what users upload."""
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
    photos = [
        (f"traffic-{i}.jpg", apply_shift(paths[i % len(paths)].read_bytes(), shift))
        for i in range(count)
    ]
    answers = classify_all(url, photos, source, concurrency, timeout)
    return dict(Counter(answer.status for answer in answers))
