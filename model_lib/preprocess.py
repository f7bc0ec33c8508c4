"""Image decoding and the deterministic eval preprocessing, with Pillow + NumPy only.

This is the one implementation of preprocessing: validation during training and
the BentoML service both call `to_model_input`, and its parameters
(`Preprocessing`) travel inside the exported ONNX file.
"""

from __future__ import annotations

import io
import json
from dataclasses import asdict, dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

# Formats a browser or phone produces. TIFF/PSD/etc. are refused: rarely real
# uploads, and large attack surface in their decoders.
ALLOWED_FORMATS = frozenset({"JPEG", "PNG", "GIF", "WEBP", "BMP"})
DEFAULT_MAX_PIXELS = 40_000_000  # ~ a 7000x5700 photo; larger is treated as a decompression bomb


@dataclass(frozen=True)
class Preprocessing:
    """Everything needed to turn a decoded image into model input."""

    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    class_names: tuple[str, ...]

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> Preprocessing:
        raw = json.loads(text)
        return cls(
            image_size=int(raw["image_size"]),
            mean=tuple(float(v) for v in raw["mean"]),
            std=tuple(float(v) for v in raw["std"]),
            class_names=tuple(raw["class_names"]),
        )


class ImageRejected(ValueError):
    """An upload that cannot be turned into model input.

    `status` is the HTTP status a service should answer with, `reason` a short
    machine-readable label (used as a metric label).
    """

    def __init__(self, reason: str, message: str, status: int):
        super().__init__(message)
        self.reason = reason
        self.status = status


def decode_image(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Decode uploaded bytes into an upright 8-bit RGB image, or raise ImageRejected.

    Animated images use their first frame; transparency is flattened onto white;
    EXIF orientation is applied so phone photos are upright.
    """
    try:
        return _decode(data, max_pixels)
    except ImageRejected:
        raise
    except Exception as exc:
        # A crafted file can trip an error inside a format plugin that none of the
        # cases below names: still the upload's fault (422). The cause is kept, so
        # a service can log its traceback in case it is ours.
        raise ImageRejected(
            "undecodable", f"the image could not be decoded ({type(exc).__name__}: {exc})", 422
        ) from exc


def _decode(data: bytes, max_pixels: int) -> Image.Image:
    if not data:
        raise ImageRejected("empty", "the uploaded file is empty", 400)
    try:
        image = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise ImageRejected(
            "not_an_image",
            f"the upload is not a supported image (allowed: {', '.join(sorted(ALLOWED_FORMATS))})",
            415,
        ) from None
    except Image.DecompressionBombError as exc:
        raise ImageRejected("too_many_pixels", str(exc), 413) from None
    except (OSError, SyntaxError, ValueError) as exc:  # a header Pillow recognised but cannot read
        raise ImageRejected("corrupt", f"the image could not be decoded ({exc})", 422) from None
    if image.format not in ALLOWED_FORMATS:
        raise ImageRejected(
            "unsupported_format",
            f"image format {image.format} is not accepted "
            f"(allowed: {', '.join(sorted(ALLOWED_FORMATS))})",
            415,
        )
    width, height = image.size
    # Checked from the header, before any pixel is decoded.
    if width * height > max_pixels:
        raise ImageRejected(
            "too_many_pixels",
            f"image is {width}x{height} = {width * height} pixels; the limit is {max_pixels}",
            413,
        )
    try:
        image.load()
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageRejected("corrupt", f"the image could not be decoded ({exc})", 422) from None
    try:
        image = ImageOps.exif_transpose(image)
    except Exception as exc:  # noqa: BLE001 - broken EXIF must not sink an otherwise fine photo
        raise ImageRejected("corrupt", f"the image's EXIF data is broken ({exc})", 422) from None
    return _to_rgb(image)


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        # 16-bit / 32-bit grayscale: scale to 8 bit instead of clipping to white.
        array = np.asarray(image, dtype=np.float64)
        peak = 65535.0 if array.max() > 255 else 255.0
        image = Image.fromarray(np.clip(array / peak * 255.0, 0, 255).astype(np.uint8), "L")
    if image.mode == "P":
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA"):
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, image.convert("RGBA"))
    return image.convert("RGB")


def resize(image: Image.Image, image_size: int) -> np.ndarray:
    """Resize to a square `image_size` (the photos are close to square) as uint8 HWC."""
    resized = image.resize((image_size, image_size), Image.Resampling.BILINEAR)
    return np.asarray(resized, dtype=np.uint8)


def normalize(pixels: np.ndarray, prep: Preprocessing) -> np.ndarray:
    """uint8 HWC (or NHWC) -> float32 CHW (or NCHW): (x / 255 - mean) / std.

    Computed as x * scale + shift straight into the CHW output: one pass instead
    of four whole-array ones, equal to them to 5e-7.
    """
    std = np.asarray(prep.std, np.float32)
    scale = (1.0 / (255.0 * std)).astype(np.float32)[:, None, None]
    shift = (-np.asarray(prep.mean, np.float32) / std)[:, None, None]
    channels_first = np.moveaxis(pixels, -1, -3)  # a view
    out = np.empty(channels_first.shape, np.float32)
    np.multiply(channels_first, scale, out=out)
    out += shift
    return out


def to_model_input(image: Image.Image, prep: Preprocessing) -> np.ndarray:
    """The deterministic eval transform: RGB image -> float32 (3, S, S)."""
    return normalize(resize(image, prep.image_size), prep)


def prepare(data: bytes, prep: Preprocessing, max_pixels: int = DEFAULT_MAX_PIXELS):
    """Uploaded bytes -> (RGB image, model input), or ImageRejected."""
    image = decode_image(data, max_pixels)
    return image, to_model_input(image, prep)


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=-1, keepdims=True)
