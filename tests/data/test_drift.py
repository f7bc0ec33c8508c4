import pandas as pd
import pytest

from model_lib.data import discover_images, split
from model_lib.drift import drift_report
from model_lib.image_stats import STAT_COLUMNS, image_statistics
from model_lib.preprocess import decode_image
from model_lib.traffic import apply_shift
from tests.conftest import DATA


def stats_frame(paths, shift="none"):
    rows = []
    for path in paths:
        payload = apply_shift(path.read_bytes(), shift)
        rows.append(image_statistics(decode_image(payload), len(payload)))
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def photos(real_data):
    items, _ = discover_images(DATA)
    parts = split(items, val_percent=20, test_percent=10, fraction=0.1)  # ~1000 photos
    return [i.path for i in parts.train][:400], [i.path for i in parts.val][:80]


def test_unshifted_photos_show_no_drift(photos, tmp_path):
    reference, current = stats_frame(photos[0]), stats_frame(photos[1])
    result = drift_report(reference, current, tmp_path / "report.html")
    assert not result.detected, result.drifted_columns
    assert set(result.p_values) == set(STAT_COLUMNS)
    assert (tmp_path / "report.html").stat().st_size > 100_000


@pytest.mark.parametrize("shift, expected", [("darker", "brightness"), ("grayscale", "saturation")])
def test_shifted_photos_drift(photos, tmp_path, shift, expected):
    reference, current = stats_frame(photos[0]), stats_frame(photos[1], shift)
    result = drift_report(reference, current, tmp_path / "report.html")
    assert result.detected and expected in result.drifted_columns


def test_darker_shift_lowers_brightness(photos):
    path = photos[1][0]
    normal = stats_frame([path]).iloc[0]
    darker = stats_frame([path], "darker").iloc[0]
    assert darker["brightness"] < 0.6 * normal["brightness"]
