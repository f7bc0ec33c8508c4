"""Micro-batching: concurrent requests share one model call, without waiting for a batch to fill.

Not a `batchable=True` BentoML API: in BentoML 1.4 a batchable method batches
only requests that reach it over HTTP (another method calling it goes through
the service's own HTTP client, serialising the tensor), a batchable /classify
would decode whole batches on one thread and could not answer each bad upload
with its own status, and the two-service design dropped requests under load
here (notes in the README, "Serving").
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np


class Overloaded(RuntimeError):
    """More requests are waiting for the model than the queue holds."""


class MicroBatcher:
    """Concurrent requests share one model call, without waiting for a batch to fill.

    `predict` takes (N, ...) and returns (N, ...). `workers` inference loops
    take turns: each one takes every queued input (up to `max_batch_size`),
    runs `predict` on a thread and hands each request its row.
    """

    def __init__(
        self,
        predict: Callable[[np.ndarray], np.ndarray],
        max_batch_size: int = 32,
        max_queue: int = 512,
        workers: int = 1,
        on_batch: Callable[[int], None] | None = None,
    ):
        self._predict = predict
        self.max_batch_size = max_batch_size
        self.max_queue = max_queue
        self.workers = workers
        self._on_batch = on_batch
        self._queue: asyncio.Queue | None = None
        self._tasks: list[asyncio.Task] = []
        self._executor = ThreadPoolExecutor(workers, thread_name_prefix="onnx")

    def start(self) -> None:
        """Start the inference loops on the running event loop."""
        self._queue = asyncio.Queue()
        self._tasks = [asyncio.create_task(self._loop()) for _ in range(self.workers)]

    async def predict(self, item: np.ndarray) -> np.ndarray:
        if self._queue is None:
            raise RuntimeError("MicroBatcher.start() was not called")
        if self._queue.qsize() >= self.max_queue:
            raise Overloaded(f"{self._queue.qsize()} requests are already waiting for the model")
        future = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((item, future))
        return await future

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        queue = self._queue
        while True:
            items = [await queue.get()]
            while len(items) < self.max_batch_size and not queue.empty():
                items.append(queue.get_nowait())
            items = [(x, f) for x, f in items if not f.done()]  # requests that gave up
            if not items:
                continue
            try:
                batch = np.stack([x for x, _ in items])
                if self._on_batch:
                    self._on_batch(len(items))
                outputs = await loop.run_in_executor(self._executor, self._predict, batch)
                if len(outputs) != len(items):
                    raise RuntimeError(f"the model returned {len(outputs)} rows for {len(items)}")
            except asyncio.CancelledError:  # stop(): the requests of this call get an answer
                _fail(items, RuntimeError("the service is shutting down"))
                raise
            except Exception as exc:  # noqa: BLE001 - every waiting request gets the error
                _fail(items, exc)
                continue
            for (_, future), output in zip(items, outputs, strict=True):
                if not future.done():
                    future.set_result(output)

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        queued = []
        while self._queue is not None and not self._queue.empty():
            queued.append(self._queue.get_nowait())
        _fail(queued, RuntimeError("the service is shutting down"))
        self._executor.shutdown(wait=True)


def _fail(items, exc: BaseException) -> None:
    for _, future in items:
        if not future.done():
            future.set_exception(exc)
