"""The proxy's shared state and its edges: the accept loop, the deadline sweep, live settings.

``ProxyCore`` owns the listening socket and accepts connections itself (rather
than through ``loop.create_server``) so that at ``max_connections`` it can stop
accepting and leave new connections in the kernel's accept queue, instead of
accepting them only to fail them.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from typing import TYPE_CHECKING, Any

from asgi_sidecar import kernel
from asgi_sidecar.adapting import UPDATE_INTERVAL, AdaptiveLimit
from asgi_sidecar.limiting import ConcurrencyLimiter
from asgi_sidecar.metrics import Gauges
from asgi_sidecar.proxying import Exchange, FrontConnection
from asgi_sidecar.settings import SidecarSettings
from asgi_sidecar.stats import Stats
from asgi_sidecar.tracking import Deadlines
from asgi_sidecar.upstream import UpstreamPool

if TYPE_CHECKING:
    from collections.abc import Iterable

log = logging.getLogger("asgi_sidecar")

SWEEP_INTERVAL = 0.1  # seconds; every deadline is honoured to within this
ACCEPT_BATCH = 64
ACCEPT_ERROR_PAUSE = 0.1
ACCEPT_QUEUE_FULL = 0.9  # share of the effective backlog that counts as "nearly full"


def open_listener(host: str, port: int, backlog: int) -> socket.socket:
    """Bind the public socket and listen with the configured backlog."""
    infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind(address)
        sock.listen(backlog)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def measure_backlog(listener: socket.socket, requested: int) -> int:
    """The backlog the kernel gave ``listener``; a warning when somaxconn clamped it."""
    queue = kernel.listen_queue(listener)
    somaxconn = kernel.read_somaxconn()
    effective = queue[1] if queue is not None else kernel.effective_backlog(requested, somaxconn)
    if effective < requested:
        log.warning(
            "listen backlog %d was clamped to %d by net.core.somaxconn=%s of this network"
            " namespace; connections beyond %d waiting to be accepted will be dropped."
            " Raise net.core.somaxconn (the AsgiServer's sysctls) to at least %d.",
            requested,
            effective,
            somaxconn,
            effective,
            requested,
        )
    return effective


def live_settings(old: SidecarSettings, new: SidecarSettings) -> SidecarSettings:
    """``new`` with the fields only a restart can change kept at their ``old`` values."""
    ignored = old.restart_only_changes(new)
    if not ignored:
        return new
    log.warning("settings %s change only on restart; keeping the old values", ignored)
    return new.model_copy(update={f: getattr(old, f) for f in ignored})


def read_gauges(
    settings: SidecarSettings,
    *,
    listener: socket.socket | None,
    effective_backlog: int,
    connections: int,
    idle: int,
    limiter: ConcurrencyLimiter[Any],
    adaptive: AdaptiveLimit | None,
    ready: bool,
    upstream: tuple[int, int] = (0, 0),
) -> Gauges:
    """Live figures for the metrics, with the kernel's view of the listener and namespace."""
    listening = listener is not None and listener.fileno() >= 0
    queue = kernel.listen_queue(listener) if listening and listener is not None else None
    overflows = kernel.listen_overflows()
    return Gauges(
        connections_active=connections - idle,
        connections_idle=idle,
        in_flight=limiter.in_flight,
        concurrency_limit=limiter.limit,
        queue_length=limiter.queued,
        queue_depth=settings.queue_depth,
        backlog=settings.backlog,
        backlog_effective=effective_backlog,
        accept_queue=queue[0] if queue else None,
        listen_overflows=overflows[0] if overflows else None,
        listen_drops=overflows[1] if overflows else None,
        somaxconn=kernel.read_somaxconn(),
        keep_alive_timeout=settings.timeout_keep_alive,
        max_connections=settings.max_connections,
        upstream_connections=upstream[0],
        upstream_idle=upstream[1],
        ready=ready,
        adaptive_limit=adaptive.current if adaptive else None,
        adaptive_baseline=adaptive.baseline if adaptive else None,
    )


def keep_alive_header(timeout: float) -> bytes:
    """Connection headers (and the end of the head) for responses on a kept-alive connection."""
    return b"connection: keep-alive\r\nkeep-alive: timeout=%d\r\n\r\n" % int(timeout)


