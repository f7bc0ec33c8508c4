"""Crash-safe ingest: a real `dvc` repository and remote in a temp folder, and an
ingest process SIGKILLed at each step (model_lib.ingest `_step`). Whatever the
step, `data/` is one whole version (the old or the new, never a mix), the next
run completes or cleans up, and afterwards `data/` and `data.dvc` agree."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys

import pytest

from catdog_runtime.processes import ROOT
from model_lib import data as data_lib
from model_lib.ingest import JOURNAL_NAME, KILL_AT_ENV, STAGING_NAME, ingest, recover
from tests.images import write_dataset

INGEST = """
import sys
from model_lib.ingest import ingest
ingest(sys.argv[1], sys.argv[2], dvc_remote="local")
"""
# Before the commit point (the old version stays), then after it (the new one wins).
BEFORE_COMMIT = ("staged", "added", "pushed")
AFTER_COMMIT = ("committed", "swapped", "replaced")


def dvc(repo, *args, check=True):
    result = subprocess.run(
        [sys.executable, "-m", "dvc", *args], cwd=repo, capture_output=True, text=True
    )
    assert not check or result.returncode == 0, result.stderr + result.stdout
    return result


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    """A DVC repository (no git) with a 2 x 6 photo dataset pushed to a local remote."""
    root = tmp_path_factory.mktemp("ingest-template")
    repo = root / "repo"
    write_dataset(repo / "data", per_class=6)
    dvc(repo, "init", "--no-scm", "--quiet")
    dvc(repo, "remote", "add", "--default", "local", str(root / "remote"))
    dvc(repo, "add", "--quiet", "data")
    dvc(repo, "push", "--quiet")
    batch = write_dataset(root / "batch", per_class=9)
    for name in ("cat", "dog"):  # 3 new photos per class
        for index in range(6):
            (batch / name / f"{name}.{index}.jpg").unlink()
    return root


@pytest.fixture
def repo(template, tmp_path):
    shutil.copytree(template, tmp_path / "t", symlinks=True)
    # the remote's path is absolute in .dvc/config: point it at this copy
    dvc(tmp_path / "t" / "repo", "remote", "modify", "local", "url", str(tmp_path / "t" / "remote"))
    return tmp_path / "t" / "repo"


def files(data_root) -> set[str]:
    return {str(p.relative_to(data_root)) for p in data_root.rglob("*") if p.is_file()}


def agree(repo) -> bool:
    """`dvc status`: does data/ hold exactly what data.dvc pins?"""
    result = dvc(repo, "status", "data.dvc", check=False)
    return result.returncode == 0 and "up to date" in result.stdout


@pytest.mark.parametrize("step", BEFORE_COMMIT + AFTER_COMMIT)
def test_an_ingest_killed_at_any_step_leaves_one_whole_version(repo, step):
    data_root, batch = repo / "data", repo.parent / "batch"
    old_files, old_version = files(data_root), data_lib.dvc_data_version(repo / "data.dvc")
    old_dvc_file = (repo / "data.dvc").read_text()
    new_files = old_files | {f"{c}/{c}.{i}.jpg" for c in ("cat", "dog") for i in (6, 7, 8)}
    killed = subprocess.run(
        [sys.executable, "-c", INGEST, str(batch), str(data_root)],
        cwd=ROOT,
        env={**os.environ, KILL_AT_ENV: step},
        capture_output=True,
        text=True,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr

    # What a trainer reading data/ now finds: one whole version, the new one only
    # once the swap happened.
    swapped = step in ("swapped", "replaced")
    assert files(data_root) == (new_files if swapped else old_files)
    assert (repo / JOURNAL_NAME).exists() == (step in AFTER_COMMIT)
    if step in BEFORE_COMMIT:
        assert (repo / "data.dvc").read_text() == old_dvc_file

    # Recovery: finishes what was committed, cleans up what was not.
    done = recover(data_root)
    assert done is not None and ("completed" in done) == (step in AFTER_COMMIT)
    expected = new_files if step in AFTER_COMMIT else old_files
    assert agree(repo) and files(data_root) == expected
    assert not (repo / STAGING_NAME).exists() and not (repo / JOURNAL_NAME).exists()

    # The next run adds what is still missing, and is a whole new version too.
    report = ingest(batch, data_root, dvc_remote="local")
    assert files(data_root) == new_files and agree(repo)
    assert report.changed == (step in BEFORE_COMMIT)
    assert data_lib.dvc_data_version(repo / "data.dvc") != old_version
    if step == "replaced":  # the version is on the remote (pushed before the commit)
        assert "in sync" in dvc(repo, "status", "--cloud", "data.dvc").stdout


def test_a_symlink_in_the_batch_is_refused(repo, tmp_path):
    batch = tmp_path / "batch"
    shutil.copytree(repo.parent / "batch", batch)
    secret = tmp_path / "secret.jpg"
    shutil.copy(batch / "cat" / "cat.6.jpg", secret)
    (batch / "cat" / "cat.6.jpg").unlink()
    (batch / "cat" / "cat.6.jpg").symlink_to(secret)
    (batch / "dog").rename(tmp_path / "dogs")
    (batch / "dog").symlink_to(tmp_path / "dogs")
    report = ingest(batch, repo / "data", dvc_remote="local")
    refused = {r["file"].rsplit("/", 1)[-1] for r in report.rejected}
    assert refused == {"cat.6.jpg", "dog"}
    assert sorted(report.added) == ["cat/cat.7.jpg", "cat/cat.8.jpg"]
    assert not any(p.is_symlink() for p in (repo / "data").rglob("*"))
