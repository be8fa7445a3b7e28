"""The reading half of a client connection: bytes to requests, in order, with flow control.

Everything runs in protocol callbacks, with no task per request: httptools
parses the request and its head is rebuilt for the upstream as it is parsed
(``http1.RequestHead``).  Request bodies are held (up to a bound) while their
request waits, then stream upstream; reading pauses while a body waits, while
the upstream cannot take more, or while too many pipelined requests wait their
turn, so memory stays bounded whatever the client sends.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any, Final

import httptools

from asgi_sidecar import http1, responding
from asgi_sidecar.exchanges import PAUSE_BODY, PAUSE_PIPELINE, Connection
from asgi_sidecar.framing import LAST_CHUNK, frame_chunk
from asgi_sidecar.memo import Memo, interned
from asgi_sidecar.refusing import HeaderTooLargeError, input_refusal
from asgi_sidecar.stats import count

if TYPE_CHECKING:
    from asgi_sidecar.exchanges import Core, Exchange, UpstreamEnd

# The clock as a module constant: compiled, a Final name is a C static, while a name
# imported with ``from time import monotonic`` is looked up in the module's dict per call.
monotonic: Final = time.monotonic

BODY_BUFFER_LIMIT: Final = 256 * 1024  # request body bytes held before reading pauses
# A request body is read up to this much before the request may take a slot, so a client
# that sends it slowly ties up a connection (until body_timeout), not the application.
BODY_ADMIT_BYTES: Final = 16 * 1024
PIPELINE_LIMIT: Final = 16  # pipelined requests waiting their turn before reading pauses
LINGER_SECONDS: Final = 2.0  # a closed connection's input is read and dropped this long
# Peer addresses, one bytes object per address: behind a balancer thousands share one.
_PEERS: Final[Memo[bytes]] = Memo(4096, 64, front=True)
_LF: Final = ord("\n")  # an int: ``b"\\n" in data`` would cost CPython a TypeError (http1)


class RequestReader(asyncio.Protocol, Connection):
    """The reading half of a client connection; ``proxying.FrontConnection`` completes it.

    It turns bytes into ``Exchange``s in order and hands each complete head to
    ``_start``; malformed input, an oversized head or a head that takes too long
    become refusals answered in order, then the connection closes.
    """

    __slots__ = (
        "admission",
        "close_reason",
        "closed",
        "core",
        "current",
        "feeding",
        "head_bytes",
        "head_timed",
        "idle_since",
        "in_head",
        "line_open",
        "lingering",
        "parser",
        "parsing",
        "paused",
        "peer_ip",
        "pending",
        "requests_seen",
        "stats",
        "transport",
        "tunnel",
        "upgrade_rest",
        "upgrading",
        "write_paused",
    )

    def __init__(self, core: Core) -> None:
        self.core = core
        self.stats = core.stats
        self.admission = core.admission
        # httptools' parser, made when bytes come and given up when idle (``rest``).
        self.parser: Any = None
        self.transport: asyncio.Transport | None = None
        self.current: Exchange | None = None
        self.parsing: Exchange | None = None
        # Made for the first pipelined request; a list, not a deque (~600 bytes empty).
        self.pending: list[Exchange] | None = None
        self.peer_ip = b""
        self.requests_seen = 0
        self.idle_since = 0.0
        self.in_head = False
        self.line_open = False  # the request line of the head being read has not ended
        self.head_bytes = 0
        self.head_timed = False  # the head being read has a header deadline in the core
        self.paused = 0
        self.write_paused = False
        self.closed = False
        self.close_reason = ""
        self.tunnel: UpstreamEnd | None = None
        self.upgrade_rest = b""
        self.upgrading = False
        self.feeding = False
        self.lingering: asyncio.TimerHandle | None = None

    # -- asyncio.Protocol -------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        if peer:
            self.peer_ip = interned(_PEERS, str(peer[0]).encode("ascii"))
        self.idle_since = monotonic()
        self.core.opened(self)

    def eof_received(self) -> bool | None:
        tunnel = self.tunnel
        if tunnel is not None:
            if tunnel.half_closed:
                return None  # the app had ended its side too: close both
            tunnel.half_closed = True
            tunnel.write_eof()
            return True
        # A client that closed its socket cannot be told from one that only half-closed.
        # Like nginx, take both as gone: closing abandons any request still owed a
        # response (connection_lost), which aborts its upstream request and frees its slot.
        return None

    def data_received(self, data: bytes) -> None:
        if self.tunnel is not None:
            self.tunnel.write(data)
            return
        if self.closed or self.upgrading:
            if self.upgrading:
                self.upgrade_rest += data
            return
        parser = self.parser
        if parser is None:  # rested while idle (``rest``): the next request has a new one
            parser = self.parser = httptools.HttpRequestParser(self)
        self.feeding = True
        try:
            parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            self.upgrading = True
            self.upgrade_rest = data[exc.args[0] :]
            return
        except (HeaderTooLargeError, httptools.HttpParserError) as exc:
            in_body = self.parsing is not None and not self.in_head
            self._protocol_error(*input_refusal(exc, in_body=in_body))
            return
        finally:
            self.feeding = False
        if self.in_head:
            # Only a head that spans reads gets here: most arrive whole in one, and never
            # need the header deadline (two dict operations and a clock read saved).
            if not self.head_timed:
                self.head_timed = True
                self.core.head_pending(self)
            if self.line_open and _LF in data:
                self.line_open = False
            self.head_bytes += len(data)
            if self.head_bytes > self.core.live.max_header_size:
                if self.line_open:
                    self._protocol_error(414, "uri_too_long")
                else:
                    self._protocol_error(431, "header_too_large")
                return
        ex = self.current
        if ex is not None and ex.rejected and not ex.body_done and not ex.finished:
            # The body of a refused request is still arriving: answer now and close
            # rather than read an upload nobody will use.
            ex.keep_alive = False
            self._send_rejection(ex)

    # -- httptools callbacks ----------------------------------------------------------------

    def on_message_begin(self) -> None:
        self.parsing = self._new_exchange()
        self.in_head = self.line_open = True
        self.head_bytes = 0
        was_idle = self.current is None and not self.pending
        if self.requests_seen:
            if was_idle:
                self.stats.idle_gap.observe(monotonic() - self.idle_since)
            self.stats.keepalive_reused += 1
        self.requests_seen += 1
        self.core.reading_head(self, was_idle)

    def on_url(self, url: bytes) -> None:
        ex = self.parsing
        assert ex is not None
        ex.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self.in_head:
            return  # a trailer field: llhttp checked its syntax; trailers are not forwarded
        ex = self.parsing
        assert ex is not None
        ex.add_header(name, value)

    def on_headers_complete(self) -> None:
        ex = self.parsing
        assert ex is not None
        core = self.core
        self.in_head = False
        self._end_head_deadline()
        parser = self.parser
        ex.method = parser.get_method()
        ex.keep_alive = keep_alive = parser.should_keep_alive()
        version = http1.request_version(parser, keep_alive, ex)
        ex.http10 = version == "1.0"
        live = core.live
        ex.validate(version, live.upstream)
        ex.rewrite(self.peer_ip, live.max_header_size)
        if not ex.has_body:
            ex.body_done = True
        elif not ex.expect_continue and ex.error is None:
            ex.buffering = True  # admitted once BODY_ADMIT_BYTES or all of it arrived
            core.reading_body(self)
        if self.current is None:
            self._start(ex)
        elif self._queue(ex) >= PIPELINE_LIMIT:
            self.pause_reading(PAUSE_PIPELINE)

    def on_body(self, body: bytes) -> None:
        ex = self.parsing
        assert ex is not None
        if ex.streaming:
            upstream = ex.upstream
            assert upstream is not None
            upstream.write(frame_chunk(body) if ex.chunked else body)
        elif not ex.rejected and not ex.finished:
            ex.body_parts.append(body)
            ex.body_buffered += len(body)
            if ex.buffering and ex.body_buffered >= BODY_ADMIT_BYTES:
                self._body_arrived(ex)
            elif ex.body_buffered > BODY_BUFFER_LIMIT:
                self.pause_reading(PAUSE_BODY)

    def on_message_complete(self) -> None:
        ex = self.parsing
        assert ex is not None
        self.parsing = None
        ex.body_done = True
        if ex.buffering:
            self._body_arrived(ex)
            return
        if ex.streaming and ex.chunked:
            upstream = ex.upstream
            assert upstream is not None
            upstream.write(LAST_CHUNK)
        if ex.rejected and ex is self.current and not ex.finished:
            self._send_rejection(ex)
        elif ex.finished and self.current is None and not self.pending and not self.closed:
            # Answered before its request ended (a 503 sent from on_headers_complete, an
            # early 502): the connection is idle only now.
            self.idle_since = monotonic()
            self.core.went_idle(self)

    def _body_arrived(self, ex: Exchange) -> None:
        """Enough of a body read before admission is here: its request may take a slot."""
        ex.buffering = False
        self.core.body_read(self)
        if ex is self.current:
            self._start(ex)  # otherwise it starts in its turn, after the requests before it

    # -- flow control and closing ---------------------------------------------------------

    def pause_reading(self, why: int) -> None:
        if not self.paused and self.transport is not None:
            self.transport.pause_reading()
        self.paused |= why

    def resume_reading(self, why: int) -> None:
        was = self.paused
        self.paused &= ~why
        if was and not self.paused and self.transport is not None and not self.closed:
            self.transport.resume_reading()

    def body_flowing(self) -> None:
        """The buffered body went upstream; stream the rest."""
        if self.paused & PAUSE_BODY:
            self.resume_reading(PAUSE_BODY)

    def _end_head_deadline(self) -> None:
        """The head being read is complete or given up: its header deadline, if it got
        one (``head_pending``), ends."""
        if self.head_timed:
            self.head_timed = False
            self.core.head_read(self)

    def _protocol_error(self, status: int, reason: str) -> None:
        """Malformed input: answer in order (after earlier pipelined requests), then close."""
        ex = self.parsing or self._new_exchange()
        self.parsing = None
        self.in_head = False
        self._end_head_deadline()
        ex.error = (status, reason)
        ex.body_done = True
        ex.finished = False
        if self.current is None:
            self._start(ex)
        elif ex is not self.current:
            self._queue(ex)  # its head may be queued already, its body broken
            self.pause_reading(PAUSE_PIPELINE)
        else:
            # The current request went bad mid-body, perhaps after its head went upstream.
            count(self.stats.rejected, reason)
            self._refuse_current(ex, status, reason)

    def close(self, reason: str) -> None:
        """Close after what was written: a lingering close (RFC 9112 9.6).

        The write side is shut (FIN after the response), then what the client still
        sends is read and dropped for up to ``LINGER_SECONDS``, until it closes too.
        Closing at once would make the kernel answer a client still sending its body
        (a refused upload, say) with a reset that destroys the response it has not read.
        """
        if self.closed:
            return
        self.closed = True
        self.close_reason = reason
        transport = self.transport
        assert transport is not None
        if self.tunnel is None and transport.can_write_eof() and not transport.is_closing():
            transport.write_eof()
            if not transport.is_reading():
                transport.resume_reading()  # data_received drops what comes now
            self.lingering = asyncio.get_running_loop().call_later(LINGER_SECONDS, transport.close)
        else:
            transport.close()
        self.core.closed(self, reason)  # counted now: the client may take a while to go

    def abort(self, reason: str) -> None:
        self.close(reason)
        assert self.transport is not None
        self.transport.abort()
        self._stop_lingering()

    def _stop_lingering(self) -> None:
        if self.lingering is not None:
            self.lingering.cancel()
            self.lingering = None

    def rest(self, idle_before: float) -> bool:
        # The parser (about 0.9 KiB) is most of what an idle connection holds besides uvloop's
        # transport, freed as nginx frees an idle keep-alive connection's buffers; a new one
        # costs about 0.6 us, once per request that follows.
        if self.idle_since > idle_before:
            return False
        self.parser = None
        return True

    def _queue(self, ex: Exchange) -> int:
        """Queue ``ex`` behind the current request (once); how many are queued."""
        pending = self.pending
        if pending is None:
            pending = self.pending = [ex]
        elif ex not in pending:
            pending.append(ex)
        return len(pending)

    def timed_out_waiting_header(self) -> None:
        """Slow client: 408 and close."""
        self.parsing = None
        self.in_head = self.head_timed = False
        count(self.stats.rejected, "header_timeout")
        if self.current is None and not self.pending and self.transport is not None:
            self.transport.write(responding.REQUEST_TIMEOUT)
        self.close("header_timeout")

    def timed_out_waiting_body(self) -> None:
        """A body read before admission did not arrive within body_timeout: 408 and close."""
        if self.paused:
            self.core.reading_body(self)  # the sidecar stopped reading, not the client
            return
        count(self.stats.rejected, "body_timeout")
        ex = self.parsing
        if ex is not None and ex is self.current and self.transport is not None:
            self.transport.write(responding.REQUEST_TIMEOUT)
        self.close("body_timeout")

    # -- what the connection does with a request (proxying.FrontConnection) -----------------

    def _new_exchange(self) -> Exchange:
        """An exchange for the next request, answered through this connection."""
        raise NotImplementedError

    def _start(self, ex: Exchange) -> None:
        """A complete head, its turn come: admit, queue or refuse it."""
        raise NotImplementedError

    def _send_rejection(self, ex: Exchange) -> None:
        """Answer a refused request (503) once its body is no longer awaited."""
        raise NotImplementedError

    def _refuse_current(self, ex: Exchange, status: int, reason: str) -> None:
        """The request being answered turned out malformed: abort it upstream and close."""
        raise NotImplementedError
