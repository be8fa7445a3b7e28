"""A scripted HTTP/1.1 upstream made of real sockets, for the response side of the proxy.

``RawUpstream`` listens on 127.0.0.1 and answers the requests it reads, in the
order they arrive over all its connections, each with the exact bytes of the
next ``Reply``: malformed heads, broken chunks, bodies cut short, a connection
reset, or no answer at all.  It records every request (``Received``) and every
connection, and has waits on those records, so a test waits for an event (the
head arrived, the proxy closed that connection) instead of sleeping.  Leaving
its ``with`` block stops it: the listener and every connection are closed and
every thread is joined, whatever happened inside.

A thread per connection is plenty here: a test opens a handful, and blocking
code reads as the exchange it scripts.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

MAX_HEAD = 1024 * 1024
JOIN_TIMEOUT = 5.0
WAIT_TIMEOUT = 10.0

Then = Literal["keep", "close", "reset", "stall"]


@dataclass(frozen=True)
class Reply:
    """What to send for one request, and what the connection does afterwards.

    - ``keep``: read the next request on the same connection;
    - ``close``: end our side (FIN) and read until the proxy closes its side;
    - ``reset``: abort the connection (RST) right after ``data``;
    - ``stall``: send ``data``, then say nothing more until the proxy closes.
    """

    data: bytes
    then: Then = "keep"


OK = Reply(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")


@dataclass
class Received:
    """One request as it reached the upstream."""

    connection: int  # index of its connection, in accept order
    head: bytes
    body: bytearray = field(default_factory=bytearray)
    complete: bool = False  # the whole body arrived (False: the proxy abandoned it)

    @property
    def request_line(self) -> bytes:
        return self.head.split(b"\r\n", 1)[0]

    def header(self, name: str) -> str | None:
        """The first value of header ``name`` (case-insensitive), or None."""
        wanted = name.lower().encode()
        for line in self.head.split(b"\r\n")[1:]:
            key, _, value = line.partition(b":")
            if key.strip().lower() == wanted:
                return value.strip().decode("latin-1")
        return None


@dataclass
class _Connection:
    sock: socket.socket
    thread: threading.Thread | None = None
    peer_closed: bool = False  # the proxy closed (or reset) it, not we


class _PeerClosedError(Exception):
    """The proxy closed the connection in the middle of what we were reading."""


class RawUpstream:
    """A listening socket on 127.0.0.1 answering with scripted bytes (see the module doc)."""

    def __init__(self, *replies: Reply | bytes, default: Reply | None = OK) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._replies: deque[Reply] = deque()
        self.default = default  # the reply once the script runs out (None: stall)
        self.requests: list[Received] = []
        self.connections: list[_Connection] = []
        self._changed = threading.Condition()
        self._stopping = False
        self._acceptor = threading.Thread(target=self._accept, daemon=True)
        self.script(*replies)

    # -- the test's side ----------------------------------------------------------------

    def __enter__(self) -> RawUpstream:
        self._acceptor.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def script(self, *replies: Reply | bytes) -> None:
        """Queue replies for the next requests, in order."""
        with self._changed:
            self._replies.extend(r if isinstance(r, Reply) else Reply(r) for r in replies)

    @property
    def unanswered(self) -> int:
        """Scripted replies not yet sent."""
        with self._changed:
            return len(self._replies)

    def wait_requests(self, count: int, timeout: float = WAIT_TIMEOUT) -> list[Received]:
        """Wait until ``count`` request heads in all have arrived; returns all of them."""
        self._wait(lambda: len(self.requests) >= count, timeout, f"{count} requests")
        return list(self.requests)

    def wait_request(self, index: int, timeout: float = WAIT_TIMEOUT) -> Received:
        """Wait for the head of request ``index`` (counting from 0 over all connections)."""
        return self.wait_requests(index + 1, timeout)[index]

    def wait_peer_closed(self, index: int, timeout: float = WAIT_TIMEOUT) -> None:
        """Wait until the proxy has closed connection ``index`` (in accept order)."""
        self._wait(
            lambda: len(self.connections) > index and self.connections[index].peer_closed,
            timeout,
            f"the proxy to close upstream connection {index}",
        )

    def open_connections(self) -> int:
        """Connections the proxy has not closed."""
        with self._changed:
            return sum(not c.peer_closed for c in self.connections)

    def stop(self) -> None:
        with self._changed:
            self._stopping = True
            connections = list(self.connections)
        # shutdown wakes a thread blocked in accept() or recv() on the same socket.
        for sock in (self._listener, *(c.sock for c in connections)):
            with contextlib.suppress(OSError):  # never connected, or already reset
                sock.shutdown(socket.SHUT_RDWR)
        threads = [self._acceptor, *(c.thread for c in connections if c.thread)]
        for thread in threads:
            if thread.is_alive():
                thread.join(JOIN_TIMEOUT)
        for sock in (self._listener, *(c.sock for c in connections)):
            sock.close()
        alive = [t.name for t in threads if t.is_alive()]
        assert not alive, f"raw upstream threads did not stop: {alive}"

    # -- internals ----------------------------------------------------------------------

    def _wait(self, ready: Callable[[], bool], timeout: float, what: str) -> None:
        with self._changed:
            if not self._changed.wait_for(ready, timeout):
                raise AssertionError(f"raw upstream: no {what} within {timeout}s")

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self._listener.accept()
            except OSError:
                return  # stopped
            with self._changed:
                if self._stopping:
                    sock.close()
                    return
                conn = _Connection(sock)
                index = len(self.connections)
                self.connections.append(conn)
                conn.thread = threading.Thread(
                    target=self._serve, args=(conn, index), name=f"upstream-{index}", daemon=True
                )
                self._changed.notify_all()
            conn.thread.start()

    def _serve(self, conn: _Connection, index: int) -> None:
        reader = _Reader(conn.sock)
        try:
            while True:
                head = reader.head()
                request = Received(index, head)
                with self._changed:
                    self.requests.append(request)
                    self._changed.notify_all()
                reader.body(head, request.body)
                with self._changed:
                    request.complete = True
                    self._changed.notify_all()
                    reply = self._replies.popleft() if self._replies else self.default
                if reply is None:
                    reader.until_closed()
                    return
                conn.sock.sendall(reply.data)
                if reply.then == "reset":
                    conn.sock.setsockopt(
                        socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                    )
                    conn.sock.close()
                    return
                if reply.then == "close":
                    # Half-close, then read on: closing with unread bytes would send an RST
                    # that could destroy the reply before the proxy reads it.
                    conn.sock.shutdown(socket.SHUT_WR)
                    reader.until_closed()
                    return
                if reply.then == "stall":
                    reader.until_closed()
                    return
        except (_PeerClosedError, OSError):
            with self._changed:
                conn.peer_closed = not self._stopping
                self._changed.notify_all()


class _Reader:
    """Blocking reads of request heads and bodies from one socket."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = b""

    def _fill(self) -> None:
        data = self.sock.recv(65536)
        if not data:
            raise _PeerClosedError
        self.buffer += data

    def until_closed(self) -> None:
        while True:
            self.buffer = b""
            self._fill()

    def head(self) -> bytes:
        while b"\r\n\r\n" not in self.buffer:
            if len(self.buffer) > MAX_HEAD:
                raise _PeerClosedError
            self._fill()
        head, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
        return head

    def _line(self) -> bytes:
        while b"\r\n" not in self.buffer:
            self._fill()
        line, _, self.buffer = self.buffer.partition(b"\r\n")
        return line

    def _take(self, size: int, into: bytearray) -> None:
        while size:
            if not self.buffer:
                self._fill()
            piece, self.buffer = self.buffer[:size], self.buffer[size:]
            into += piece
            size -= len(piece)

    def body(self, head: bytes, into: bytearray) -> None:
        """Read the body ``head`` announces into ``into`` (the proxy frames it correctly)."""
        fields = {}
        for line in head.split(b"\r\n")[1:]:
            key, _, value = line.partition(b":")
            fields[key.strip().lower()] = value.strip().lower()
        if fields.get(b"transfer-encoding") == b"chunked":
            while size := int(self._line().split(b";")[0], 16):
                self._take(size, into)
                self._take(2, bytearray())
            while self._line():
                pass  # trailers
        elif b"content-length" in fields:
            self._take(int(fields[b"content-length"]), into)
