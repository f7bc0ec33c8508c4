import io

import numpy as np
import pytest
from PIL import Image

from model_lib.preprocess import (
    TRAINING_CROP_PCT,
    ImageRejected,
    Preprocessing,
    decode,
    decode_image,
    decoded_bytes,
    prepare,
    read_header,
    to_model_input,
)
from tests.images import image_bytes

PREP = Preprocessing(32, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), ("cat", "dog"))
PREP_64 = Preprocessing(64, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), ("cat", "dog"))


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
    cropped = Preprocessing(260, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), ("cat", "dog"), 7 / 8)
    assert Preprocessing.from_json(cropped.to_json()) == cropped
    assert cropped.resize_size == 297


def test_a_file_exported_before_crop_pct_resizes_straight_to_the_input_size():
    old = '{"image_size": 64, "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25], '
    old += '"class_names": ["cat", "dog"]}'
    prep = Preprocessing.from_json(old)
    assert prep.crop_pct == 1.0 and prep.resize_size == 64


@pytest.mark.parametrize("crop_pct", [0.4, 1.2])
def test_a_crop_outside_half_to_all_of_the_photo_is_refused(crop_pct):
    with pytest.raises(ValueError, match="crop_pct"):
        Preprocessing(64, (0.5,) * 3, (0.25,) * 3, ("cat", "dog"), crop_pct)


def test_the_eval_crop_keeps_the_centre_share_of_the_photo_and_drops_the_border():
    # A blue photo framed by a red border 1/32 of its side wide: the centre 7/8
    # (training's share, preprocess.TRAINING_CROP_PCT) holds blue only.
    photo = np.zeros((160, 160, 3), np.uint8)
    photo[..., 0] = 255
    photo[5:155, 5:155] = (0, 0, 255)
    image = Image.fromarray(photo)
    cropped = Preprocessing(64, (0.0,) * 3, (1 / 255,) * 3, ("cat", "dog"), TRAINING_CROP_PCT)
    whole = Preprocessing(64, (0.0,) * 3, (1 / 255,) * 3, ("cat", "dog"))
    red_in_cropped = to_model_input(image, cropped)[0]
    red_in_whole = to_model_input(image, whole)[0]
    assert red_in_cropped.shape == red_in_whole.shape == (64, 64)
    assert red_in_whole[0, 0] == 255 and red_in_whole[32, 32] == 0
    assert red_in_cropped.max() == 0


# ------------------------------------------------ decoded size from the header
MiB = 1024 * 1024
BLOCK = Image.core.get_block_size()  # Pillow allocates image memory in blocks of this size


@pytest.mark.parametrize(
    "mode, fmt, per_pixel",
    [
        ("RGB", "PNG", 4),  # Pillow pads RGB to 4 bytes a pixel
        ("RGBA", "PNG", 4),
        ("LA", "PNG", 4),
        ("L", "PNG", 1),
        ("P", "PNG", 1),
        ("I;16", "PNG", 2),
        ("CMYK", "JPEG", 4),
    ],
)
def test_the_header_gives_the_decoded_size_in_pillows_memory(mode, fmt, per_pixel):
    size = (2048, 2048)
    header = read_header(image_bytes(color=None, size=size, mode=mode, fmt=fmt))
    assert (header.mode, header.decoded_size) == (mode, size)
    assert header.decoded_bytes == decoded_bytes(mode, size) == 2048 * 2048 * per_pixel
    assert header.cost == 2 * header.decoded_bytes  # the image and one working copy
    before = Image.core.get_stats()["allocated_blocks"]
    header.image.load()  # what the decoder really allocates
    blocks = Image.core.get_stats()["allocated_blocks"] - before
    assert blocks * BLOCK >= header.decoded_bytes > (blocks - 1) * BLOCK


