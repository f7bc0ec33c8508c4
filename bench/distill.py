"""Does Lite2 distilled into Lite0 keep Lite2's accuracy at Lite0's serving cost? (#20)

The teacher is the `transfer` deployment's tail (Lite2 at 260 px, last MBConv block +
head conv + classifier, 5 epochs on 2 augmented views, bf16-mixed) trained on the
cached views of bench.tail_recipe. The student is Lite0 at 224 px, its last MBConv block,
head conv and classifier trained with the same optimizer and schedule on *the same*
augmented views: each 260 px crop the teacher saw, resized to 224 (Lite2 stores 297 px
and crops 260, Lite0 stores 256 and crops 224: the same 7/8 geometry), through Lite0's
frozen trunk in ONNX Runtime. A teacher that sees exactly the student's view is what
makes distillation pay on short schedules (Beyer et al., CVPR 2022).

Students:
- `hard`: the labels alone (Lite0 with its last block fine-tuned, no teacher);
- `kd`: 0.5 x cross-entropy + 0.5 x T^2 x KL(teacher || student) at T = 2 (Hinton);
- `mimic`: the teacher's outputs alone (KL at T = 1);
- `kd10`: `kd` for 10 epochs instead of 5 (students are said to need a patient teacher).

Student validation and test go through Lite0's own eval transform (resize 256, centre
224), as a served Lite0 would. Every model then gets its temperature and `neither`
threshold fitted on validation (model_lib.assessment) on its float32 PyTorch logits.
Validation decides; test is reported only.

    python -m bench.distill --cache DIR [--students hard,kd,mimic] [--seeds 42,43]
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from bench.stage_finetune import THREADS, cut_activations, logits_of, scored
from bench.tail_recipe import LITE2_BLOCKS, RECIPES, print_table, train_tail, transfer_config
from model_lib import data as data_lib
from model_lib.efficientnet import efficientnet_lite
from model_lib.models import preprocessing_for
from model_lib.pipeline import load_dataset
from model_lib.preprocess import normalize
from model_lib.training import augment, batches, evaluate, forward_context
from model_lib.transfer import FRESH_VIEWS, OnnxBackbone, _TrainableTail, tail_optimizer

STUDENT = "efficientnet_lite0"
STUDENT_SIZE = 224
LITE0_BLOCKS = 16
TRAINED_BLOCKS = 1  # as the `transfer` deployment trains Lite2


@dataclass(frozen=True)
class Student:
    hard_weight: float  # the rest of the loss is the KL to the teacher
    temperature: float = 1.0
    epochs: int = 5  # the teacher's; the views repeat in turn after the first two


STUDENTS = {
    "hard": Student(hard_weight=1.0),
    "kd": Student(hard_weight=0.5, temperature=2.0),
    "mimic": Student(hard_weight=0.0),
    "kd10": Student(hard_weight=0.5, temperature=2.0, epochs=10),
}


def student_activations(config, cached: dict, cache_dir: Path | None) -> dict:
    """Lite0's frozen trunk on the teacher's augmented views (replayed from the same
    generator as bench.stage_finetune.cut_activations), resized to 224; validation and
    test through Lite0's eval transform."""
    cut = LITE0_BLOCKS - TRAINED_BLOCKS
    name = f"lite0_cut{cut}_from_lite2_seed{config.seed}_{config.data_fraction}.npz"
    path = cache_dir / name if cache_dir else None
    if path and path.exists():
        return dict(np.load(path))
    dataset = load_dataset(config)
    teacher_prep = preprocessing_for(config.architecture, config.image_size, dataset.class_names)
    student_prep = preprocessing_for(STUDENT, STUDENT_SIZE, dataset.class_names)
    model = efficientnet_lite(STUDENT, num_classes=len(dataset.outputs)).eval()
    trunk = OnnxBackbone(nn.Sequential(model.stem, model.blocks[:cut]), STUDENT_SIZE, THREADS)
    mean = torch.tensor(teacher_prep.mean).view(1, 3, 1, 1)
    std = torch.tensor(teacher_prep.std).view(1, 3, 1, 1)
    images = torch.from_numpy(
        data_lib.load_pixels(dataset.train_items, teacher_prep.resize_size)
    ).permute(0, 3, 1, 2)
    if not np.array_equal(data_lib.labels_of(dataset.train_items), cached["train_labels"]):
        raise RuntimeError("the teacher's cache was made from other training photos")
    generator = torch.Generator().manual_seed(config.seed)
    started, out = time.perf_counter(), {}
    for view in range(FRESH_VIEWS):
        chunks = []
        for start in range(0, len(images), config.batch_size):
            crops = augment(images[start : start + config.batch_size], config.image_size, generator)
            if view == 0 and start == 0:
                _check_replay((crops - mean) / std, cached, config)
            small = F.interpolate(crops, size=STUDENT_SIZE, mode="bilinear", antialias=True)
            chunks.append(trunk((small - mean) / std).half().numpy())
        out[f"train{view}"] = np.concatenate(chunks)
    out["train_seconds"] = np.float64(time.perf_counter() - started)
    for split, items in (("val", dataset.val_items), ("test", dataset.test_items)):
        pixels = data_lib.load_eval_pixels(items, student_prep)
        inputs = normalize(pixels, student_prep)
        out[split] = trunk.all(inputs, config.batch_size).astype(np.float16)
    out |= {k: cached[k] for k in ("train_labels", "val_labels", "test_labels", "outputs")}
    if path:
        np.savez(path, **out)
    return out


