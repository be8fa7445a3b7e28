"""The client side of the proxy: one asyncio Protocol per accepted connection.

Everything runs in protocol callbacks, with no task per request: httptools
parses the request, the head is rebuilt for the upstream as it is parsed, and
bodies stream both ways with transport flow control (pause/resume reading), so
memory stays bounded whatever the body size.  Requests pipelined on one
connection are answered in order.
"""

from __future__ import annotations

import asyncio
from collections import deque
from time import monotonic
from typing import TYPE_CHECKING

import httptools

from asgi_sidecar.http1 import HOP_BY_HOP, ResponseHead, simple_response

if TYPE_CHECKING:
    from asgi_sidecar.serving import ProxyCore
    from asgi_sidecar.upstream import UpstreamConnection

# Reasons a reading side is paused; reading resumes when none is left.
PAUSE_BODY = 1  # body buffered while the request waits for a slot or a connection
PAUSE_UPSTREAM = 2  # the upstream's write buffer is full
PAUSE_PIPELINE = 4  # too many pipelined requests waiting their turn

BODY_BUFFER_LIMIT = 256 * 1024
PIPELINE_LIMIT = 16

_SPECIAL = HOP_BY_HOP | {
    b"x-forwarded-for",
    b"x-forwarded-proto",
    b"expect",
    b"content-length",
}


class HeaderTooLargeError(Exception):
    pass


class BadTransferEncodingError(Exception):
    """Transfer-Encoding whose final coding is not chunked: 400 and close (RFC 9112 6.3)."""


class Exchange:
    """One request and its response.

    Defaults live on the class so creating an exchange per request only stores
    what differs; most requests touch a handful of these attributes.
    """

    method = b""
    url = b""
    head_size = 0
    head_bytes = b""
    xff = b""
    proto_seen = False
    upgrade = b""
    expect_continue = False
    chunked = False
    te_last = b""  # the final coding in Transfer-Encoding
    has_body = False
    http10 = False
    keep_alive = True
    body_buffered = 0
    body_done = False
    streaming = False
    admitted = False
    queued_at = -1.0
    rejected = False
    error: tuple[int, str] | None = None
    upstream: UpstreamConnection | None = None
    response_started = False
    finished = False
    retried = False
    status = 0
    started_at = 0.0

    def __init__(self, client: FrontConnection) -> None:
        self.client = client
        self.head: list[bytes] = []
        self.conn_tokens: list[bytes] = []
        self.body_parts: list[bytes] = []

    @property
    def retryable(self) -> bool:
        """Safe to send again on a fresh connection if a reused one failed at once."""
        return (
            not self.retried
            and not self.response_started
            and not self.has_body
            and self.method in (b"GET", b"HEAD", b"OPTIONS", b"DELETE", b"PUT")
        )

    def upstream_bytes(self) -> bytes:
        """Head plus any body buffered so far, framed for the upstream."""
        parts = [self.head_bytes]
        for part in self.body_parts:
            parts.append(frame_chunk(part) if self.chunked else part)
        if self.chunked and self.body_done:
            parts.append(b"0\r\n\r\n")
        self.body_parts = []
        self.body_buffered = 0
        return b"".join(parts)


def frame_chunk(data: bytes) -> bytes:
    return b"%x\r\n%b\r\n" % (len(data), data)


