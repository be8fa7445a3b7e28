"""uvicorn's httptools protocol as ``serve`` runs it: the edge's rules, deadlines and tracking.

``embedding.EmbeddedServer`` makes a subclass of ``GuardedProtocol`` per process (its
``state`` and ``guard``) and hands it to uvicorn as the HTTP protocol; a connection
upgraded to a WebSocket stays tracked through ``tracked_websockets``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING, Any, Protocol

import httptools
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.protocols.websockets.auto import AutoWebSocketsProtocol

from asgi_sidecar import responding, scoping
from asgi_sidecar.refusing import HeaderTooLargeError, RequestRefusedError, input_refusal
from asgi_sidecar.stats import count

if TYPE_CHECKING:
    from asgi_sidecar.guarding import Guard
    from asgi_sidecar.stats import Stats
    from asgi_sidecar.tracking import Deadlines
    from asgi_sidecar.validated import ValidSettings


log = logging.getLogger("asgi_sidecar")
# What the hooks raise for bad input (refused and counted); anything else is a failure here.
INPUT_ERRORS = (RequestRefusedError, HeaderTooLargeError)


class Tracker(Protocol):
    """What the protocol reaches of the server that made it (``embedding.EmbeddedServer``)."""

    settings: ValidSettings
    stats: Stats
    connections: set[GuardedProtocol]  # every open connection, upgraded ones too
    idle: Deadlines[GuardedProtocol]
    upgraded: dict[asyncio.BaseProtocol, GuardedProtocol]  # by its WebSocket protocol


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
    # 3.11 shares one key table among a class's instances for at most 29 names (30 entries,
    # one taken per instance made; tests/unit/test_embedding.py).  Past that, every
    # connection got a dict of its own and each of uvicorn's attribute reads a slower path.
    __slots__ = ("_close_reason", "_idle_since", "_served")

    state: Tracker  # both set on the subclass made per process
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
        self.untrack(exc)
        super().connection_lost(exc)

    def untrack(self, exc: Exception | None) -> None:
        """The connection is gone: it no longer counts, and its close reason is counted."""
        self.state.connections.discard(self)
        self.guard.closed(self, self._close_reason or ("client_error" if exc else "client_closed"))

    def handle_websocket_upgrade(self) -> None:
        super().handle_websocket_upgrade()
        # The transport now calls the WebSocket protocol's connection_lost, never this
        # one's: that one untracks this connection, so it counts (``max_connections``, the
        # connection gauges) until it closes, as a tunnel does in the proxy.
        self.state.upgraded[self.transport.get_protocol()] = self

    def on_message_begin(self) -> None:
        self.guard.request_begins(self, self._served > 0, self._idle_since)
        self._served += 1
        HttpToolsProtocol.on_message_begin(self)

    def on_headers_complete(self) -> None:
        # The proxy's request rules first: a refusal raises RequestRefusedError, which the
        # parser hands to data_received.  Then the request runs as an answering.Exchange,
        # not as uvicorn's cycle.
        guard = self.guard
        guard.head_complete(self, self.parser, self.url, self.headers)
        scoping.start(self, guard)

    def rest(self, idle_before: float) -> bool:
        """Idle since ``idle_before`` or earlier and between messages: give up the parser
        until bytes come, and the last request's exchange and scope, kept until the next
        request makes new ones (``on_message_begin``, ``scoping.start``; every use of the
        cycle allows None).  False if it went idle later."""
        if self._idle_since > idle_before:
            return False
        # Idle is not always "between messages": a response can end before its request does
        # (an upload answered early; uvicorn then leaves ``more_body`` set).  Then, or past an
        # upgrade, the parser stays: a new one would read the rest of that message as
        # requests.  (A half-read pipelined head never goes idle: ``on_response_complete``.)
        # uvicorn never clears ``more_body`` after an early answer, even once the body is in:
        # such a connection keeps its parser until its next request, which costs memory only.
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
            failure = exc.__context__  # what a callback raised, if one did
            if failure is not None and not isinstance(failure, INPUT_ERRORS):
                # Not the input's fault but this server's: the client still gets its 400.
                log.error("serve failed on a request head", exc_info=failure)
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


def tracked_websockets(upgraded: dict[asyncio.BaseProtocol, GuardedProtocol]) -> Any:
    """uvicorn's WebSocket protocol (``ws="auto"``) that untracks, when it ends, the
    connection ``upgraded`` says it came from; ``"none"`` where neither websockets nor
    wsproto is installed, as uvicorn's "auto" would find."""
    base: Any = AutoWebSocketsProtocol
    if base is None:
        return "none"

    def connection_lost(self: Any, exc: Exception | None) -> None:
        base.connection_lost(self, exc)
        http = upgraded.pop(self, None)
        if http is not None:
            http.untrack(exc)

    return type("TrackedWebSocketProtocol", (base,), {"connection_lost": connection_lost})
