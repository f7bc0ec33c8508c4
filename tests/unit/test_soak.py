"""bench.soak's pure parts: what each kind of request should get, and the report's figures."""

from __future__ import annotations

import pytest

from bench.soak import (
    Kill,
    Record,
    outcome,
    summarize,
    table,
    worker_memory,
)
from catdog_runtime.hostile import status_of

MiB = 1024 * 1024


def record(kind, status, started=0.0, finished=0.1, name="x.jpg") -> Record:
    return Record(kind, name, started, finished, status)


@pytest.mark.parametrize(
    ("kind", "name", "status", "expected"),
    [
        ("good", "cat.1.jpg", 200, "ok"),
        ("good", "cat.1.jpg", 502, "lost"),
        ("good", "cat.1.jpg", 429, "lost"),
        ("good", "cat.1.jpg", "ReadTimeout", "lost"),
        ("hostile", "rgb-6300", 413, "ok"),
        ("hostile", "rgb-6300", 200, "unexpected"),  # over the pixel limit, yet decoded
        ("hostile", "gray16-4000", 200, "ok"),
        ("hostile", "gray16-4000", 503, "unexpected"),
        ("huge", "huge.jpg", 413, "ok"),
        ("huge", "huge.jpg", "WriteError", "unexpected"),
        ("slow", "trickle", 408, "ok"),
        ("slow", "trickle", 200, "unexpected"),
    ],
)
def test_each_kind_is_judged_by_the_status_it_should_get(kind, name, status, expected):
    assert outcome(record(kind, status, name=name)) == expected


def test_an_unknown_kind_is_an_error():
    with pytest.raises(ValueError, match="unknown kind"):
        outcome(record("other", 200))


def test_summary_counts_lost_good_requests_and_those_during_a_kill():
    kills = [Kill("r1", at=10.0, back=40.0)]
    records = [
        record("good", 200, 1.0, 1.1),
        record("good", 200, 2.0, 2.3),
        record("good", 502, 9.5, 10.2),  # in flight when the replica was killed
        record("good", "ConnectError", 50.0, 50.1),  # lost with every replica up
        record("hostile", 413, 3.0, 3.1, name="rgba-6300"),
        record("hostile", 500, 4.0, 4.1, name="rgba-4000"),
        record("huge", 413, 5.0, 5.2),
        record("slow", 408, 0.0, 30.0),
    ]
    summary = summarize(records, kills)
    good = summary["good"]
    assert (good["sent"], good["answered"], good["lost"]) == (4, 2, 2)
    assert good["lost_by_status"] == {"502": 1, "ConnectError": 1}
    assert good["lost_during_a_kill"] == 1
    assert good["p50_ms"] == pytest.approx(200.0)
    assert summary["hostile"] == {
        "sent": 2,
        "statuses": {"413": 1, "500": 1},
        "as_expected": 1,
        "unexpected": 1,
    }
    assert summary["huge"]["as_expected"] == 1 and summary["slow"]["as_expected"] == 1
    text = table(summary, [], 256 * MiB)
    assert "4 sent, 2 answered, 2 lost (1 while a replica was down" in text


def test_each_worker_has_its_peak_and_median():
    peak = {10: 90 * MiB, 11: 700 * MiB, 12: 400 * MiB}
    history = [(t, 11, (300 + t) * MiB) for t in range(5)] + [(0, 12, 350 * MiB)]
    labels = {11: "r1", 12: "r2"}  # 10: a `bentoml serve` supervisor, not a worker
    rows = worker_memory(peak, history, labels)
    assert [(r["replica"], r["pid"]) for r in rows] == [("r1", 11), ("r2", 12)]
    assert rows[0] == {
        "replica": "r1",
        "pid": 11,
        "peak_mib": 700,
        "median_mib": 302,
        "peak_over_median_mib": 398,
    }


def test_status_of_a_raw_answer():
    assert status_of(b"HTTP/1.1 408 Request Time-out\r\n\r\n") == 408
    assert status_of(b"") is None
    assert status_of(b"garbage") is None
