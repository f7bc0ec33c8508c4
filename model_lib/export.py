"""ONNX export (torch): the one place the export arguments are written.

The legacy (TorchScript) exporter, opset 17: what ONNX Runtime was measured
fastest with here, and it needs no onnxscript.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
import onnx
import torch

from model_lib.onnx_model import PREPROCESSING_KEY, inference_session
from model_lib.preprocess import Preprocessing

PARITY_TOLERANCE = 1e-4


def onnx_bytes(module: torch.nn.Module, image_size: int, output_name: str = "logits") -> bytes:
    """`module` (eval mode) as an ONNX graph: input "image" (N, 3, S, S), a dynamic batch axis."""
    buffer = io.BytesIO()
    with warnings.catch_warnings():  # the legacy exporter's notes on shape inference
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module.eval(),
            (torch.zeros(1, 3, image_size, image_size),),
            buffer,
            dynamo=False,
            opset_version=17,
            input_names=["image"],
            output_names=[output_name],
            dynamic_axes={"image": {0: "batch"}, output_name: {0: "batch"}},
        )
    return buffer.getvalue()


def export_onnx(model: torch.nn.Module, path: str | Path, prep: Preprocessing) -> Path:
    """logits = model(normalised NCHW), with the preprocessing stored in the file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    exported = onnx.load_from_string(onnx_bytes(model, prep.image_size))
    entry = exported.metadata_props.add()
    entry.key, entry.value = PREPROCESSING_KEY, prep.to_json()
    onnx.save(exported, str(path))
    return path


@torch.no_grad()
def onnx_parity(model: torch.nn.Module, onnx_path: str | Path, inputs: np.ndarray) -> float:
    """Max abs difference of logits between PyTorch and ONNX Runtime on `inputs`."""
    torch_logits = model.eval()(torch.from_numpy(inputs)).numpy()
    onnx_logits = inference_session(onnx_path).run(None, {"image": inputs.astype(np.float32)})[0]
    return float(np.abs(torch_logits - onnx_logits).max())
