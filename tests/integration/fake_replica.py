"""A stand-in service replica for the alerting test: real HTTP, the real metric names.

    python -m tests.integration.fake_replica PORT

POST /classify answers 200, or 500 when the body is `fail`; GET /metrics
exposes `bentoml_service_request_total` and `catdog_predictions_total` with the
labels BentoML and bento/service.py use, so monitoring/alerts.yml sees what it
would see from `bentoml serve`, without a model.
"""

from __future__ import annotations

import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, Counter, Histogram, generate_latest

REQUESTS = Counter(
    "bentoml_service_request_total",
    "Total number of HTTP requests",
    ["endpoint", "service_name", "service_version", "http_response_code"],
)
DURATION = Histogram(
    "bentoml_service_request_duration_seconds",
    "API HTTP request duration in seconds",
    ["endpoint", "service_name", "service_version", "http_response_code"],
)
PREDICTIONS = Counter("catdog_predictions_total", "Classified images by predicted label", ["label"])


class Handler(BaseHTTPRequestHandler):
    def do_POST(self):  # noqa: N802 - http.server's naming
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        status = 500 if body == b"fail" else 200
        labels = ("/classify", "catdog", "test", str(status))
        REQUESTS.labels(*labels).inc()
        DURATION.labels(*labels).observe(0.01)
        if status == 200:
            PREDICTIONS.labels("dog").inc()
        self.send_response(status)
        self.end_headers()

    def do_GET(self):  # noqa: N802
        if self.path != "/metrics":
            self.send_response(404)
            self.end_headers()
            return
        payload = generate_latest()
        self.send_response(200)
        self.send_header("Content-Type", CONTENT_TYPE_LATEST)
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args):  # quiet: the test reads Prometheus, not this log
        pass


if __name__ == "__main__":
    ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
