"""A raw ASGI app with a known capacity: every request burns a fixed amount of CPU (~1 ms).

One uvicorn worker pinned to one core therefore serves roughly 1000 requests/s;
the benchmark measures the exact figure on the machine before overloading it.
``CPUAPP_WORK`` sets the iterations.  A capacity shift for the overload scenarios:
SIGUSR1 doubles the cost of every request from then on, SIGUSR2 restores it
(``bench/shifting.py``).
"""

from __future__ import annotations

import os

from bench.rawasgi import Receive, Scope, Send, answer, lifespan
from bench.shifting import Shift

WORK = int(os.environ.get("CPUAPP_WORK", "25000"))  # 25,000: about 1 ms of one core
SHIFT = Shift()


def burn(n: int = WORK) -> int:
    return sum(i * i for i in range(n))


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "lifespan":
        await lifespan(receive, send)
        return
    if scope["type"] != "http":
        return
    burn(WORK * SHIFT.factor)
    await answer(send)
