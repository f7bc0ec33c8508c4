"""The OpenAPI description of POST /classify (BentoML shows it at / with its own routes)."""

from __future__ import annotations

from pydantic import BaseModel, Field

from bento.upload import IMAGE_FIELD


class ModelInfo(BaseModel):
    name: str = Field(description="MLflow registered model name")
    version: str = Field(description="MLflow model version")
    precision: str = Field(description="weights of the served ONNX file: int8 or float32")


class Classification(BaseModel):
    label: str = Field(
        description=(
            "`cat`, `dog`, or `neither` when the photo shows no pet: the pet score is "
            "below `threshold` (a model trained before `neither` existed never says it)"
        ),
        examples=["dog", "neither"],
    )
    confidence: float = Field(
        description="calibrated probability of `label` (for `neither`: of no pet at all)"
    )
    probabilities: dict[str, float] = Field(
        description=(
            "calibrated probability of each pet class, `cat` and `dog`; they add up to "
            "`pet_score`, and the rest is the probability of neither"
        )
    )
    pet_score: float = Field(
        description="probability that the photo shows a pet (cat + dog): what the decision used"
    )
    threshold: float = Field(
        description=(
            "lowest pet score answered with a pet (stored with the model, or set by "
            "CATDOG_NEITHER_THRESHOLD)"
        )
    )
    model: ModelInfo
    latency_ms: float = Field(description="time spent in the service for this request")

    model_config = {
        "json_schema_extra": {
            "examples": [
                {
                    "label": "dog",
                    "confidence": 0.962,
                    "probabilities": {"cat": 0.031, "dog": 0.962},
                    "pet_score": 0.993,
                    "threshold": 0.21,
                    "model": {"name": "catdog-classifier", "version": "3", "precision": "int8"},
                    "latency_ms": 7.412,
                },
                {
                    "label": "neither",
                    "confidence": 0.978,
                    "probabilities": {"cat": 0.015, "dog": 0.007},
                    "pet_score": 0.022,
                    "threshold": 0.21,
                    "model": {"name": "catdog-classifier", "version": "3", "precision": "int8"},
                    "latency_ms": 6.93,
                },
            ]
        }
    }


class ErrorBody(BaseModel):
    error: str = Field(description="machine-readable reason (also a metric label)")
    detail: str = Field(description="what was wrong and how to fix it")


ERRORS = {
    400: "empty body or file, missing 'image' field, more than one file, malformed form",
    413: "upload over CATDOG_MAX_UPLOAD_BYTES (10 MB) or image over the pixel limit",
    415: "not multipart/form-data, or the file is not a supported image",
    422: "truncated or corrupt image",
    500: "a fault of the service, never the upload's; the detail holds the request id",
    503: "no model loaded yet, or the service is overloaded",
}

CLASSIFY = {
    "summary": "Classify one photo as cat, dog or neither",
    "description": (
        "Upload one image as multipart/form-data field `image` "
        "(`curl -F image=@dog.jpg http://127.0.0.1:3000/classify`). JPEG, PNG, GIF (first "
        "frame), WEBP and BMP are accepted; EXIF rotation is applied. The answer is `cat`, "
        "`dog`, or `neither` for a photo of anything else (a person, a room, a rabbit): "
        "`neither` when `pet_score`, the calibrated probability of a pet, is below "
        "`threshold`. A client that knows only cat and dog should read any other label as "
        '"not a pet". Optional header `X-Catdog-Source` marks the traffic (default `user`); '
        "`X-Request-ID` is echoed or generated."
    ),
    "response_model": None,
    "responses": {
        200: {"model": Classification, "description": "the answer: cat, dog or neither"},
        **{code: {"model": ErrorBody, "description": text} for code, text in ERRORS.items()},
    },
    "openapi_extra": {
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "required": [IMAGE_FIELD],
                        "properties": {IMAGE_FIELD: {"type": "string", "format": "binary"}},
                    }
                }
            },
        }
    },
}
