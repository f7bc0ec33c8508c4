import json
import shutil

import pytest
from PIL import Image

from model_lib import data
from tests.images import write_dataset, write_outliers


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


def test_split_is_deterministic_disjoint_and_by_file_name(pool):
    items, _ = data.discover_images(pool)
    parts = data.split(items, val_percent=25, test_percent=25)
    again = data.split(list(reversed(items)), val_percent=25, test_percent=25)
    for name in data.SPLITS:
        assert {i.path for i in getattr(parts, name)} == {i.path for i in getattr(again, name)}
    train, val, test = ({i.path for i in getattr(parts, n)} for n in data.SPLITS)
    assert not train & val and not train & test and not val & test
    assert len(train | val | test) == len(items)
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
    assert [data.split_of(f"cat.{i}.jpg", 20, 10) for i in range(6)] == [
        "train",
        "val",
        "train",
        "train",
        "train",
        "train",
    ]


def test_each_class_gets_its_share_of_the_test_split():
    names = [f"{label}.{i}.jpg" for label in ("cat", "dog") for i in range(5000)]
    for label in ("cat", "dog"):
        share = sum(data.split_of(n, 15, 10) == "test" for n in names if n.startswith(label))
        assert abs(share / 5000 - 0.10) < 0.015  # stratified in expectation, both classes


def test_near_duplicates_share_one_split(pool):
    """A resized, recompressed and mirrored copy of a photo lands where the photo does."""
    original = pool / "cat" / "cat.3.jpg"
    with Image.open(original) as image:
        copy = image.resize((64, 64)).transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        copy.save(pool / "dog" / "dog.copy.jpg", quality=70)
    items, _ = data.discover_images(pool)
    keys = data.near_duplicate_keys(items)
    assert keys[pool / "dog" / "dog.copy.jpg"] == keys[original] == "cat.3.jpg"
    assert len(set(keys.values())) == len(items) - 1  # nothing else merged
    parts = data.split(items, 30, 30, group_keys=keys)
    together = [
        n
        for n in data.SPLITS
        if {original, pool / "dog" / "dog.copy.jpg"} <= {i.path for i in getattr(parts, n)}
    ]
    assert len(together) == 1


def test_smaller_fraction_is_a_subset_with_the_same_split(pool):
    items, _ = data.discover_images(pool)
    full = data.split(items, 20, 10, 1.0)
    half = data.split(items, 20, 10, 0.5)
    for name in data.SPLITS:
        assert {i.path for i in getattr(half, name)} <= {i.path for i in getattr(full, name)}
    assert sum(len(getattr(half, n)) for n in data.SPLITS) < len(items)


def test_photos_that_are_neither_are_split_by_kind(tmp_path):
    root = write_outliers(tmp_path / "other", per_kind=4, kinds=tuple(f"k{i}" for i in range(30)))
    (root / "flat").mkdir()
    for index in range(3):  # a source without kinds: each photo is its own group
        shutil.copy(root / "objects" / "k0" / "k0.0.jpg", root / "flat" / f"p{index}.jpg")
    items, keys = data.discover_outliers(root, label=2)
    assert len(items) == 123 and {i.label for i in items} == {2}
    assert keys[root / "objects" / "k3" / "k3.1.jpg"] == "objects/k3"
    assert keys[root / "flat" / "p1.jpg"] == "flat/p1.jpg"
    parts = data.split(items, 20, 20, group_keys=keys)
    kinds = {n: {keys[i.path] for i in getattr(parts, n)} for n in data.SPLITS}
    assert not kinds["train"] & kinds["val"] and not kinds["train"] & kinds["test"]
    assert kinds["val"] and kinds["test"]  # unseen kinds on both sides


def test_missing_outlier_folder_says_what_to_do(tmp_path):
    with pytest.raises(data.DataError, match="outlier_dir"):
        data.discover_outliers(tmp_path / "nope", label=2)


def test_dvc_data_version_reads_md5(tmp_path):
    dvc_file = tmp_path / "data.dvc"
    dvc_file.write_text("outs:\n- md5: abc123.dir\n  size: 1\n  path: data\n")
    assert data.dvc_data_version(dvc_file) == "abc123.dir"
