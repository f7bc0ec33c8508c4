"""What the `neither` threshold trades: pets refused against unseen kinds refused.

Scores one exported file (an ONNX a training run logged) on the validation and test
splits training uses, with its temperature fitted on validation as training does
(model_lib.assessment.calibrate), and the threshold chosen on validation for several
caps on the share of pet photos answered `neither` (training ships the first,
model_lib.calibration.MAX_PET_REJECTION). Validation decides; test is reported.

    python -m bench.threshold_sweep path/to/model.onnx [--caps 0.005 0.004 0.003 0.002]
"""

from __future__ import annotations

import argparse

from bench.flip_tta import FIGURES, load_splits, logits_of
from model_lib.assessment import calibrate, score
from model_lib.calibration import MAX_PET_REJECTION, threshold_for
from model_lib.decision import NEITHER
from model_lib.onnx_model import OnnxClassifier


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", help="an exported ONNX file (with its preprocessing metadata)")
    parser.add_argument("--architecture", default="efficientnet_lite2")
    parser.add_argument("--image-size", type=int, default=260)
    parser.add_argument(
        "--caps", type=float, nargs="+", default=[MAX_PET_REJECTION, 0.004, 0.003, 0.002]
    )
    args = parser.parse_args(argv)

    model = OnnxClassifier(args.model)
    dataset, splits = load_splits(args.architecture, args.image_size, model)
    logits = {name: logits_of(model, pixels, flip=False) for name, (pixels, _) in splits.items()}
    val_labels = splits["val"][1]
    rule = calibrate(dataset.outputs, logits["val"], val_labels)
    pets = val_labels != dataset.outputs.index(NEITHER)
    pet_scores = rule.pet_score(rule.probabilities(logits["val"][pets]))
    print("| cap on validation | threshold | split | " + " | ".join(FIGURES) + " |")
    print("| --- | --- | --- | " + " | ".join("---" for _ in FIGURES) + " |")
    for cap in args.caps:
        capped = rule.with_threshold(threshold_for(pet_scores, cap))
        for name, (_, labels) in splits.items():
            metrics = score(capped, logits[name], labels).metrics
            cells = " | ".join(f"{100 * metrics.get(k, float('nan')):.2f}" for k in FIGURES)
            print(f"| {100 * cap:.1f} % | {capped.threshold:.4f} | {name} | {cells} |", flush=True)


if __name__ == "__main__":
    main()
