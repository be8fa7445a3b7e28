"""The pool of keep-alive connections to the app, and the deadlines of requests sent on them.

Idle connections are reused newest first and closed after
``upstream_keep_alive`` seconds (see ``upstream.py`` for why).  A request sent
upstream gets ``upstream_timeout`` seconds for its response head, then a 504.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING, Final

from asgi_sidecar.tracking import Deadlines
from asgi_sidecar.upstream import Pool, UpstreamConnection

if TYPE_CHECKING:
    from collections.abc import Callable

    from asgi_sidecar.exchanges import Exchange
    from asgi_sidecar.livesettings import LiveSettings

log = logging.getLogger("asgi_sidecar.upstream")

UPSTREAM_PROBE_TIMEOUT: Final = 1.0  # seconds /readyz waits to connect to the app


class UpstreamPool(Pool):
    """Keep-alive connections to one upstream address, and the deadlines of their requests."""

    def __init__(
        self, loop: asyncio.AbstractEventLoop, live: LiveSettings, host: str, port: int
    ) -> None:
        self.loop = loop
        self.clock: Callable[[], float] = loop.time  # looked up once (see serving.ProxyCore)
        self.live = live  # kept current by the core
        self.host = host
        self.port = port
        # Idle connections, oldest first; reused from the end (the warmest).  A list, not a
        # deque: mypyc makes append and pop native calls, while a deque's are generic method
        # calls; removal from the front is rare (the sweep, at most upstream_max_idle).
        self.idle: list[UpstreamConnection] = []
        self.open: set[UpstreamConnection] = set()
        self.awaiting: Deadlines[Exchange] = Deadlines()  # sent, no response head yet
        self.stopping = False  # shutting down: no connection goes back to the pool
        self._connecting: set[asyncio.Task[None]] = set()

    async def probe(self) -> tuple[bool, str]:
        """Whether the app takes a connection now (``/readyz``), and why not."""
        try:
            _, writer = await asyncio.wait_for(
                asyncio.open_connection(self.host, self.port), UPSTREAM_PROBE_TIMEOUT
            )
        except (OSError, TimeoutError) as exc:
            return False, f"upstream {self.host}:{self.port} not reachable: {exc or 'timeout'}"
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        return True, "ok"

    def acquire(self, ex: Exchange) -> None:
        idle = self.idle
        while idle:
            conn = idle.pop()
            if not conn.closed:
                conn.send(ex)
                return
        task = self.loop.create_task(self._connect(ex))
        self._connecting.add(task)
        task.add_done_callback(self._connecting.discard)

    async def _connect(self, ex: Exchange) -> None:
        try:
            _, conn = await asyncio.wait_for(
                self.loop.create_connection(lambda: UpstreamConnection(self), self.host, self.port),
                self.live.upstream_timeout,
            )
        except TimeoutError:
            self.fail(ex, 504, "connect_timeout")
            return
        except OSError as exc:
            log.debug("upstream connect failed: %s", exc)
            self.fail(ex, 502, "connect_failed")
            return
        self.open.add(conn)
        if ex.finished or ex.client.closed:
            self.release(conn)
            return
        conn.send(ex)

    def fail(self, ex: Exchange, status: int, reason: str) -> None:
        """No response will come for ``ex``: the client answers 502 or 504 (or aborts)."""
        self.awaiting.discard(ex)
        ex.client.upstream_failed(ex, status, reason)

    def withdraw(self, ex: Exchange) -> bool:
        """The client went away: forget ``ex``; True if a request upstream was aborted."""
        self.awaiting.discard(ex)
        upstream = ex.upstream
        if upstream is None or upstream.exchange is not ex:
            return False
        upstream.abort()
        return True

    def release(self, conn: UpstreamConnection) -> None:
        if conn.closed:
            return
        if len(self.idle) >= self.live.upstream_max_idle or self.stopping:
            conn.close()
            return
        conn.resume_reading()  # a slow client may have paused it; the next one must not hang
        conn.idle_since = self.clock()
        self.idle.append(conn)

    def forget(self, conn: UpstreamConnection) -> None:
        """``conn`` is closed.  An idle one the app closed leaves the pool now, not when
        its idle time runs out, so the idle gauge never counts a closed connection."""
        self.open.discard(conn)
        if conn.exchange is None:
            with contextlib.suppress(ValueError):
                self.idle.remove(conn)

    def time_out(self, now: float) -> None:
        """504 for requests whose response head did not come within upstream_timeout."""
        for ex in self.awaiting.pop_expired(now):
            upstream = ex.upstream
            if upstream is not None and not ex.finished:
                upstream.abort()
                ex.client.upstream_failed(ex, 504, "timeout")

    def close_expired(self, now: float) -> None:
        limit = now - self.live.upstream_keep_alive
        idle = self.idle
        expired = 0
        while expired < len(idle) and (idle[expired].idle_since <= limit or idle[expired].closed):
            expired += 1
        if expired:
            gone = idle[:expired]
            del idle[:expired]
            for conn in gone:
                conn.close()

    def close_all(self) -> None:
        idle, self.idle = self.idle, []
        for conn in idle:
            conn.close()
        for task in list(self._connecting):
            task.cancel()
