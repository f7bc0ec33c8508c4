"""New labelled photos -> the dataset -> a new DVC data version, all or nothing,
even when the process is killed (SIGKILL, power cut) at any line.

A batch folder holds `<batch>/<class>/*.jpg` with the dataset's class names.
Each file passes the checks training data passes (model_lib.data: decodes,
not a byte-identical copy of a file already in the dataset or earlier in the
batch); a bad file, and any symlink, is reported by name and left out.

How a new version becomes current (`ingest`):

1. stage: a complete new tree `.ingest-staging/data` beside the dataset (same file
   system): hard links of every current file plus copies of the new ones, checked
   again there; `dvc add` on it writes `.ingest-staging/data.dvc` (and fills the
   DVC cache), `dvc push` of that file stores the new version on the remote (with
   a timeout). Until here nothing the dataset's readers see has changed: a failure
   or a kill leaves the previous version current, and the next run deletes the
   staging folder.
2. commit: the journal `.ingest-journal.json` appears by one atomic rename (written
   and fsynced first). From then on the new version is the current one: whoever
   finds the journal (the next ingest, or `recover`) finishes the steps below.
3. apply, each step atomic and safe to repeat: the new tree and `data/` swap places
   in one `renameat2(RENAME_EXCHANGE)` (so `data/` is always one whole version,
   never a mix), `.ingest-staging/data.dvc` replaces `data.dvc` (rename), the
   journal and the staging folder (now the old tree) are deleted.

`recover(data_root)` does what an interrupted run left to do; `ingest` calls it
first. A trainer that must never see `data/` and `data.dvc` disagree (between the
two renames of step 3, after a kill) calls it before reading.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import shutil
import signal
import subprocess
import sys
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

from model_lib import data as data_lib
from model_lib.files import atomic_write_text, fsync_dir

STAGING_NAME = ".ingest-staging"
JOURNAL_NAME = ".ingest-journal.json"
DVC_TIMEOUT_SECONDS = 600  # `dvc add` of the staged tree
PUSH_TIMEOUT_SECONDS = 600  # `dvc push` of the new version
# Tests only: the name of a step (see `_step`) at which the process SIGKILLs itself.
KILL_AT_ENV = "CATDOG_TEST_INGEST_KILL_AT"


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
    recovered: str | None = None  # what an interrupted earlier run left, and was done

    @property
    def changed(self) -> bool:
        return bool(self.added)

    def to_dict(self) -> dict:
        return asdict(self) | {"changed": self.changed}

    def write_json(self, path: str | Path) -> Path:
        return atomic_write_text(path, json.dumps(self.to_dict(), indent=2))


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
        if entry.is_symlink():  # could point anywhere: /etc, another user's files
            report.rejected.append({"file": str(entry), "reason": "a symlink (refused)"})
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
            if path.is_symlink():
                report.rejected.append({"file": str(path), "reason": "a symlink (refused)"})
                continue
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


def run_dvc(args: list[str], cwd: Path, timeout: float = DVC_TIMEOUT_SECONDS) -> None:
    try:
        result = subprocess.run(
            [sys.executable, "-m", "dvc", *args],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        raise IngestError(f"`dvc {' '.join(args)}` did not finish within {timeout:g} s") from None
    if result.returncode != 0:
        raise IngestError(
            f"`dvc {' '.join(args)}` failed in {cwd}: {(result.stderr or result.stdout).strip()}"
        )


def ingest(
    source: str | Path,
    data_root: str | Path,
    dvc_remote: str | None,
    push: bool = True,
    push_timeout: float = PUSH_TIMEOUT_SECONDS,
) -> IngestReport:
    """Add the batch's good files and record a new DVC version (see the module docstring).

    `dvc_remote`: the remote `dvc push` writes to (None: the repo's default).
    Re-ingesting a batch adds nothing (every file is a duplicate) and leaves
    the version as it is."""
    data_root = Path(data_root).resolve()
    recovered = recover(data_root)
    report, planned = plan(source, data_root)
    report.recovered = recovered
    report.data_version_after = report.data_version_before
    if not planned:
        return report

    repo = data_root.parent
    staging = repo / STAGING_NAME
    tree = staging / data_root.name
    staged_dvc = dvc_file_for(tree)
    try:
        _link_tree(data_root, tree)
        for item in planned:
            target = tree / item.dest
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(item.source, target)  # a new file: never a link into the batch
            # What moves in is the staged copy: check it, not the original.
            if data_lib.content_hash(target.read_bytes()) != item.digest:
                raise IngestError(f"{item.source} changed while it was being copied")
        _step("staged")
        run_dvc(["add", "--quiet", str(tree.relative_to(repo))], repo)
        _step("added")
        if push:
            remote = ["--remote", dvc_remote] if dvc_remote else []
            run_dvc(
                ["push", "--quiet", str(staged_dvc.relative_to(repo)), *remote],
                repo,
                timeout=push_timeout,
            )
        _step("pushed")
    except BaseException as exc:
        shutil.rmtree(staging, ignore_errors=True)
        if isinstance(exc, IngestError):
            raise IngestError(f"{exc}. The dataset is unchanged (previous version kept).") from None
        raise
    journal = {"tree": str(tree), "tree_inode": tree.stat().st_ino, "dvc_file": str(staged_dvc)}
    atomic_write_text(repo / JOURNAL_NAME, json.dumps(journal))  # the commit point
    _step("committed")
    _apply(data_root)
    report.added = [item.dest for item in planned]
    report.data_version_after = data_lib.dvc_data_version(dvc_file_for(data_root))
    return report


def recover(data_root: str | Path) -> str | None:
    """Finish (journal present) or clean up (staging only) an interrupted ingest;
    returns what it did, or None when there was nothing to do."""
    data_root = Path(data_root).resolve()
    repo = data_root.parent
    if (repo / JOURNAL_NAME).exists():
        _apply(data_root)
        return "completed the interrupted ingest (its new version is current)"
    if (repo / STAGING_NAME).exists():
        shutil.rmtree(repo / STAGING_NAME)
        return "removed an interrupted ingest's staging folder (the previous version is current)"
    return None


def _apply(data_root: Path) -> None:
    """Step 3 of the module docstring: idempotent, so it can be repeated after a kill."""
    repo = data_root.parent
    journal = json.loads((repo / JOURNAL_NAME).read_text())
    tree, staged_dvc = Path(journal["tree"]), Path(journal["dvc_file"])
    if not data_root.exists():  # killed between the two renames of the fallback below
        os.rename(tree, data_root)
    elif data_root.stat().st_ino != journal["tree_inode"]:  # not swapped yet
        _exchange(tree, data_root)
    fsync_dir(repo)
    _step("swapped")
    if staged_dvc.exists():
        os.replace(staged_dvc, dvc_file_for(data_root))
        fsync_dir(repo)
    _step("replaced")
    (repo / JOURNAL_NAME).unlink()
    fsync_dir(repo)
    shutil.rmtree(repo / STAGING_NAME, ignore_errors=True)


def _link_tree(source: Path, target: Path) -> None:
    """`target` as a copy of `source` made of hard links (instant, no extra space)."""
    shutil.rmtree(target.parent, ignore_errors=True)
    target.parent.mkdir(parents=True)
    shutil.copytree(source, target, copy_function=os.link, symlinks=True)


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _exchange(a: Path, b: Path) -> None:
    """Swap two paths atomically (Linux renameat2 RENAME_EXCHANGE); elsewhere, two
    renames (a reader may then find `b` missing for an instant, never half of it)."""
    libc = ctypes.CDLL(None, use_errno=True)
    renameat2 = getattr(libc, "renameat2", None)
    if renameat2 is not None:
        if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
            return
        code = ctypes.get_errno()
        if code not in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):
            raise OSError(code, os.strerror(code), f"{a} <-> {b}")
    aside = a.with_name(a.name + ".old")
    os.rename(b, aside)
    os.rename(a, b)
    os.rename(aside, a)


def _step(name: str) -> None:
    """A named point of `ingest`; the fault-injection test kills the process here."""
    if os.environ.get(KILL_AT_ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)
