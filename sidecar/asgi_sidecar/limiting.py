"""Admission control: a concurrency limit on requests in flight with an optional FIFO queue.

Pure bookkeeping, no I/O and no clock: callers pass times in.  A slot freed by
``release`` is handed straight to the oldest waiter, so a queued request can
never be overtaken by one that arrives later.  Unlike uvicorn's
``limit_concurrency``, only requests count (never idle connections) and a limit
of N admits exactly N.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Generic, TypeVar

W = TypeVar("W")


class ConcurrencyLimiter(Generic[W]):
    __slots__ = ("_queue", "in_flight", "limit", "queue_depth")

    def __init__(self, limit: int | None, queue_depth: int = 0) -> None:
        self.limit = limit
        self.queue_depth = queue_depth
        self.in_flight = 0
        self._queue: OrderedDict[W, float] = OrderedDict()

    @property
    def queued(self) -> int:
        return len(self._queue)

    def try_acquire(self) -> bool:
        """Take a slot if one is free and nobody is waiting ahead."""
        limit = self.limit
        if limit is None or (self.in_flight < limit and not self._queue):
            self.in_flight += 1
            return True
        return False

    def enqueue(self, waiter: W, deadline: float) -> bool:
        """Wait for a slot until ``deadline``; False when the queue is full."""
        if len(self._queue) >= self.queue_depth:
            return False
        self._queue[waiter] = deadline
        return True

    def cancel(self, waiter: W) -> bool:
        """Forget a waiter that went away; True if it was queued."""
        return self._queue.pop(waiter, None) is not None

    def release(self) -> W | None:
        """Free a slot; if someone waits, the slot passes to them and they are returned."""
        if self._queue and (self.limit is None or self.in_flight <= self.limit):
            waiter, _ = self._queue.popitem(last=False)
            return waiter
        self.in_flight -= 1
        return None

    def expire(self, now: float) -> list[W]:
        """Remove and return the waiters whose deadline has passed (oldest first)."""
        expired: list[W] = []
        for waiter, deadline in list(self._queue.items()):
            if deadline > now:
                continue
            del self._queue[waiter]
            expired.append(waiter)
        return expired

    def reconfigure(self, limit: int | None, queue_depth: int) -> list[W]:
        """Apply new limits at once; returns waiters admitted by a higher limit.

        Lowering the limit never interrupts requests already in flight: new
        requests are refused until enough of them finish.
        """
        self.limit = limit
        self.queue_depth = queue_depth
        admitted: list[W] = []
        while self._queue and (limit is None or self.in_flight < limit):
            waiter, _ = self._queue.popitem(last=False)
            self.in_flight += 1
            admitted.append(waiter)
        return admitted
