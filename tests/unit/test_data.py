import json
import shutil

import pytest

from model_lib import data
from tests.images import write_dataset


@pytest.fixture
def pool(tmp_path):
    return write_dataset(tmp_path / "data")


def test_discover_finds_classes_and_labels(pool):
    items, class_names = data.discover_images(pool)
    assert class_names == ("cat", "dog")
    assert len(items) == 24
    assert {i.label for i in items if i.path.parent.name == "dog"} == {1}


def test_missing_data_says_to_run_dvc_pull(tmp_path):
    with pytest.raises(data.DataError, match="dvc pull"):
        data.discover_images(tmp_path / "nope")


def test_validation_catches_corrupt_and_duplicate_files(pool, tmp_path):
    (pool / "cat" / "cat.100.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")
    shutil.copy(pool / "dog" / "dog.0.jpg", pool / "dog" / "dog.200.jpg")
    items, class_names = data.discover_images(pool)

    report = data.validate_images(items, class_names, pool, max_corrupt_share=0.1)

    assert [c["path"] for c in report.corrupt] == [str(pool / "cat" / "cat.100.jpg")]
    assert report.duplicate_groups == [
        [str(pool / "dog" / "dog.0.jpg"), str(pool / "dog" / "dog.200.jpg")]
    ]
    assert report.ok
    assert report.class_counts == {"cat": 12, "dog": 12}  # corrupt and extra copy excluded
    usable = {i.path.name for i in data.usable(items, report)}
    assert "cat.100.jpg" not in usable and "dog.200.jpg" not in usable and "dog.0.jpg" in usable
    written = json.loads(report.write_json(tmp_path / "report.json").read_text())
    assert written["excluded_count"] == 2 and written["ok"] is True


def test_validation_fails_when_too_much_is_corrupt(pool):
    for index in range(3):
        (pool / "cat" / f"cat.{index}.jpg").write_bytes(b"garbage")
    items, class_names = data.discover_images(pool)
    report = data.validate_images(items, class_names, pool, min_per_class=5, max_corrupt_share=0.05)
    assert not report.ok
    assert "do not decode" in report.errors[0]


def test_validation_fails_on_tiny_class(pool):
    items, class_names = data.discover_images(pool)
    report = data.validate_images(items, class_names, pool, min_per_class=20)
    assert not report.ok and "class 'cat'" in report.errors[0]


def test_split_is_deterministic_and_by_file_name(pool, tmp_path):
    items, _ = data.discover_images(pool)
    train, val = data.split(items, val_percent=25)
    again_train, again_val = data.split(list(reversed(items)), val_percent=25)
    assert {i.path for i in train} == {i.path for i in again_train}
    assert {i.path for i in val} == {i.path for i in again_val}
    assert not {i.path for i in train} & {i.path for i in val}
    # Literal values: the bucket of a name must not depend on the machine,
    # the Python hash seed or the run (sha256 of the name).
    assert [data.stable_bucket(f"cat.{i}.jpg", "split:") for i in range(6)] == [
        69,
        25,
        45,
        91,
        64,
        67,
    ]


def test_smaller_fraction_is_a_subset_with_the_same_split(pool):
    items, _ = data.discover_images(pool)
    full_train, full_val = data.split(items, 20, 1.0)
    half_train, half_val = data.split(items, 20, 0.5)
    assert {i.path for i in half_val} <= {i.path for i in full_val}
    assert {i.path for i in half_train} <= {i.path for i in full_train}
    assert len(half_train) + len(half_val) < len(items)


def test_dvc_data_version_reads_md5(tmp_path):
    dvc_file = tmp_path / "data.dvc"
    dvc_file.write_text("outs:\n- md5: abc123.dir\n  size: 1\n  path: data\n")
    assert data.dvc_data_version(dvc_file) == "abc123.dir"
