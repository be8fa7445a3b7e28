"""A TCP relay on loopback that delays every chunk and the FIN by a fixed time, each way.

This kernel has no netem, so the few tens of milliseconds between a balancer and a Pod are
made here: what makes the keep-alive race visible is that the app's FIN reaches the balancer
late, after the balancer has already sent a request on the connection.
Run: ``python -m bench.delayrelay PORT [UPSTREAM_HOST:]UPSTREAM_PORT DELAY_MS``; the upstream
host defaults to loopback (a Service's ClusterIP on the real node, tests/node/test_attach.py).
"""

from __future__ import annotations

import asyncio
import collections
import sys

_PENDING: set[asyncio.Task[None]] = set()


class _Delayed:
    """Writes to ``transport`` what ``push`` was given, ``delay`` seconds later, in order."""

    def __init__(self, loop: asyncio.AbstractEventLoop, delay: float) -> None:
        self.loop, self.delay = loop, delay
        self.transport: asyncio.Transport | None = None
        self.queue: collections.deque[tuple[float, bytes | None]] = collections.deque()
        self.timer: asyncio.TimerHandle | None = None

    def push(self, data: bytes | None) -> None:  # None: the FIN
        self.queue.append((self.loop.time() + self.delay, data))
        if self.timer is None:
            self.timer = self.loop.call_at(self.queue[0][0], self._flush)

    def _flush(self) -> None:
        self.timer = None
        now = self.loop.time()
        while self.queue and self.queue[0][0] <= now and self.transport is not None:
            _, data = self.queue.popleft()
            if self.transport.is_closing():
                continue
            if data is None:
                if self.transport.can_write_eof():
                    self.transport.write_eof()
                else:
                    self.transport.close()
            else:
                self.transport.write(data)
        if self.queue:
            self.timer = self.loop.call_at(max(self.queue[0][0], now + 0.001), self._flush)


class _Side(asyncio.Protocol):
    def __init__(self, out: _Delayed, inbound: _Delayed) -> None:
        self.out, self.inbound = out, inbound  # out: to the peer side; inbound: to us

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.inbound.transport = transport
        self.inbound.push(b"")  # flush anything queued before we connected

    def data_received(self, data: bytes) -> None:
        self.out.push(data)

    def eof_received(self) -> bool:
        self.out.push(None)
        return True  # keep our write side open: half-close, like TCP

    def connection_lost(self, exc: Exception | None) -> None:
        self.out.push(None)


async def serve(port: int, upstream: int, delay: float, host: str = "127.0.0.1") -> None:
    loop = asyncio.get_running_loop()

    def accept() -> asyncio.Protocol:
        to_client, to_server = _Delayed(loop, delay), _Delayed(loop, delay)
        client = _Side(to_server, to_client)

        async def connect() -> None:
            try:
                await loop.create_connection(lambda: _Side(to_client, to_server), host, upstream)
            except OSError:
                to_client.push(None)

        task = loop.create_task(connect())
        _PENDING.add(task)
        task.add_done_callback(_PENDING.discard)
        return client

    server = await loop.create_server(accept, "127.0.0.1", port, backlog=1024)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    host, _, upstream = sys.argv[2].rpartition(":")
    delay = float(sys.argv[3]) / 1000
    asyncio.run(serve(int(sys.argv[1]), int(upstream), delay, host or "127.0.0.1"))
