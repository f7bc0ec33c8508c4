"""The real service, served by `bentoml serve`, with a model that fails or stalls on demand.

Only the model call is replaced (a test double); everything else is bento.service.
TEST_MODEL_FAULT: "always" (the warm-up fails too) or "flat" (an image of one colour
fails); TEST_MODEL_DELAY: seconds each model call takes on top.
"""

from __future__ import annotations

import os
import time

import numpy as np

import bento.service
from model_lib.onnx_model import OnnxClassifier

_predict_proba = OnnxClassifier.predict_proba


def predict_proba(self, batch: np.ndarray, *args, **kwargs) -> np.ndarray:
    fault = os.environ.get("TEST_MODEL_FAULT", "")
    flat = np.all(np.ptp(batch, axis=(-2, -1)) == 0)  # every channel of one value
    if fault == "always" or (fault == "flat" and flat):
        raise RuntimeError("injected model failure")
    time.sleep(float(os.environ.get("TEST_MODEL_DELAY", "0")))
    return _predict_proba(self, batch, *args, **kwargs)


OnnxClassifier.predict_proba = predict_proba
CatDogClassifier = bento.service.CatDogClassifier
