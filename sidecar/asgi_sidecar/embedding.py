"""``asgi-sidecar serve module:app``: the same limits and metrics in-process, on uvicorn.

No proxy hop: uvicorn runs the app on a socket the sidecar opened with the
configured backlog.  Three pieces adapt uvicorn:

* ``guarding.AdmissionMiddleware`` (compiled) replaces ``limit_concurrency``
  with the admission engine the proxy uses (``admitting.py``): it counts
  requests, not connections, admits exactly N, queues, and answers 503 with
  Retry-After on a connection that stays open.
* ``GuardedProtocol`` (a uvicorn protocol subclass) holds every request head to
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

import httptools
import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

from asgi_sidecar import responding
from asgi_sidecar.admitting import Admission
from asgi_sidecar.guarding import AdmissionMiddleware, ASGIApp, Guard
from asgi_sidecar.listening import measure_backlog, open_listener, read_gauges
from asgi_sidecar.metrics import Gauges
from asgi_sidecar.refusing import input_refusal
from asgi_sidecar.running import run
from asgi_sidecar.settings import SidecarSettings
from asgi_sidecar.stats import Stats, count
from asgi_sidecar.tracking import REST_AFTER, SWEEP_INTERVAL

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
        self, target: str, app: ASGIApp, settings: SidecarSettings, loop: asyncio.AbstractEventLoop
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
        protocol = type("Protocol", (GuardedProtocol,), {"state": self, "guard": self.guard})
        self.config = uvicorn.Config(
            AdmissionMiddleware(app, self.guard),
            http=protocol,
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

    def apply(self, new: SidecarSettings) -> None:
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


class CloseDelimitedCycle(RequestResponseCycle):
    """The response to an HTTP/1.0 request: a body without a length ends at the close.

    uvicorn's httptools protocol frames such a body with chunked coding whatever the
    request's version, and an HTTP/1.0 client cannot read it (RFC 9112 6.1: no
    Transfer-Encoding unless the request is HTTP/1.1 or later).  The proxy mode sends it
    delimited by the close, as uvicorn's h11 protocol does; so does this.  uvicorn closes an
    HTTP/1.0 connection after each response already.
    """

    until_close = False

    async def send(self, message: Any) -> None:
        kind = message["type"]
        if kind == "http.response.start" and not self.response_started:
            names = {name.lower() for name, _ in message.get("headers", ())}
            if not names & {b"content-length", b"transfer-encoding"}:
                self.until_close = True
                self.chunked_encoding = False  # so uvicorn adds no Transfer-Encoding
                self.expected_content_length = sys.maxsize
        elif kind == "http.response.body" and self.until_close and not message.get("more_body"):
            self.expected_content_length = len(message.get("body", b""))  # the end is here
        await super().send(message)


class GuardedProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol plus the edge's request rules, idle-from-the-start,
    header timeout and tracking.

    uvicorn's own protocol leaves most of RFC 9112's request rules to the app: an
    HTTP/1.1 request without ``Host``, an ``HTTP/2.0`` request line, ``gzip, chunked``
    or a fragment in the target reach it, and what llhttp refuses gets a plain 400
    that nobody counts.  This one checks every head with the proxy's rules
    (``http1.check_request``) before uvicorn builds its scope, and answers and counts
    every refusal as the proxy does (``refusing.input_refusal``: 400, 501 or 505,
    closing the connection).

    Nothing here adds a timer per request or per connection: the idle and header
    deadlines live in the ``guarding.Guard`` (compiled, one call per hook), swept every
    0.1 s, so uvicorn's keep-alive timer is never armed (``on_response_complete``), and
    a fractional ``timeout_keep_alive`` is honoured to within the sweep.
    """

    # Slots, not instance attributes: uvicorn's protocol sets 28 of its own, and CPython
    # 3.11 shares one key table among a class's instances for at most 30.  Past that, every
    # connection got a dict of its own and each of uvicorn's attribute reads a slower path.
    __slots__ = ("_close_reason", "_idle_since", "_served")

    state: EmbeddedServer  # both set on the subclass made per process
    guard: Guard[GuardedProtocol, asyncio.Future[None]]

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        state = self.state
        self._close_reason = ""
        self._idle_since = 0.0  # set when the connection is taken in
        self._served = 0
        super().connection_made(transport)
        state.stats.connections_opened += 1
        cap = state.settings.max_connections
        if cap is not None and len(state.connections) >= cap:
            victim = state.idle.pop_oldest()
            if victim is None:
                count(state.stats.rejected, "max_connections")
                self._close_reason = "max_connections"
                transport.close()
                return
            victim._close_reason = "evicted"
            victim.transport.close()
        state.connections.add(self)
        # uvicorn never times out a connection that has not sent a byte; this does.
        self._idle_since = self.guard.went_idle(self)

    def idle_timed_out(self) -> None:
        self._close_reason = self._close_reason or "idle_timeout"
        if not self.transport.is_closing():
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        state = self.state
        state.connections.discard(self)
        self.guard.closed(self, self._close_reason or ("client_error" if exc else "client_closed"))
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        self.guard.request_begins(self, self._served > 0, self._idle_since)
        self._served += 1
        HttpToolsProtocol.on_message_begin(self)

    def on_headers_complete(self) -> None:
        # The proxy's request rules first: a refusal raises RequestRefusedError, which the
        # parser hands to data_received.
        self.guard.head_complete(self, self.parser, self.url, self.headers)
        HttpToolsProtocol.on_headers_complete(self)
        if self.scope["http_version"] == "1.0":
            cycle = self.cycle
            # The cycle was made (and its task created, not yet run) just now, unless the
            # request is an upgrade; uvicorn offers no hook to make another class of it.
            if cycle is not None and cycle.scope is self.scope:
                cycle.__class__ = CloseDelimitedCycle

    def rest(self, idle_before: float) -> bool:
        """Idle since ``idle_before`` or earlier and between messages: give up the parser
        until bytes come, and the last request's cycle and scope, which uvicorn keeps until
        the next request makes new ones (``on_message_begin``; every use of the cycle
        allows None).  False if it went idle later."""
        if self._idle_since > idle_before:
            return False
        # Idle is not always "between messages": a response can end before its request does
        # (an upload answered early; uvicorn then leaves ``more_body`` set).  Then, or past an
        # upgrade, the parser stays: a new one would read the rest of that message as
        # requests.  (A half-read pipelined head never goes idle: ``on_response_complete``.)
        parser, cycle = self.parser, self.cycle
        if (cycle is not None and cycle.more_body) or (
            parser is not None and parser.should_upgrade()
        ):
            return True
        self.parser = None  # type: ignore[assignment]
        if cycle is not None and cycle.response_complete:
            self.cycle = None  # type: ignore[assignment]
            self.scope = None  # type: ignore[assignment]
            self.headers = []
        return True

    def data_received(self, data: bytes) -> None:
        # uvicorn's, but with the proxy's statuses and reasons for what the parser refused
        # (and no keep-alive timer to cancel: this class never arms one).
        if self.parser is None:  # rested while idle
            self.parser = httptools.HttpRequestParser(self)
            # Made as uvicorn makes its own: bytes after a request that asked to close do
            # not fail the parse (httptools before 0.6.3 has no such setting).
            with contextlib.suppress(AttributeError):
                self.parser.set_dangerous_leniencies(lenient_data_after_close=True)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
        except httptools.HttpParserError as exc:
            cycle = self.cycle
            # A cycle for this very scope exists once its head was complete.
            in_body = cycle is not None and cycle.scope is self.scope
            status, reason = input_refusal(exc, in_body=in_body)
            stats = self.state.stats
            count(stats.rejected, reason)
            count(stats.requests, status)
            self._close_reason = "server_closed"
            if not (in_body and cycle.response_started):
                self.transport.write(responding.refusal(status))
            self.transport.close()  # a response had started: closing is all that is left

    def header_timed_out(self) -> None:
        count(self.state.stats.rejected, "header_timeout")
        self._close_reason = "header_timeout"
        if not self.transport.is_closing():
            self.transport.write(responding.REQUEST_TIMEOUT)
            self.transport.close()

    def on_response_complete(self) -> None:
        if self.pipeline:  # uvicorn's starts the next request (and arms no timer)
            HttpToolsProtocol.on_response_complete(self)
            return
        # What uvicorn's does with nothing pipelined (count the request, resume reading),
        # except that the idle connection gets a deadline where uvicorn arms a timer.
        self.server_state.total_requests += 1
        if self.transport.is_closing():
            return
        self.flow.resume_reading()
        # A pipelined head already coming (its first bytes began a message) is under its
        # header deadline alone, as in the proxy: idle, a keep-alive shorter than the
        # header timeout would cut it.  A body still coming after an early answer does go
        # idle, so the keep-alive bounds how long it may trickle.
        if self not in self.guard.heads:
            self._idle_since = self.guard.went_idle(self)


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
    """``asgi-sidecar serve``: the whole process, until SIGTERM."""
    app = load_app(target, app_dir)
    server = EmbeddedServer(target, app, settings, asyncio.get_running_loop())
    return await run(server, config_path=config_path, environ=environ, flags=flags)
