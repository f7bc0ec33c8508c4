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
# The most pixels one image may decode to (after a JPEG's reduced decoding, see
# `read_header`): a 12 MP PNG screenshot or camera frame fits, and so does a 48 MP
# phone JPEG (decoded at 1/8 scale); a 6300x6300 PNG (a "decompression trick": 100 KB
# of upload, 120-160 MB once decoded) does not. Pillow's own DecompressionBombError
# (over ~179 MP in the header) still refuses absurd JPEG headers before this.
DEFAULT_MAX_PIXELS = 16_000_000
# Bytes per pixel of Pillow's in-memory image by mode: every 8-bit mode with more
# than one band (RGB, RGBA, LA, CMYK, YCbCr...) is stored in 4 bytes a pixel.
_ONE_BYTE_MODES = frozenset({"1", "L", "P"})
_TWO_BYTE_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N"})
_STRIP_PIXELS = 1 << 20  # the 16-bit path converts 1 M pixels (8 MB as float64) at a time
# Training stores photos 8/7 larger than the model's input (256 px for 224) and takes
# random crops of the input size, a cheap zoom and shift; the eval transform keeps
# the same share of the photo (ImageNet's usual resize 256, centre crop 224).
TRAINING_CROP_PCT = 7 / 8


@dataclass(frozen=True)
class Preprocessing:
    """Everything needed to turn a decoded image into model input.

    The eval transform resizes to `resize_size` and keeps the centre `image_size`
    square (timm's `crop_pct`): training takes random `image_size` crops of photos
    stored at `resize_size`, so the centre crop shows the model a pet at the scale
    it trained on. A file exported before `crop_pct` existed resizes straight to
    `image_size` (crop_pct 1), as it was validated.
    """

    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    class_names: tuple[str, ...]
    crop_pct: float = 1.0

    def __post_init__(self):
        if not 0.5 <= self.crop_pct <= 1.0:
            raise ValueError(f"crop_pct must be within [0.5, 1], got {self.crop_pct}")

    @property
    def resize_size(self) -> int:
        """The square size a photo is resized to before the centre crop."""
        return round(self.image_size / self.crop_pct)

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
            crop_pct=float(raw.get("crop_pct", 1.0)),
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


def pixel_bytes(mode: str) -> int:
    """Bytes a pixel of `mode` takes in Pillow's memory (not on disk)."""
    if mode in _ONE_BYTE_MODES:
        return 1
    if mode in _TWO_BYTE_MODES:
        return 2
    return 4  # I, F (one 32-bit band) and every multi-band 8-bit mode (padded to 4)


def decoded_bytes(mode: str, size: tuple[int, int]) -> int:
    """Memory of an image of `mode` and `size` once decoded: width x height x pixel bytes."""
    return size[0] * size[1] * pixel_bytes(mode)


@dataclass
class Header:
    """An image opened but not decoded: what its header says it will cost.

    `image` is the opened file, already set to decode reduced when it is a large
    JPEG; `source_size` is the size the file declares, `decoded_size` what its
    decoding produces. `cost` bounds the memory `decode` needs at its peak: the
    decoded image plus one working copy of it (every path below keeps to that).
    A header is decoded once: `decode` takes the image out of it, so that nothing
    keeps the full-size image alive once a smaller copy is made.
    """

    image: Image.Image | None
    source_size: tuple[int, int]
    decoded_size: tuple[int, int]
    mode: str
    min_size: int | None

    @property
    def decoded_bytes(self) -> int:
        return decoded_bytes(self.mode, self.decoded_size)

    @property
    def cost(self) -> int:
        return 2 * self.decoded_bytes


def decode_image(
    data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS, min_size: int | None = None
) -> Image.Image:
    """Decode uploaded bytes into an upright 8-bit RGB image, or raise ImageRejected.

    Animated images use their first frame; transparency is flattened onto white;
    EXIF orientation is applied so phone photos are upright. With `min_size`, an
    image at least twice `2 * min_size` on a side is decoded reduced (see
    `read_header`) and returned smaller, but never under `2 * min_size` on a side.
    """
    return decode(read_header(data, max_pixels, min_size))


def read_header(
    data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS, min_size: int | None = None
) -> Header:
    """Open `data` without decoding a pixel; ImageRejected (4xx) when it cannot be
    or may not be decoded. With `min_size`, a JPEG is set to decode at 1/2, 1/4 or
    1/8 scale (in the decoder: far less memory and time) as long as both sides stay
    at least `2 * min_size` (twice what the model needs, as Pillow's `thumbnail`
    does, so the final resize still averages). `max_pixels` applies to the pixels
    decoded, so a 48 MP JPEG passes and a 40 MP PNG does not."""
    try:
        return _read_header(data, max_pixels, min_size)
    except ImageRejected:
        raise
    except Exception as exc:
        raise _undecodable(exc) from exc


def decode(header: Header) -> Image.Image:
    """Decode what `read_header` opened, within `header.cost` bytes at the peak."""
    image, header.image = header.image, None
    if image is None:
        raise RuntimeError("this header was decoded already")
    try:
        return _decode(image, header.min_size)
    except ImageRejected:
        raise
    except Exception as exc:
        raise _undecodable(exc) from exc


