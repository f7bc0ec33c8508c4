"""Monitoring: compare recent inference statistics with the training reference
(Evidently). Scoring a labelled folder through the live service is
model_lib.live_evaluation's (the rollout needs it without Evidently's import cost).

Traffic is split by answer first (`split_traffic`): the share answered `neither`
is its own figure (people upload other things: a warning, not a reason to
retrain), and drift is judged on the requests answered cat or dog only, so a
wave of non-pet uploads does not look like pet photos that changed.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import pandas as pd

from model_lib.decision import NEITHER
from model_lib.image_stats import STAT_COLUMNS
from model_lib.inference_log import COLUMNS, PLATFORM_SOURCES, InferenceLog
from model_lib.settings import LoopSettings


# Above this share of `neither` answers in the window, the evaluation warns (event
# catdog.traffic.non-pet-share, Prometheus alert CatdogNonPetShareHigh). A model that
# meets its target answers `neither` for <= 0.5 % of pet photos, so a fifth of the
# traffic is people uploading other things, not noise. CATDOG_MAX_NEITHER_SHARE
# (model_lib.settings.LoopSettings) sets it.
def max_neither_share(environ=None) -> float:
    """$CATDOG_MAX_NEITHER_SHARE (0..1; unset or empty: 0.2)."""
    return LoopSettings.from_env(environ).max_neither_share


@dataclass
class TrafficSplit:
    """The window's user requests split by answer."""

    pets: pd.DataFrame  # answered cat or dog: what drift is judged on
    neither: int  # answered `neither`
    total: int

    @property
    def neither_share(self) -> float:
        return self.neither / self.total if self.total else 0.0

    def warning(self, max_share: float, min_requests: int) -> str | None:
        """The non-pet warning, or None: on at least `min_requests` requests, more
        than `max_share` of them answered `neither`."""
        if self.total < min_requests or self.neither_share <= max_share:
            return None
        return (
            f"non-pet share: {self.neither} of {self.total} requests "
            f"({self.neither_share:.0%}) were answered '{NEITHER}' (warning above "
            f"{max_share:.0%}); people are uploading photos that are not pets. Drift "
            f"was judged on the {len(self.pets)} answered cat or dog"
        )


def split_traffic(frame: pd.DataFrame) -> TrafficSplit:
    """Requests answered `neither` apart from those answered with a pet."""
    is_neither = frame["label"] == NEITHER
    return TrafficSplit(frame[~is_neither], int(is_neither.sum()), len(frame))


@dataclass
class DriftResult:
    drifted_columns: list[str]
    p_values: dict[str, float]
    share: float
    drift_share: float
    detected: bool
    current_rows: int
    reference_rows: int


def drift_report(
    reference, current, html_path: str | Path, drift_share: float = 0.3, threshold: float = 0.05
) -> DriftResult:
    """Evidently data-drift report on the image statistic columns.

    The test is pinned to Kolmogorov-Smirnov (Evidently would otherwise switch
    method with sample size), and dataset drift is declared when at least
    `drift_share` of the 11 columns drift: a darker or greyscale stream moves
    4-7 of them, chance alone rarely moves more than one at p < 0.05.
    """
    # Imported here, not at the top: Evidently is the slowest import of the
    # evaluation flow, and an evaluation that stops before drift (service down,
    # too few requests answered cat or dog) never needs it.
    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset

    columns = list(STAT_COLUMNS)
    definition = DataDefinition(numerical_columns=columns)
    report = Report(
        [DataDriftPreset(num_method="ks", num_threshold=threshold, drift_share=drift_share)]
    )
    with warnings.catch_warnings():
        # Constant columns (all training photos are 200x200) make numpy warn
        # about a zero std in correlations; the KS test itself is fine.
        warnings.simplefilter("ignore", RuntimeWarning)
        snapshot = report.run(
            current_data=Dataset.from_pandas(current[columns], data_definition=definition),
            reference_data=Dataset.from_pandas(reference[columns], data_definition=definition),
        )
    snapshot.save_html(str(html_path))
    p_values, share = {}, 0.0
    for metric in snapshot.dict()["metrics"]:
        config = metric["config"]
        if config["type"].endswith("ValueDrift"):
            p_values[config["column"]] = float(metric["value"])
        elif config["type"].endswith("DriftedColumnsCount"):
            share = float(metric["value"]["share"])
    drifted = sorted(c for c, p in p_values.items() if p < threshold)
    return DriftResult(
        drifted, p_values, share, drift_share, share >= drift_share, len(current), len(reference)
    )


def inference_frame(
    log: InferenceLog, since: datetime | None = None, exclude_sources=PLATFORM_SOURCES
) -> pd.DataFrame:
    """`InferenceLog.query` as a DataFrame with a UTC `timestamp` column."""
    frame = pd.DataFrame(log.query(since, exclude_sources), columns=list(COLUMNS))
    frame["timestamp"] = pd.to_datetime(frame["timestamp"], unit="s", utc=True)
    return frame
