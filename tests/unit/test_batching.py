"""The micro-batcher, in process: shared model calls, routing, load shedding, errors."""

from __future__ import annotations

import asyncio
import time

import numpy as np

from bento.batching import MicroBatcher, Overloaded


def test_micro_batcher_shares_model_calls_and_routes_results():
    calls = []

    def predict(batch):
        calls.append(len(batch))
        time.sleep(0.05)  # a slow model: requests queue up meanwhile
        return batch * 10

    async def scenario():
        batcher = MicroBatcher(predict, max_batch_size=8, max_queue=100, workers=1)
        batcher.start()
        first = await batcher.predict(np.array([1.0]))  # alone: batch of one, no waiting
        results = await asyncio.gather(*(batcher.predict(np.array([float(i)])) for i in range(12)))
        await batcher.stop()
        return first, results

    first, results = asyncio.run(scenario())
    assert first.tolist() == [10.0]
    assert [r.tolist() for r in results] == [[10.0 * i] for i in range(12)]
    assert calls[0] == 1 and max(calls) == 8 and sum(calls) == 13
    assert len(calls) < 13  # shared calls

    async def overload():
        batcher = MicroBatcher(predict, max_batch_size=1, max_queue=2, workers=1)
        batcher.start()
        tasks = [asyncio.create_task(batcher.predict(np.array([1.0]))) for _ in range(6)]
        outcomes = await asyncio.gather(*tasks, return_exceptions=True)
        await batcher.stop()
        return outcomes

    outcomes = asyncio.run(overload())
    assert any(isinstance(o, Overloaded) for o in outcomes)
    assert any(isinstance(o, np.ndarray) for o in outcomes)


def test_micro_batcher_hands_a_model_error_to_every_waiting_request():
    def broken(batch):
        raise RuntimeError("model exploded")

    async def scenario():
        batcher = MicroBatcher(broken, workers=1)
        batcher.start()
        outcomes = await asyncio.gather(
            *(batcher.predict(np.zeros(2)) for _ in range(3)), return_exceptions=True
        )
        await batcher.stop()
        return outcomes

    outcomes = asyncio.run(scenario())
    assert all(isinstance(o, RuntimeError) and "exploded" in str(o) for o in outcomes)


def test_stop_answers_every_waiting_request():
    def slow(batch):
        time.sleep(0.2)
        return batch

    async def scenario():
        batcher = MicroBatcher(slow, max_batch_size=1, workers=1)
        batcher.start()
        tasks = [asyncio.create_task(batcher.predict(np.zeros(1))) for _ in range(3)]
        await asyncio.sleep(0.05)  # the first call is running, two wait
        await batcher.stop()
        return await asyncio.gather(*tasks, return_exceptions=True)

    outcomes = asyncio.run(scenario())
    # The running call and the two queued requests all get an answer: none hangs.
    assert all(isinstance(o, RuntimeError) and "shutting down" in str(o) for o in outcomes)
