"""Tiny generated images and request bodies for tests (no data download needed)."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image


def image_bytes(color=(200, 80, 40), size=(32, 32), fmt="JPEG", mode="RGB", **save) -> bytes:
    image = Image.new(mode, size, color)
    buffer = io.BytesIO()
    image.save(buffer, fmt, **save)
    return buffer.getvalue()


def noise_image(seed: int, size=(32, 32), brightness: float = 1.0) -> Image.Image:
    rng = np.random.default_rng(seed)
    pixels = np.clip(rng.integers(0, 256, (size[1], size[0], 3)) * brightness, 0, 255)
    return Image.fromarray(pixels.astype(np.uint8), "RGB")


def write_dataset(root, per_class: int = 12, classes=("cat", "dog"), size=(40, 40)):
    """`root/<class>/<class>.<i>.jpg`, each class a distinct colour with noise."""
    for label, name in enumerate(classes):
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for index in range(per_class):
            rng = np.random.default_rng(label * 1000 + index)
            base = np.array([220, 60, 60]) if label == 0 else np.array([60, 60, 220])
            pixels = np.clip(base + rng.normal(0, 25, (size[1], size[0], 3)), 0, 255)
            Image.fromarray(pixels.astype(np.uint8)).save(folder / f"{name}.{index}.jpg", "JPEG")
    return root


def write_outliers(
    root, per_kind: int = 4, kinds=tuple(f"kind{i}" for i in range(12)), size=(40, 40)
):
    """`root/objects/<kind>/<kind>.<i>.jpg`: photos that are neither, green with noise
    (a colour neither pet class has), one folder per kind as in other_images/. The
    default kinds put 2 kinds in the test split and 4 in validation (split by kind)."""
    for number, kind in enumerate(kinds):
        folder = root / "objects" / kind
        folder.mkdir(parents=True, exist_ok=True)
        for index in range(per_kind):
            rng = np.random.default_rng(7000 + number * 100 + index)
            pixels = np.clip([60, 200, 60] + rng.normal(0, 25, (size[1], size[0], 3)), 0, 255)
            Image.fromarray(pixels.astype(np.uint8)).save(folder / f"{kind}.{index}.jpg", "JPEG")
    return root


BOUNDARY = "testboundary42"


def multipart_body(*parts: tuple[str, str | None, bytes], boundary: str = BOUNDARY) -> bytes:
    """(field name, filename or None, content) parts -> a multipart/form-data body."""
    out = b""
    for name, filename, content in parts:
        disposition = f'form-data; name="{name}"'
        if filename is not None:
            disposition += f'; filename="{filename}"'
        out += f"--{boundary}\r\nContent-Disposition: {disposition}\r\n\r\n".encode()
        out += content + b"\r\n"
    return out + f"--{boundary}--\r\n".encode()
