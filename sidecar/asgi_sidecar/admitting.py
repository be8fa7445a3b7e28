"""The admission engine both modes share: limit, queue, adaptive limit, and what they count.

The proxy admits ``Exchange``s and embedded mode admits one future per ASGI
request, so the engine is generic over its waiters and never touches them
itself: the caller gives it a clock and a ``wake`` function that hands a freed
slot to a waiter (False when that waiter already gave up, and the slot passes
on).  Pure: no I/O, no asyncio; the clock is passed in.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final, Generic, TypeVar

from asgi_sidecar.adapting import UPDATE_INTERVAL, AdaptiveLimit
from asgi_sidecar.limiting import ConcurrencyLimiter
from asgi_sidecar.stats import Stats
from asgi_sidecar.validated import ValidSettings

W = TypeVar("W")

QUEUED: Final = "queued"  # what ``queue`` says when it did not refuse


def adaptive_limit(
    settings: ValidSettings, old: AdaptiveLimit | None = None
) -> AdaptiveLimit | None:
    """The adaptive limit ``settings`` ask for, keeping ``old`` (and what it learnt) if any.

    While adaptive stays on, a new ``limit_concurrency`` is ignored (it is only the
    starting value); new bounds apply at once.
    """
    if not settings.adaptive:
        return None
    if old is None:
        start = settings.limit_concurrency or settings.adaptive_max
        return AdaptiveLimit(start, settings.adaptive_min, settings.adaptive_max)
    old.set_bounds(settings.adaptive_min, settings.adaptive_max)
    return old


class Admission(Generic[W]):
    """Who may send a request to the app now, who waits, and for how long it took."""

    __slots__ = (
        "_adapt_at",
        "_clock",
        "_wake",
        "adaptive",
        "closed",
        "limiter",
        "settings",
        "stats",
    )

    def __init__(
        self,
        settings: ValidSettings,
        stats: Stats,
        clock: Callable[[], float],
        wake: Callable[[W], bool],
    ) -> None:
        self.settings = settings
        self.stats = stats
        self._clock = clock
        self._wake = wake
        self.adaptive = adaptive_limit(settings)
        self._adapt_at = 0.0
        self.limiter: ConcurrencyLimiter[W] = ConcurrencyLimiter(
            self.adaptive.current if self.adaptive else settings.limit_concurrency,
            settings.queue_depth,
        )
        self.closed = False  # shutting down: nothing is queued any more

    # -- per request ------------------------------------------------------------------------

    def try_acquire(self) -> bool:
        """Take a slot if one is free and nobody waits ahead."""
        return self.limiter.try_acquire()

    def queue(self, waiter: W) -> str:
        """No slot was free: QUEUED (``wake`` admits it later), or why it is refused."""
        if self.closed:
            return "shutting_down"
        limiter = self.limiter
        if limiter.enqueue(waiter, self._clock() + self.settings.queue_timeout):
            return QUEUED
        return "queue_full" if limiter.queue_depth else "concurrency_limit"

    def cancel(self, waiter: W) -> bool:
        """A queued waiter went away; True if it was still queued."""
        return self.limiter.cancel(waiter)

    def started(self, queued_at: float, now: float) -> None:
        """An admitted request starts; ``queued_at`` is negative if it never waited."""
        if queued_at >= 0:
            self.stats.queue_wait.observe(now - queued_at)

    def finished(self, duration: float) -> None:
        """An admitted request's response ended: record it and free its slot."""
        self.stats.request_duration.observe(duration)
        if self.adaptive is not None:
            self.adaptive.record(duration, self.limiter.in_flight)
        self.release()

    def release(self) -> None:
        """Free a slot without a measurement (the client left, or the request became a tunnel)."""
        limiter = self.limiter
        while (waiter := limiter.release()) is not None and not self._wake(waiter):
            pass  # a waiter that already gave up: pass the slot on

    # -- periodic and on reload -------------------------------------------------------------

    def expire(self, now: float) -> list[W]:
        """Waiters whose queue_timeout passed, removed from the queue."""
        return self.limiter.expire(now)

    def tick(self, now: float) -> None:
        """Called from a sweep: lets the adaptive limit move every UPDATE_INTERVAL."""
        adaptive = self.adaptive
        if adaptive is not None and now >= self._adapt_at:
            # every 0.2 or 0.3 s with a 0.1 s sweep, 0.25 s on average
            self._adapt_at = max(self._adapt_at, now - UPDATE_INTERVAL) + UPDATE_INTERVAL
            limit = adaptive.update(now, self.limiter.in_flight)
            if limit is not None:
                self._reconfigure(limit)

    def apply(self, settings: ValidSettings) -> None:
        """New settings: a new limit and queue at once (waiters a higher limit admits wake)."""
        self.settings = settings
        self.adaptive = adaptive_limit(settings, self.adaptive)
        self._reconfigure(self.adaptive.current if self.adaptive else settings.limit_concurrency)

    def close(self) -> None:
        """Shutting down: refuse what cannot start at once, as ``shutting_down``."""
        self.closed = True
        self.limiter.queue_depth = 0

    def _reconfigure(self, limit: int | None) -> None:
        for waiter in self.limiter.reconfigure(limit, self.settings.queue_depth):
            if not self._wake(waiter):
                self.release()
