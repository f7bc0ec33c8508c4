"""Which model from the BentoML store this service serves, and what it says about itself."""

from __future__ import annotations

import os

import bentoml


class LocalBentoModel(bentoml.models.BentoModel):
    """A BentoModel (`bentoml build` packs it) resolved from the local store only: when
    it is missing the service starts, says why and answers 503, where a plain
    BentoModel would stop `bentoml serve` (after asking BentoCloud)."""

    def resolve(self, base_path=None):
        return None if self.stored is None else super().resolve(base_path)


class ModelMissing(RuntimeError):
    """No such model in the store; the message says how to put one there."""


def served_model(ref: LocalBentoModel, bento) -> bentoml.Model:
    """`ref`'s model from the store; in a built bento, the version it was built with."""
    if bento is not None:
        pinned = [m.tag for m in bento.info.all_models if m.tag.name == ref.tag.name]
        ref = LocalBentoModel(pinned[0]) if pinned else ref
    if ref.stored is None:
        home = os.environ.get("BENTOML_HOME") or os.path.expanduser("~/bentoml")
        raise ModelMissing(
            f"no model '{ref.tag}' in the BentoML store at {home}: run "
            "`prefect deployment run package/champion --watch` (after training a champion), "
            "or set CATDOG_MODEL_TAG / BENTOML_HOME to where the model is"
        )
    return ref.stored


def model_info(stored: bentoml.Model) -> dict[str, str]:
    """The MLflow name and version the packaging flow recorded, and the weights' precision."""
    meta = stored.info.metadata
    return {
        "name": str(meta.get("mlflow_model_name", stored.tag.name)),
        "version": str(meta.get("mlflow_model_version", stored.tag.version)),
        "precision": str(meta.get("precision", "float32")),
    }
