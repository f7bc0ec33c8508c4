"""The service's Prometheus metrics.

Defined at module level, as BentoML documents: they appear on its own
/metrics page (in multi-worker mode through prometheus_client's multiprocess
directory).
"""

from __future__ import annotations

from prometheus_client import Counter, Histogram

PREDICTIONS = Counter(
    "catdog_predictions_total",
    "Classified images by answered label: cat, dog or neither",
    ["label"],
)
# With three outputs an answer's probability can be below 0.5 (a `neither` under a
# high threshold), hence the low buckets.
CONFIDENCE = Histogram(
    "catdog_confidence",
    "Calibrated probability of the answered label",
    buckets=(0.34, 0.5, 0.55, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0),
)
PET_SCORE = Histogram(
    "catdog_pet_score",
    "Calibrated probability that the photo shows a pet (cat + dog); below the threshold: neither",
    buckets=(0.01, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 0.9, 0.95, 0.99, 1.0),
)
REJECTED = Counter(
    "catdog_rejected_requests_total", "Requests answered with an error, by reason", ["reason"]
)
PREPROCESS_SECONDS = Histogram(
    "catdog_preprocess_seconds",
    "Decoding plus preprocessing time of one upload",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
)
BATCH_SIZE = Histogram(
    "catdog_batch_size",
    "Images per ONNX Runtime call (micro-batching)",
    buckets=(1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64),
)
LOG_DROPPED = Counter(
    "catdog_inference_log_dropped_total",
    "Inference-log records dropped because the writer queue was full",
)
LOG_ERRORS = Counter(
    "catdog_inference_log_errors_total", "Inference-log batches that failed to be written"
)
