"""New labelled photos -> the dataset -> a new DVC data version, all or nothing.

A batch folder holds `<batch>/<class>/*.jpg` with the dataset's class names.
Each file passes the checks training data passes (model_lib.data: decodes,
not a byte-identical copy of a file already in the dataset or earlier in the
batch); a bad file is reported by name and left out. The good files are
copied to a staging folder next to the dataset (same file system, so the move
in is a rename), checked again there, moved in, then `dvc add` records the
new version and `dvc push` stores it. If anything fails after the first file
moved in, the moved files are taken out again and `data.dvc` is restored: the
previous version stays the current one.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

from model_lib import data as data_lib

STAGING_NAME = ".ingest-staging"


class IngestError(RuntimeError):
    """The batch could not be ingested; the dataset is unchanged; the message says why."""


@dataclass
class IngestReport:
    source: str
    data_root: str
    added: list[str] = field(default_factory=list)  # paths relative to data_root
    rejected: list[dict] = field(default_factory=list)  # {"file", "reason"}
    duplicates: list[dict] = field(default_factory=list)  # {"file", "same_as"}
    class_counts_before: dict[str, int] = field(default_factory=dict)
    class_counts_after: dict[str, int] = field(default_factory=dict)
    data_version_before: str = "unknown"
    data_version_after: str = "unknown"

    @property
    def changed(self) -> bool:
        return bool(self.added)

    def to_dict(self) -> dict:
        return asdict(self) | {"changed": self.changed}

    def write_json(self, path: str | Path) -> Path:
        path = Path(path)
        path.write_text(json.dumps(self.to_dict(), indent=2))
        return path


@dataclass(frozen=True)
class Planned:
    source: Path
    dest: str  # relative to data_root: <class>/<name>
    digest: str


def dvc_file_for(data_root: Path) -> Path:
    return data_root.with_suffix(".dvc")


def plan(source: str | Path, data_root: str | Path) -> tuple[IngestReport, list[Planned]]:
    """Check every file of the batch against the dataset; nothing is written."""
    source, data_root = Path(source), Path(data_root)
    if not source.is_dir():
        raise IngestError(f"batch folder {source} does not exist")
    existing, class_names = data_lib.discover_images(data_root)
    report = IngestReport(
        source=str(source),
        data_root=str(data_root),
        data_version_before=data_lib.dvc_data_version(dvc_file_for(data_root)),
    )
    report.class_counts_before = dict(Counter(class_names[i.label] for i in existing))
    for name in class_names:
        report.class_counts_before.setdefault(name, 0)

    candidates = []
    for entry in sorted(source.iterdir()):
        if entry.name.startswith("."):
            continue
        if not entry.is_dir() or entry.name not in class_names:
            report.rejected.append(
                {
                    "file": str(entry),
                    "reason": f"not a class folder of the dataset (classes: {list(class_names)})",
                }
            )
            continue
        for path in sorted(entry.iterdir()):
            if path.suffix.lower() not in data_lib.IMAGE_SUFFIXES or not path.is_file():
                report.rejected.append({"file": str(path), "reason": "not an image file"})
                continue
            candidates.append(data_lib.LabeledImage(path, class_names.index(entry.name)))

    # The same decode and duplicate checks as training data gets.
    validation = data_lib.validate_images(candidates, class_names, source, min_per_class=0)
    for bad in validation.corrupt:
        report.rejected.append({"file": bad["path"], "reason": bad["error"]})
    for group in validation.duplicate_groups:
        for copy in group[1:]:
            report.duplicates.append({"file": copy, "same_as": group[0]})
    excluded = validation.excluded

    known = {data_lib.content_hash(i.path.read_bytes()): i.path for i in existing}
    taken = {str(i.path.relative_to(data_root)) for i in existing}
    planned = []
    for item in candidates:
        if str(item.path) in excluded:
            continue
        digest = data_lib.content_hash(item.path.read_bytes())
        if digest in known:
            report.duplicates.append(
                {"file": str(item.path), "same_as": str(known[digest].relative_to(data_root))}
            )
            continue
        dest = f"{class_names[item.label]}/{item.path.name}"
        if dest in taken:  # same name, other content: keep both, the new one renamed
            dest = f"{class_names[item.label]}/{item.path.stem}-{digest[:8]}{item.path.suffix}"
        taken.add(dest)
        planned.append(Planned(item.path, dest, digest))
    counts = Counter(p.dest.split("/", 1)[0] for p in planned)
    report.class_counts_after = {
        name: report.class_counts_before[name] + counts.get(name, 0) for name in class_names
    }
    return report, planned


def run_dvc(args: list[str], cwd: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "dvc", *args], cwd=cwd, capture_output=True, text=True
    )
    if result.returncode != 0:
        raise IngestError(
            f"`dvc {' '.join(args)}` failed in {cwd}: {(result.stderr or result.stdout).strip()}"
        )


def ingest(
    source: str | Path, data_root: str | Path, dvc_remote: str | None, push: bool = True
) -> IngestReport:
    """Add the batch's good files and record a new DVC version (see the module docstring).

    `dvc_remote`: the remote `dvc push` writes to (None: the repo's default).
    Re-ingesting a batch adds nothing (every file is a duplicate) and leaves
    the version as it is."""
    data_root = Path(data_root).resolve()
    report, planned = plan(source, data_root)
    report.data_version_after = report.data_version_before
    if not planned:
        return report

    repo = data_root.parent
    dvc_file = dvc_file_for(data_root)
    previous_dvc_file = dvc_file.read_text() if dvc_file.exists() else None
    staging = repo / STAGING_NAME
    shutil.rmtree(staging, ignore_errors=True)
    moved: list[Path] = []
    try:
        for item in planned:
            target = staging / item.dest
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(item.source, target)
            # What moves in is the staged copy: check it, not the original.
            if data_lib.content_hash(target.read_bytes()) != item.digest:
                raise IngestError(f"{item.source} changed while it was being copied")
        for item in planned:
            final = data_root / item.dest
            os.replace(staging / item.dest, final)
            moved.append(final)
        run_dvc(["add", "--quiet", data_root.name], repo)
        if push:
            remote = ["--remote", dvc_remote] if dvc_remote else []
            run_dvc(["push", "--quiet", dvc_file.name, *remote], repo)
    except BaseException as exc:
        for path in moved:
            path.unlink(missing_ok=True)
        if previous_dvc_file is not None:
            dvc_file.write_text(previous_dvc_file)
        if isinstance(exc, IngestError):
            raise IngestError(f"{exc}. The dataset is unchanged (previous version kept).") from None
        raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    report.added = [item.dest for item in planned]
    report.data_version_after = data_lib.dvc_data_version(dvc_file)
    return report
