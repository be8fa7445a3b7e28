"""Polling with a deadline, for tests that wait on a real cluster or process."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any


def eventually(
    check: Callable[[], Any],
    timeout: float = 60.0,
    what: str = "",
    tolerate: tuple[type[BaseException], ...] = (),
) -> Any:
    """The first true result of ``check`` within ``timeout`` seconds, else AssertionError.

    Exceptions listed in ``tolerate`` (an API server busy for a moment) count as "not yet";
    any other exception fails at once.
    """
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            last = check()
        except tolerate as exc:
            last = exc
        else:
            if last:
                return last
        if time.monotonic() > deadline:
            raise AssertionError(f"not true after {timeout}s: {what or check}; last: {last!r}")
        time.sleep(0.25)
