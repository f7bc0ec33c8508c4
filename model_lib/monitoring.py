"""Monitoring: the recent traffic, read from the inference log and split by answer.
The drift test on it is model_lib.drift's (Evidently, imported only where drift is
computed); scoring a labelled folder through the live service is
model_lib.live_evaluation's.

Traffic is split by answer first (`split_traffic`): the share answered `neither`
is its own figure (people upload other things: a warning, not a reason to
retrain), and drift is judged on the requests answered cat or dog only, so a
wave of non-pet uploads does not look like pet photos that changed.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import pandas as pd

from model_lib.decision import NEITHER
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


def inference_frame(
    log: InferenceLog, since: datetime | None = None, exclude_sources=PLATFORM_SOURCES
) -> pd.DataFrame:
    """`InferenceLog.query` as a DataFrame with a UTC `timestamp` column."""
    frame = pd.DataFrame(log.query(since, exclude_sources), columns=list(COLUMNS))
    frame["timestamp"] = pd.to_datetime(frame["timestamp"], unit="s", utc=True)
    return frame
