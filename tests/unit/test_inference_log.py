"""The inference log: append/read, time window, excluded sources, concurrent writers, recorder."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from datetime import UTC, datetime, timedelta

import pytest
from PIL import Image

from catdog_runtime.processes import ROOT
from catdog_runtime.waits import poll
from model_lib.image_stats import STAT_COLUMNS, image_statistics
from model_lib.inference_log import (
    COLUMNS,
    InferenceLog,
    InferenceRecorder,
    Retention,
    default_path,
)
from tests.images import noise_image


def read(log: InferenceLog, **query) -> list[dict]:
    return [dict(zip(COLUMNS, row, strict=True)) for row in log.query(**query)]


def ids(log: InferenceLog, **query) -> list[str]:
    return [row["request_id"] for row in read(log, **query)]


def record(request_id: str, source: str = "user", timestamp=None, **overrides) -> dict:
    row = {
        "request_id": request_id,
        "source": source,
        "label": "cat",
        "confidence": 0.9,
        "model_name": "catdog-classifier",
        "model_version": "3",
        **{column: 1.0 for column in STAT_COLUMNS},
        **overrides,
    }
    if timestamp is not None:
        row["timestamp"] = timestamp
    return row


def test_nothing_is_created_until_the_first_append(tmp_path):
    path = tmp_path / "deep" / "folder" / "log.sqlite"
    log = InferenceLog(path)
    assert not path.parent.exists()
    assert read(log) == []
    assert not path.parent.exists()  # reading a missing log creates nothing either
    log.append(record("a"))
    assert path.is_file()


def test_default_path_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.delenv("CATDOG_INFERENCE_LOG", raising=False)
    assert str(default_path()) == ".run/inference_log.sqlite"
    monkeypatch.setenv("CATDOG_INFERENCE_LOG", str(tmp_path / "x.sqlite"))
    assert InferenceLog().path == tmp_path / "x.sqlite"


def test_append_then_read_round_trips_every_field(tmp_path):
    log = InferenceLog(tmp_path / "log.sqlite")
    when = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    log.append(record("r1", confidence=0.75, label="dog", timestamp=when, brightness=123.5))
    (row,) = read(log)
    assert row["request_id"] == "r1" and row["label"] == "dog" and row["confidence"] == 0.75
    assert row["model_version"] == "3" and row["brightness"] == 123.5
    assert row["timestamp"] == when.timestamp()


def test_log_is_in_wal_mode_and_survives_reopening(tmp_path):
    path = tmp_path / "log.sqlite"
    InferenceLog(path).append(record("a"))
    InferenceLog(path).append(record("b"))  # a new instance: as after a service restart
    assert ids(InferenceLog(path)) == ["a", "b"]
    with sqlite3.connect(path) as connection:
        assert connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_window_and_excluded_sources(tmp_path):
    log = InferenceLog(tmp_path / "log.sqlite")
    now = datetime.now(UTC)
    log.append_many(
        [
            record("old", timestamp=now - timedelta(hours=3)),
            record("recent", timestamp=now - timedelta(minutes=5)),
            record("eval", source="evaluation", timestamp=now - timedelta(minutes=5)),
            record("bench", source="benchmark", timestamp=now - timedelta(minutes=4)),
            record("traffic", source="traffic-generator", timestamp=now),
        ]
    )
    # The platform's own requests (evaluation, benchmarks) are not users' traffic.
    assert ids(log) == ["old", "recent", "traffic"]
    since = now - timedelta(hours=1)
    assert ids(log, since=since) == ["recent", "traffic"]
    assert ids(log, since=since, exclude_sources=()) == [
        "recent",
        "eval",
        "bench",
        "traffic",
    ]
    assert ids(log, since=since, exclude_sources=("evaluation", "traffic-generator")) == [
        "recent",
        "bench",
    ]


def test_bad_records_and_naive_datetimes_are_refused(tmp_path):
    log = InferenceLog(tmp_path / "log.sqlite")
    with pytest.raises(ValueError, match="unknown"):
        log.append(record("a", image_bytes=b"never"))
    incomplete = record("a")
    del incomplete["label"]
    with pytest.raises(ValueError, match="missing"):
        log.append(incomplete)
    with pytest.raises(ValueError, match="timezone-aware"):
        log.append(record("a", timestamp=datetime(2026, 1, 1)))
    with pytest.raises(ValueError, match="timezone-aware"):
        read(log, since=datetime(2026, 1, 1))


WRITER = textwrap.dedent(
    """
    import sys
    from model_lib.image_stats import STAT_COLUMNS
    from model_lib.inference_log import InferenceLog
    log = InferenceLog(sys.argv[1])
    for i in range(int(sys.argv[3])):
        log.append({
            "request_id": f"{sys.argv[2]}-{i}", "source": "user", "label": "dog",
            "confidence": 0.8, "model_name": "m", "model_version": "1",
            **{c: 0.0 for c in STAT_COLUMNS},
        })
    """
)


def test_two_writer_processes_lose_nothing(tmp_path):
    """Like two service workers: concurrent appends from separate processes."""
    path = tmp_path / "log.sqlite"
    count = 150
    writers = [
        subprocess.Popen([sys.executable, "-c", WRITER, str(path), name, str(count)], cwd=ROOT)
        for name in ("w1", "w2")
    ]
    # A reader in this process at the same time must not break them (WAL).
    reads = 0
    while True:
        read(InferenceLog(path))
        reads += 1
        if all(w.poll() is not None for w in writers):
            break
    assert [w.wait(60) for w in writers] == [0, 0]
    written = ids(InferenceLog(path))
    assert len(written) == 2 * count and len(set(written)) == 2 * count
    assert reads > 0


def test_recorder_computes_statistics_off_the_caller_thread(tmp_path):
    log = InferenceLog(tmp_path / "log.sqlite")
    recorder = InferenceRecorder(log)
    image = noise_image(1, size=(50, 40))
    without_stats = {k: v for k, v in record("r1").items() if k not in STAT_COLUMNS}
    assert recorder.submit(image, 2048, without_stats)
    assert recorder.flush(10)
    (row,) = read(log)
    expected = image_statistics(image, 2048)
    assert row["width"] == 50 and row["height"] == 40 and row["file_size_kb"] == 2.0
    assert row["sharpness"] == pytest.approx(expected["sharpness"])
    assert recorder.close()


def test_recorder_drops_and_counts_when_its_queue_is_full(tmp_path):
    log = InferenceLog(tmp_path / "log.sqlite")
    release = threading.Event()
    original = log.append_many

    def slow_append(records):
        release.wait(10)  # the writer is stuck: the queue fills up
        return original(records)

    log.append_many = slow_append
    drops = []
    recorder = InferenceRecorder(log, max_pending=3, batch_size=1, on_drop=lambda: drops.append(1))
    image = Image.new("RGB", (8, 8))
    base = {k: v for k, v in record("x").items() if k not in STAT_COLUMNS}
    accepted = [recorder.submit(image, 10, {**base, "request_id": str(i)}) for i in range(6)]
    assert accepted == [True, True, True, False, False, False]
    assert recorder.dropped == 3 and len(drops) == 3
    release.set()
    assert recorder.flush(10)
    assert sorted(ids(log)) == ["0", "1", "2"]
    recorder.close()


def test_recorder_pixel_budget_bounds_memory(tmp_path):
    log = InferenceLog(tmp_path / "log.sqlite")
    release = threading.Event()
    original = log.append_many
    log.append_many = lambda records: (release.wait(10), original(records))[1]
    recorder = InferenceRecorder(log, max_pending_pixels=100 * 100, batch_size=1)
    base = {k: v for k, v in record("x").items() if k not in STAT_COLUMNS}
    big = Image.new("RGB", (200, 200))  # over the budget, but alone in the queue: accepted
    assert recorder.submit(big, 10, {**base, "request_id": "big"})
    assert not recorder.submit(Image.new("RGB", (10, 10)), 10, {**base, "request_id": "small"})
    release.set()
    assert recorder.flush(10)
    assert recorder.submit(Image.new("RGB", (10, 10)), 10, {**base, "request_id": "later"})
    assert recorder.flush(10)
    assert ids(log) == ["big", "later"]
    recorder.close()


def test_recorder_reports_write_errors_and_keeps_running(tmp_path):
    log = InferenceLog(tmp_path / "log.sqlite")
    errors = []
    recorder = InferenceRecorder(log, on_error=errors.append)
    base = {k: v for k, v in record("x").items() if k not in STAT_COLUMNS}
    recorder.submit(Image.new("RGB", (8, 8)), 10, {**base, "unexpected": 1})  # refused by the log
    assert recorder.flush(10)
    assert len(errors) == 1 and isinstance(errors[0], ValueError) and recorder.failed == 1
    recorder.submit(Image.new("RGB", (8, 8)), 10, {**base, "request_id": "fine"})
    assert recorder.flush(10)
    assert ids(log) == ["fine"]
    recorder.close()


# ---------------------------------------------------------------- retention
def test_prune_deletes_rows_past_the_age_and_beyond_the_row_count(tmp_path):
    log = InferenceLog(tmp_path / "log.sqlite")
    now = datetime(2026, 12, 1, tzinfo=UTC).timestamp()
    day = 86400
    log.append_many(record(f"old{i}", timestamp=now - 40 * day + i) for i in range(7))
    log.append_many(record(f"new{i}", timestamp=now - day + i) for i in range(10))
    assert log.prune(Retention(max_age_days=30, max_rows=0, batch=3), now=now) == 7
    assert ids(log, exclude_sources=()) == [f"new{i}" for i in range(10)]
    assert log.prune(Retention(max_age_days=0, max_rows=4, batch=3), now=now) == 6
    assert ids(log, exclude_sources=()) == [f"new{i}" for i in range(6, 10)]  # the newest
    assert log.prune(Retention(max_age_days=30, max_rows=4), now=now) == 0
    log.append(record("after"))  # the writer goes on after pruning
    assert ids(log, exclude_sources=())[-1] == "after"


def test_prune_creates_no_log(tmp_path):
    log = InferenceLog(tmp_path / "missing" / "log.sqlite")
    assert log.prune(Retention()) == 0
    assert not (tmp_path / "missing").exists()


def test_the_recorder_prunes_on_its_own_thread_even_when_idle(tmp_path):
    log = InferenceLog(tmp_path / "log.sqlite")
    log.append_many(record(f"r{i}") for i in range(20))
    recorder = InferenceRecorder(log, retention=Retention(max_rows=5, every_seconds=0.1))
    assert poll(lambda: recorder.pruned, lambda pruned: pruned >= 15, 10, interval=0.05) == 15
    assert ids(log, exclude_sources=()) == [f"r{i}" for i in range(15, 20)]
    image = noise_image(1, size=(50, 40))
    without_stats = {k: v for k, v in record("late").items() if k not in STAT_COLUMNS}
    assert recorder.submit(image, 2048, without_stats)
    assert recorder.flush(10)
    time.sleep(0.3)  # the next pruning keeps the newest five
    assert ids(log, exclude_sources=())[-1] == "late" and len(ids(log, exclude_sources=())) == 5
    assert recorder.close()


def test_the_upload_size_replaces_a_reduced_images_size_in_the_statistics(tmp_path):
    log = InferenceLog(tmp_path / "log.sqlite")
    recorder = InferenceRecorder(log)
    image = noise_image(1, size=(500, 375))  # decoded at 1/8 of 4000x3000
    without_stats = {k: v for k, v in record("big").items() if k not in STAT_COLUMNS}
    assert recorder.submit(image, 2048, without_stats, source_size=(4000, 3000))
    assert recorder.flush(10)
    (row,) = read(log)
    assert (row["width"], row["height"], row["aspect_ratio"]) == (4000, 3000, 4000 / 3000)
    assert recorder.close()
