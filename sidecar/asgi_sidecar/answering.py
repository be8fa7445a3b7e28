"""``serve``'s request and response exchange on uvicorn's httptools protocol, compiled.

uvicorn's protocol (``uvicorn_protocol.GuardedProtocol``) parses the request and owns the
connection; for each request head it hands over, ``scoping.start`` fills in the ASGI
scope's request fields and makes an ``Exchange``, which plays the part of uvicorn's own cycle: the
protocol feeds it the body and tells it of a disconnect through the same attributes
(``body``, ``more_body``, ``message_event``, ``disconnected``, ``keep_alive``,
``response_complete``).  What it does in one native object is what took three
layers before (an admission middleware and a counting ``send``, compiled, around
uvicorn's interpreted cycle):

* ``run_asgi`` admits the request (``admitting.Admission``: exactly N at once, a bounded
  queue, 503 with Retry-After on a connection that stays open), runs the app, and counts
  the response's status when it ends;
* ``send`` writes the response: field names checked once each and remembered
  (``framing.lower_name``), values without control characters, framed by the app's
  Content-Length, else chunked; an HTTP/1.0 request gets a body delimited by the close,
  never a coding it cannot read (RFC 9112 6.1), even one the app names;
* ``receive`` gives the request body as it comes, with ``100 Continue`` when asked for.

An app that breaks the protocol (a second start, a body longer or shorter than its
Content-Length, a bad field) gets a RuntimeError from ``send``, as under uvicorn; an app
that raises before its response started gets a 500 on a connection that closes, and one
that raises after, a closed connection.  No clock but the guard's.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, MutableMapping
from http import HTTPStatus
from typing import TYPE_CHECKING, Any, Final

from asgi_sidecar import responding
from asgi_sidecar.admitting import QUEUED
from asgi_sidecar.framing import lower_name
from asgi_sidecar.stats import count

if TYPE_CHECKING:
    from asgi_sidecar.guarding import Guard

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

log = logging.getLogger("asgi_sidecar")


def _status_line(status: int) -> bytes:
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = ""
    return f"HTTP/1.1 {status} {phrase}\r\n".encode("latin-1")


_STATUS_LINES: Final = [_status_line(status) for status in range(600)]
# Bytes a field value may not hold (RFC 9110 5.5): controls but HTAB, and DEL.
_VALUE_CTL: Final = bytes([*range(0x09), *range(0x0A, 0x20), 0x7F])
_INTERNAL_ERROR: Final = [
    (b"content-type", responding.TEXT_PLAIN.encode()),
    (b"content-length", b"21"),
    (b"connection", b"close"),
]
_INTERNAL_ERROR_BODY: Final = b"Internal Server Error"
# How the response body is framed.
_UNSET: Final = 0  # no framing field seen (yet)
_LENGTH: Final = 1  # Content-Length
_CHUNKED: Final = 2  # chunked coding, written here
_UNTIL_CLOSE: Final = 3  # HTTP/1.0 without a length: the close ends it


def _nothing() -> None:
    """What the exchange calls at the end of its response once its app has returned."""


class Signal:
    """What ``asyncio.Event`` is to uvicorn's cycle: the body came, or the connection went.
    A future is made only for a ``receive`` that has to wait; every waiter is woken (an app
    may have two, its handler and a task listening for the disconnect)."""

    __slots__ = ("_set", "_waiters")

    def __init__(self) -> None:
        self._set = False
        self._waiters: list[asyncio.Future[None]] = []

    def set(self) -> None:
        self._set = True
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_result(None)

    def clear(self) -> None:
        self._set = False

    def is_set(self) -> bool:
        return self._set

    async def wait(self) -> None:
        if self._set:
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        finally:
            self._waiters.remove(waiter)


class Exchange:
    """One request and its response on a connection of uvicorn's httptools protocol."""

    def __init__(
        self,
        scope: Scope,
        protocol: Any,
        guard: Guard[Any, asyncio.Future[None]],
        *,
        keep_alive: bool,
        expect_100_continue: bool,
        until_close: bool,
    ) -> None:
        self.scope = scope
        self.transport: Any = protocol.transport
        self.flow: Any = protocol.flow
        self.default_headers: list[tuple[bytes, bytes]] = protocol.server_state.default_headers
        self.on_response: Callable[[], None] = protocol.on_response_complete
        self.guard = guard
        self.message_event = Signal()
        # Connection state (the protocol sets these too)
        self.disconnected = False
        self.keep_alive = keep_alive
        self.waiting_for_100_continue = expect_100_continue
        # Request state
        self.body = bytearray()
        self.more_body = True
        # Response state
        self.head_only = scope["method"] == "HEAD"
        self.bodiless = self.head_only  # and a 204 or 304, once the status is known
        self.until_close = until_close  # an HTTP/1.0 request
        self.response_started = False
        self.response_complete = False
        self.framing = _UNSET
        self.remaining = 0  # bytes of a Content-Length body still to come
        self.status = 500  # what is counted if no response starts
        self.held = b""  # a head not written yet: it goes out with the body's first bytes

    # -- the app ------------------------------------------------------------------------------

    async def run_asgi(self, app: ASGIApp) -> None:
        guard = self.guard
        admission = guard.admission
        queued_at = -1.0
        if not admission.try_acquire():
            waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            outcome = admission.queue(waiter)
            if outcome != QUEUED:
                await self._reject(outcome)
                return
            queued_at = guard.clock()
            try:
                await asyncio.wait_for(asyncio.shield(waiter), guard.settings.queue_timeout)
            except TimeoutError:
                if admission.cancel(waiter):
                    await self._reject("queue_timeout")
                    return
                # admitted just as the wait ended: go on holding the slot
            except asyncio.CancelledError:  # the server's shutdown gave up waiting for it
                if not admission.cancel(waiter):
                    admission.release()
                self.keep_alive = False
                self._answer_now(503, responding.rejection_fields(guard.settings.retry_after))
                count(guard.stats.rejected, "shutting_down")
                count(guard.stats.requests, 503)
                raise
        started = guard.admitted(queued_at)
        try:
            await self._run(app)
        finally:
            self.on_response = _nothing
            guard.answered(self.status, started)

    async def _run(self, app: ASGIApp) -> None:
        try:
            result: object = await app(self.scope, self.receive, self.send)  # type: ignore[func-returns-value]
        except BaseException as exc:
            log.error("Exception in ASGI application", exc_info=exc)
            if not self.response_started:
                await self._internal_error()
            else:
                self._close()
            return
        if result is not None:
            log.error("ASGI callable should return None, but returned %r", result)
            self._close()
        elif not self.response_started and not self.disconnected:
            log.error("ASGI callable returned without starting a response")
            await self._internal_error()
        elif not self.response_complete and not self.disconnected:
            log.error("ASGI callable returned without completing its response")
            self._close()

    def _flush(self) -> None:
        """Write a head still held."""
        held = self.held
        if held:
            self.held = b""
            self.transport.write(held)

    def _close(self) -> None:
        """End the connection in the middle of a response: what of it was sent stays sent."""
        self._flush()
        self.transport.close()

    async def _internal_error(self) -> None:
        await self.send({"type": "http.response.start", "status": 500, "headers": _INTERNAL_ERROR})
        await self.send({"type": "http.response.body", "body": _INTERNAL_ERROR_BODY})

    async def _reject(self, reason: str) -> None:
        stats = self.guard.stats
        count(stats.rejected, reason)
        count(stats.requests, 503)
        if self.waiting_for_100_continue:
            # The client waits for 100 and will not send the body: after this answer, its
            # next bytes could be either, so the connection closes (as in the proxy).
            self.keep_alive = False
        headers = responding.rejection_fields(self.guard.settings.retry_after)
        await self.send({"type": "http.response.start", "status": 503, "headers": headers})
        await self.send({"type": "http.response.body", "body": responding.REJECTION_BODY})

    def _answer_now(self, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        """A 503 of the sidecar's own without awaiting (the task is being cancelled)."""
        if self.disconnected or self.response_started:
            return
        self._start({"type": "http.response.start", "status": status, "headers": headers})
        self._body(responding.REJECTION_BODY, False)

    # -- ASGI ---------------------------------------------------------------------------------

    async def send(self, message: Message) -> None:
        if self.flow.write_paused and not self.disconnected:
            await self.flow.drain()
        if self.disconnected:
            if not self.response_started and message["type"] == "http.response.start":
                self.status = int(message["status"])  # what the app answered, counted
            return
        kind = message["type"]
        if not self.response_started:
            if kind != "http.response.start":
                raise RuntimeError(f"expected ASGI message 'http.response.start', got {kind!r}")
            self._start(message)
        elif not self.response_complete:
            if kind != "http.response.body":
                raise RuntimeError(f"expected ASGI message 'http.response.body', got {kind!r}")
            self._body(message.get("body", b""), bool(message.get("more_body", False)))
        else:
            raise RuntimeError(f"ASGI message {kind!r} sent after the response completed")

    def _start(self, message: Message) -> None:
        status = message["status"]
        if not isinstance(status, int) or not 100 <= status <= 599:
            raise RuntimeError(f"invalid HTTP status {status!r}")
        self.response_started = True
        self.waiting_for_100_continue = False
        self.status = status
        parts = [_STATUS_LINES[status]]
        for name, value in self.default_headers:
            parts += (name, b": ", value, b"\r\n")
        closes = False
        framing = _UNSET
        for field in message.get("headers", ()):
            name, value = _as_bytes(field[0]), _as_bytes(field[1])
            lname = lower_name(name)
            if lname is None:
                raise RuntimeError(f"invalid HTTP field name {name[:64]!r}")
            if value.translate(None, _VALUE_CTL) != value:
                raise RuntimeError(f"invalid HTTP field value for {name[:64]!r}")
            if lname == b"content-length":
                if framing == _UNSET:
                    self.remaining = _length(value)
                    framing = _LENGTH
            elif lname == b"transfer-encoding":
                if self.until_close:
                    continue  # no codings to an HTTP/1.0 client: the close ends the body
                if value.lower() == b"chunked":
                    framing = _CHUNKED
                    self.remaining = 0
            elif lname == b"connection" and _says_close(value):
                self.keep_alive = False
                closes = True
            parts += (lname, b": ", value, b"\r\n")
        self.bodiless = self.head_only or status in (204, 304)
        if framing == _UNSET and not self.bodiless:
            if self.until_close:
                framing = _UNTIL_CLOSE  # the close ends it: HTTP/1.0 has no chunked coding
            else:
                framing = _CHUNKED
                parts.append(b"transfer-encoding: chunked\r\n")
        self.framing = framing
        if not self.keep_alive and not closes:
            parts.append(b"connection: close\r\n")
        parts.append(b"\r\n")
        if framing == _LENGTH or self.bodiless:
            # Its body (if any) is the next message: one write, one segment for both.  A
            # streamed (chunked or close-delimited) response's head goes at once.
            self.held = b"".join(parts)
        else:
            self.transport.write(b"".join(parts))

    def _body(self, body: Any, more_body: bool) -> None:  # bytes or a bytes-like object
        transport = self.transport
        framing = self.framing
        if self.bodiless:
            # A HEAD's head said what a GET would get (its Content-Length too), and a 204
            # or 304 has no body whatever its fields say (RFC 9110 6.4.1).
            self._flush()
            if len(body) and not self.head_only:
                raise RuntimeError(f"a {self.status} response has no body")
        elif framing == _CHUNKED:
            if body and more_body:
                transport.write(b"%x\r\n%b\r\n" % (len(body), body))
            elif body:
                transport.write(b"%x\r\n%b\r\n0\r\n\r\n" % (len(body), body))
            elif not more_body:
                transport.write(b"0\r\n\r\n")
        elif framing == _UNTIL_CLOSE:
            if body:
                transport.write(body)
        else:
            size = len(body)
            if size > self.remaining:
                self._flush()
                raise RuntimeError("response content longer than its Content-Length")
            self.remaining -= size
            held = self.held
            if held:
                self.held = b""
                transport.write(b"".join((held, body)) if size else held)
            elif size:
                transport.write(body)
        if more_body:
            return
        if framing == _LENGTH and self.remaining and not self.bodiless:
            raise RuntimeError("response content shorter than its Content-Length")
        self.response_complete = True
        self.message_event.set()
        if not self.keep_alive or framing == _UNTIL_CLOSE:
            transport.close()
        self.on_response()

    async def receive(self) -> Message:
        if self.waiting_for_100_continue and not self.transport.is_closing():
            self.transport.write(responding.CONTINUE)
            self.waiting_for_100_continue = False
        if not self.disconnected and not self.response_complete:
            self.flow.resume_reading()
            await self.message_event.wait()
            self.message_event.clear()
        if self.disconnected or self.response_complete:
            return {"type": "http.disconnect"}
        body, self.body = self.body, bytearray()
        return {"type": "http.request", "body": bytes(body), "more_body": self.more_body}


def _as_bytes(value: Any) -> bytes:
    """A field name or value as bytes (an app may send a bytearray)."""
    return value if isinstance(value, bytes) else bytes(value)


def _says_close(value: bytes) -> bool:
    return b"close" in [token.strip(b" \t").lower() for token in value.split(b",")]


def _length(value: bytes) -> int:
    digits = value.strip(b" \t")
    if not digits or not digits.isdigit():
        raise RuntimeError(f"invalid Content-Length {value[:32]!r}")
    return int(digits)
