from datetime import UTC, datetime

import numpy as np
import pandas as pd
import pytest

from model_lib.drift import drift_report
from model_lib.image_stats import STAT_COLUMNS
from model_lib.inference_log import COLUMNS, EVALUATION_SOURCE, InferenceLog
from model_lib.live_evaluation import Outcome, evaluate_outcomes
from model_lib.monitoring import inference_frame, max_neither_share, split_traffic


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


def test_a_pet_photo_answered_neither_counts_as_wrong():
    outcomes = [
        Outcome("a.jpg", "cat", 200, "cat", 5.0, "1"),
        Outcome("b.jpg", "dog", 200, "neither", 7.0, "1"),
        Outcome("c.jpg", "dog", 200, "dog", 6.0, "1"),
        Outcome("d.jpg", "cat", 200, "neither", 6.0, "1"),
    ]
    result = evaluate_outcomes(outcomes, ("cat", "dog"))
    assert result.report["accuracy"] == 0.5
    assert result.answered_neither == 2 and result.metrics()["answered_neither"] == 2
    assert result.report["per_class"]["dog"]["recall"] == 0.5
    assert result.report["per_class"]["cat"]["precision"] == 1.0  # neither is no false cat


def traffic_frame(labels, brightness) -> pd.DataFrame:
    rows = []
    for i, (label, level) in enumerate(zip(labels, brightness, strict=True)):
        stats = {c: 1.0 for c in STAT_COLUMNS} | {"brightness": level}
        rows.append({"request_id": f"r{i}", "source": "user", "label": label} | stats)
    return pd.DataFrame(rows)


def test_traffic_split_keeps_neither_apart_and_warns_above_the_share():
    frame = traffic_frame(["cat", "dog", "neither", "neither", "dog"], [1.0] * 5)
    split = split_traffic(frame)
    assert list(split.pets["label"]) == ["cat", "dog", "dog"]
    assert (split.neither, split.total, split.neither_share) == (2, 5, 0.4)
    assert "non-pet share: 2 of 5 requests (40%)" in split.warning(0.2, min_requests=5)
    assert split.warning(0.4, min_requests=5) is None  # at the level: no warning
    assert split.warning(0.2, min_requests=6) is None  # too few requests to judge
    empty = split_traffic(traffic_frame([], []).reindex(columns=["label"]))
    assert empty.neither_share == 0.0 and empty.warning(0.2, 0) is None


def test_max_neither_share_setting():
    assert max_neither_share({}) == 0.2
    assert max_neither_share({"CATDOG_MAX_NEITHER_SHARE": "0.35"}) == 0.35
    for bad in ("lots", "1.2", "-0.1"):
        with pytest.raises(ValueError, match="CATDOG_MAX_NEITHER_SHARE"):
            max_neither_share({"CATDOG_MAX_NEITHER_SHARE": bad})


def test_drift_is_judged_on_pet_answers_only(tmp_path):
    """A wave of dark non-pet photos drifts the whole window but not the pets in it."""
    rng = np.random.default_rng(0)
    columns = list(STAT_COLUMNS)
    reference = pd.DataFrame(rng.normal(0.5, 0.1, (300, len(columns))), columns=columns)
    pets = pd.DataFrame(rng.normal(0.5, 0.1, (120, len(columns))), columns=columns)
    others = pd.DataFrame(rng.normal(0.1, 0.05, (200, len(columns))), columns=columns)
    window = pd.concat([pets.assign(label="cat"), others.assign(label="neither")])
    whole = drift_report(reference, window, tmp_path / "whole.html")
    split = split_traffic(window)
    assert whole.detected  # what the platform did before: an alarm, and a retraining
    assert split.neither_share == pytest.approx(200 / 320)
    assert not drift_report(reference, split.pets, tmp_path / "pets.html").detected
    darker_pets = pets.assign(label="dog") * 1  # shifted pet photos still drift
    darker_pets[columns] = darker_pets[columns] - 0.3
    assert drift_report(reference, split_traffic(darker_pets).pets, tmp_path / "d.html").detected


def test_the_inference_log_keeps_neither_answers_for_the_split(tmp_path):
    log = InferenceLog(tmp_path / "log.sqlite")
    base = {"source": "user", "confidence": 0.9, "model_name": "m", "model_version": "1"}
    base |= {"timestamp": datetime.now(UTC)} | dict.fromkeys(STAT_COLUMNS, 1.0)
    for i, label in enumerate(["cat", "neither", "dog", "neither"]):
        log.append(base | {"request_id": f"r{i}", "label": label})
    split = split_traffic(inference_frame(log))
    assert (split.neither, split.total) == (2, 4)
    assert sorted(split.pets["label"]) == ["cat", "dog"]
