"""The one polling helper: wait for a condition with a deadline, for tests that wait on a
real process, socket or cluster."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")

FIRST_INTERVAL = 0.02  # a local process answers within milliseconds
MAX_INTERVAL = 0.25  # a cluster takes seconds: do not run kubectl flat out meanwhile


def _intervals() -> Any:
    interval = FIRST_INTERVAL
    while True:
        yield interval
        interval = min(MAX_INTERVAL, interval * 1.5)


def eventually(
    check: Callable[[], Any],
    timeout: float = 60.0,
    what: str = "",
    tolerate: tuple[type[BaseException], ...] = (),
) -> Any:
    """The first true result of ``check`` within ``timeout`` seconds, else AssertionError.

    Polls every 20 ms at first, backing off to 250 ms.  Exceptions listed in ``tolerate``
    (an API server busy for a moment) count as "not yet"; any other exception fails at once.
    """
    deadline = time.monotonic() + timeout
    last: Any = None
    for interval in _intervals():
        try:
            last = check()
        except tolerate as exc:
            last = exc
        else:
            if last:
                return last
        if time.monotonic() > deadline:
            raise AssertionError(f"not true after {timeout}s: {what or check}; last: {last!r}")
        time.sleep(interval)


def wait_for(condition: Callable[[], object], timeout: float = 5.0, what: str = "") -> None:
    """``eventually`` with the short default timeout of the single-process tests."""
    eventually(condition, timeout, what)


async def eventually_async(check: Callable[[], Any], what: str, timeout: float = 20.0) -> Any:
    """``eventually`` inside an event loop: sleeps with asyncio, so the loop keeps running."""
    deadline = time.monotonic() + timeout
    last: Any = None
    for interval in _intervals():
        last = check()
        if last:
            return last
        if time.monotonic() > deadline:
            raise AssertionError(f"not true after {timeout}s: {what}; last: {last!r}")
        await asyncio.sleep(interval)


def in_background(fn: Callable[[], T]) -> Callable[..., T]:
    """Run ``fn`` in a thread; the returned function joins it (15 s) and returns its result."""
    result: list[T] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            result.append(fn())
        except BaseException as exc:  # handed to the caller
            errors.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()

    def join(timeout: float = 15.0) -> T:
        thread.join(timeout)
        assert not thread.is_alive(), "background request did not finish"
        if errors:
            raise errors[0]
        return result[0]

    return join
