"""The `data/<class>/*.jpg` image pool: finding, validating, splitting, and loading
it into memory for training (NumPy + Pillow, torch-free)."""

from __future__ import annotations

import hashlib
import json
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from model_lib.preprocess import ImageRejected, Preprocessing, decode_image, normalize, resize

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png"})


class DataError(RuntimeError):
    """The data is missing or unusable; the message says what to do."""


@dataclass(frozen=True)
class LabeledImage:
    path: Path
    label: int


def discover_images(root: str | Path) -> tuple[list[LabeledImage], tuple[str, ...]]:
    """List images under `root/<class>/`; class names are the sorted folder names."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(
            f"data folder {root} does not exist: run `dvc pull` (or `make data`) "
            "in the project root"
        )
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if len(class_dirs) < 2:
        raise DataError(
            f"{root} must hold one folder per class (e.g. cat/, dog/); found "
            f"{[p.name for p in class_dirs]}. Run `dvc pull` if the data has not been fetched."
        )
    class_names = tuple(p.name for p in class_dirs)
    items = [
        LabeledImage(path, label)
        for label, class_dir in enumerate(class_dirs)
        for path in sorted(class_dir.iterdir())
        if path.suffix.lower() in IMAGE_SUFFIXES
    ]
    if not items:
        raise DataError(f"no images found under {root}: run `dvc pull`")
    return items, class_names


def stable_bucket(name: str, salt: str = "") -> int:
    """0..99 from a hash of the file name: the same on every machine and every run."""
    digest = hashlib.sha256(f"{salt}{name}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % 100


def is_validation(path: Path, val_percent: int) -> bool:
    return stable_bucket(path.name, salt="split:") < val_percent


def split(
    items: list[LabeledImage], val_percent: int = 20, fraction: float = 1.0
) -> tuple[list[LabeledImage], list[LabeledImage]]:
    """Deterministic train/validation split by file name.

    `fraction` keeps a hash-selected subset; a smaller fraction's images are a
    subset of a larger one's, and the split of a file never depends on it.
    """
    kept = [i for i in items if stable_bucket(i.path.name, salt="fraction:") < fraction * 100]
    train = [i for i in kept if not is_validation(i.path, val_percent)]
    val = [i for i in kept if is_validation(i.path, val_percent)]
    return train, val


def split_fingerprint(items: list[LabeledImage]) -> str:
    """Short hash identifying exactly which files a split holds."""
    names = "\n".join(sorted(i.path.name for i in items))
    return hashlib.sha256(names.encode()).hexdigest()[:16]


def content_hash(data: bytes) -> str:
    """Identity of a file's bytes: equal hashes are duplicates (what DVC hashes too)."""
    return hashlib.md5(data).hexdigest()


@dataclass
class ValidationReport:
    root: str
    class_names: list[str]
    total_files: int
    class_counts: dict[str, int]
    corrupt: list[dict] = field(default_factory=list)  # {"path", "error"}
    duplicate_groups: list[list[str]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # reasons the data is unusable

    @property
    def ok(self) -> bool:
        return not self.errors

    @property
    def excluded(self) -> set[str]:
        """Files training must skip: corrupt ones, and all but the first of each duplicate group."""
        dropped = {c["path"] for c in self.corrupt}
        for group in self.duplicate_groups:
            dropped.update(group[1:])
        return dropped

    def to_dict(self) -> dict:
        return asdict(self) | {"ok": self.ok, "excluded_count": len(self.excluded)}

    def write_json(self, path: str | Path) -> Path:
        path = Path(path)
        path.write_text(json.dumps(self.to_dict(), indent=2))
        return path


def validate_images(
    items: list[LabeledImage],
    class_names: tuple[str, ...],
    root: str | Path,
    min_per_class: int = 10,
    max_corrupt_share: float = 0.01,
    progress=None,
) -> ValidationReport:
    """Decode every file, find byte-identical duplicates, count classes.

    Corrupt files and extra copies of duplicates are reported and excluded;
    the data is declared unusable when a class is too small or when more than
    `max_corrupt_share` of the files do not decode (a sign of a broken pull).
    """
    by_hash: dict[str, list[str]] = defaultdict(list)
    corrupt = []
    iterator = progress(items) if progress else items
    for item in iterator:
        data = item.path.read_bytes()
        by_hash[content_hash(data)].append(str(item.path))
        try:
            decode_image(data)
        except ImageRejected as exc:
            corrupt.append({"path": str(item.path), "error": str(exc)})

    duplicate_groups = [sorted(paths) for paths in by_hash.values() if len(paths) > 1]
    report = ValidationReport(
        root=str(root),
        class_names=list(class_names),
        total_files=len(items),
        class_counts={},
        corrupt=corrupt,
        duplicate_groups=sorted(duplicate_groups),
    )
    excluded = report.excluded
    counts = Counter(class_names[i.label] for i in items if str(i.path) not in excluded)
    report.class_counts = {name: counts.get(name, 0) for name in class_names}

    for name, count in report.class_counts.items():
        if count < min_per_class:
            report.errors.append(f"class {name!r} has {count} usable images (< {min_per_class})")
    if items and len(corrupt) / len(items) > max_corrupt_share:
        report.errors.append(
            f"{len(corrupt)} of {len(items)} files do not decode (> {max_corrupt_share:.0%}): "
            "the data looks damaged; run `dvc pull --force` to restore it"
        )
    return report


def usable(items: list[LabeledImage], report: ValidationReport) -> list[LabeledImage]:
    excluded = report.excluded
    return [i for i in items if str(i.path) not in excluded]


def dvc_data_version(dvc_file: str | Path = "data.dvc") -> str:
    """The md5 that `data.dvc` pins: the data version a run was trained on."""
    path = Path(dvc_file)
    if not path.exists():
        return "unknown"
    for line in path.read_text().splitlines():
        line = line.strip().lstrip("- ")
        if line.startswith("md5:"):
            return line.split(":", 1)[1].strip()
    return "unknown"


# Training images are stored this much larger (256 px for 224), so that a
# random crop of the model's size is a cheap zoom and shift (training.augment).
TRAIN_MARGIN = 8 / 7


def load_pixels(items: list[LabeledImage], image_size: int, progress=None) -> np.ndarray:
    """Decode and resize every image once: uint8 array (N, S, S, 3)."""
    pixels = np.empty((len(items), image_size, image_size, 3), np.uint8)
    iterator = progress(items) if progress else items
    for index, item in enumerate(iterator):
        pixels[index] = resize(decode_image(item.path.read_bytes()), image_size)
    return pixels


def labels_of(items: list[LabeledImage]) -> np.ndarray:
    return np.asarray([i.label for i in items], np.int64)


@dataclass
class PreparedData:
    train_pixels: np.ndarray  # uint8 NHWC, resized to image_size * TRAIN_MARGIN
    train_labels: np.ndarray
    val_inputs: np.ndarray  # float32 NCHW, the eval transform's output
    val_labels: np.ndarray


def prepare_data(train_items, val_items, prep: Preprocessing, progress=None) -> PreparedData:
    """Both splits in memory; validation input is what the service would compute."""
    train_pixels = load_pixels(train_items, round(prep.image_size * TRAIN_MARGIN), progress)
    val_pixels = load_pixels(val_items, prep.image_size, progress)
    return PreparedData(
        train_pixels=train_pixels,
        train_labels=labels_of(train_items),
        # Same arithmetic as preprocess.to_model_input (resize then normalize), batched.
        val_inputs=normalize(val_pixels, prep),
        val_labels=labels_of(val_items),
    )
