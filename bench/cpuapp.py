"""A raw ASGI app with a known capacity: every request burns a fixed amount of CPU (~1 ms).

One uvicorn worker pinned to one core therefore serves roughly 1000 requests/s;
the benchmark measures the exact figure on the machine before overloading it.
``CPUAPP_WORK`` sets the iterations.  A capacity shift for the overload scenarios:
SIGUSR1 doubles the cost of every request from then on, SIGUSR2 restores it
(``bench/shifting.py``).
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from bench.shifting import Shift

Message = MutableMapping[str, Any]

WORK = int(os.environ.get("CPUAPP_WORK", "25000"))  # 25,000: about 1 ms of one core
SHIFT = Shift()
BODY = b'{"ok":true}'
HEADERS = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(BODY))]


def burn(n: int = WORK) -> int:
    return sum(i * i for i in range(n))


async def app(
    scope: MutableMapping[str, Any],
    receive: Callable[[], Awaitable[Message]],
    send: Callable[[Message], Awaitable[None]],
) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] != "http":
        return
    burn(WORK * SHIFT.factor)
    await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
    await send({"type": "http.response.body", "body": BODY})
