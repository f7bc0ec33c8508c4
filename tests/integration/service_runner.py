"""`bentoml serve` of the service with a real trained model in a temp BentoML store."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sys
from pathlib import Path
from types import SimpleNamespace

from filelock import FileLock

from catdog_runtime.processes import BIN, ROOT, free_port, run, start_server

MLFLOW_VERSION = "42"  # the version the test store's metadata claims
SERVICE = "bento.service:CatDogClassifier"
TEMPORARY_CONFIG = {"data_fraction": 0.3, "epochs": 3, "image_size": 64}
# What the temporary model depends on: a change to any of these retrains it.
MODEL_INPUTS = ("data.dvc", "model_lib/models.py", "model_lib/training.py", "model_lib/data.py")
MODEL_INPUTS += ("model_lib/pipeline.py", "model_lib/preprocess.py", "model_lib/export.py")
MODEL_INPUTS += ("model_lib/assessment.py", "model_lib/calibration.py", "model_lib/decision.py")


def env(**extra) -> dict:
    """The environment of the processes started here: no CATDOG_* setting leaks in."""
    inherited = {k: v for k, v in os.environ.items() if not k.startswith("CATDOG_")}
    return {**inherited, "PATH": f"{BIN}:{os.environ.get('PATH', '')}", **extra}


def train_temporary_model(out: Path) -> Path:
    """A small baseline trained for real (1-2 minutes on 2 cores) with `pipeline.train`,
    cached by data version, model code and config. The service tests judge the service,
    not the model: they need real weights that get clear photos right, not the best ones."""
    text = "".join((ROOT / p).read_text() for p in MODEL_INPUTS) + json.dumps(TEMPORARY_CONFIG)
    key = hashlib.sha256(text.encode()).hexdigest()[:16]
    cached = ROOT / ".run" / "test-cache" / f"service-baseline-{key}.onnx"
    cached.parent.mkdir(parents=True, exist_ok=True)
    # Both test processes (pytest-xdist) may ask at once: one trains, the other waits.
    with FileLock(f"{cached}.lock"):
        if not cached.is_file():
            train_into(cached, out)
    return cached


def train_into(cached: Path, out: Path) -> None:
    code = f"""
import sys
from model_lib.config import TrainConfig
from model_lib.pipeline import export, train

config = TrainConfig(**{TEMPORARY_CONFIG!r}, data_dir=sys.argv[1], outlier_dir=sys.argv[3])
export(train(config), sys.argv[2])
"""
    partial = out / "model.onnx"
    folders = [str(ROOT / "data"), str(partial), str(ROOT / "other_images")]
    run([sys.executable, "-c", code, *folders], env(), timeout=1200)
    partial.replace(cached)


SAVE_TO_STORE = """
import shutil, sys
from pathlib import Path
from model_lib.config import MODEL_NAME
from model_lib.image_stats import REFERENCE_STATS_FILE, write_reference_statistics
from model_lib.packaging import Champion, save_to_bento_store

onnx, folder, version = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
shutil.copy(onnx, folder / "model.onnx")
photos = sorted(Path(sys.argv[4]).glob("*/*.jpg"))[:10]
write_reference_statistics(photos, folder / REFERENCE_STATS_FILE)
print(save_to_bento_store(Champion(MODEL_NAME, version, "test-run", "0.9", folder, "float32")))
"""


def save_to_store(model_onnx: Path, state: Path, version: str = MLFLOW_VERSION) -> str:
    """Package `model_onnx` into the BentoML store under `state` (as the package flow
    does); returns the model tag."""
    folder = state / f"champion-{version}"
    folder.mkdir(parents=True)
    args = [str(model_onnx), str(folder), version, str(ROOT / "data")]
    saved = run([sys.executable, "-c", SAVE_TO_STORE, *args], store_env(state))
    return saved.stdout.split()[-1]


def store_env(state: Path, **settings) -> dict:
    return env(
        BENTOML_HOME=str(state / "bentoml"),
        CATDOG_INFERENCE_LOG=str(state / "inference_log.sqlite"),
        **settings,
    )


@contextlib.contextmanager
def serving(state: Path, target: str = SERVICE, ready: str = "/readyz", **settings):
    """`bentoml serve TARGET` with the store under `state`; yields (url, server, env)."""
    server_env = store_env(state, **settings)
    port = free_port()
    args = [str(BIN / "bentoml"), "serve", target, "--host", "127.0.0.1", "--port", str(port)]
    url = f"http://127.0.0.1:{port}"
    server = start_server("bentoml", args, state / f"bentoml-{port}.log", server_env, url + ready)
    try:
        yield SimpleNamespace(url=url, server=server, env=server_env)
    finally:
        server.stop()
