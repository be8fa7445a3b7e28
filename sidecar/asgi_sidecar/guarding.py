"""The bookkeeping of embedded mode's uvicorn hooks, compiled: one native call per hook.

``embedding.GuardedProtocol`` subclasses uvicorn's protocol, so it stays interpreted;
what its hooks do to the shared state (idle and header deadlines, the counters, the
admission engine) is here, where mypyc turns it into native code.  No I/O: deadlines
are on the clock it is given (the event loop's), durations on ``time.monotonic``.
"""

from __future__ import annotations

from time import monotonic
from typing import TYPE_CHECKING, Generic, TypeVar

from asgi_sidecar.tracking import Deadlines

if TYPE_CHECKING:
    from collections.abc import Callable

    from asgi_sidecar.admitting import Admission
    from asgi_sidecar.settings import SidecarSettings
    from asgi_sidecar.stats import Stats

C = TypeVar("C")  # a connection (uvicorn protocol instance)
W = TypeVar("W")  # what a queued request waits on


class Guard(Generic[C, W]):
    """Idle and header deadlines of embedded connections, and the per-request counting.

    ``idle`` holds every connection with no request in progress, oldest first (the
    ``max_connections`` eviction order), with its keep-alive deadline; ``heads`` holds
    those whose request head is still arriving, with its header deadline.
    """

    def __init__(
        self,
        settings: SidecarSettings,
        stats: Stats,
        admission: Admission[W],
        clock: Callable[[], float],
    ) -> None:
        self.settings = settings
        self.stats = stats
        self.admission = admission
        self.clock = clock
        self.idle: Deadlines[C] = Deadlines()
        self.heads: Deadlines[C] = Deadlines()

    def went_idle(self, conn: C) -> float:
        """``conn`` opened or answered its last request: returns when (monotonic)."""
        self.idle.add(conn, self.clock() + self.settings.timeout_keep_alive)
        return monotonic()

    def request_begins(self, conn: C, reused: bool, idle_since: float) -> None:
        """A request head starts on ``conn``; ``reused``: not its first request."""
        was_idle = self.idle.take(conn)
        if reused:
            stats = self.stats
            stats.keepalive_reused += 1
            if was_idle:
                stats.idle_gap.observe(monotonic() - idle_since)
        self.heads.add(conn, self.clock() + self.settings.header_timeout)

    def head_complete(self, conn: C) -> None:
        self.heads.discard(conn)

    def closed(self, conn: C, reason: str) -> None:
        self.idle.discard(conn)
        self.heads.discard(conn)
        self.stats.connections_closed[reason] += 1

    def admitted(self, queued_at: float) -> float:
        """An admitted request starts (``queued_at`` negative if it never waited): returns
        its start time for ``answered``."""
        now = monotonic()
        self.admission.started(queued_at, now)
        return now

    def answered(self, status: int, started: float) -> None:
        """An admitted request's response ended with ``status``: count it, free its slot."""
        self.stats.requests[status] += 1
        self.admission.finished(monotonic() - started)
