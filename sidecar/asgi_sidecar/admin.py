"""The metrics port: /metrics, /healthz, /readyz and /drain, never subject to the limits.

A deliberately small HTTP/1.1 server on asyncio streams: probes and scrapes are
a handful of requests a second, so clarity beats speed here.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import urllib.parse
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from http import HTTPStatus

from asgi_sidecar.exposition import CONTENT_TYPE

log = logging.getLogger("asgi_sidecar.admin")

READ_TIMEOUT = 10.0


@dataclass(frozen=True, slots=True)
class Reply:
    status: int
    body: bytes
    content_type: str = "text/plain; charset=utf-8"


Readiness = Callable[[], Awaitable[tuple[bool, str]]]
# Starts the preStop drain for some seconds (see AdminServer._drain_route).
Drain = Callable[[float], None]
DRAIN_TOKEN_HEADER = "x-drain-token"
MAX_DRAIN_SECONDS = 300.0


class AdminServer:
    def __init__(
        self,
        metrics: Callable[[], bytes],
        readiness: Readiness,
        drain: Drain | None = None,
        drain_token: Callable[[], str | None] = lambda: None,
    ) -> None:
        self._metrics = metrics
        self._readiness = readiness
        self._drain = drain
        self._drain_token = drain_token
        self._server: asyncio.Server | None = None

    async def start(self, host: str, port: int) -> None:
        self._server = await asyncio.start_server(self._handle, host, port, reuse_address=True)

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def route(self, method: str, path: str, headers: dict[str, str] | None = None) -> Reply:
        path, _, query = path.partition("?")
        if method not in ("GET", "HEAD"):
            return Reply(405, b"method not allowed\n")
        if path == "/drain" and self._drain is not None:
            return await self._drain_route(query, headers or {})
        if path == "/metrics":
            return Reply(200, self._metrics(), CONTENT_TYPE)
        if path == "/healthz":
            return Reply(200, b"ok\n")
        if path == "/readyz":
            ready, why = await self._readiness()
            return Reply(200 if ready else 503, (why + "\n").encode())
        return Reply(404, b"not found: try /metrics, /healthz or /readyz\n")

    async def _drain_route(self, query: str, headers: dict[str, str]) -> Reply:
        """GET /drain?seconds=N: the Pod is going away (its app container's preStop hook).

        The server turns unready and closes each connection after its response, so clients
        reconnect to other Pods; the answer comes after N seconds (default 3, at most 300),
        which is how long the hook, and so the app's SIGTERM, waits.
        """
        token = self._drain_token()
        if token is not None and not hmac.compare_digest(
            headers.get(DRAIN_TOKEN_HEADER, ""), token
        ):
            return Reply(403, b"drain: wrong or missing X-Drain-Token\n")
        params = urllib.parse.parse_qs(query)
        try:
            seconds = float(params.get("seconds", ["3"])[0])
        except ValueError:
            return Reply(400, b"drain: seconds must be a number\n")
        if not 0 <= seconds <= MAX_DRAIN_SECONDS:
            return Reply(400, b"drain: seconds must be within 0..300\n")
        assert self._drain is not None
        self._drain(seconds)
        await asyncio.sleep(seconds)
        return Reply(200, b"drained\n")

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                try:
                    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), READ_TIMEOUT)
                except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError):
                    return
                request_line = head.split(b"\r\n", 1)[0].decode("latin-1")
                parts = request_line.split()
                if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
                    writer.write(_encode(Reply(400, b"bad request\n"), keep_alive=False))
                    return
                method, path, version = parts
                keep_alive = version == "HTTP/1.1" and b"connection: close" not in head.lower()
                reply = await self.route(method, path, _headers(head))
                writer.write(_encode(reply, keep_alive=keep_alive, head_only=method == "HEAD"))
                await writer.drain()
                if not keep_alive:
                    return
        except ConnectionError:
            return
        except Exception:  # pragma: no cover - the admin port must never die
            log.exception("admin request failed")
        finally:
            writer.close()


def _headers(head: bytes) -> dict[str, str]:
    """The header fields of a request head, names in lower case (the last of repeats)."""
    fields = {}
    for line in head.split(b"\r\n")[1:]:
        name, sep, value = line.partition(b":")
        if sep:
            fields[name.strip().lower().decode("latin-1")] = value.strip().decode("latin-1")
    return fields


def _encode(reply: Reply, *, keep_alive: bool, head_only: bool = False) -> bytes:
    head = (
        f"HTTP/1.1 {reply.status} {HTTPStatus(reply.status).phrase}\r\n"
        f"content-type: {reply.content_type}\r\n"
        f"content-length: {len(reply.body)}\r\n"
        f"connection: {'keep-alive' if keep_alive else 'close'}\r\n\r\n"
    ).encode("latin-1")
    return head if head_only else head + reply.body
