"""The proxy's core: the accept loop, the deadline sweep, live settings, the drain.

``ProxyCore`` owns the listening socket and accepts connections itself (rather
than through ``loop.create_server``) so that at ``max_connections`` it can stop
accepting and leave new connections in the kernel's accept queue, instead of
accepting them only to fail them.  Client connections see it only as
``exchanges.Core``; the process around it (``running.py``) sees it as a
``running.Server``.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from typing import TYPE_CHECKING, Final

from asgi_sidecar import kernel, responding
from asgi_sidecar.admitting import Admission
from asgi_sidecar.exchanges import Core
from asgi_sidecar.listening import measure_backlog, open_listener, read_gauges
from asgi_sidecar.livesettings import LiveSettings
from asgi_sidecar.pooling import UpstreamPool
from asgi_sidecar.proxying import FrontConnection
from asgi_sidecar.reading import monotonic
from asgi_sidecar.running import run
from asgi_sidecar.stats import Stats, count
from asgi_sidecar.tracking import REST_AFTER, SWEEP_INTERVAL, Deadlines

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping
    from pathlib import Path
    from typing import Any

    from asgi_sidecar.exchanges import Connection, Exchange
    from asgi_sidecar.metrics import Gauges
    from asgi_sidecar.validated import ValidSettings

log = logging.getLogger("asgi_sidecar")

ACCEPT_BATCH: Final = 64  # connections accepted per readable event before yielding
ACCEPT_ERROR_PAUSE: Final = 0.1  # seconds without accepting after EMFILE and the like
ACCEPT_QUEUE_FULL: Final = 0.9  # share of the effective backlog that counts as "nearly full"


def _wake(ex: Exchange) -> bool:
    """A slot came free for a queued request: send it on."""
    ex.client.admit(ex)
    return True


# At the end of a drain, connections idle at least this long are closed; younger ones are
# looked at again after this long, at most DRAIN_IDLE_ROUNDS times in all.
DRAIN_IDLE_GRACE: Final = 0.5
DRAIN_IDLE_ROUNDS: Final = 10


class ProxyCore(Core):
    mode: Final = "proxy"

    def __init__(self, settings: ValidSettings, loop: asyncio.AbstractEventLoop) -> None:
        self.settings = settings
        self.loop = loop
        # The loop's clock as a bound method, looked up once: the per-request deadlines
        # read it without a method lookup on the loop each time.
        self.clock: Callable[[], float] = loop.time
        self.stats = Stats()
        self.admission: Admission[Exchange] = Admission(settings, self.stats, loop.time, _wake)
        self.idle: Deadlines[Connection] = Deadlines()
        self.heads: Deadlines[Connection] = Deadlines()
        self.bodies: Deadlines[Connection] = Deadlines()  # bodies read before admission
        self.sending: Deadlines[Connection] = Deadlines()  # clients not reading their response
        self.connections: set[Connection] = set()
        self.live = LiveSettings(settings)  # made anew with the settings (``apply``)
        self.pool = UpstreamPool(loop, self.live, *settings.upstream_address)
        self.keep_alive_end = responding.keep_alive_end(settings.timeout_keep_alive)
        self.listener: socket.socket | None = None
        self.effective_backlog = settings.backlog
        self.ready = False
        self.stopping = False  # the listener closed
        self.close_after_response = False  # draining or stopping: no connection is kept
        self.all_closed = asyncio.Event()
        self._stopped = asyncio.Event()
        self._accepting = False
        self._handshaking = 0
        self._sweeper: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task[object]] = set()

    # -- lifecycle (running.Server) ---------------------------------------------------------

    def open(self, listener: socket.socket | None = None) -> None:
        settings = self.settings
        self.listener = listener or open_listener(settings.host, settings.port, settings.backlog)
        self._check_backlog()
        self._resume_accepting()
        self._sweeper = self.loop.call_later(SWEEP_INTERVAL, self._sweep)
        self.ready = True

    def describe(self) -> str:
        settings = self.settings
        return f"proxying http://{settings.host}:{self.bound_port} -> {settings.upstream}"

    @property
    def bound_port(self) -> int:
        assert self.listener is not None
        return int(self.listener.getsockname()[1])

    async def readiness(self) -> tuple[bool, str]:
        if not self.ready:
            return False, "draining"
        return await self.pool.probe()

    async def serve(self) -> int:
        await self._stopped.wait()
        return 0

    def _check_backlog(self) -> None:
        assert self.listener is not None
        self.effective_backlog = measure_backlog(self.listener, self.settings.backlog)

    def begin_drain(self, seconds: float) -> None:
        """The Pod is going away (its preStop hook called /drain, or SIGTERM came with a
        ``shutdown_delay``): turn unready and close
        every connection after its next response, so that clients (a kept-alive connection
        to a ClusterIP stays on its Pod) reconnect to other Pods; new connections are still
        served, since endpoints take a moment to update.  Connections still idle when the
        drain ends are closed then: closing them at once would race the clients that reuse
        them that instant (resets); by the end, a busy client has been told to reconnect."""
        log.info(
            "draining for %g s: readiness is now 503, connections close after a response", seconds
        )
        self.ready = False
        self.close_after_response = True
        self.loop.call_later(seconds, self._close_idle, DRAIN_IDLE_ROUNDS)

    def _close_idle(self, rounds: int) -> None:
        """Close the connections idle for DRAIN_IDLE_GRACE or longer.  One opened or
        answered just now may have its request on the way: closing it would be the very
        keep-alive race the drain avoids (the client reads a close, no response), so it is
        looked at again a moment later; the last round closes whatever is left."""
        if rounds <= 1:
            cutoff = float("inf")
        else:
            cutoff = self.loop.time() + self.live.timeout_keep_alive - DRAIN_IDLE_GRACE
        for conn in self.idle.pop_expired(cutoff):
            conn.close("shutdown")
        if len(self.idle) and rounds > 1:
            self.loop.call_later(DRAIN_IDLE_GRACE, self._close_idle, rounds - 1)

    def stop_accepting(self) -> None:
        """Stop accepting, close idle connections, make every response close its connection."""
        self._pause_accepting()
        if self.listener is not None:
            self.listener.close()
        self.stopping = self.close_after_response = True
        self.pool.stopping = True
        while (conn := self.idle.pop_oldest()) is not None:
            conn.close("shutdown")
        self.admission.close()
        self._check_all_closed()

    async def finish(self, timeout: float) -> None:
        """Wait up to ``timeout`` for the connections left to close, then cut them off."""
        try:
            await asyncio.wait_for(self.all_closed.wait(), timeout)
        except TimeoutError:
            log.warning(
                "graceful shutdown timed out with %d connections open; closing them",
                len(self.connections),
            )
        self.abort()
        self._stopped.set()

    def abort(self) -> None:
        for conn in list(self.connections):
            conn.abort("shutdown")
        self.pool.close_all()
        if self._sweeper is not None:
            self._sweeper.cancel()

    # -- settings ---------------------------------------------------------------------------

    def apply(self, new: ValidSettings) -> None:
        """Apply new settings live (the runner has kept those that need a restart)."""
        old = self.settings
        now = self.loop.time()
        self.settings = new
        self.live = self.pool.live = LiveSettings(new)
        if new.timeout_keep_alive < old.timeout_keep_alive:
            self.idle.unordered(now + old.timeout_keep_alive)
        if new.header_timeout < old.header_timeout:
            self.heads.unordered(now + old.header_timeout)
        if new.body_timeout < old.body_timeout:
            self.bodies.unordered(now + old.body_timeout)
        if new.send_timeout < old.send_timeout:
            self.sending.unordered(now + old.send_timeout)
        if new.upstream_timeout < old.upstream_timeout:
            self.pool.awaiting.unordered(now + old.upstream_timeout)
        self.keep_alive_end = responding.keep_alive_end(new.timeout_keep_alive)
        self.admission.apply(new)
        if new.backlog != old.backlog and self.listener is not None and not self.stopping:
            # Linux resizes the accept queue of a listening socket in place.
            self.listener.listen(new.backlog)
            self._check_backlog()
        if not self._accepting and not self.stopping:
            self._resume_accepting()

    # -- connections (exchanges.Core) -------------------------------------------------------

    def opened(self, conn: Connection) -> None:
        self._handshaking -= 1
        self.connections.add(conn)
        self.stats.connections_opened += 1
        if self.stopping:
            conn.close("shutdown")
            return
        self.idle.add(conn, self.clock() + self.live.timeout_keep_alive)

    def reading_head(self, conn: Connection, was_idle: bool) -> None:
        if was_idle:
            self.idle.discard(conn)

    def head_pending(self, conn: Connection) -> None:
        self.heads.add(conn, self.clock() + self.live.header_timeout)

    def head_read(self, conn: Connection) -> None:
        self.heads.discard(conn)

    def reading_body(self, conn: Connection) -> None:
        self.bodies.add(conn, self.clock() + self.live.body_timeout)

    def body_read(self, conn: Connection) -> None:
        self.bodies.discard(conn)

    def send_stalled(self, conn: Connection) -> None:
        self.sending.add(conn, self.clock() + self.live.send_timeout)

    def send_resumed(self, conn: Connection) -> None:
        self.sending.discard(conn)

    def went_idle(self, conn: Connection) -> None:
        self.idle.add(conn, self.clock() + self.live.timeout_keep_alive)
        if not self._accepting and not self.stopping:
            self._resume_accepting()

    def closing(self, conn: Connection) -> None:
        """We started closing ``conn``: it no longer counts against max_connections."""
        self.connections.discard(conn)
        self.idle.discard(conn)
        self.heads.discard(conn)
        self.bodies.discard(conn)
        self.sending.discard(conn)
        if not self._accepting and not self.stopping:
            self._resume_accepting()
        self._check_all_closed()

    def closed(self, conn: Connection, reason: str) -> None:
        count(self.stats.connections_closed, reason)
        self.closing(conn)

    def forward(self, ex: Exchange) -> None:
        self.pool.acquire(ex)

    def withdraw(self, ex: Exchange) -> bool:
        return self.pool.withdraw(ex)

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
        cap = self.live.max_connections
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
            for conn in self.bodies.pop_expired(now):
                conn.timed_out_waiting_body()
            for conn in self.sending.pop_expired(now):
                conn.abort("send_timeout")
            for conn in self.idle.pop_expired(now):
                conn.close("idle_timeout")
            self._rest_idle()
            for ex in self.admission.expire(now):
                ex.client.reject(ex, "queue_timeout")
            self.pool.time_out(now)
            self.pool.close_expired(now)
            self._watch_accept_queue()
            self.admission.tick(now)
        except Exception:  # pragma: no cover - a bug here must not stop future sweeps
            log.exception("deadline sweep failed")
        self._sweeper = self.loop.call_later(SWEEP_INTERVAL, self._sweep)

    def _rest_idle(self) -> None:
        """Connections idle for REST_AFTER give up their parser until their next request.

        ``idle`` is in the order connections went idle, so the walk stops at the first one
        too young; it passes over those already rested (a few dozen instructions each)."""
        idle_before = monotonic() - REST_AFTER
        for conn in self.idle:
            if not conn.rest(idle_before):
                break

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
            admission=self.admission,
            ready=self.ready,
            upstream=(len(self.pool.open), len(self.pool.idle)),
        )


async def run_proxy(
    settings: ValidSettings,
    *,
    config_path: Path | None = None,
    environ: Mapping[str, str] | None = None,
    flags: Mapping[str, Any] | None = None,
) -> int:
    """``asgi-sidecar proxy``: the whole process, until SIGTERM."""
    core = ProxyCore(settings, asyncio.get_running_loop())
    return await run(core, config_path=config_path, environ=environ, flags=flags)
