"""Every wait and retry of the platform, on tenacity: one condition wait (with a health
wait on top of it) and one retry policy for API calls.

- `wait_until(ready, ...)`: poll until `ready()` is true; a `check()` that raises fails
  the wait at once (a process that exited, a fatal log line); progress is reported
  every `progress_every` seconds; `WaitTimeout` after `timeout` seconds.
- `wait_http(url, ...)`: `wait_until` an HTTP GET answers with an expected status.
- `poll(fetch, done, timeout)`: the last value of `fetch()` once `done` by it, or at the
  timeout (tests assert on it);
- `api_retrying(patience, ...)`: retry a call that raised a transient error, with
  exponential back-off, for up to `patience` seconds (`retry_on=transient_mlflow_error`
  for MLflow's client).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import TypeVar

import httpx
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception,
    retry_if_result,
    stop_after_delay,
    wait_exponential,
    wait_fixed,
)

T = TypeVar("T")


class WaitTimeout(TimeoutError):
    """The condition did not hold within the time given; the message says what was awaited."""


def wait_until(
    ready: Callable[[], bool],
    what: str,
    timeout: float,
    *,
    interval: float = 0.25,
    check: Callable[[], None] | None = None,
    progress: Callable[[float], None] | None = None,
    progress_every: float = 15,
    detail: Callable[[], str] | None = None,
) -> float:
    """Poll `ready()` until it is true; returns the seconds waited.

    `check()` runs before each poll and fails the wait at once by raising;
    `progress(elapsed)` is called every `progress_every` seconds of waiting;
    `detail()` is added to the timeout's message (what was last seen)."""
    started = time.monotonic()
    next_progress = [progress_every]

    def attempt() -> bool:
        if check is not None:
            check()
        return bool(ready())

    def report(state: RetryCallState) -> None:
        elapsed = time.monotonic() - started
        if progress is not None and elapsed >= next_progress[0]:
            progress(elapsed)
            next_progress[0] += progress_every

    def give_up(state: RetryCallState) -> bool:
        seen = f" (last seen: {detail()})" if detail else ""
        raise WaitTimeout(f"{what} did not happen within {timeout:.0f} s{seen}")

    Retrying(
        stop=stop_after_delay(timeout),
        wait=wait_fixed(interval),
        retry=retry_if_result(lambda ok: not ok),
        before_sleep=report,
        retry_error_callback=give_up,
    )(attempt)
    return time.monotonic() - started


def http_ok(
    url: str,
    expect: Iterable[int] = (200,),
    timeout: float = 5,
    auth: tuple[str, str] | None = None,
) -> bool:
    """Whether a GET of `url` answers with one of the `expect`ed statuses (False on no answer);
    `auth`: (user, password) for basic auth."""
    try:
        return httpx.get(url, timeout=timeout, auth=auth).status_code in tuple(expect)
    except httpx.HTTPError:
        return False


def wait_http(
    url: str,
    timeout: float,
    *,
    expect: Iterable[int] = (200,),
    what: str | None = None,
    interval: float = 0.5,
    check: Callable[[], None] | None = None,
    progress: Callable[[float], None] | None = None,
) -> float:
    """The health wait: until GET `url` answers `expect`; `check` fails it early."""
    return wait_until(
        lambda: http_ok(url, expect),
        what or f"{url} answering {tuple(expect)}",
        timeout,
        interval=interval,
        check=check,
        progress=progress,
    )


def transient_http_error(error: BaseException) -> bool:
    """A failure worth retrying: no answer (timeout, refused), a 5xx or a 429."""
    if isinstance(error, httpx.TransportError):
        return True
    if isinstance(error, httpx.HTTPStatusError):
        status = error.response.status_code
        return status >= 500 or status == 429
    return False


def transient_mlflow_error(error: BaseException) -> bool:
    """A failure of MLflow's client worth retrying: a server error (its own retries over,
    a connection that failed is reported as one too) or no connection at all."""
    from requests import RequestException

    status = getattr(error, "get_http_status_code", None)
    if callable(status):  # MlflowException
        return status() >= 500
    return isinstance(error, RequestException) or transient_http_error(error)


def _pauses_exceed(patience: float) -> Callable[[RetryCallState], bool]:
    def stop(state: RetryCallState) -> bool:
        return state.idle_for + state.upcoming_sleep > patience

    return stop


def api_retrying(
    patience: float,
    *,
    retry_on: Callable[[BaseException], bool] = transient_http_error,
    say: Callable[[str], None] | None = None,
    max_pause: float = 15,
    sleep: Callable[[float], None] = time.sleep,
) -> Retrying:
    """The one retry policy for API calls: transient errors are retried with back-off
    (1 s, 2 s, 4 s ... up to `max_pause`) for `patience` seconds, counted on the clock
    and in pauses (no pause would end past it); then the last error is raised as it is.
    Use: `api_retrying(60)(function, *args)`."""

    def tell(state: RetryCallState) -> None:
        if say is not None and state.outcome is not None and state.next_action is not None:
            error = state.outcome.exception()
            say(f"{type(error).__name__}: {error}; retrying in {state.next_action.sleep:.0f} s")

    return Retrying(
        stop=stop_after_delay(patience) | _pauses_exceed(patience),
        wait=wait_exponential(multiplier=1, min=1, max=max_pause),
        retry=retry_if_exception(retry_on),
        before_sleep=tell,
        sleep=sleep,
        reraise=True,
    )


def poll(fetch: Callable[[], T], done: Callable[[T], bool], timeout: float, interval=0.5) -> T:
    """Call `fetch()` until `done(value)` or `timeout` seconds; returns the last value
    either way (the caller asserts on it, so a failure shows what was last seen)."""
    last: list[T] = []

    def ready() -> bool:
        last[:] = [fetch()]
        return done(last[0])

    try:
        wait_until(ready, "poll", timeout, interval=interval)
    except WaitTimeout:
        pass
    return last[0]
