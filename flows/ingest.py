"""Prefect flow `ingest` (deployment `ingest/labelled`): a folder of newly labelled
photos becomes a new DVC data version, announced by `catdog.data.new-version`.

Thin adapter over model_lib.ingest. `data_root` defaults to $CATDOG_DATA_DIR or
`data` (tests point it at a temporary copy); `dvc_remote` to $CATDOG_DVC_REMOTE
(the remote `dvc push` writes to; see README "Closing the loop").
"""

from __future__ import annotations

import os

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact

from flows import events
from model_lib.ingest import IngestReport, ingest


@flow(name="ingest")
def ingest_labelled(
    folder: str, data_root: str | None = None, dvc_remote: str | None = None
) -> dict:
    """Validate `folder/<class>/*.jpg`, add the good new files, `dvc add` + `dvc push`."""
    logger = get_run_logger()
    data_root = data_root or os.environ.get("CATDOG_DATA_DIR", "data")
    dvc_remote = dvc_remote or os.environ.get("CATDOG_DVC_REMOTE") or None
    report = ingest(folder, data_root, dvc_remote)
    if report.recovered:
        logger.warning("an earlier ingest was interrupted: %s", report.recovered)
    for bad in report.rejected:
        logger.warning("rejected %s: %s", bad["file"], bad["reason"])
    for dup in report.duplicates:
        logger.info("skipped %s: same bytes as %s", dup["file"], dup["same_as"])
    logger.info(
        "%d files added; data version %s -> %s; classes %s",
        len(report.added),
        report.data_version_before,
        report.data_version_after,
        report.class_counts_after,
    )
    create_markdown_artifact(
        key="ingest-report", markdown=_markdown(report), description="Labelled batch ingest"
    )
    if report.changed:
        events.emit(
            events.DATA_NEW_VERSION,
            events.data_resource(report.data_version_after, role=None),
            {
                "data_version": report.data_version_after,
                "previous_data_version": report.data_version_before,
                "files_added": len(report.added),
                "added": report.added[:50],
                "rejected": report.rejected,
                "duplicates": len(report.duplicates),
                "class_counts": report.class_counts_after,
            },
            [events.data_resource(report.data_version_before, role="previous-data-version")],
        )
    return report.to_dict()


def _markdown(report: IngestReport) -> str:
    lines = [
        f"# Ingest of `{report.source}`: {len(report.added)} files added",
        "",
        f"- data version: `{report.data_version_before}` -> `{report.data_version_after}`",
        f"- classes before: {report.class_counts_before}, after: {report.class_counts_after}",
        f"- duplicates skipped: {len(report.duplicates)}",
        "",
    ]
    if report.rejected:
        lines += ["| rejected file | reason |", "|---|---|"]
        lines += [f"| `{r['file']}` | {r['reason']} |" for r in report.rejected]
    return "\n".join(lines)


if __name__ == "__main__":
    import sys

    ingest_labelled(sys.argv[1])
