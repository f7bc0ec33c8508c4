"""The inference log on a real PostgreSQL server: same behaviour as the SQLite file.

Several writer processes at once (like service replicas), one of them killed
mid-way: every row it had committed is there, nothing is duplicated.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time
from datetime import UTC, datetime, timedelta

import pytest

from catdog_runtime.postgres import postgres_cluster
from catdog_runtime.processes import ROOT, free_port
from model_lib.inference_log import (
    COLUMNS,
    InferenceLog,
    InferenceLogUnavailable,
    PostgresInferenceLog,
    Retention,
)
from model_lib.monitoring import inference_frame
from tests.unit.test_inference_log import record


@pytest.fixture(scope="module")
def pg_base():
    with postgres_cluster() as base:
        yield base


@pytest.fixture
def log_url(pg_base, request):
    """A fresh database per test, so counts are this test's alone."""
    import psycopg

    name = f"t_{request.node.name.lower()[:40]}".replace("[", "_").replace("]", "")
    with psycopg.connect(f"{pg_base}/postgres", autocommit=True) as connection:
        connection.execute(f'DROP DATABASE IF EXISTS "{name}"')
        connection.execute(f'CREATE DATABASE "{name}"')
    return f"{pg_base}/{name}"


def test_the_url_setting_selects_postgresql(log_url, monkeypatch, tmp_path):
    monkeypatch.setenv("CATDOG_INFERENCE_LOG", log_url)
    assert isinstance(InferenceLog(), PostgresInferenceLog)
    assert isinstance(InferenceLog(log_url), PostgresInferenceLog)
    monkeypatch.setenv("CATDOG_INFERENCE_LOG", f"sqlite:///{tmp_path}/x.sqlite")
    sqlite_log = InferenceLog()
    assert type(sqlite_log) is InferenceLog and sqlite_log.path == tmp_path / "x.sqlite"


def test_round_trip_window_and_sources_like_sqlite(log_url, tmp_path):
    """The same records read back identically from both stores."""
    now = datetime.now(UTC)
    records = [
        record("old", timestamp=now - timedelta(hours=3)),
        record("recent", timestamp=now - timedelta(minutes=5), label="dog", brightness=12.5),
        record("eval", source="evaluation", timestamp=now - timedelta(minutes=5)),
        record("traffic", source="traffic-generator", timestamp=now),
    ]
    pg, lite = InferenceLog(log_url), InferenceLog(tmp_path / "log.sqlite")
    assert inference_frame(pg).empty and list(inference_frame(pg).columns) == list(
        COLUMNS
    )  # no table yet
    for log in (pg, lite):
        log.append_many(records)
    since = now - timedelta(hours=1)
    for kwargs in ({}, {"since": since}, {"since": since, "exclude_sources": ()}):
        a, b = inference_frame(pg, **kwargs), inference_frame(lite, **kwargs)
        assert list(a.columns) == list(b.columns)
        assert a.to_dict("records") == b.to_dict("records"), kwargs
    assert list(inference_frame(pg, since=since)["request_id"]) == ["recent", "traffic"]
    rows = pg.query(since=since)  # plain rows, as main's InferenceLog.query returns them
    assert [row[COLUMNS.index("request_id")] for row in rows] == ["recent", "traffic"]
    with pytest.raises(ValueError, match="timezone-aware"):
        inference_frame(pg, since=datetime(2026, 1, 1))
    with pytest.raises(ValueError, match="missing"):
        pg.append({"request_id": "x"})


WRITER = textwrap.dedent(
    """
    import sys
    from model_lib.image_stats import STAT_COLUMNS
    from model_lib.inference_log import InferenceLog
    log = InferenceLog(sys.argv[1])
    name, batches, size = sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    for b in range(batches):
        log.append_many([{
            "request_id": f"{name}-{b}-{i}", "source": "user", "label": "dog",
            "confidence": 0.8, "model_name": "m", "model_version": "1",
            **{c: 0.0 for c in STAT_COLUMNS},
        } for i in range(size)])
        # The committed count, after the commit: what a kill must not lose.
        print(f"{name} committed {(b + 1) * size}", flush=True)
    """
)


def test_concurrent_writers_and_a_killed_one_lose_nothing(log_url):
    batches, size = 40, 10
    writers = {
        name: subprocess.Popen(
            [sys.executable, "-c", WRITER, log_url, name, str(batches), str(size)],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            text=True,
        )
        for name in ("r1", "r2", "r3", "victim")
    }
    victim = writers["victim"]
    committed = 0
    for line in victim.stdout:  # kill it mid-way, after a few commits
        committed = int(line.split()[-1])
        if committed >= 5 * size:
            victim.send_signal(signal.SIGKILL)
            break
    # Reads while the others still write must not disturb them.
    reads = 0
    while any(w.poll() is None for w in writers.values()):
        inference_frame(InferenceLog(log_url))
        reads += 1
        time.sleep(0.05)
    for name, writer in writers.items():
        rest = writer.stdout.read()
        if name == "victim":
            assert writer.returncode == -signal.SIGKILL
            for line in rest.splitlines():  # lines printed after the one we read
                committed = int(line.split()[-1])
        else:
            assert writer.returncode == 0, name
    ids = list(inference_frame(InferenceLog(log_url))["request_id"])
    assert len(ids) == len(set(ids)), "a row was written twice"
    per_writer = {name: sum(1 for i in ids if i.startswith(f"{name}-")) for name in writers}
    assert {n: c for n, c in per_writer.items() if n != "victim"} == {
        "r1": batches * size,
        "r2": batches * size,
        "r3": batches * size,
    }
    # Everything the killed writer reported committed is there; at most the one
    # batch in flight at the kill may also have landed (it committed but did not print).
    assert committed <= per_writer["victim"] <= committed + size
    assert per_writer["victim"] % size == 0, "a batch landed partly"
    assert reads > 0


def test_unreachable_server_is_a_precise_error():
    log = InferenceLog(f"postgresql://catdog:secret@127.0.0.1:{free_port()}/catdog")
    with pytest.raises(InferenceLogUnavailable, match="is unreachable") as error:
        inference_frame(log)
    assert "secret" not in str(error.value) and "catdog:***@" in str(error.value)
    with pytest.raises(InferenceLogUnavailable, match="make up PROFILE=scale"):
        log.append(record("a"))


def test_prune_keeps_the_same_rows_as_on_sqlite(log_url, tmp_path):
    now = datetime(2026, 12, 1, tzinfo=UTC).timestamp()
    day = 86400
    rows = [record(f"old{i}", timestamp=now - 40 * day + i) for i in range(7)]
    rows += [record(f"new{i}", timestamp=now - day + i) for i in range(10)]
    kept = {}
    for log in (InferenceLog(log_url), InferenceLog(tmp_path / "log.sqlite")):
        log.append_many(rows)
        assert log.prune(Retention(max_age_days=30, max_rows=0, batch=3), now=now) == 7
        assert log.prune(Retention(max_age_days=30, max_rows=4, batch=3), now=now) == 6
        kept[type(log).__name__] = [r[COLUMNS.index("request_id")] for r in log.query(None, ())]
        log.close()
    assert kept["PostgresInferenceLog"] == kept["InferenceLog"] == [f"new{i}" for i in range(6, 10)]
