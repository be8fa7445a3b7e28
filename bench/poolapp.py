"""A raw ASGI app whose capacity is a pool: ``POOLAPP_SLOTS`` (8) slots of ``POOLAPP_MS`` (20) ms.

Each request holds one slot for the pool's latency (an asyncio sleep: a database
connection, a downstream call), waiting in line for a free one, so its capacity is
slots / latency (400 requests/s) however many requests are in flight, and its no-load
latency is exactly the pool's.  SIGUSR1 doubles the slots (the pool grew), SIGUSR2
restores them (``bench/shifting.py``).
"""

from __future__ import annotations

import asyncio
import os
from collections import deque

from bench.rawasgi import Receive, Scope, Send, answer, lifespan
from bench.shifting import Shift

SLOTS = int(os.environ.get("POOLAPP_SLOTS", "8"))
LATENCY = float(os.environ.get("POOLAPP_MS", "20")) / 1000
SHIFT = Shift()


class Pool:
    """Slots handed out in arrival order; the number of slots may change at any time."""

    def __init__(self) -> None:
        self.busy = 0
        self.waiters: deque[asyncio.Future[None]] = deque()

    def size(self) -> int:
        return SLOTS * SHIFT.factor

    async def acquire(self) -> None:
        if self.busy < self.size() and not self.waiters:
            self.busy += 1
            return
        waiter = asyncio.get_running_loop().create_future()
        self.waiters.append(waiter)
        try:
            await waiter  # the slot was counted as busy by whoever woke this waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.release()  # woken, then cancelled: hand the slot on
            else:
                waiter.cancel()
            raise

    def release(self) -> None:
        self.busy -= 1
        while self.waiters and self.busy < self.size():
            waiter = self.waiters.popleft()
            if not waiter.done():  # a waiter whose client left was cancelled
                self.busy += 1
                waiter.set_result(None)


POOL = Pool()


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "lifespan":
        await lifespan(receive, send)
        return
    if scope["type"] != "http":
        return
    await POOL.acquire()
    try:
        await asyncio.sleep(LATENCY)
    finally:
        POOL.release()
    await answer(send)
