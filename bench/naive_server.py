"""The naive baseline the benchmark compares the service against: how the seed served.

FastAPI + uvicorn, the PyTorch model loaded with `mlflow.pytorch.load_model`
from the champion's run (`runs:/<run_id>/pytorch_model`), and one eager
forward pass per request with its own torchvision preprocessing (Resize,
ToTensor, Normalize with the parameters logged with the model). Same API
shape as the service (multipart field `image` -> JSON label/probabilities),
no batching, no validation beyond what PIL raises.

    python bench/naive_server.py --model-uri runs:/<run_id>/pytorch_model --port 3001

Benchmark only: it is deliberately what the service replaces.
"""

import argparse
import io
import json


def build_app(model_uri: str):
    import mlflow.pytorch
    import torch
    from fastapi import FastAPI, File, UploadFile
    from mlflow.models import get_model_info
    from PIL import Image
    from torchvision import transforms

    prep = json.loads(get_model_info(model_uri).metadata["preprocessing"])
    model = mlflow.pytorch.load_model(model_uri, map_location="cpu")
    # MLflow 3 logs torch.export programs by default: already frozen in eval mode
    # (and they refuse .eval()); a plain nn.Module is switched to eval mode.
    if not isinstance(model, torch.fx.GraphModule):
        model.eval()
    transform = transforms.Compose(
        [
            transforms.Resize((prep["image_size"], prep["image_size"])),
            transforms.ToTensor(),
            transforms.Normalize(prep["mean"], prep["std"]),
        ]
    )
    class_names = prep["class_names"]
    app = FastAPI()

    @app.get("/readyz")
    def readyz():
        return {"ready": True}

    @app.post("/classify")
    def classify(image: UploadFile = File(...)):  # noqa: B008 - FastAPI's idiom
        picture = Image.open(io.BytesIO(image.file.read())).convert("RGB")
        with torch.no_grad():
            probs = torch.softmax(model(transform(picture).unsqueeze(0)), dim=1)[0]
        # A model with a `neither` output has one more logit than pet classes; the
        # naive server takes the argmax, without the calibrated threshold.
        names = class_names + ["neither"] * (len(probs) - len(class_names))
        best = int(probs.argmax())
        return {
            "label": names[best],
            "confidence": float(probs[best]),
            "probabilities": dict(zip(names, probs.tolist(), strict=True)),
        }

    return app


def main() -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-uri", required=True, help="e.g. runs:/<run_id>/pytorch_model")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=3001)
    args = parser.parse_args()
    uvicorn.run(build_app(args.model_uri), host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
