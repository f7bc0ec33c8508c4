"""Cat/dog model library: every piece of ML logic lives here.

Modules import one way, from the bottom up (tests/unit/test_imports.py checks it):

- torch-free: `config`, `preprocess`, `decision`, `image_stats`, `metrics`,
  `onnx_model`, `inference_log` (these are all the service needs), `data`,
  `calibration`, `assessment`, `quantize`, `client`, `traffic`, `monitoring`,
  `tracking`, `packaging`, `plots`, `progress`;
- torch: model definitions (`efficientnet`, `models`) <- `export` <- training
  loops (`training`) <- transfer-learning fit (`transfer`) <- the entry
  `pipeline.train(config)`.

Importing the package imports nothing.
"""
