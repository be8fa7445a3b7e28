"""A raw ASGI app with a known capacity: every request burns a fixed amount of CPU (~1 ms).

One uvicorn worker pinned to one core therefore serves roughly 1000 requests/s;
the benchmark measures the exact figure on the machine before overloading it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Message = MutableMapping[str, Any]

WORK = 25_000  # iterations: about 1 ms of one core on a 2020s x86 machine
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
    burn()
    await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
    await send({"type": "http.response.body", "body": BODY})
