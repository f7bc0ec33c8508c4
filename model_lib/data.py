"""The `data/<class>/*.jpg` image pool: finding, validating, splitting, and loading
it into memory for training (NumPy + Pillow, torch-free)."""

from __future__ import annotations

import hashlib
import json
import os
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from model_lib.files import atomic_write_text
from model_lib.preprocess import (
    ImageRejected,
    Preprocessing,
    decode_image,
    eval_pixels,
    normalize,
    resize,
)

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png"})


class DataError(RuntimeError):
    """The data is missing or unusable; the message says what to do."""


def map_photos(function: Callable, items: Iterable, progress=None) -> Iterator:
    """`function` over `items`, in order, on one thread per core: Pillow's decoding and
    resizing and hashlib release the GIL, so reading the pool is not single-core."""
    with ThreadPoolExecutor(os.cpu_count() or 1) as pool:
        results = pool.map(function, items)
        yield from progress(results) if progress else results


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


# Two photos whose 16x16 grayscale thumbnails (mean removed, unit norm) have a
# cosine similarity of at least this, as they are or mirrored, are one photo (a
# resized, recompressed or lightly edited copy): they always share a split, so
# the test split never holds a copy of a training photo. On the pool, the 7
# such pairs score 0.999-1.0 and the closest distinct photos below 0.92.
NEAR_DUPLICATE_SIMILARITY = 0.95


def thumbnail(path: Path) -> np.ndarray:
    """16x16 grayscale, mean removed, unit norm (decoded reduced: JPEG draft)."""
    with Image.open(path) as image:
        image.draft("L", (64, 64))
        pixels = image.convert("L").resize((16, 16), Image.Resampling.BILINEAR)
    vector = np.asarray(pixels, np.float32).ravel()
    vector -= vector.mean()
    return vector / (np.linalg.norm(vector) + 1e-6)


def _thumbnail_or_noise(path: Path) -> np.ndarray:
    """A file that does not decode matches nothing (validation reports it)."""
    try:
        return thumbnail(path).reshape(16, 16)
    except Exception:  # noqa: BLE001 - corrupt files are validation's to report
        return np.zeros((16, 16), np.float32)


