"""``asgi-sidecar serve module:app``: the same limits and metrics in-process, on uvicorn.

No proxy hop: uvicorn runs the app on a socket the sidecar opened with the
configured backlog.  Three pieces adapt uvicorn:

* ``AdmissionMiddleware`` replaces ``limit_concurrency``: it counts requests,
  not connections, admits exactly N, queues, and answers 503 with Retry-After
  on a connection that stays open.
* ``GuardedProtocol`` (a uvicorn protocol subclass) starts the idle timer when a
  connection opens, so one that never sends a byte is closed too, adds the
  header timeout (408), tracks idle connections for ``max_connections`` and
  feeds the connection metrics.
* ``DrainingServer`` turns SIGTERM into: readiness 503, ``shutdown_delay``, then
  uvicorn's graceful shutdown bounded by ``timeout_graceful_shutdown``.

uvicorn owns the accept loop here, so at ``max_connections`` with nothing idle a
new connection is closed at once instead of being left in the accept queue (the
proxy mode can leave it there).
"""

from __future__ import annotations

import asyncio
import gc
import importlib
import logging
import sys
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from pathlib import Path
from time import monotonic
from typing import Any

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from asgi_sidecar import __version__
from asgi_sidecar.adapting import UPDATE_INTERVAL
from asgi_sidecar.admin import AdminServer
from asgi_sidecar.http1 import simple_response
from asgi_sidecar.limiting import ConcurrencyLimiter
from asgi_sidecar.metrics import Gauges, SidecarCollector, make_registry, settings_info
from asgi_sidecar.reloading import ConfigWatcher
from asgi_sidecar.serving import (
    SWEEP_INTERVAL,
    adaptive_limit,
    live_settings,
    measure_backlog,
    open_listener,
    read_gauges,
)
from asgi_sidecar.settings import SidecarSettings
from asgi_sidecar.stats import Stats
from asgi_sidecar.tracking import Deadlines

log = logging.getLogger("asgi_sidecar")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

REJECT_BODY = b"Service Unavailable: the server is at its concurrency limit, retry later\n"


class EmbeddedState:
    """Shared by the middleware, the protocols and the metrics of one process."""

    def __init__(self, settings: SidecarSettings) -> None:
        self.settings = settings
        self.stats = Stats()
        self.adaptive = adaptive_limit(settings)
        self._adapt_at = 0.0
        self.limiter: ConcurrencyLimiter[asyncio.Future[None]] = ConcurrencyLimiter(
            self.adaptive.current if self.adaptive else settings.limit_concurrency,
            settings.queue_depth,
        )
        self.connections: set[GuardedProtocol] = set()
        self.idle: Deadlines[GuardedProtocol] = Deadlines()
        self.heads: Deadlines[GuardedProtocol] = Deadlines()
        self.config: uvicorn.Config | None = None
        self.ready = False
        self.listener: Any = None
        self.effective_backlog = settings.backlog

    def apply(self, new: SidecarSettings) -> None:
        new = live_settings(self.settings, new)
        old, self.settings = self.settings, new
        self.adaptive = adaptive_limit(new, self.adaptive)
        self._reconfigure(self.adaptive.current if self.adaptive else new.limit_concurrency)
        if new.backlog != old.backlog and self.listener is not None:
            self.listener.listen(new.backlog)
            self.effective_backlog = measure_backlog(self.listener, new.backlog)
        keep_alive = int(max(1, new.timeout_keep_alive))
        if self.config is not None:
            self.config.timeout_keep_alive = keep_alive  # for connections opened from now on
        for proto in self.connections:
            proto.timeout_keep_alive = keep_alive  # from their next idle period
        if new.header_timeout < old.header_timeout:
            self.heads.unordered(asyncio.get_running_loop().time() + old.header_timeout)

    def sweep(self) -> None:
        """Every 0.1 s: answer 408 to clients whose headers are overdue."""
        loop = asyncio.get_running_loop()
        now = loop.time()
        for proto in self.heads.pop_expired(now):
            proto.header_timed_out()
        if self.adaptive is not None and now >= self._adapt_at:
            self._adapt_at = max(self._adapt_at, now - UPDATE_INTERVAL) + UPDATE_INTERVAL
            limit = self.adaptive.update(now, self.limiter.in_flight)
            if limit is not None:
                self._reconfigure(limit)
        loop.call_later(SWEEP_INTERVAL, self.sweep)

    def _reconfigure(self, limit: int | None) -> None:
        for waiter in self.limiter.reconfigure(limit, self.settings.queue_depth):
            if not waiter.done():
                waiter.set_result(None)

    def release(self) -> None:
        while True:
            waiter = self.limiter.release()
            if waiter is None or not waiter.done():
                break
            # a waiter that already gave up: pass the slot on
        if waiter is not None:
            waiter.set_result(None)

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
        )


