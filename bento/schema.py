"""The OpenAPI description of POST /classify (BentoML shows it at / with its own routes)."""

from __future__ import annotations

from pydantic import BaseModel, Field

from bento.upload import IMAGE_FIELD


class ModelInfo(BaseModel):
    name: str = Field(description="MLflow registered model name")
    version: str = Field(description="MLflow model version")
    precision: str = Field(description="weights of the served ONNX file: int8 or float32")


class Classification(BaseModel):
    label: str = Field(description="predicted class", examples=["dog"])
    confidence: float = Field(description="probability of the predicted class")
    probabilities: dict[str, float] = Field(description="probability per class name")
    model: ModelInfo
    latency_ms: float = Field(description="time spent in the service for this request")


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
    "summary": "Classify one photo as cat or dog",
    "description": (
        "Upload one image as multipart/form-data field `image` "
        "(`curl -F image=@dog.jpg http://127.0.0.1:3000/classify`). JPEG, PNG, GIF (first "
        "frame), WEBP and BMP are accepted; EXIF rotation is applied. Optional header "
        "`X-Catdog-Source` marks the traffic (default `user`); `X-Request-ID` is echoed "
        "or generated."
    ),
    "response_model": None,
    "responses": {
        200: {"model": Classification, "description": "the prediction"},
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