def near_duplicate_keys(items: list[LabeledImage], progress=None) -> dict[Path, str]:
    """Each image's group key: the smallest file name among the images it is a near
    duplicate of (transitively), so a group shares one key and one split."""
    paths = [item.path for item in items]
    thumbs = np.stack(list(map_photos(_thumbnail_or_noise, paths, progress))).reshape(-1, 256)
    mirrored = thumbs.reshape(-1, 16, 16)[:, :, ::-1].reshape(-1, 256)
    parent = list(range(len(items)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for start in range(0, len(items), 1024):
        block = thumbs[start : start + 1024]
        similar = np.maximum(block @ thumbs.T, block @ mirrored.T) >= NEAR_DUPLICATE_SIMILARITY
        for row, col in zip(*np.nonzero(similar), strict=True):
            if row + start < col:
                parent[root(row + start)] = root(col)
    smallest: dict[int, str] = {}
    for index, item in enumerate(items):
        key = root(index)
        smallest[key] = min(smallest.get(key, item.path.name), item.path.name)
    return {item.path: smallest[root(index)] for index, item in enumerate(items)}


SPLITS = ("train", "val", "test")


def split_of(key: str, val_percent: int, test_percent: int) -> str:
    """`test` for the first test_percent hash buckets, `val` for the next val_percent."""
    bucket = stable_bucket(key, salt="split:")
    if bucket < test_percent:
        return "test"
    return "val" if bucket < test_percent + val_percent else "train"


@dataclass
class Split:
    train: list[LabeledImage]
    val: list[LabeledImage]
    test: list[LabeledImage]


def split(
    items: list[LabeledImage],
    val_percent: int = 15,
    test_percent: int = 15,
    fraction: float = 1.0,
    group_keys: dict[Path, str] | None = None,
) -> Split:
    """Deterministic train / validation / test split.

    A file's split is a hash of its group key (by default its own name; pass
    `near_duplicate_keys(items)` so that copies share a split): the same on
    every machine and run, stratified in expectation (each class's files fall
    in the buckets independently), and stable when data is added, so a test
    photo never becomes a training photo after an ingest. `fraction` keeps a
    hash-selected subset; a smaller fraction's images are a subset of a larger
    one's, and the split of a file never depends on it.
    """
    keys = group_keys or {}
    parts: dict[str, list[LabeledImage]] = {name: [] for name in SPLITS}
    for item in items:
        key = keys.get(item.path, item.path.name)
        if stable_bucket(key, salt="fraction:") < fraction * 100:
            parts[split_of(key, val_percent, test_percent)].append(item)
    return Split(**parts)


# Photos that are neither are split by kind (class folder), not by file: the
# validation and test shares hold kinds the model never trained on, which is
# what a pet-adoption site meets (photos of kinds no data set anticipated).
OUTLIER_VAL_PERCENT = 20
OUTLIER_TEST_PERCENT = 20


def discover_outliers(root: str | Path, label: int) -> tuple[list[LabeledImage], dict[Path, str]]:
    """Photos that are neither a cat nor a dog under `root/<source>/<class>/` (or
    `root/<source>/` for a source without classes), all with `label`. Returns them
    and each one's group key: its class folder (a source without classes: the file)."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(
            f"folder {root} of photos that are neither does not exist: run `dvc pull` "
            "(or `make data`), or set outlier_dir to '' to train without a `neither` answer"
        )
    items, keys = [], {}
    for path in sorted(root.rglob("*")):
        if path.suffix.lower() not in IMAGE_SUFFIXES or not path.is_file():
            continue
        relative = path.relative_to(root)
        items.append(LabeledImage(path, label))
        keys[path] = str(relative.parent) if len(relative.parts) > 2 else str(relative)
    if not items:
        raise DataError(f"no images found under {root}: run `dvc pull`")
    return items, keys


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
        return atomic_write_text(path, json.dumps(self.to_dict(), indent=2))


def _hash_and_decode(item: LabeledImage) -> tuple[str, str | None]:
    """The file's content hash, and why it does not decode (None when it does)."""
    data = item.path.read_bytes()
    try:
        decode_image(data)
    except ImageRejected as exc:
        error = str(exc)
    else:
        error = None
    return content_hash(data), error


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
    for item, (digest, error) in zip(
        items, map_photos(_hash_and_decode, items, progress), strict=True
    ):
        by_hash[digest].append(str(item.path))
        if error is not None:
            corrupt.append({"path": str(item.path), "error": error})

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


def load_pixels(items: list[LabeledImage], image_size: int, progress=None) -> np.ndarray:
    """Decode and resize every image once: uint8 array (N, S, S, 3)."""
    return _load_each(items, image_size, lambda image: resize(image, image_size), progress)


def load_eval_pixels(items: list[LabeledImage], prep: Preprocessing, progress=None):
    """Every image through the eval transform (resize, centre crop), before
    normalising: uint8 array (N, S, S, 3), what the service feeds the model."""
    return _load_each(items, prep.image_size, lambda image: eval_pixels(image, prep), progress)


def _load_each(items, size: int, transform, progress) -> np.ndarray:
    pixels = np.empty((len(items), size, size, 3), np.uint8)

    def load(index: int) -> None:
        pixels[index] = transform(decode_image(items[index].path.read_bytes()))

    for _ in map_photos(load, range(len(items)), progress):
        pass
    return pixels


def labels_of(items: list[LabeledImage]) -> np.ndarray:
    return np.asarray([i.label for i in items], np.int64)


@dataclass
class PreparedData:
    """The splits in memory. Labels index the model's outputs: the pet classes, then
    `neither` (photos that are neither sit after the pets in every split)."""

    train_pixels: np.ndarray  # uint8 NHWC at prep.resize_size (random crops: training.augment)
    train_labels: np.ndarray
    val_inputs: np.ndarray  # float32 NCHW, the eval transform's output
    val_labels: np.ndarray
    test_pixels: np.ndarray  # uint8 NHWC at image_size (normalised when scored: memory)
    test_labels: np.ndarray
    pet_classes: int  # labels below this are pets

    def test_inputs(self, prep: Preprocessing, start: int = 0, stop: int | None = None):
        return normalize(self.test_pixels[start:stop], prep)


def prepare_data(train_items, val_items, test_items, prep: Preprocessing, progress=None):
    """All three splits in memory; validation and test input is what the service computes."""
    train_pixels = load_pixels(train_items, prep.resize_size, progress)
    val_pixels = load_eval_pixels(val_items, prep, progress)
    return PreparedData(
        train_pixels=train_pixels,
        train_labels=labels_of(train_items),
        # Same arithmetic as preprocess.to_model_input (resize, crop, normalize), batched.
        val_inputs=normalize(val_pixels, prep),
        val_labels=labels_of(val_items),
        test_pixels=load_eval_pixels(test_items, prep, progress),
        test_labels=labels_of(test_items),
        pet_classes=len(prep.class_names),
    )
