"""Per-image statistics for drift monitoring (Pillow + NumPy, torch-free).

The same function describes the training images (the drift reference, written
at training time) and every image the service classifies.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from PIL import Image

from model_lib.preprocess import decode_image

# The drift reference: a training run's artifact, and a file of the packaged model.
REFERENCE_STATS_FILE = "reference_stats.csv"
REFERENCE_SAMPLE = 2000  # training images the reference describes at most

STAT_COLUMNS = (
    "width",
    "height",
    "aspect_ratio",
    "file_size_kb",
    "brightness",
    "contrast",
    "mean_red",
    "mean_green",
    "mean_blue",
    "saturation",
    "sharpness",
)
# Sharpness is measured at a fixed size so it does not just track resolution.
_SHARPNESS_SIZE = 256


def image_statistics(image: Image.Image, file_size: int) -> dict[str, float]:
    """Statistics of a decoded RGB image; `file_size` is the upload's byte count."""
    width, height = image.size
    pixels = np.asarray(image, dtype=np.float32).reshape(-1, 3)
    gray_image = image.convert("L")
    gray = np.asarray(gray_image, dtype=np.float32)
    saturation = np.asarray(image.convert("HSV"), dtype=np.float32)[..., 1]
    small = np.asarray(
        gray_image.resize((_SHARPNESS_SIZE, _SHARPNESS_SIZE), Image.Resampling.BILINEAR),
        dtype=np.float32,
    )
    laplacian = (
        4 * small[1:-1, 1:-1]
        - small[:-2, 1:-1]
        - small[2:, 1:-1]
        - small[1:-1, :-2]
        - small[1:-1, 2:]
    )
    red, green, blue = pixels.mean(axis=0)
    return {
        "width": float(width),
        "height": float(height),
        "aspect_ratio": width / height,
        "file_size_kb": file_size / 1024,
        "brightness": float(gray.mean()),
        "contrast": float(gray.std()),
        "mean_red": float(red),
        "mean_green": float(green),
        "mean_blue": float(blue),
        "saturation": float(saturation.mean()),
        "sharpness": float(laplacian.var()),
    }


def write_reference_statistics(
    paths: list[Path], out_path: str | Path, sample: int = REFERENCE_SAMPLE
) -> Path:
    """Statistics of an evenly spaced sample of `paths` (training images), as CSV."""
    out_path = Path(out_path)
    with out_path.open("w", newline="") as out:
        writer = csv.DictWriter(out, fieldnames=STAT_COLUMNS)
        writer.writeheader()
        for path in paths[:: max(1, len(paths) // sample)]:
            payload = Path(path).read_bytes()
            writer.writerow(image_statistics(decode_image(payload), len(payload)))
    return out_path
