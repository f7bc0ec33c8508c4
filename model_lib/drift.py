"""Drift of recent traffic against the training reference: an Evidently data-drift
report on the image statistic columns.

Its own module because Evidently is the slowest import of the evaluation flow: an
evaluation that stops before the drift test (service down, too few requests answered
cat or dog) and `prefect deploy`, which imports every flow, never load it.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

from evidently import DataDefinition, Dataset, Report
from evidently.presets import DataDriftPreset

from model_lib.image_stats import STAT_COLUMNS


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
