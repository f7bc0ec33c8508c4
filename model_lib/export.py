"""ONNX export with the preprocessing embedded, and a parity check (torch)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from model_lib.onnx_model import PREPROCESSING_KEY, OnnxClassifier
from model_lib.preprocess import Preprocessing

PARITY_TOLERANCE = 1e-4


def export_onnx(model: torch.nn.Module, path: str | Path, prep: Preprocessing) -> Path:
    """Export logits = model(normalised NCHW) with a dynamic batch axis.

    The legacy (TorchScript) exporter is used: it is what ONNX Runtime was
    measured fastest with here, and it needs no onnxscript.
    """
    import onnx

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = model.eval()
    example = torch.zeros(1, 3, prep.image_size, prep.image_size)
    torch.onnx.export(
        model,
        (example,),
        str(path),
        dynamo=False,
        opset_version=17,
        input_names=["image"],
        output_names=["logits"],
        dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}},
    )
    exported = onnx.load(str(path))
    entry = exported.metadata_props.add()
    entry.key, entry.value = PREPROCESSING_KEY, prep.to_json()
    onnx.save(exported, str(path))
    return path


@torch.no_grad()
def onnx_parity(model: torch.nn.Module, onnx_path: str | Path, inputs: np.ndarray) -> float:
    """Max abs difference of logits between PyTorch and ONNX Runtime on `inputs`."""
    model = model.eval()
    torch_logits = model(torch.from_numpy(inputs)).numpy()
    session = OnnxClassifier(onnx_path).session
    onnx_logits = session.run(None, {"image": inputs.astype(np.float32)})[0]
    return float(np.abs(torch_logits - onnx_logits).max())
