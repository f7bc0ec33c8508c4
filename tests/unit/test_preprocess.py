import io

import numpy as np
import pytest
from PIL import Image

from model_lib.preprocess import ImageRejected, Preprocessing, decode_image, to_model_input
from tests.images import image_bytes

PREP = Preprocessing(32, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), ("cat", "dog"))


@pytest.mark.parametrize(
    "payload, status, reason",
    [
        (b"", 400, "empty"),
        (b"hello, I am text", 415, "not_an_image"),
        (image_bytes(fmt="TIFF"), 415, "unsupported_format"),
    ],
)
def test_rejections(payload, status, reason):
    with pytest.raises(ImageRejected) as caught:
        decode_image(payload)
    assert (caught.value.status, caught.value.reason) == (status, reason)


def test_truncated_jpeg_is_rejected_as_corrupt():
    photo = Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8))
    buffer = io.BytesIO()
    photo.save(buffer, "JPEG")
    with pytest.raises(ImageRejected) as caught:
        decode_image(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    assert caught.value.status == 422 and caught.value.reason == "corrupt"


def test_pixel_limit_is_checked_before_decoding():
    payload = image_bytes(size=(300, 300), fmt="PNG")
    with pytest.raises(ImageRejected) as caught:
        decode_image(payload, max_pixels=200 * 200)
    assert caught.value.status == 413 and "90000 pixels" in str(caught.value)


@pytest.mark.parametrize(
    "mode, color, fmt",
    [
        ("L", 128, "PNG"),
        ("CMYK", (0, 255, 255, 0), "JPEG"),
        ("RGBA", (255, 0, 0, 0), "PNG"),
        ("P", 3, "PNG"),
        ("I;16", 40000, "PNG"),
        ("LA", (10, 255), "PNG"),
    ],
)
def test_odd_modes_become_rgb(mode, color, fmt):
    image = decode_image(image_bytes(color=color, mode=mode, fmt=fmt))
    assert image.mode == "RGB" and image.size == (32, 32)


def test_sixteen_bit_gray_is_scaled_not_clipped():
    image = decode_image(image_bytes(color=32768, mode="I;16", fmt="PNG"))
    assert 120 <= image.getpixel((0, 0))[0] <= 135


def test_transparent_pixels_become_white():
    assert decode_image(image_bytes(color=(255, 0, 0, 0), mode="RGBA", fmt="PNG")).getpixel(
        (0, 0)
    ) == (255, 255, 255)


def test_animated_gif_uses_first_frame():
    frames = [Image.new("RGB", (16, 16), c) for c in ((255, 0, 0), (0, 0, 255))]
    buffer = io.BytesIO()
    frames[0].save(buffer, "GIF", save_all=True, append_images=frames[1:])
    red, green, blue = decode_image(buffer.getvalue()).getpixel((0, 0))
    assert red > 200 and blue < 50


def test_exif_orientation_is_applied():
    wide = Image.new("RGB", (40, 20), (10, 200, 10))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees when displayed
    buffer = io.BytesIO()
    wide.save(buffer, "JPEG", exif=exif)
    assert decode_image(buffer.getvalue()).size == (20, 40)


def test_model_input_is_normalised_chw():
    image = Image.new("RGB", (50, 40), (255, 0, 128))
    tensor = to_model_input(image, PREP)
    assert tensor.shape == (3, 32, 32) and tensor.dtype == np.float32
    np.testing.assert_allclose(
        tensor[:, 0, 0], [(1 - 0.5) / 0.25, (0 - 0.5) / 0.25, (128 / 255 - 0.5) / 0.25], atol=1e-5
    )


def test_preprocessing_round_trips_through_json():
    assert Preprocessing.from_json(PREP.to_json()) == PREP
