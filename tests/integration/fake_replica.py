"""A stand-in service replica for the alerting test: real HTTP, the real metric names.

    python -m tests.integration.fake_replica PORT

POST /classify answers 200, or 500 when the body is `fail`; GET /metrics
exposes BentoML's request metrics (names and labels from model_lib.rollout, checked
against BentoML's own) and the service's own prediction counter (bento.metrics), so
monitoring/alerts.yml sees what it would see from `bentoml serve`, without a model.
"""

from __future__ import annotations

import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, Counter, Histogram, generate_latest

from bento.metrics import PREDICTIONS
from model_lib.rollout import ENDPOINT, REQUEST_DURATION, REQUEST_LABELS, REQUEST_TOTAL

REQUESTS = Counter(REQUEST_TOTAL, "Total number of HTTP requests", REQUEST_LABELS)
DURATION = Histogram(REQUEST_DURATION, "API HTTP request duration in seconds", REQUEST_LABELS)


class Handler(BaseHTTPRequestHandler):
    def do_POST(self):  # noqa: N802 - http.server's naming
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        status = 500 if body == b"fail" else 200
        labels = (ENDPOINT, "catdog", "test", str(status))
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
