"""``asgi-sidecar serve module:app``: the same limits and metrics in-process, on uvicorn.

No proxy hop: uvicorn runs the app on a socket the sidecar opened with the
configured backlog.  Three pieces adapt uvicorn:

* ``answering.Exchange`` (compiled) runs each request in place of uvicorn's cycle, and
  replaces ``limit_concurrency`` with the admission engine the proxy uses
  (``admitting.py``): it counts requests, not connections, admits exactly N, queues,
  and answers 503 with Retry-After on a connection that stays open.
* ``uvicorn_protocol.GuardedProtocol`` (a uvicorn protocol subclass) holds every request head to
  the proxy's request rules and answers refusals as the proxy does.  It keeps
  idle connections in swept deadlines (``guarding.Guard``) instead of uvicorn's
  timer per response, from the moment a connection opens, so one that never
  sends a byte is closed too; it adds the header timeout (408), evicts the
  longest-idle connection at ``max_connections`` and feeds the connection
  metrics.
* ``EmbeddedServer`` is what the process runner (``running.py``) runs: it keeps
  uvicorn off the signals, so SIGTERM drains as in proxy mode (readiness 503,
  ``shutdown_delay``, then uvicorn's graceful shutdown bounded by
  ``timeout_graceful_shutdown``).

uvicorn owns the accept loop here, so at ``max_connections`` with nothing idle a
new connection is closed at once instead of being left in the accept queue (the
proxy mode can leave it there).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import importlib
import logging
import socket
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from time import monotonic
from typing import Any, Final

import uvicorn

from asgi_sidecar.admitting import Admission
from asgi_sidecar.answering import ASGIApp
from asgi_sidecar.guarding import Guard
from asgi_sidecar.listening import measure_backlog, open_listener, read_gauges
from asgi_sidecar.metrics import Gauges
from asgi_sidecar.running import run
from asgi_sidecar.stats import Stats
from asgi_sidecar.tracking import REST_AFTER, SWEEP_INTERVAL
from asgi_sidecar.uvicorn_protocol import GuardedProtocol, tracked_websockets
from asgi_sidecar.validated import ValidSettings

log = logging.getLogger("asgi_sidecar")


def _wake(waiter: asyncio.Future[None]) -> bool:
    """A slot came free for a queued request; False if it already gave up."""
    if waiter.done():
        return False
    waiter.set_result(None)
    return True


class EmbeddedServer:
    """uvicorn with the sidecar's admission, timeouts and metrics: a ``running.Server``."""

    mode: Final = "embedded"

    def __init__(
        self, target: str, app: ASGIApp, settings: ValidSettings, loop: asyncio.AbstractEventLoop
    ) -> None:
        self.settings = settings
        self.loop = loop
        self.stats = Stats()
        self.admission: Admission[asyncio.Future[None]] = Admission(
            settings, self.stats, loop.time, _wake
        )
        self.connections: set[GuardedProtocol] = set()
        self.guard: Guard[GuardedProtocol, asyncio.Future[None]] = Guard(
            settings, self.stats, self.admission, monotonic
        )
        self.idle = self.guard.idle
        self.heads = self.guard.heads
        self.ready = False
        self.listener: socket.socket | None = None
        self.effective_backlog = settings.backlog
        self._target = target
        self._sweeper: asyncio.TimerHandle | None = None
        # A connection upgraded to a WebSocket, by its WebSocket protocol (``tracked_websockets``).
        self.upgraded: dict[asyncio.BaseProtocol, GuardedProtocol] = {}
        protocol = type("Protocol", (GuardedProtocol,), {"state": self, "guard": self.guard})
        self.config = uvicorn.Config(
            app,
            http=protocol,
            ws=tracked_websockets(self.upgraded),
            loop="none",
            lifespan="auto",
            timeout_graceful_shutdown=int(max(1, settings.timeout_graceful_shutdown)),
            backlog=settings.backlog,
            log_config=None,
            access_log=False,
        )
        self.server = _Uvicorn(self.config)

    # -- lifecycle (running.Server) ---------------------------------------------------------

    def open(self) -> None:
        self._sweep()
        settings = self.settings
        self.listener = open_listener(settings.host, settings.port, settings.backlog)
        self.effective_backlog = measure_backlog(self.listener, settings.backlog)

    def describe(self) -> str:
        assert self.listener is not None
        port = self.listener.getsockname()[1]
        return f"serving {self._target} on http://{self.settings.host}:{port}"

    async def readiness(self) -> tuple[bool, str]:
        return (True, "ok") if self.ready else (False, "not ready")

    async def serve(self) -> int:
        assert self.listener is not None
        # Everything imported and built so far lives as long as the process: keep it out of
        # the garbage collector's full passes, which per-request garbage triggers.
        gc.collect()
        gc.freeze()
        self.ready = True
        try:
            await self.server.serve(sockets=[self.listener])
        finally:
            self.listener.close()
        return 0 if self.server.started else 1

    def begin_drain(self, seconds: float) -> None:
        """preStop drain: unready (uvicorn has no way to close connections after a
        response short of shutting down; SIGTERM does that)."""
        self.ready = False

    def stop_accepting(self) -> None:
        self.server.should_exit = True  # uvicorn closes the listener and idle connections

    async def finish(self, timeout: float) -> None:
        """Nothing to wait for here: uvicorn's shutdown is bounded by the same timeout."""

    def abort(self) -> None:
        if self.listener is not None:
            self.listener.close()
        if self._sweeper is not None:
            self._sweeper.cancel()

    # -- settings and deadlines -------------------------------------------------------------

    def apply(self, new: ValidSettings) -> None:
        old, self.settings = self.settings, new
        self.guard.apply(new)
        self.admission.apply(new)
        if new.backlog != old.backlog and self.listener is not None:
            self.listener.listen(new.backlog)
            self.effective_backlog = measure_backlog(self.listener, new.backlog)
        if new.timeout_keep_alive < old.timeout_keep_alive:
            self.idle.unordered(monotonic() + old.timeout_keep_alive)
        if new.header_timeout < old.header_timeout:
            self.heads.unordered(monotonic() + old.header_timeout)

    def _sweep(self) -> None:
        """Every 0.1 s: close connections idle too long, answer 408 to clients whose
        headers are overdue; adapt the limit."""
        now = monotonic()  # the guard's clock
        for proto in self.idle.pop_expired(now):
            proto.idle_timed_out()
        for proto in self.heads.pop_expired(now):
            proto.header_timed_out()
        idle_before = now - REST_AFTER
        for proto in self.idle:  # in the order they went idle: stop at the first too young
            if not proto.rest(idle_before):
                break
        self.admission.tick(self.loop.time())  # the admission engine's
        self._sweeper = self.loop.call_later(SWEEP_INTERVAL, self._sweep)

    def gauges(self) -> Gauges:
        return read_gauges(
            self.settings,
            listener=self.listener,
            effective_backlog=self.effective_backlog,
            connections=len(self.connections),
            idle=len(self.idle),
            admission=self.admission,
            ready=self.ready,
        )


class _Uvicorn(uvicorn.Server):
    """uvicorn's server without its signal handlers: the runner owns SIGTERM and SIGINT."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


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
    settings: ValidSettings,
    *,
    app_dir: str = ".",
    config_path: Path | None = None,
    environ: Mapping[str, str] | None = None,
    flags: Mapping[str, Any] | None = None,
) -> int:
    """``asgi-sidecar serve``: the whole process, until SIGTERM."""
    app = load_app(target, app_dir)
    server = EmbeddedServer(target, app, settings, asyncio.get_running_loop())
    return await run(server, config_path=config_path, environ=environ, flags=flags)
