"""The application side of the proxy: one keep-alive connection to the app.

Pooled connections (``pooling.py``) are reused newest first and closed after
``upstream_keep_alive`` seconds, below the application's own keep-alive, so the
sidecar (not the app) ends idle connections.  If a reused connection turns out
to have been closed by the app before any response byte arrived, an idempotent
request without a body is sent once more on a fresh connection instead of
failing with 502: the race every proxy in front of uvicorn otherwise loses.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from typing import TYPE_CHECKING, Final

from mypy_extensions import trait

from asgi_sidecar.exchanges import PAUSE_UPSTREAM, UpstreamEnd
from asgi_sidecar.framing import ChunkedScanner, ProtocolError, read_response_head

if TYPE_CHECKING:
    from collections.abc import Callable

    from asgi_sidecar.exchanges import Exchange
    from asgi_sidecar.framing import ResponseHead
    from asgi_sidecar.livesettings import LiveSettings
    from asgi_sidecar.tracking import Deadlines

log = logging.getLogger("asgi_sidecar.upstream")

MAX_RESPONSE_HEAD: Final = 256 * 1024

# Where an upstream connection is in its current response.
_HEAD: Final = 0  # reading the head
_LENGTH: Final = 1  # a body of known length
_CHUNKED: Final = 2  # a chunked body
_UNTIL_CLOSE: Final = 3  # a body that ends when the app closes
_TUNNEL: Final = 4  # relaying raw bytes after a 101
_DONE: Final = 5  # between responses


@trait
class Pool:
    """What an upstream connection needs from its pool (``pooling.UpstreamPool``)."""

    loop: asyncio.AbstractEventLoop
    clock: Callable[[], float]  # the loop's time
    live: LiveSettings
    awaiting: Deadlines[Exchange]  # requests sent whose response head has not come

    def acquire(self, ex: Exchange) -> None:
        raise NotImplementedError

    def release(self, conn: UpstreamConnection) -> None:
        raise NotImplementedError

    def forget(self, conn: UpstreamConnection) -> None:
        raise NotImplementedError

    def fail(self, ex: Exchange, status: int, reason: str) -> None:
        raise NotImplementedError


class UpstreamConnection(asyncio.Protocol, UpstreamEnd):
    __slots__ = (
        "buffer",
        "closed",
        "decode",
        "exchange",
        "got_bytes",
        "half_closed",
        "idle_since",
        "pool",
        "read_paused",
        "remaining",
        "requests",
        "reusable",
        "scanner",
        "state",
        "transport",
    )

    def __init__(self, pool: Pool) -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.exchange: Exchange | None = None
        self.state = _DONE
        self.buffer = b""
        self.remaining = 0
        self.scanner: ChunkedScanner | None = None
        self.decode = False
        self.reusable = True
        self.read_paused = False
        self.closed = False
        self.requests = 0
        self.got_bytes = False
        self.half_closed = False  # a tunnel: one side has sent EOF
        self.idle_since = 0.0

    # -- asyncio.Protocol -------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.pool.forget(self)
        ex = self.exchange
        if ex is None:
            return
        client = ex.client
        if self.state == _TUNNEL:
            client.tunnel_closed()
            return
        if ex.finished:
            return
        if self.state == _UNTIL_CLOSE and exc is None:
            # The app's close ends this body; a reset instead means it was cut short.
            self.state = _DONE
            self.exchange = None
            client.finish(ex)
            return
        self.exchange = None
        if self.requests > 1 and not self.got_bytes and ex.retryable:
            ex.retried = True
            ex.upstream = None
            self.pool.acquire(ex)
            return
        self.pool.fail(ex, 502, "reset" if self.state == _HEAD else "truncated")

    def pause_writing(self) -> None:
        ex = self.exchange
        if ex is not None:
            ex.client.pause_reading(PAUSE_UPSTREAM)

    def resume_writing(self) -> None:
        ex = self.exchange
        if ex is not None:
            ex.client.resume_reading(PAUSE_UPSTREAM)

    def eof_received(self) -> bool | None:
        if self.state == _TUNNEL and self.exchange is not None:
            if self.half_closed:
                return None  # the client had ended its side too: close both
            self.half_closed = True
            if self.exchange.client.write_eof():
                return True
        return None

    def data_received(self, data: bytes) -> None:
        ex = self.exchange
        if ex is None:
            # Bytes on an idle pooled connection: the app broke framing. Drop the connection.
            self.abort()
            return
        self.got_bytes = True
        state = self.state
        client = ex.client
        if state == _LENGTH:
            remaining = self.remaining
            size = len(data)
            if size <= remaining:
                client.response_body(data)
                self.remaining = remaining - size
                if size == remaining:
                    self._complete(ex)
            else:
                client.response_body(data[:remaining])
                self.reusable = False  # the app sent more than it announced
                self._complete(ex)
            return
        if state in (_TUNNEL, _UNTIL_CLOSE):
            client.response_body(data)
            return
        pos = 0
        if state == _HEAD:
            rest = self._read_head(ex, data)
            if rest is None:
                return
            state = self.state
            if state != _CHUNKED:
                client.response_body(rest)  # tunnel
                return
            data = rest
        if state == _CHUNKED:
            scanner = self.scanner
            assert scanner is not None
            try:
                end, done, spans = scanner.feed(data, pos)
            except ProtocolError as exc:
                self._broken(ex, str(exc))
                return
            if self.decode:
                for start, stop in spans:
                    client.response_body(data[start:stop])
            elif end > pos:
                client.response_body(data[pos:end] if (pos or end < len(data)) else data)
            if done:
                if end < len(data):
                    self.reusable = False
                self._complete(ex)

    # -- request side -----------------------------------------------------------------------

    def send(self, ex: Exchange) -> None:
        """Start an exchange on this (connected, idle) connection."""
        assert self.transport is not None
        self.exchange = ex
        ex.upstream = self
        self.requests += 1
        self.got_bytes = False
        self.state = _HEAD
        self.buffer = b""
        self.transport.write(ex.upstream_bytes())
        ex.streaming = True
        client = ex.client
        client.body_flowing()
        if client.write_paused:
            self.pause_reading()
        pool = self.pool
        pool.awaiting.add(ex, pool.clock() + pool.live.upstream_timeout)

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.closed:
            self.transport.write(data)

    def write_eof(self) -> None:
        if self.transport is not None and not self.closed and self.transport.can_write_eof():
            self.transport.write_eof()

    def pause_reading(self) -> None:
        if self.transport is not None and not self.closed and not self.read_paused:
            self.read_paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.transport is not None and not self.closed and self.read_paused:
            self.read_paused = False
            self.transport.resume_reading()

    def close(self) -> None:
        if self.transport is not None and not self.closed:
            self.closed = True
            self.transport.close()

    def abort(self) -> None:
        self.exchange = None
        if self.transport is not None:
            self.closed = True
            self.transport.abort()

    def detach_client(self) -> None:
        """The client finished with this exchange (for example a 502 it generated)."""
        if self.state != _DONE:
            self.exchange = None
            self.abort()

    # -- internals --------------------------------------------------------------------------

    def _read_head(self, ex: Exchange, data: bytes) -> bytes | None:
        """Consume response heads (1xx, then the final one) and write them to the client.

        Returns body bytes still to be read, or None when the head is incomplete
        or nothing is left.  A head is written together with the body bytes that
        came with it: one write, one syscall, for the common small response.
        """
        buffer = self.buffer + data if self.buffer else data
        client = ex.client
        rest = b""
        while True:
            # partition, not find and two slices: bytes.find takes its arguments as a
            # tuple (METH_VARARGS), one allocation more per response.
            raw, blank_line, rest = buffer.partition(b"\r\n\r\n")
            if not blank_line:
                if len(buffer) > MAX_RESPONSE_HEAD:
                    self._broken(ex, "response head too large")
                else:
                    self.buffer = buffer
                return None
            try:
                head = read_response_head(raw)
            except ProtocolError as exc:
                self._broken(ex, str(exc))
                return None
            if head.status == 101:
                if not ex.upgrade:
                    self._broken(ex, "101 Switching Protocols to a request without Upgrade")
                    return None
                self.buffer = b""
                self.state = _TUNNEL
                self.reusable = False
                client.response_body(self._head(ex, head, False))
                client.start_tunnel(ex, self)
                return rest or None
            if head.status < 200:
                # Informational (100, 103): forwarded, except to an HTTP/1.0 client, which
                # must never get one (RFC 9110 15.2); the final head is still awaited
                # within upstream_timeout.
                if not ex.http10:
                    client.response_body(client.response_head(ex, head, False))
                buffer = rest
                continue
            break
        self.buffer = b""
        if head.close:
            self.reusable = False
        if ex.upgrade:
            ex.keep_alive = False  # the refused upgrade left the client's parser behind
        has_body = not (ex.method == b"HEAD" or head.status in (204, 304))
        if not has_body:
            if rest:
                # Bytes after a head that ends its response: the app's framing and ours
                # disagree, and the next response on this connection would start with them.
                self.reusable = False
            client.response_body(self._head(ex, head, False))
            self._complete(ex)
            return None
        if head.chunked:
            self.decode = ex.http10
            self.scanner = ChunkedScanner()
            self.state = _CHUNKED
            client.response_body(self._head(ex, head, self.decode))
            return rest or None
        length = head.content_length
        if length is None:
            self.reusable = False
            self.state = _UNTIL_CLOSE
            client.response_body(self._head(ex, head, False) + rest)
            return None
        out = self._head(ex, head, False)
        got = len(rest)
        if got >= length:
            if got > length:
                self.reusable = False  # the app sent more than it announced
                rest = rest[:length]
            client.response_body(out + rest)
            self._complete(ex)
            return None
        client.response_body(out + rest)
        self.remaining = length - got
        self.state = _LENGTH
        return None

    def _head(self, ex: Exchange, head: ResponseHead, decode_chunks: bool) -> bytes:
        """The client's head for ``head``; the app answered, so its deadline is over."""
        self.pool.awaiting.discard(ex)
        return ex.client.response_head(ex, head, decode_chunks)

    def _complete(self, ex: Exchange) -> None:
        self.state = _DONE
        self.exchange = None
        ex.upstream = None
        client = ex.client
        pool = self.pool
        if self.reusable and ex.body_done:
            pool.release(self)
        else:
            self.close()
        client.finish(ex)

    def _broken(self, ex: Exchange, why: str) -> None:
        log.warning("upstream protocol error: %s", why)
        self.exchange = None
        self.abort()
        self.pool.fail(ex, 502, "protocol_error")
