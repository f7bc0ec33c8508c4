from datetime import UTC, datetime

import pandas as pd

from model_lib.image_stats import STAT_COLUMNS
from model_lib.inference_log import COLUMNS, EVALUATION_SOURCE, InferenceLog
from model_lib.monitoring import Outcome, evaluate_outcomes, inference_frame


def test_failed_requests_count_as_wrong():
    outcomes = [
        Outcome("a.jpg", "cat", 200, "cat", 5.0, "1"),
        Outcome("b.jpg", "dog", 200, "dog", 7.0, "1"),
        Outcome("c.jpg", "dog", 200, "cat", 6.0, "1"),
        Outcome("d.jpg", "cat", 0, error="ConnectError"),
    ]
    result = evaluate_outcomes(outcomes, ("cat", "dog"))
    assert result.report["accuracy"] == 0.5
    assert result.errors == 1 and result.requests == 4
    assert result.model_versions == ["1"]
    assert result.latency["latency_p50_ms"] == 6.0


def test_inference_frame_has_every_column_and_utc_timestamps(tmp_path):
    log = InferenceLog(tmp_path / "log.sqlite")
    empty = inference_frame(log)
    assert empty.empty and list(empty.columns) == list(COLUMNS)
    when = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    row = {"request_id": "r1", "source": "user", "label": "cat", "confidence": 0.9}
    row |= {"model_name": "m", "model_version": "1", "timestamp": when}
    log.append(row | {c: 1.0 for c in STAT_COLUMNS})
    log.append(
        row | {"request_id": "e1", "source": EVALUATION_SOURCE} | dict.fromkeys(STAT_COLUMNS, 1.0)
    )
    frame = inference_frame(log)
    assert list(frame["request_id"]) == ["r1"]  # evaluation traffic left out by default
    assert frame["timestamp"].iloc[0] == pd.Timestamp(when)
    assert str(frame["timestamp"].dt.tz) == "UTC"
