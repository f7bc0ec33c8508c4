"""Checks of a labelled batch before it enters the dataset (model_lib.ingest), no DVC server."""

import shutil

import pytest

from model_lib.ingest import IngestError, ingest, plan
from tests.images import write_dataset


@pytest.fixture
def dataset(tmp_path):
    return write_dataset(tmp_path / "repo" / "data", per_class=6)


def batch_with_problems(tmp_path, dataset):
    """2 good new photos, 1 corrupt, 1 copy of a dataset file, 1 copy within the batch,
    1 unknown class, 1 non-image; one good photo reuses a dataset file name."""
    batch = write_dataset(tmp_path / "new", per_class=8)
    for name in ("cat", "dog"):  # keep cat.6/cat.7 and dog.6 as new photos
        for index in range(6):
            (batch / name / f"{name}.{index}.jpg").unlink()
    (batch / "dog" / "dog.7.jpg").unlink()
    (batch / "cat" / "broken.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    shutil.copy(dataset / "dog" / "dog.2.jpg", batch / "dog" / "again.jpg")
    shutil.copy(batch / "cat" / "cat.6.jpg", batch / "cat" / "copy-of-cat.6.jpg")
    (batch / "horse").mkdir()
    (batch / "dog" / "notes.txt").write_text("not a photo")
    # Same name as a dataset file, other content: kept under a new name.
    shutil.copy(batch / "dog" / "dog.6.jpg", batch / "dog" / "dog.0.jpg")
    (batch / "dog" / "dog.6.jpg").unlink()
    return batch


def test_plan_keeps_only_good_new_files_and_names_every_bad_one(tmp_path, dataset):
    batch = batch_with_problems(tmp_path, dataset)
    report, planned = plan(batch, dataset)
    dests = sorted(p.dest for p in planned)
    assert dests[:2] == ["cat/cat.6.jpg", "cat/cat.7.jpg"] and len(dests) == 3
    assert dests[2].startswith("dog/dog.0-") and dests[2] != "dog/dog.0.jpg"
    rejected = {r["file"].rsplit("/", 1)[-1]: r["reason"] for r in report.rejected}
    assert set(rejected) == {"broken.jpg", "horse", "notes.txt"}
    assert "not a class folder" in rejected["horse"]
    duplicates = {d["file"].rsplit("/", 1)[-1]: d["same_as"] for d in report.duplicates}
    assert duplicates == {
        "again.jpg": "dog/dog.2.jpg",  # already in the dataset
        "copy-of-cat.6.jpg": str(batch / "cat" / "cat.6.jpg"),  # twice in the batch
    }
    assert report.class_counts_before == {"cat": 6, "dog": 6}
    assert report.class_counts_after == {"cat": 8, "dog": 7}


def test_a_batch_without_class_folders_is_refused(tmp_path, dataset):
    with pytest.raises(IngestError, match="does not exist"):
        plan(tmp_path / "missing", dataset)


def test_a_failure_after_moving_files_in_leaves_the_dataset_as_it_was(tmp_path, dataset):
    # No DVC repository here: `dvc add` fails after the files moved in.
    batch = batch_with_problems(tmp_path, dataset)
    dvc_file = dataset.with_suffix(".dvc")
    dvc_file.write_text("outs:\n- md5: previous.dir\n  path: data\n")
    before = sorted(p.relative_to(dataset) for p in dataset.rglob("*"))
    with pytest.raises(IngestError, match="dvc add.*previous version kept"):
        ingest(batch, dataset, dvc_remote=None)
    assert sorted(p.relative_to(dataset) for p in dataset.rglob("*")) == before
    assert dvc_file.read_text() == "outs:\n- md5: previous.dir\n  path: data\n"
    assert not (dataset.parent / ".ingest-staging").exists()
