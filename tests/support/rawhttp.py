"""The one raw-socket HTTP/1.1 client, for input no well-behaved client library would send.

``RawClient`` sends exactly the bytes it is given and reads responses itself,
with a timeout on every read, so tests can send malformed, slow or pipelined
requests and see exactly what comes back, including whether the connection is
closed afterwards.  ``Conn`` is the same client addressed by path (``send("/slow")``),
as the limit and keep-alive tests use it, so each test decides exactly which
connection sends what and when.
"""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass, field

DEFAULT_TIMEOUT = 10.0


@dataclass
class Response:
    status: int
    reason: str = ""
    fields: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""

    @property
    def headers(self) -> dict[str, str]:
        """Header values by lower-case name (the first of repeated ones)."""
        found: dict[str, str] = {}
        for key, value in self.fields:
            found.setdefault(key.lower(), value)
        return found

    def header(self, name: str) -> str | None:
        """The value of the first header called ``name`` (case-insensitive), or None."""
        return self.headers.get(name.lower())

    def header_names(self) -> set[str]:
        return set(self.headers)


class RawClient:
    """One TCP connection to 127.0.0.1:``port``."""

    def __init__(self, port: int, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.sock.settimeout(timeout)
        self.buffer = b""

    def __enter__(self) -> RawClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.sock.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self) -> bool:
        """Read more bytes into the buffer; False at end of stream."""
        data = self.sock.recv(65536)
        if not data:
            return False
        self.buffer += data
        return True

    def _take_line(self) -> bytes:
        while b"\r\n" not in self.buffer:
            if not self._fill():
                raise ConnectionError("connection closed in the middle of a line")
        line, _, self.buffer = self.buffer.partition(b"\r\n")
        return line

    def _take(self, size: int) -> bytes:
        while len(self.buffer) < size:
            if not self._fill():
                raise ConnectionError("connection closed in the middle of a body")
        data, self.buffer = self.buffer[:size], self.buffer[size:]
        return data

    def read_head(self) -> Response:
        """Read one response head (a 1xx or a final one)."""
        while b"\r\n\r\n" not in self.buffer:
            if not self._fill():
                raise ConnectionError(f"connection closed before a response head: {self.buffer!r}")
        head, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        version, status, *reason = lines[0].split(" ", 2)
        assert version.startswith("HTTP/1."), lines[0]
        headers = []
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers.append((name.strip(), value.strip()))
        return Response(int(status), reason[0] if reason else "", headers)

    def read_response(self, method: str = "GET", *, until_close: bool = True) -> Response:
        """Read one complete final response (1xx heads are skipped).

        A body with neither length nor chunks ends at the close (``until_close``), or is
        taken as empty."""
        response = self.read_head()
        while 100 <= response.status < 200 and response.status != 101:
            response = self.read_head()
        if method == "HEAD" or response.status in (204, 304, 101):
            return response
        if (response.header("transfer-encoding") or "").lower() == "chunked":
            parts = []
            while True:
                size = int(self._take_line().split(b";")[0], 16)
                if size == 0:
                    while self._take_line():
                        pass  # trailers
                    break
                parts.append(self._take(size))
                self._take(2)
            response.body = b"".join(parts)
        elif response.header("content-length") is not None:
            response.body = self._take(int(response.header("content-length") or 0))
        elif until_close:
            while self._fill():
                pass
            response.body, self.buffer = self.buffer, b""
        return response

    def read_chunk(self) -> bytes:
        """The data of the next chunk of a chunked body (b"" for the last one, trailers read)."""
        size = int(self._take_line().split(b";")[0], 16)
        if size == 0:
            while self._take_line():
                pass
            return b""
        data = self._take(size)
        self._take(2)
        return data

    def is_closed(self, timeout: float = 3.0) -> bool:
        """True if the peer closes the connection (EOF or reset) within ``timeout``.

        Bytes that arrive meanwhile are kept in the buffer; False if still open.
        """
        self.sock.settimeout(timeout)
        try:
            return not self._fill()
        except TimeoutError:
            return False
        except ConnectionResetError:
            return True
        finally:
            self.sock.settimeout(DEFAULT_TIMEOUT)

    def wait_closed(self, timeout: float = 3.0) -> bytes:
        """Read until the peer closes; returns everything read. Fails if it stays open."""
        deadline = time.monotonic() + timeout
        try:
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"connection still open after {timeout}s")
                self.sock.settimeout(left)
                if not self._fill():
                    break
        except TimeoutError:
            raise AssertionError(f"connection still open after {timeout}s") from None
        except ConnectionResetError:
            pass
        finally:
            self.sock.settimeout(DEFAULT_TIMEOUT)
        data, self.buffer = self.buffer, b""
        return data