class AdmissionMiddleware:
    """Concurrency limit on requests (not connections), with queue and Retry-After."""

    def __init__(self, app: ASGIApp, state: EmbeddedState) -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        state = self.state
        limiter = state.limiter
        stats = state.stats
        queued_at = -1.0
        if not limiter.try_acquire():
            loop = asyncio.get_running_loop()
            waiter: asyncio.Future[None] = loop.create_future()
            settings = state.settings
            if not limiter.enqueue(waiter, loop.time() + settings.queue_timeout):
                reason = "queue_full" if limiter.queue_depth else "concurrency_limit"
                await self._reject(send, reason)
                return
            queued_at = monotonic()
            try:
                await asyncio.wait_for(asyncio.shield(waiter), settings.queue_timeout)
            except TimeoutError:
                if limiter.cancel(waiter):
                    await self._reject(send, "queue_timeout")
                    return
                # admitted just as the wait ended: fall through holding the slot
            except asyncio.CancelledError:
                if not limiter.cancel(waiter):
                    state.release()
                raise
        started = monotonic()
        if queued_at >= 0:
            stats.queue_wait.observe(started - queued_at)
        status = 500

        async def counting_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, counting_send)
        finally:
            stats.requests[status] += 1
            duration = monotonic() - started
            stats.request_duration.observe(duration)
            if state.adaptive is not None:
                state.adaptive.record(duration, limiter.in_flight)
            state.release()

    async def _reject(self, send: Send, reason: str) -> None:
        self.state.stats.rejected[reason] += 1
        self.state.stats.requests[503] += 1
        await send(
            {
                "type": "http.response.start",
                "status": 503,
                "headers": [
                    (b"content-type", b"text/plain; charset=utf-8"),
                    (b"retry-after", str(self.state.settings.retry_after).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": REJECT_BODY})


class GuardedProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol plus idle-from-the-start, header timeout and tracking.

    Nothing here adds a timer per request: the header deadline lives in the
    shared ``Deadlines`` swept every 0.1 s, and after a response uvicorn's own
    keep-alive timer (same timeout) does the idle closing.
    """

    state: EmbeddedState  # set on the subclass made per process

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        state = self.state
        self._close_reason = ""
        self._idle_since = monotonic()
        self._served = 0
        super().connection_made(transport)
        state.stats.connections_opened += 1
        cap = state.settings.max_connections
        if cap is not None and len(state.connections) >= cap:
            victim = state.idle.pop_oldest()
            if victim is None:
                state.stats.rejected["max_connections"] += 1
                self._close_reason = "max_connections"
                transport.close()
                return
            victim._close_reason = "evicted"
            victim.transport.close()
        state.connections.add(self)
        state.idle.add(self, 0.0)
        # uvicorn never times out a connection that has not sent a byte; this does.
        self.timeout_keep_alive_task = self.loop.call_later(
            self.timeout_keep_alive, self.timeout_keep_alive_handler
        )

    def timeout_keep_alive_handler(self) -> None:
        self._close_reason = self._close_reason or "idle_timeout"
        super().timeout_keep_alive_handler()

    def connection_lost(self, exc: Exception | None) -> None:
        state = self.state
        state.connections.discard(self)
        state.idle.discard(self)
        state.heads.discard(self)
        reason = self._close_reason or ("client_error" if exc else "client_closed")
        state.stats.connections_closed[reason] += 1
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        state = self.state
        if self._served:
            stats = state.stats
            stats.keepalive_reused += 1
            if self in state.idle:
                state.idle.discard(self)
                stats.idle_gap.observe(monotonic() - self._idle_since)
        else:
            state.idle.discard(self)
        self._served += 1
        state.heads.add(self, self.loop.time() + state.settings.header_timeout)
        HttpToolsProtocol.on_message_begin(self)

    def on_headers_complete(self) -> None:
        self.state.heads.discard(self)
        HttpToolsProtocol.on_headers_complete(self)

    def header_timed_out(self) -> None:
        self.state.stats.rejected["header_timeout"] += 1
        self._close_reason = "header_timeout"
        if not self.transport.is_closing():
            self.transport.write(simple_response(408, b"Request Timeout\n", keep_alive=False))
            self.transport.close()

    def on_response_complete(self) -> None:
        HttpToolsProtocol.on_response_complete(self)
        if self.timeout_keep_alive_task is not None:  # uvicorn found nothing pipelined
            self._idle_since = monotonic()
            self.state.idle.add(self, 0.0)


class DrainingServer(uvicorn.Server):
    """SIGTERM: readiness 503 first, exit after shutdown_delay."""

    def __init__(self, config: uvicorn.Config, state: EmbeddedState) -> None:
        super().__init__(config)
        self.state = state
        self._drain_started = -1.0

    def handle_exit(self, sig: int, frame: Any) -> None:
        if self._drain_started < 0:
            self.state.ready = False
            self._drain_started = monotonic()
            log.info("draining: readiness is now 503")
            return
        super().handle_exit(sig, frame)

    async def on_tick(self, counter: int) -> bool:
        if (
            self._drain_started >= 0
            and monotonic() - self._drain_started >= self.state.settings.shutdown_delay
        ):
            self.should_exit = True
        return await super().on_tick(counter)


def load_app(target: str, app_dir: str) -> ASGIApp:
    module_name, sep, attr = target.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"app must look like module:attribute, got {target!r}")
    if app_dir:
        sys.path.insert(0, str(Path(app_dir).resolve()))
    module = importlib.import_module(module_name)
    app: Any = module
    for part in attr.split("."):
        app = getattr(app, part)
    return app  # type: ignore[no-any-return]


async def run_embedded(
    target: str,
    settings: SidecarSettings,
    *,
    app_dir: str = ".",
    config_path: Path | None = None,
    environ: Mapping[str, str] | None = None,
    flags: Mapping[str, Any] | None = None,
) -> int:
    app = load_app(target, app_dir)
    state = EmbeddedState(settings)
    protocol = type("Protocol", (GuardedProtocol,), {"state": state})
    config = uvicorn.Config(
        AdmissionMiddleware(app, state),
        http=protocol,
        loop="none",
        lifespan="auto",
        timeout_keep_alive=int(max(1, settings.timeout_keep_alive)),
        timeout_graceful_shutdown=int(max(1, settings.timeout_graceful_shutdown)),
        backlog=settings.backlog,
        log_config=None,
        access_log=False,
    )
    state.config = config
    state.sweep()
    listener = open_listener(settings.host, settings.port, settings.backlog)
    state.listener = listener
    state.effective_backlog = measure_backlog(listener, settings.backlog)

    def info() -> dict[str, str]:
        return settings_info(state.settings.model_dump(), "embedded", __version__)

    registry = make_registry(SidecarCollector(state.stats, state.gauges, info))

    async def readiness() -> tuple[bool, str]:
        return (True, "ok") if state.ready else (False, "not ready")

    admin = AdminServer(registry, readiness)
    await admin.start(settings.metrics_host, settings.metrics_port)
    watcher_task = None
    if config_path is not None:
        watcher = ConfigWatcher(
            config_path,
            environ or {},
            flags or {},
            state.apply,
            lambda result: state.stats.config_reloads.update([result]),
        )
        watcher_task = asyncio.get_running_loop().create_task(watcher.run())
    server = DrainingServer(config, state)
    # Everything imported and built so far lives as long as the process: keep it out of
    # the garbage collector's full passes, which per-request garbage triggers.
    gc.collect()
    gc.freeze()
    state.ready = True
    log.info(
        "asgi-sidecar %s serving %s on http://%s:%d; metrics on http://%s:%d/metrics",
        __version__,
        target,
        settings.host,
        listener.getsockname()[1],
        settings.metrics_host,
        admin.port,
    )
    try:
        await server.serve(sockets=[listener])
    finally:
        if watcher_task is not None:
            watcher_task.cancel()
        await admin.close()
        listener.close()
    return 0 if server.started else 1