def _check_replay(first_batch: torch.Tensor, cached: dict, config) -> None:
    """The replayed first batch must give the teacher's cached activations."""
    model = efficientnet_lite(config.architecture, num_classes=len(cached["outputs"])).eval()
    cut = LITE2_BLOCKS - TRAINED_BLOCKS
    trunk = OnnxBackbone(nn.Sequential(model.stem, model.blocks[:cut]), config.image_size, 1)
    expected = cached["train0"][: len(first_batch)].astype(np.float32)
    gap = float(np.abs(trunk(first_batch).numpy() - expected).max())
    if gap > 0.05:
        raise RuntimeError(f"replayed views differ from the teacher's cache (max |diff| {gap})")
    print(f"replayed views match the teacher's cache (max |diff| {gap:.4f})", flush=True)


def distill_loss(logits, labels, teacher_logits, student: Student) -> torch.Tensor:
    loss = student.hard_weight * F.cross_entropy(logits, labels)
    if student.hard_weight < 1:
        t = student.temperature
        soft = F.kl_div(
            F.log_softmax(logits / t, 1), F.softmax(teacher_logits / t, 1), reduction="batchmean"
        )
        loss = loss + (1 - student.hard_weight) * t * t * soft
    return loss


def fit_student(student: Student, seed: int, features: dict, teacher: list, config) -> dict:
    """Lite0's tail trained on the cached views toward labels and/or the teacher."""
    outputs = tuple(str(name) for name in features["outputs"])
    torch.manual_seed(seed)
    model = efficientnet_lite(STUDENT, num_classes=len(outputs)).eval()
    trained = model.blocks[LITE0_BLOCKS - TRAINED_BLOCKS :]
    tail = _TrainableTail(trained, model.head, model.pool, model.dropout, model.classifier)
    labels = torch.from_numpy(features["train_labels"]).long()
    views = [torch.from_numpy(features[f"train{v}"]) for v in range(FRESH_VIEWS)]
    config = replace(config, epochs=student.epochs)
    optimizer, scheduler = tail_optimizer(model, trained, config, len(labels))
    generator = torch.Generator().manual_seed(seed)
    val = features["val"].astype(np.float32)
    history, started = [], time.perf_counter()
    for epoch in range(1, config.epochs + 1):
        view = (epoch - 1) % FRESH_VIEWS
        tail.train()
        for index, targets in batches(
            torch.arange(len(labels)), labels, config.batch_size, generator
        ):
            with forward_context(config.training_precision):
                logits = tail(views[view][index].float()).float()
            loss = distill_loss(logits, targets, teacher[view][index], student)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
        history.append(
            round(100 * evaluate(tail, val, features["val_labels"], 2)["val_accuracy"], 2)
        )
        print(f"  epoch {epoch}: val pet accuracy {history[-1]:.2f} %", flush=True)
    seconds = time.perf_counter() - started
    test = features["test"].astype(np.float32)
    return {**scored(tail, outputs, val, test, features), "history": history, "seconds": seconds}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--students", default=",".join(STUDENTS), help="comma-separated")
    parser.add_argument("--seeds", default="42", help="comma-separated, the students'")
    parser.add_argument("--data-fraction", type=float, default=1.0, help="for a quick try")
    parser.add_argument("--cache", type=Path, help="keep the backbone passes in this folder")
    args = parser.parse_args(argv)
    torch.set_num_threads(THREADS)

    config = transfer_config(42, args.data_fraction)
    # The tail benches' cache (bench.tail_recipe --recipes views3): its first FRESH_VIEWS
    # views are the deployment's, and the teacher and students use only those.
    cached = cut_activations(config, LITE2_BLOCKS - TRAINED_BLOCKS, args.cache, views=3)
    features = student_activations(config, cached, args.cache)
    print(
        f"Lite0 trunk on the teacher's views: {float(features['train_seconds']):.0f} s", flush=True
    )

    print("teacher (Lite2, as the transfer deployment), seed 42:", flush=True)
    tail, history, seconds = train_tail(RECIPES["default"], 42, cached, config)
    outputs = tuple(str(name) for name in cached["outputs"])
    val, test = cached["val"].astype(np.float32), cached["test"].astype(np.float32)
    rows = [
        (
            "teacher",
            42,
            {**scored(tail, outputs, val, test, cached), "history": history, "seconds": seconds},
        )
    ]
    teacher = [
        torch.from_numpy(logits_of(tail, cached[f"train{v}"].astype(np.float32)))
        for v in range(FRESH_VIEWS)
    ]
    del cached, val, test
    print_table(rows, "model")

    student_config = replace(config, architecture=STUDENT, image_size=STUDENT_SIZE)
    for seed in (int(s) for s in args.seeds.split(",")):
        for name in args.students.split(","):
            print(f"{name}, seed {seed}:", flush=True)
            result = fit_student(STUDENTS[name], seed, features, teacher, student_config)
            rows.append((name, seed, result))
            print_table(rows, "model")


if __name__ == "__main__":
    main()
