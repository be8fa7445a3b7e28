"""Embedded mode's per-connection state, compiled: one native call per uvicorn hook.

``uvicorn_protocol.GuardedProtocol`` subclasses uvicorn's protocol, so it stays interpreted;
what its hooks do to the shared state (idle and header deadlines, the counters, the
admission engine) is here, where mypyc turns it into native code; each request's own
work is ``answering.Exchange``'s.  No I/O, and one clock for every time it keeps
(deadlines, idle gaps, durations): the one it is given, ``time.monotonic`` in ``serve``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from asgi_sidecar import http1
from asgi_sidecar.livesettings import LiveSettings
from asgi_sidecar.stats import count
from asgi_sidecar.tracking import Deadlines

if TYPE_CHECKING:
    from asgi_sidecar.admitting import Admission
    from asgi_sidecar.stats import Stats
    from asgi_sidecar.validated import ValidSettings

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
        settings: ValidSettings,
        stats: Stats,
        admission: Admission[W],
        clock: Callable[[], float],
    ) -> None:
        self.settings = settings
        self.live = LiveSettings(settings)
        self.stats = stats
        self.admission = admission
        self.clock = clock
        self.idle: Deadlines[C] = Deadlines()
        self.heads: Deadlines[C] = Deadlines()

    def apply(self, settings: ValidSettings) -> None:
        """New settings, live: new deadlines follow them (the caller marks the old ones)."""
        self.settings = settings
        self.live = LiveSettings(settings)

    def went_idle(self, conn: C) -> float:
        """``conn`` opened or answered its last request: returns when (on the clock)."""
        now = self.clock()
        self.idle.add(conn, now + self.live.timeout_keep_alive)
        return now

    def request_begins(self, conn: C, reused: bool, idle_since: float) -> None:
        """A request head starts on ``conn``; ``reused``: not its first request."""
        now = self.clock()
        was_idle = self.idle.take(conn)
        if reused:
            stats = self.stats
            stats.keepalive_reused += 1
            if was_idle:
                stats.idle_gap.observe(now - idle_since)
        self.heads.add(conn, now + self.live.header_timeout)

    def head_complete(
        self, conn: C, parser: Any, url: bytes, fields: list[tuple[bytes, bytes]]
    ) -> None:
        """``conn``'s request head is in (httptools' ``parser`` has it all): its header
        deadline ends, and it must pass the proxy's request rules (``http1.check_request``
        raises ``RequestRefusedError``)."""
        self.heads.discard(conn)
        http1.check_request(parser, url, fields)

    def closed(self, conn: C, reason: str) -> None:
        self.idle.discard(conn)
        self.heads.discard(conn)
        count(self.stats.connections_closed, reason)

    def admitted(self, queued_at: float) -> float:
        """An admitted request starts (``queued_at`` negative if it never waited): returns
        its start time for ``answered``."""
        now = self.clock()
        self.admission.started(queued_at, now)
        return now

    def answered(self, status: int, started: float) -> None:
        """An admitted request's response ended with ``status``: count it, free its slot."""
        count(self.stats.requests, status)
        self.admission.finished(self.clock() - started)