def _undecodable(exc: Exception) -> ImageRejected:
    # A crafted file can trip an error inside a format plugin that none of the
    # cases below names: still the upload's fault (422). The cause is kept, so
    # a service can log its traceback in case it is ours.
    return ImageRejected(
        "undecodable", f"the image could not be decoded ({type(exc).__name__}: {exc})", 422
    )


def _read_header(data: bytes, max_pixels: int, min_size: int | None) -> Header:
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
    source_size = image.size
    if min_size and image.format == "JPEG":
        image.draft(image.mode, (2 * min_size, 2 * min_size))  # changes size, decodes nothing
    width, height = image.size
    if width * height > max_pixels:
        source = "" if image.size == source_size else f" (decoded reduced from {source_size})"
        raise ImageRejected(
            "too_many_pixels",
            f"image is {width}x{height} = {width * height} pixels{source}; "
            f"the limit is {max_pixels} (CATDOG_MAX_PIXELS)",
            413,
        )
    return Header(image, source_size, image.size, image.mode, min_size)


def _decode(image: Image.Image, min_size: int | None) -> Image.Image:
    try:
        image.load()
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageRejected("corrupt", f"the image could not be decoded ({exc})", 422) from None
    # From here on every step works on a copy no bigger than the decoded image, and
    # drops its input: the peak is the decoded image plus one copy (Header.cost).
    if image.mode in _TWO_BYTE_MODES or image.mode in ("I", "F"):
        image = _gray_to_8_bit(image)
    if min_size:
        image = _reduce(image, 2 * min_size)
    try:
        image = ImageOps.exif_transpose(image)
    except Exception as exc:  # noqa: BLE001 - broken EXIF must not sink an otherwise fine photo
        raise ImageRejected("corrupt", f"the image's EXIF data is broken ({exc})", 422) from None
    return _to_rgb(image)


def _gray_to_8_bit(image: Image.Image) -> Image.Image:
    """16-bit / 32-bit grayscale scaled to 8 bit instead of clipped to white.

    Converted a strip at a time into an 8-bit image: never a float64 (or any) copy
    of the whole image, which for a 6300x6300 16-bit PNG was 300 MB. The arithmetic
    is unchanged (x / peak * 255, truncated)."""
    _, high = image.getextrema()
    peak = 65535.0 if high > 255 else 255.0
    gray = Image.new("L", image.size)
    rows = max(1, _STRIP_PIXELS // image.width)
    for top in range(0, image.height, rows):
        box = (0, top, image.width, min(image.height, top + rows))
        strip = np.asarray(image.crop(box), dtype=np.float64)
        gray.paste(Image.fromarray(np.clip(strip / peak * 255.0, 0, 255).astype(np.uint8)), box)
    gray.info = image.info  # keeps EXIF orientation
    return gray


def _reduce(image: Image.Image, working: int) -> Image.Image:
    """Shrink each side by the integer factor that keeps it at least `working` pixels
    (a box average; Image.reduce). Images under 2 x `working` on both sides, which
    includes every training photo, are returned unchanged."""
    factors = (max(1, image.width // working), max(1, image.height // working))
    if factors == (1, 1):
        return image
    if image.mode in ("1", "P"):
        # No box average for these modes (and a palette has no meaningful mean): the
        # nearest pixel, at 1 byte a pixel rather than a 4-byte RGBA copy first.
        size = (image.width // factors[0], image.height // factors[1])
        return image.resize(size, Image.Resampling.NEAREST)  # keeps palette and info
    reduced = image.reduce(factors)
    reduced.info = image.info
    return reduced


def _to_rgb(image: Image.Image) -> Image.Image:
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


def center_crop(pixels: np.ndarray, size: int) -> np.ndarray:
    """The centre `size` square of uint8 HWC (or NHWC) pixels (a view)."""
    top = (pixels.shape[-3] - size) // 2
    left = (pixels.shape[-2] - size) // 2
    return pixels[..., top : top + size, left : left + size, :]


def eval_pixels(image: Image.Image, prep: Preprocessing) -> np.ndarray:
    """The deterministic eval transform before normalising: uint8 (S, S, 3)."""
    return center_crop(resize(image, prep.resize_size), prep.image_size)


def to_model_input(image: Image.Image, prep: Preprocessing) -> np.ndarray:
    """The deterministic eval transform: RGB image -> float32 (3, S, S)."""
    return normalize(eval_pixels(image, prep), prep)


def prepare(data: bytes, prep: Preprocessing, max_pixels: int = DEFAULT_MAX_PIXELS):
    """Uploaded bytes -> (RGB image, model input), or ImageRejected."""
    return prepare_header(read_header(data, max_pixels, prep.resize_size), prep)


def prepare_header(header: Header, prep: Preprocessing):
    """What `read_header` opened -> (RGB image, model input). A service reads the
    header first to reserve `header.cost` bytes, then calls this.

    Large images (at least 4x the model's resize_size on a side) are decoded reduced to
    at least 2x it before the same bilinear resize: the model input of every photo
    under that size (all of data/ and test_images/) is bit-identical to
    `to_model_input(decode_image(data))`, and of a larger one close to it."""
    image = decode(header)
    return image, to_model_input(image, prep)


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=-1, keepdims=True)