class Conn:
    """A ``RawClient`` addressed by path: ``send("/slow?s=1")``, ``request("/echo")``."""

    def __init__(self, port: int, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.client = RawClient(port, timeout)

    @property
    def sock(self) -> socket.socket:
        return self.client.sock

    @property
    def buf(self) -> bytes:
        """What was read and not yet parsed."""
        return self.client.buffer

    def send(self, path: str, method: str = "GET", extra: str = "") -> None:
        """A request head for ``path``; ``extra``: more header lines, each ending in CRLF."""
        self.client.send(f"{method} {path} HTTP/1.1\r\nhost: test\r\n{extra}\r\n".encode())

    def read_response(self, method: str = "GET") -> Response:
        return self.client.read_response(method, until_close=False)

    def request(self, path: str, method: str = "GET") -> Response:
        self.send(path, method)
        return self.read_response(method)

    def wait_closed(self, timeout: float) -> float | None:
        """Seconds until the server closed the connection (EOF or reset); None if it did not.

        What arrives meanwhile is kept in ``buf``."""
        start = time.monotonic()
        self.sock.settimeout(timeout)
        try:
            while self.client._fill():
                pass
        except TimeoutError:
            return None
        except ConnectionResetError:
            pass
        return time.monotonic() - start

    def is_open(self) -> bool:
        """True if the server has not closed the connection (nothing to read, no EOF)."""
        self.sock.setblocking(False)
        try:
            return bool(self.sock.recv(1, socket.MSG_PEEK))
        except BlockingIOError:
            return True
        except OSError:
            return False
        finally:
            self.sock.setblocking(True)

    def close(self) -> None:
        self.client.close()


def request(
    method: str,
    path: str,
    headers: list[tuple[str, str]] | None = None,
    body: bytes = b"",
    *,
    host: str = "test.local",
) -> bytes:
    """The bytes of one well-formed request (Content-Length added when there is a body)."""
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}"]
    for name, value in headers or []:
        lines.append(f"{name}: {value}")
    if body and not any(
        n.lower() in ("content-length", "transfer-encoding") for n, _ in headers or []
    ):
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def tcp_connections(port: int) -> set[tuple[str, str, str]]:
    """TCP sockets (IPv4, this network namespace) with ``port`` at either end.

    Each is (local address, remote address, state) as hex strings from
    /proc/net/tcp; state "01" is ESTABLISHED, "06" TIME_WAIT.  A connection that
    existed at any time in the last minute is still listed (TIME_WAIT).
    """
    wanted = f":{port:04X}"
    found = set()
    with open("/proc/net/tcp") as table:
        next(table)
        for line in table:
            fields = line.split()
            local, remote, state = fields[1], fields[2], fields[3]
            if state == "0A":  # LISTEN
                continue
            if local.endswith(wanted) or remote.endswith(wanted):
                found.add((local, remote, state))
    return found


def established(port: int) -> int:
    """Number of ESTABLISHED socket ends with ``port`` at either end."""
    return sum(1 for _, _, state in tcp_connections(port) if state == "01")


def proc_status_kib(pid: int, field: str) -> int:
    """A memory figure of a process from /proc/<pid>/status (VmRSS, VmHWM), in KiB."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)