class FrontConnection(asyncio.Protocol):
    """asyncio Protocol for one client connection."""

    __slots__ = (
        "close_reason",
        "closed",
        "core",
        "current",
        "feeding",
        "head_bytes",
        "idle_since",
        "in_head",
        "parser",
        "parsing",
        "paused",
        "peer_ip",
        "pending",
        "requests_seen",
        "transport",
        "tunnel",
        "upgrade_rest",
        "upgrading",
        "write_paused",
    )

    def __init__(self, core: ProxyCore) -> None:
        self.core = core
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.current: Exchange | None = None
        self.parsing: Exchange | None = None
        self.pending: deque[Exchange] = deque()
        self.peer_ip = b""
        self.requests_seen = 0
        self.idle_since = 0.0
        self.in_head = False
        self.head_bytes = 0
        self.paused = 0
        self.write_paused = False
        self.closed = False
        self.close_reason = ""
        self.tunnel: UpstreamConnection | None = None
        self.upgrade_rest = b""
        self.upgrading = False
        self.feeding = False

    # -- asyncio.Protocol -------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        if peer:
            self.peer_ip = str(peer[0]).encode("ascii")
        self.idle_since = monotonic()
        self.core.connection_opened(self)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed:
            self.closed = True
            if not self.close_reason:
                self.close_reason = "client_error" if exc is not None else "client_closed"
        core = self.core
        for ex in (self.current, self.parsing, *self.pending):
            if ex is not None and not ex.finished:
                self._abandon(ex)
        self.current = self.parsing = None
        self.pending.clear()
        if self.tunnel is not None:
            self.tunnel.close()
            self.tunnel = None
        core.connection_closed(self, self.close_reason)

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

    def pause_writing(self) -> None:
        self.write_paused = True
        ex = self.current
        if ex is not None and ex.upstream is not None:
            ex.upstream.pause_reading()
        if self.tunnel is not None:
            self.tunnel.pause_reading()

    def resume_writing(self) -> None:
        self.write_paused = False
        ex = self.current
        if ex is not None and ex.upstream is not None:
            ex.upstream.resume_reading()
        if self.tunnel is not None:
            self.tunnel.resume_reading()

    def data_received(self, data: bytes) -> None:
        if self.tunnel is not None:
            self.tunnel.write(data)
            return
        if self.closed or self.upgrading:
            if self.upgrading:
                self.upgrade_rest += data
            return
        self.feeding = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            self.upgrading = True
            self.upgrade_rest = data[exc.args[0] :]
            return
        except HeaderTooLargeError:
            self._protocol_error(431, "header_too_large")
            return
        except httptools.HttpParserError as exc:
            # httptools raises HttpParserCallbackError for an exception raised in a callback;
            # the original one is its context.
            if isinstance(exc.__context__, HeaderTooLargeError):
                self._protocol_error(431, "header_too_large")
                return
            message = str(exc)
            smuggling = (
                isinstance(exc.__context__, BadTransferEncodingError)
                or "Content-Length" in message
                or "Transfer-Encoding" in message
            )
            self._protocol_error(400, "smuggling" if smuggling else "bad_request")
            return
        finally:
            self.feeding = False
        if self.in_head:
            self.head_bytes += len(data)
            if self.head_bytes > self.core.settings.max_header_size:
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
        ex = Exchange(self)
        self.parsing = ex
        self.in_head = True
        self.head_bytes = 0
        core = self.core
        if self.current is None and not self.pending:
            if self.requests_seen:
                core.stats.idle_gap.observe(monotonic() - self.idle_since)
                core.stats.keepalive_reused += 1
            core.idle.discard(self)
        elif self.requests_seen:
            core.stats.keepalive_reused += 1
        self.requests_seen += 1
        core.heads.add(self, core.loop.time() + core.settings.header_timeout)

    def on_url(self, url: bytes) -> None:
        ex = self.parsing
        assert ex is not None
        ex.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        ex = self.parsing
        assert ex is not None
        ex.head_size += len(name) + len(value) + 4
        lname = name.lower()
        if lname not in _SPECIAL:
            ex.head.append(name + b": " + value + b"\r\n")
            return
        if lname == b"content-length":
            ex.has_body = value.strip() not in (b"0", b"")
            ex.head.append(name + b": " + value + b"\r\n")
        elif lname == b"transfer-encoding":
            ex.chunked = ex.has_body = True
            ex.te_last = value.rsplit(b",", 1)[-1].strip().lower()
        elif lname == b"connection":
            ex.conn_tokens.extend(t.strip().lower() for t in value.split(b","))
        elif lname == b"upgrade":
            ex.upgrade = value
        elif lname == b"x-forwarded-for":
            ex.xff = value if not ex.xff else ex.xff + b", " + value
        elif lname == b"x-forwarded-proto":
            ex.proto_seen = True
            ex.head.append(name + b": " + value + b"\r\n")
        elif lname == b"expect":
            if value.strip().lower() == b"100-continue":
                ex.expect_continue = True
            else:
                ex.error = (417, "bad_request")
        # other hop-by-hop headers are dropped

    def on_headers_complete(self) -> None:
        ex = self.parsing
        assert ex is not None
        core = self.core
        self.in_head = False
        core.heads.discard(self)
        parser = self.parser
        ex.method = parser.get_method()
        ex.keep_alive = parser.should_keep_alive()
        ex.http10 = parser.get_http_version() == "1.0"
        if ex.head_size + len(ex.url) > core.settings.max_header_size:
            raise HeaderTooLargeError
        if ex.chunked and ex.te_last != b"chunked":
            raise BadTransferEncodingError  # llhttp refuses it too, but only after this call
        if ex.conn_tokens:
            _drop_connection_listed(ex)  # before adding lines: it replaces ex.head
        head = ex.head
        head.append(b"x-forwarded-for: " + (ex.xff + b", " if ex.xff else b"") + self.peer_ip)
        head.append(b"\r\n" if ex.proto_seen else b"\r\nx-forwarded-proto: http\r\n")
        if ex.chunked:
            head.append(b"transfer-encoding: chunked\r\n")
        if ex.upgrade and b"upgrade" in ex.conn_tokens:
            head.append(b"connection: upgrade\r\nupgrade: " + ex.upgrade + b"\r\n")
        else:
            ex.upgrade = b""
        ex.head_bytes = b"".join((ex.method, b" ", ex.url, b" HTTP/1.1\r\n", *head, b"\r\n"))
        ex.head = []
        if not ex.has_body:
            ex.body_done = True
        if self.current is None:
            self._start(ex)
        else:
            self.pending.append(ex)
            if len(self.pending) >= PIPELINE_LIMIT:
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
            if ex.body_buffered > BODY_BUFFER_LIMIT:
                self.pause_reading(PAUSE_BODY)

    def on_message_complete(self) -> None:
        ex = self.parsing
        assert ex is not None
        self.parsing = None
        ex.body_done = True
        if ex.streaming and ex.chunked:
            upstream = ex.upstream
            assert upstream is not None
            upstream.write(b"0\r\n\r\n")
        if ex.rejected and ex is self.current and not ex.finished:
            self._send_rejection(ex)
        elif ex.finished and self.current is None and not self.pending and not self.closed:
            # Answered before its request ended (a 503 sent from on_headers_complete, an
            # early 502): the connection is idle only now.
            self.idle_since = monotonic()
            self.core.went_idle(self)

    # -- admission --------------------------------------------------------------------------

    def _start(self, ex: Exchange) -> None:
        self.current = ex
        core = self.core
        if ex.error is not None:
            status, reason = ex.error
            core.stats.rejected[reason] += 1
            ex.keep_alive = False
            self._answer(ex, simple_response(status, b"", keep_alive=False))
            return
        if core.limiter.try_acquire():
            self.admit(ex)
            return
        if core.draining_connections:
            reason = "shutting_down"
        elif core.limiter.enqueue(ex, core.loop.time() + core.settings.queue_timeout):
            ex.queued_at = monotonic()
            return
        else:
            reason = "queue_full" if core.limiter.queue_depth else "concurrency_limit"
        self.reject(ex, reason)

    def admit(self, ex: Exchange) -> None:
        """The request holds a slot: send it upstream."""
        core = self.core
        ex.admitted = True
        now = monotonic()
        if ex.queued_at >= 0:
            core.stats.queue_wait.observe(now - ex.queued_at)
        ex.started_at = now
        if ex.expect_continue and not ex.body_done:
            assert self.transport is not None
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        core.pool.acquire(ex)

    def reject(self, ex: Exchange, reason: str) -> None:
        self.core.stats.rejected[reason] += 1
        ex.rejected = True
        ex.status = 503
        if ex.body_done or ex is not self.parsing:
            self._send_rejection(ex)
        elif ex.expect_continue or not self.feeding:
            # The client waits for 100 and will not send the body, or no read is under
            # way that could complete it: answer now and close.
            ex.keep_alive = False
            self._send_rejection(ex)
        # else: answered when the body ends in this read (keep-alive), or after it (close)

    def _send_rejection(self, ex: Exchange) -> None:
        settings = self.core.settings
        keep = ex.keep_alive and ex.body_done and not self.core.draining_connections
        ex.keep_alive = keep
        body = b"Service Unavailable: the server is at its concurrency limit, retry later\n"
        response = simple_response(
            503,
            body,
            keep_alive=keep,
            keep_alive_timeout=settings.timeout_keep_alive,
            extra=(("retry-after", str(settings.retry_after)),),
            head_only=ex.method == b"HEAD",
        )
        self._answer(ex, response)

    def _answer(self, ex: Exchange, response: bytes) -> None:
        """Send a response the sidecar made itself and finish the exchange."""
        assert self.transport is not None
        self.transport.write(response)
        if ex.status == 0:
            ex.status = int(response[9:12])
        self.finish(ex)

    # -- response path (called by the upstream side) ----------------------------------------

    def response_head(self, ex: Exchange, head: ResponseHead, decode_chunks: bool) -> bytes:
        """The head to send the client for ``head`` (the caller writes it, with body bytes)."""
        ex.response_started = True
        ex.status = head.status
        core = self.core
        core.awaiting.discard(ex)
        status = head.status
        if status < 200:
            if status == 101:
                return (
                    head.status_line
                    + b"\r\n"
                    + head.headers
                    + b"connection: upgrade\r\nupgrade: "
                    + ex.upgrade
                    + b"\r\n\r\n"
                )
            ex.response_started = False
            return head.status_line + b"\r\n" + head.headers + b"\r\n"
        parts = [head.status_line, b"\r\n", head.headers]
        if head.chunked:
            if decode_chunks:
                ex.keep_alive = False  # an HTTP/1.0 client: the body ends when we close
            else:
                parts.append(b"transfer-encoding: chunked\r\n")
        elif head.content_length is None and ex.method != b"HEAD" and status not in (204, 304):
            ex.keep_alive = False  # body delimited by closing the connection
        if ex.keep_alive and not core.draining_connections:
            parts.append(core.keep_alive_header)
        else:
            ex.keep_alive = False
            parts.append(b"connection: close\r\n\r\n")
        return b"".join(parts)

    def response_body(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)

    def start_tunnel(self, ex: Exchange, upstream: UpstreamConnection) -> None:
        """A 101 Switching Protocols arrived: relay raw bytes both ways from now on."""
        self.core.limiter_release()
        ex.finished = True
        self.core.stats.requests[101] += 1
        self.current = None
        self.tunnel = upstream
        rest, self.upgrade_rest = self.upgrade_rest, b""
        self.upgrading = False
        if rest:
            upstream.write(rest)

    def upstream_failed(self, ex: Exchange, status: int, reason: str) -> None:
        """The upstream could not give a response: 502/504, or abort if one had started."""
        core = self.core
        core.stats.upstream_errors[reason] += 1
        core.awaiting.discard(ex)
        if ex.finished or self.closed:
            return
        if ex.response_started:
            ex.status = ex.status or status
            self.finish(ex)
            self.abort("upstream_error")
            return
        ex.status = status
        ex.keep_alive = ex.keep_alive and ex.body_done
        body = b"Bad Gateway\n" if status == 502 else b"Gateway Timeout\n"
        response = simple_response(
            status,
            body,
            keep_alive=ex.keep_alive,
            keep_alive_timeout=core.settings.timeout_keep_alive,
            head_only=ex.method == b"HEAD",
        )
        assert self.transport is not None
        self.transport.write(response)
        self.finish(ex)

    def finish(self, ex: Exchange) -> None:
        """The response is complete: free the slot, count it, start the next request."""
        if ex.finished:
            return
        ex.finished = True
        core = self.core
        stats = core.stats
        stats.requests[ex.status] += 1
        if ex.admitted:
            duration = monotonic() - ex.started_at
            stats.request_duration.observe(duration)
            if core.adaptive is not None:
                core.adaptive.record(duration, core.limiter.in_flight)
            core.limiter_release()
        if ex.upstream is not None and ex.upstream.exchange is ex:
            ex.upstream.detach_client()
        if self.current is ex:
            self.current = None
        if self.paused & PAUSE_UPSTREAM:
            self.resume_reading(PAUSE_UPSTREAM)  # that upstream connection is done with us
        if self.closed:
            return
        if not ex.keep_alive or core.draining_connections:
            self.close("server_closed" if not core.draining_connections else "shutdown")
            return
        if self.pending:
            if self.paused & PAUSE_PIPELINE and len(self.pending) < PIPELINE_LIMIT:
                self.resume_reading(PAUSE_PIPELINE)
            self._start(self.pending.popleft())
        elif self.parsing is None:
            self.idle_since = monotonic()
            core.went_idle(self)
        if self.paused & PAUSE_BODY and self.parsing is not None and self.parsing.streaming:
            self.resume_reading(PAUSE_BODY)

    # -- helpers ----------------------------------------------------------------------------

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

    def _protocol_error(self, status: int, reason: str) -> None:
        """Malformed input: answer in order (after earlier pipelined requests), then close."""
        ex = self.parsing or Exchange(self)
        self.parsing = None
        self.in_head = False
        self.core.heads.discard(self)
        ex.error = (status, reason)
        ex.body_done = True
        ex.finished = False
        if self.current is None:
            self._start(ex)
        elif ex is not self.current:
            self.pending.append(ex)
            self.pause_reading(PAUSE_PIPELINE)
        else:
            # the current request itself went bad mid-body
            self.core.stats.rejected[reason] += 1
            self.abort(reason)

    def close(self, reason: str) -> None:
        if self.closed:
            return
        self.closed = True
        self.close_reason = reason
        assert self.transport is not None
        self.transport.close()
        self.core.connection_closing(self)

    def abort(self, reason: str) -> None:
        self.close(reason)
        assert self.transport is not None
        self.transport.abort()

    def _abandon(self, ex: Exchange) -> None:
        """The client went away: give back the slot and cancel the upstream request."""
        core = self.core
        ex.finished = True
        if ex.queued_at >= 0 and not ex.admitted:
            core.limiter.cancel(ex)
        if ex.admitted:
            core.limiter_release()
        core.awaiting.discard(ex)
        upstream = ex.upstream
        if upstream is not None and upstream.exchange is ex:
            core.stats.upstream_errors["client_gone"] += 1
            upstream.abort()

    def timed_out_waiting_header(self) -> None:
        """Slow client: 408 and close."""
        self.parsing = None
        self.in_head = False
        self.core.stats.rejected["header_timeout"] += 1
        if self.current is None and not self.pending and self.transport is not None:
            self.transport.write(simple_response(408, b"Request Timeout\n", keep_alive=False))
        self.close("header_timeout")


def _drop_connection_listed(ex: Exchange) -> None:
    """Headers named in Connection are hop-by-hop too (RFC 9110 7.6.1)."""
    # Never the framing or the Host: dropping Content-Length would desync the upstream.
    keep = (b"close", b"keep-alive", b"upgrade", b"content-length", b"host")
    listed = {t for t in ex.conn_tokens if t not in keep}
    if not listed:
        return
    ex.head = [line for line in ex.head if line.split(b":", 1)[0].lower() not in listed]
