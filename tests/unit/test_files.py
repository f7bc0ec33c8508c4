"""model_lib.files.atomic_write_text: whole files, owner-only, nothing left behind."""

from __future__ import annotations

import os
import stat

import pytest

from model_lib import files
from model_lib.files import atomic_write_text


def test_writes_the_text_owner_only_and_leaves_no_temporary_file(tmp_path):
    target = tmp_path / "haproxy.cfg"
    assert atomic_write_text(target, "global\n") == target
    assert target.read_text() == "global\n"
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert os.listdir(tmp_path) == ["haproxy.cfg"]


def test_replaces_an_existing_file_and_takes_the_mode_asked(tmp_path):
    target = tmp_path / "prometheus.yml"
    target.write_text("old, and longer than the new text\n")
    target.chmod(0o666)
    atomic_write_text(target, "new\n", mode=0o644)
    assert target.read_text() == "new\n"
    assert stat.S_IMODE(target.stat().st_mode) == 0o644


def test_a_failed_write_keeps_the_old_file_and_removes_the_temporary(tmp_path, monkeypatch):
    target = tmp_path / "state.json"
    target.write_text('{"replicas": []}')

    def no_fsync(descriptor):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(files.os, "fsync", no_fsync)
    with pytest.raises(OSError, match="Input/output error"):
        atomic_write_text(target, '{"replicas": [1]}')
    assert target.read_text() == '{"replicas": []}'
    assert os.listdir(tmp_path) == ["state.json"]


def test_a_symlink_at_the_path_is_replaced_not_followed(tmp_path):
    """os.replace swaps the link itself: a planted link cannot redirect the write."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.write_text("untouched")
    target = tmp_path / "pid"
    target.symlink_to(elsewhere)
    atomic_write_text(target, "123")
    assert not target.is_symlink() and target.read_text() == "123"
    assert elsewhere.read_text() == "untouched"