def test_a_large_jpeg_is_decoded_reduced_and_its_header_says_so():
    payload = image_bytes(size=(8000, 6000), fmt="JPEG")  # a 48 MP phone photo
    header = read_header(payload, min_size=224)
    assert header.source_size == (8000, 6000)
    assert header.decoded_size == (1000, 750)  # 1/8 scale keeps both sides >= 2 x 224
    assert header.decoded_bytes == 1000 * 750 * 4 < 4 * MiB
    image = decode(header)
    assert image.mode == "RGB" and min(image.size) >= 448
    with pytest.raises(RuntimeError):
        decode(header)  # decoded once: the header no longer holds the image


def test_the_default_pixel_limit_fits_a_48_mp_jpeg_but_not_a_decompression_trick():
    assert read_header(image_bytes(size=(8000, 6000), fmt="JPEG"), min_size=224)
    trick = image_bytes(color=(90, 120, 30), size=(6300, 6300), fmt="PNG")  # ~130 KB
    assert len(trick) < 200_000
    for min_size in (None, 224):
        with pytest.raises(ImageRejected) as caught:
            read_header(trick, min_size=min_size)
        assert (caught.value.status, caught.value.reason) == (413, "too_many_pixels")
        assert "CATDOG_MAX_PIXELS" in str(caught.value)
    with pytest.raises(ImageRejected) as caught:  # without reduced decoding: over the limit
        read_header(image_bytes(size=(8000, 6000), fmt="JPEG"))
    assert caught.value.status == 413


@pytest.mark.parametrize("mode, color", [("RGBA", (10, 20, 30, 40)), ("I;16", 40000), ("P", 3)])
def test_large_images_of_every_mode_come_out_reduced_to_what_the_model_needs(mode, color):
    payload = image_bytes(color=color, size=(3000, 2000), mode=mode, fmt="PNG")
    header = read_header(payload, 10**8, 64)
    image = decode(header)
    assert image.mode == "RGB"
    assert 128 <= image.width < 256 and 128 <= image.height < 256
    assert header.source_size == (3000, 2000)


def test_a_long_strip_is_reduced_along_its_long_side_only():
    image = decode(read_header(image_bytes(size=(300, 20000), fmt="PNG"), 10**8, 224))
    assert image.size == (300, -(-20000 // 44))  # Image.reduce rounds up


def test_photos_under_four_times_the_model_size_are_decoded_exactly_as_before():
    rng = np.random.default_rng(1)
    photo = Image.fromarray(rng.integers(0, 255, (250, 240, 3), np.uint8))
    payload = io.BytesIO()
    photo.save(payload, "JPEG")
    full = decode_image(payload.getvalue())
    image, tensor = prepare(payload.getvalue(), PREP_64)
    assert np.array_equal(np.asarray(image), np.asarray(full))
    assert np.array_equal(tensor, to_model_input(full, PREP_64))


def test_a_large_photo_gives_nearly_the_model_input_of_a_full_decode():
    # Measured on test_images/ photos upscaled to 4000x3000: 0.23-0.32 grey levels
    # on average at the production input size (224), 0.7-2.0 at 64.
    prep = Preprocessing(224, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), ("cat", "dog"))
    rng = np.random.default_rng(2)
    small = Image.fromarray(rng.integers(0, 255, (15, 20, 3), np.uint8))
    photo = small.resize((4000, 3000), Image.Resampling.BICUBIC)  # smooth, like a photo
    payload = io.BytesIO()
    photo.save(payload, "JPEG", quality=92)
    _, reduced = prepare(payload.getvalue(), prep)
    full = to_model_input(decode_image(payload.getvalue(), max_pixels=10**8), prep)
    assert np.abs(reduced - full).mean() * 0.25 * 255 < 1.0  # under 1 grey level on average


def test_sixteen_bit_gray_converts_exactly_as_the_former_float_formula():
    values = np.arange(65536, dtype=np.uint16).reshape(256, 256)
    payload = io.BytesIO()
    Image.fromarray(values).save(payload, "PNG")
    image = decode_image(payload.getvalue())
    former = np.clip(values.astype(np.float64) / 65535.0 * 255.0, 0, 255).astype(np.uint8)
    assert np.array_equal(np.asarray(image)[..., 0], former)
