"""Cat/dog model library: every piece of ML logic lives here.

Importing the package imports nothing heavy. Modules that need torch
(`models`, `training`, `export`, `efficientnet`) import it themselves, so the
serving path (`preprocess`, `onnx_model`, `image_stats`) stays torch-free.
"""