class ProxyCore:
    def __init__(self, settings: SidecarSettings, loop: asyncio.AbstractEventLoop) -> None:
        self.settings = settings
        self.loop = loop
        self.stats = Stats()
        self.adaptive = adaptive_limit(settings)
        self._adapt_at = 0.0
        self.limiter: ConcurrencyLimiter[Exchange] = ConcurrencyLimiter(
            self.adaptive.current if self.adaptive else settings.limit_concurrency,
            settings.queue_depth,
        )
        self.idle: Deadlines[FrontConnection] = Deadlines()
        self.heads: Deadlines[FrontConnection] = Deadlines()
        self.awaiting: Deadlines[Exchange] = Deadlines()
        self.connections: set[FrontConnection] = set()
        self.pool = UpstreamPool(self, *settings.upstream_address)
        self.keep_alive_header = keep_alive_header(settings.timeout_keep_alive)
        self.listener: socket.socket | None = None
        self.effective_backlog = settings.backlog
        self.ready = False
        self.draining_connections = False
        self.stopping = False
        self.all_closed = asyncio.Event()
        self._accepting = False
        self._handshaking = 0
        self._sweeper: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task[object]] = set()

    # -- lifecycle --------------------------------------------------------------------------

    def start(self, listener: socket.socket | None = None) -> None:
        settings = self.settings
        self.listener = listener or open_listener(settings.host, settings.port, settings.backlog)
        self._check_backlog()
        self._resume_accepting()
        self._sweeper = self.loop.call_later(SWEEP_INTERVAL, self._sweep)
        self.ready = True

    @property
    def bound_port(self) -> int:
        assert self.listener is not None
        return int(self.listener.getsockname()[1])

    def _check_backlog(self) -> None:
        assert self.listener is not None
        self.effective_backlog = measure_backlog(self.listener, self.settings.backlog)

    def begin_drain(self) -> None:
        """SIGTERM: stop reporting ready; connections keep being served."""
        self.ready = False

    def close_listener(self) -> None:
        """Stop accepting, close idle connections, make every response close its connection."""
        self._pause_accepting()
        if self.listener is not None:
            self.listener.close()
        self.draining_connections = True
        self.stopping = True
        while (conn := self.idle.pop_oldest()) is not None:
            conn.close("shutdown")
        self.limiter.queue_depth = 0
        self._check_all_closed()

    def abort_all(self) -> None:
        for conn in list(self.connections):
            conn.abort("shutdown")
        self.pool.close_all()
        if self._sweeper is not None:
            self._sweeper.cancel()

    # -- settings ---------------------------------------------------------------------------

    def apply(self, new: SidecarSettings) -> None:
        """Apply new settings live (those that need a restart are kept, with a warning)."""
        old = self.settings
        new = live_settings(old, new)
        now = self.loop.time()
        self.settings = new
        if new.timeout_keep_alive < old.timeout_keep_alive:
            self.idle.unordered(now + old.timeout_keep_alive)
        if new.header_timeout < old.header_timeout:
            self.heads.unordered(now + old.header_timeout)
        if new.upstream_timeout < old.upstream_timeout:
            self.awaiting.unordered(now + old.upstream_timeout)
        self.keep_alive_header = keep_alive_header(new.timeout_keep_alive)
        self.adaptive = adaptive_limit(new, self.adaptive)
        limit = self.adaptive.current if self.adaptive else new.limit_concurrency
        for ex in self.limiter.reconfigure(limit, new.queue_depth):
            ex.client.admit(ex)
        if new.backlog != old.backlog and self.listener is not None and not self.stopping:
            # Linux resizes the accept queue of a listening socket in place.
            self.listener.listen(new.backlog)
            self._check_backlog()
        if not self._accepting and not self.stopping:
            self._resume_accepting()
        log.info("settings applied: %s", _changes(old, new))

    # -- connections ------------------------------------------------------------------------

    def connection_opened(self, conn: FrontConnection) -> None:
        self._handshaking -= 1
        self.connections.add(conn)
        self.stats.connections_opened += 1
        if self.draining_connections:
            conn.close("shutdown")
            return
        self.idle.add(conn, self.loop.time() + self.settings.timeout_keep_alive)

    def went_idle(self, conn: FrontConnection) -> None:
        self.idle.add(conn, self.loop.time() + self.settings.timeout_keep_alive)
        if not self._accepting and not self.stopping:
            self._resume_accepting()

    def connection_closing(self, conn: FrontConnection) -> None:
        """We started closing ``conn``: it no longer counts against max_connections."""
        self.connections.discard(conn)
        self.idle.discard(conn)
        self.heads.discard(conn)
        if not self._accepting and not self.stopping:
            self._resume_accepting()
        self._check_all_closed()

    def connection_closed(self, conn: FrontConnection, reason: str) -> None:
        self.stats.connections_closed[reason] += 1
        self.connection_closing(conn)

    def limiter_release(self) -> None:
        waiter = self.limiter.release()
        if waiter is not None:
            waiter.client.admit(waiter)

    def _check_all_closed(self) -> None:
        if self.stopping and not self.connections and not self._handshaking:
            self.all_closed.set()

    # -- accepting --------------------------------------------------------------------------

    def _resume_accepting(self) -> None:
        if self.listener is None or self._accepting or self.listener.fileno() < 0:
            return
        self._accepting = True
        self.loop.add_reader(self.listener, self._accept)

    def _pause_accepting(self) -> None:
        if self._accepting and self.listener is not None and self.listener.fileno() >= 0:
            self.loop.remove_reader(self.listener)
        self._accepting = False

    def _accept(self) -> None:
        listener = self.listener
        assert listener is not None
        cap = self.settings.max_connections
        for _ in range(ACCEPT_BATCH):
            if cap is not None and len(self.connections) + self._handshaking >= cap:
                queue = kernel.listen_queue(listener)
                if queue is not None and queue[0] == 0:
                    return  # nobody waits to be accepted: evict nobody
                victim = self.idle.pop_oldest()
                if victim is None:
                    # Nothing to evict: leave new connections in the kernel's queue.
                    self._pause_accepting()
                    return
                victim.close("evicted")
            try:
                sock, _ = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                # EMFILE and friends: back off instead of spinning on a readable socket.
                log.error("accept failed: %s", exc)
                self._pause_accepting()
                self.loop.call_later(ACCEPT_ERROR_PAUSE, self._resume_accepting)
                return
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._handshaking += 1
            task = self.loop.create_task(self._attach(sock))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _attach(self, sock: socket.socket) -> None:
        try:
            await self.loop.connect_accepted_socket(lambda: FrontConnection(self), sock)
        except OSError:
            self._handshaking -= 1
            sock.close()

    # -- deadlines --------------------------------------------------------------------------

    def _sweep(self) -> None:
        now = self.loop.time()
        try:
            for conn in self.heads.pop_expired(now):
                conn.timed_out_waiting_header()
            for conn in self.idle.pop_expired(now):
                conn.close("idle_timeout")
            for ex in self.limiter.expire(now):
                ex.client.reject(ex, "queue_timeout")
            for ex in self.awaiting.pop_expired(now):
                upstream = ex.upstream
                if upstream is not None and not ex.finished:
                    upstream.abort()
                    ex.client.upstream_failed(ex, 504, "timeout")
            self.pool.close_expired(now)
            self._watch_accept_queue()
            if self.adaptive is not None and now >= self._adapt_at:
                # every 0.2 or 0.3 s, 0.25 s on average
                self._adapt_at = max(self._adapt_at, now - UPDATE_INTERVAL) + UPDATE_INTERVAL
                limit = self.adaptive.update(now, self.limiter.in_flight)
                if limit is not None:
                    for ex in self.limiter.reconfigure(limit, self.settings.queue_depth):
                        ex.client.admit(ex)
        except Exception:  # pragma: no cover - a bug here must not stop future sweeps
            log.exception("deadline sweep failed")
        self._sweeper = self.loop.call_later(SWEEP_INTERVAL, self._sweep)

    def _watch_accept_queue(self) -> None:
        """Count time the accept queue runs nearly full: a backlog signal that, unlike the
        namespace-wide ListenOverflows, belongs to this socket alone."""
        if self.listener is None or self.listener.fileno() < 0:
            return
        queue = kernel.listen_queue(self.listener)
        if queue is not None and queue[1] and queue[0] >= ACCEPT_QUEUE_FULL * queue[1]:
            self.stats.accept_queue_full_seconds += SWEEP_INTERVAL

    # -- figures ----------------------------------------------------------------------------

    def gauges(self) -> Gauges:
        return read_gauges(
            self.settings,
            listener=self.listener,
            effective_backlog=self.effective_backlog,
            connections=len(self.connections),
            idle=len(self.idle),
            limiter=self.limiter,
            adaptive=self.adaptive,
            ready=self.ready,
            upstream=(len(self.pool.open), len(self.pool.idle)),
        )


def adaptive_limit(
    settings: SidecarSettings, old: AdaptiveLimit | None = None
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


def _changes(old: SidecarSettings, new: SidecarSettings) -> str:
    diffs: Iterable[str] = (
        f"{name} {getattr(old, name)!r} -> {getattr(new, name)!r}"
        for name in type(new).model_fields
        if getattr(old, name) != getattr(new, name)
    )
    return ", ".join(diffs) or "no change"
