"""ONNX Runtime inference with the preprocessing stored in the model file (torch-free)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort

from model_lib.decision import DecisionRule
from model_lib.preprocess import Preprocessing, to_model_input

PREPROCESSING_KEY = "catdog.preprocessing"
# How logits become cat / dog / neither (temperature, threshold): model_lib.decision.
DECISION_KEY = "catdog.decision"


def inference_session(
    model: str | Path | bytes, threads: int = 0, spinning: bool = True
) -> ort.InferenceSession:
    """The one way sessions are made: CPU, `threads` per call (0: one per core), no
    inter-op threads (these graphs are one chain of operators). `spinning=False` lets
    idle threads sleep at once, for a session that takes turns with other work."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    if not spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    source = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


class OnnxClassifier:
    """An exported classifier: `predict_proba(batch)` on preprocessed NCHW float32 input."""

    def __init__(self, path: str | Path, threads: int = 0):
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"ONNX model {path} does not exist")
        self.session = inference_session(path, threads)
        metadata = self.session.get_modelmeta().custom_metadata_map
        if PREPROCESSING_KEY not in metadata:
            raise ValueError(
                f"{path} carries no preprocessing metadata ({PREPROCESSING_KEY}); "
                "export it with model_lib.export.export_onnx"
            )
        self.preprocessing = Preprocessing.from_json(metadata[PREPROCESSING_KEY])
        # A file exported before the `neither` output answers cat or dog as it always did.
        self.decision = (
            DecisionRule.from_json(metadata[DECISION_KEY])
            if DECISION_KEY in metadata
            else DecisionRule.pets_only(self.preprocessing.class_names)
        )
        self.input_name = self.session.get_inputs()[0].name

    @property
    def class_names(self) -> tuple[str, ...]:
        """The model's outputs, in order (the pet classes, then `neither` if it has one)."""
        return self.decision.outputs

    def logits(self, batch: np.ndarray, chunk_size: int = 64) -> np.ndarray:
        """Raw model outputs, run `chunk_size` images at a time (bounded memory)."""
        batch = batch.astype(np.float32, copy=False)
        logits = [
            self.session.run(None, {self.input_name: batch[start : start + chunk_size]})[0]
            for start in range(0, len(batch), chunk_size)
        ]
        if not logits:
            return np.zeros((0, len(self.class_names)), np.float32)
        return np.concatenate(logits)

    def predict_proba(self, batch: np.ndarray, chunk_size: int = 64) -> np.ndarray:
        """Calibrated probabilities over `class_names` (the decision rule's temperature)."""
        return self.decision.probabilities(self.logits(batch, chunk_size)).astype(np.float32)

    def predict_labels(self, batch: np.ndarray) -> np.ndarray:
        """Index into `class_names` of each answer: a pet, or `neither` under the threshold."""
        return self.decision.labels(self.predict_proba(batch))

    def predict_images(self, images, batch_size: int = 64) -> np.ndarray:
        """Class probabilities for decoded RGB PIL images."""
        outputs = []
        for start in range(0, len(images), batch_size):
            chunk = images[start : start + batch_size]
            batch = np.stack([to_model_input(img, self.preprocessing) for img in chunk])
            outputs.append(self.predict_proba(batch))
        if not outputs:
            return np.zeros((0, len(self.class_names)), np.float32)
        return np.concatenate(outputs)
