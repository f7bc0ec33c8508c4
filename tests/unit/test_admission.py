import pytest

from bento.admission import InFlight
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
