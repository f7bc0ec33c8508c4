"""The in-flight limit of one worker: how many uploads it holds, and how many bytes.

BentoML's own `traffic.max_concurrency` is not used: it counts requests only
(ten 10 MB uploads weigh the same as ten 20 kB ones) and answers with its own
429 body that neither this API's JSON errors nor its metrics know about.
"""

from __future__ import annotations

from contextlib import contextmanager

from bento.errors import overloaded


class InFlight:
    """Admits a request when both the count and the byte budget have room.

    A single request bigger than the byte budget is still admitted when nothing
    else is in flight, so a tight budget never refuses every upload.
    """

    def __init__(self, max_requests: int, max_bytes: int):
        self.max_requests, self.max_bytes = max_requests, max_bytes
        self.requests = 0
        self.bytes = 0

    @contextmanager
    def hold(self, size: int):
        """Count `size` bytes for the duration of the block; RequestError 503 when full."""
        if self.requests >= self.max_requests:
            raise overloaded(f"{self.requests} requests are in progress in this worker")
        if self.requests and self.bytes + size > self.max_bytes:
            raise overloaded(
                f"uploads in progress hold {self.bytes} bytes in this worker; "
                f"{size} more would pass its limit of {self.max_bytes} (CATDOG_MAX_IN_FLIGHT_BYTES)"
            )
        self.requests += 1
        self.bytes += size
        try:
            yield
        finally:
            self.requests -= 1
            self.bytes -= size
