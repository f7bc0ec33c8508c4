import asyncio

import pytest

from bento.admission import DecodeBudget, InFlight
from bento.errors import RequestError


def refused(limit: InFlight, size: int) -> RequestError:
    with pytest.raises(RequestError) as caught, limit.hold(size):
        pass
    return caught.value


def test_the_byte_budget_refuses_with_a_json_503_and_frees_on_exit():
    limit = InFlight(max_requests=10, max_bytes=100)
    with limit.hold(60):
        error = refused(limit, 50)
        assert (error.status, error.reason, error.headers) == (
            503,
            "overloaded",
            {"Retry-After": "1"},
        )
        assert "CATDOG_MAX_IN_FLIGHT_BYTES" in error.detail
        with limit.hold(40):  # exactly the budget
            assert (limit.requests, limit.bytes) == (2, 100)
    assert (limit.requests, limit.bytes) == (0, 0)
    with limit.hold(100):
        pass


def test_the_request_count_refuses_too():
    limit = InFlight(max_requests=2, max_bytes=10**9)
    with limit.hold(1), limit.hold(1):
        assert "2 requests are in progress" in refused(limit, 1).detail


def test_one_request_over_the_budget_passes_alone_but_not_beside_another():
    limit = InFlight(max_requests=10, max_bytes=100)
    with limit.hold(500):
        assert refused(limit, 1).status == 503
    with limit.hold(1):
        assert refused(limit, 500).status == 503


def test_a_failing_request_frees_its_share():
    limit = InFlight(max_requests=1, max_bytes=100)
    with pytest.raises(ValueError), limit.hold(80):
        raise ValueError("the request failed")
    assert (limit.requests, limit.bytes) == (0, 0)


# ---------------------------------------------------------------- decode budget
def test_the_decode_budget_makes_a_request_wait_for_room_then_lets_it_in():
    async def scenario():
        budget = DecodeBudget(max_bytes=100, wait=5)
        order = []

        async def decode(name, size, hold):
            async with budget.reserve(size):
                order.append((name, budget.held))
                await asyncio.sleep(hold)

        await asyncio.gather(decode("a", 80, 0.2), decode("b", 50, 0), decode("c", 20, 0))
        return order, budget

    order, budget = asyncio.run(scenario())
    # c fits beside a at once; b waits until a is done
    assert order == [("a", 80), ("c", 100), ("b", 50)]
    assert (budget.held, budget.holders) == (0, 0)


def test_the_decode_budget_answers_503_after_its_wait():
    async def scenario():
        budget = DecodeBudget(max_bytes=100, wait=0.1)
        async with budget.reserve(90):
            with pytest.raises(RequestError) as caught:
                async with budget.reserve(20):
                    pass
        return caught.value, budget

    error, budget = asyncio.run(scenario())
    assert (error.status, error.reason, error.headers) == (503, "overloaded", {"Retry-After": "1"})
    assert "CATDOG_MAX_DECODED_BYTES" in error.detail
    assert (budget.held, budget.holders, budget._waiters) == (0, 0, [])


def test_one_image_over_the_decode_budget_decodes_alone():
    async def scenario():
        budget = DecodeBudget(max_bytes=100, wait=0.1)
        async with budget.reserve(500):
            assert budget.held == 500
            with pytest.raises(RequestError):
                async with budget.reserve(1):
                    pass

    asyncio.run(scenario())


def test_a_cancelled_request_gives_its_decode_bytes_back():
    async def scenario():
        budget = DecodeBudget(max_bytes=100, wait=5)

        async def hold():
            async with budget.reserve(60):
                await asyncio.sleep(10)

        task = asyncio.create_task(hold())
        await asyncio.sleep(0.05)
        second = budget.reserve(60)  # kept: a dropped context manager would give back
        waiting = asyncio.create_task(second.__aenter__())
        await asyncio.sleep(0.05)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await asyncio.wait_for(waiting, 1)  # admitted once the first one is gone
        return budget.held, budget.holders

    assert asyncio.run(scenario()) == (60, 1)
