"""The in-flight limits of one worker: how many uploads it holds, how many bytes,
and how many bytes their images take while they decode.

BentoML's own `traffic.max_concurrency` is not used: it counts requests only
(ten 10 MB uploads weigh the same as ten 20 kB ones) and answers with its own
429 body that neither this API's JSON errors nor its metrics know about.
"""

from __future__ import annotations

import asyncio
from contextlib import asynccontextmanager, contextmanager

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


class DecodeBudget:
    """The bytes one worker's images may take while they decode, reserved from each
    image's header (model_lib.preprocess.Header.cost) before a pixel is decoded.

    Unlike the upload budget, a request that does not fit waits (decoding is quick,
    and the upload is already here): up to `wait` seconds, then a JSON 503. One
    image bigger than the whole budget still decodes, alone. Used from one event
    loop only (a worker's), so no lock is needed.
    """

    def __init__(self, max_bytes: int, wait: float):
        self.max_bytes, self.wait = max_bytes, wait
        self.held = 0
        self.holders = 0
        self._waiters: list[asyncio.Future] = []

    def fits(self, size: int) -> bool:
        return self.holders == 0 or self.held + size <= self.max_bytes

    @asynccontextmanager
    async def reserve(self, size: int):
        """Hold `size` bytes for the block; RequestError 503 after waiting `wait` s."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.wait
        while not self.fits(size):
            waiter = loop.create_future()
            self._waiters.append(waiter)
            try:
                await asyncio.wait_for(waiter, max(0.0, deadline - loop.time()))
            except TimeoutError:
                raise overloaded(
                    f"images being decoded hold {self.held} bytes in this worker; this one "
                    f"needs {size} more, past its limit of {self.max_bytes} "
                    f"(CATDOG_MAX_DECODED_BYTES), for {self.wait:g} s"
                ) from None
            finally:
                self._waiters.remove(waiter)
        self.held += size
        self.holders += 1
        try:
            yield
        finally:  # synchronous: a cancelled request still gives its bytes back
            self.held -= size
            self.holders -= 1
            for waiter in self._waiters:
                if not waiter.done():
                    waiter.set_result(None)
