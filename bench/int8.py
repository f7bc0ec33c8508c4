"""Float32 vs INT8: the champion's two ONNX files side by side on raw ONNX Runtime.

Both files come from the champion's MLflow run (`onnx_model` and the
`int8/model.onnx` training logged); rounds alternate between them and use the
three batch-1 layouts of bench/serving.py on the real photos of test_images/.
Accuracies are the ones training measured on the full validation split.

    . scripts/env.sh && python -m bench.int8 --duration 5 --repeat 3
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import mlflow
from mlflow import MlflowClient

from bench.serving import raw_ceiling
from catdog_runtime.processes import ROOT
from model_lib.config import CHAMPION_ALIAS, MODEL_NAME
from model_lib.quantize import INT8_ARTIFACT_PATH


def champion_files(model_name: str, folder: Path) -> tuple[dict[str, Path], dict[str, float]]:
    client = MlflowClient()
    champion = client.get_model_version_by_alias(model_name, CHAMPION_ALIAS)
    fp32 = mlflow.artifacts.download_artifacts(
        f"models:/{model_name}/{champion.version}", dst_path=str(folder / "float32")
    )
    int8 = mlflow.artifacts.download_artifacts(
        run_id=champion.run_id, artifact_path=INT8_ARTIFACT_PATH, dst_path=str(folder)
    )
    metrics = client.get_run(champion.run_id).data.metrics
    accuracy = {"float32": metrics["val_accuracy"], "int8": metrics["val_accuracy_int8"]}
    print(f"champion: {model_name} v{champion.version} (run {champion.run_id})")
    return {"float32": Path(fp32) / "model.onnx", "int8": Path(int8)}, accuracy


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-name", default=MODEL_NAME)
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per layout")
    parser.add_argument("--repeat", type=int, default=3, help="rounds; medians are reported")
    parser.add_argument("--images", type=Path, default=ROOT / "test_images")
    args = parser.parse_args(argv)
    files = sorted(args.images.rglob("*.jpg"))
    if not files:
        raise SystemExit(f"no JPEGs under {args.images}: run `make data` (dvc pull) first")

    with tempfile.TemporaryDirectory(prefix="catdog-int8-") as tmp:
        paths, accuracy = champion_files(args.model_name, Path(tmp))
        rates: dict[str, list[dict[str, float]]] = {name: [] for name in paths}
        for round_index in range(args.repeat):
            for name, path in paths.items():
                print(f"round {round_index + 1}, {name}:", flush=True)
                rates[name].append(raw_ceiling(path, files, args.duration))

    print(f"\n{'layout (batch 1)':42} {'float32':>9} {'int8':>9} {'int8/fp32':>10}")
    for layout in rates["float32"][0]:
        fp32 = statistics.median(r[layout] for r in rates["float32"])
        int8 = statistics.median(r[layout] for r in rates["int8"])
        print(f"{layout:42} {fp32:9.1f} {int8:9.1f} {int8 / fp32:9.2f}x")
    print(
        f"validation accuracy: float32 {accuracy['float32']:.4f}, int8 {accuracy['int8']:.4f} "
        f"({(accuracy['int8'] - accuracy['float32']) * 100:+.2f} points)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
