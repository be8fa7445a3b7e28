"""The keep-alive race behind a real balancer: 502s with plain uvicorn, none with the sidecar.

nginx (upstream keep-alive 60 s, no retries) → a 25 ms delaying relay → the target, with idle
gaps on each pooled connection of 4.96-4.99 s: inside the window (5 s - 2 x 25 ms, 5 s) in
which nginx sends a request uvicorn's idle timer has already closed the connection to.  In
``make bench-keepalive`` (gaps 4.9-5.1 s) about 20% of reuses failed, so with 40 x 3 = 120
reuses P(no 502 at all) <= 0.8**120, about 2e-12, even before aiming the gaps at the window.
"""

from __future__ import annotations

import asyncio

from bench import keepalive
from bench.procs import processes


def test_balancer_gets_502s_from_plain_uvicorn_and_none_through_the_sidecar(tmp_path):
    with processes(tmp_path) as procs:
        ports = {
            "plain": keepalive.start_target(procs, "plain", False, 40),
            "sidecar": keepalive.start_target(procs, "sidecar", True, 40),
        }
        results = asyncio.run(keepalive.drive(ports, 40, 4, (4.96, 4.99)))
    plain, through_sidecar = results["plain"], results["sidecar"]
    assert sum(plain.values()) == sum(through_sidecar.values()) == 160
    assert {status for _, status in through_sidecar} == {"200"}, through_sidecar
    assert sum(v for (_, status), v in plain.items() if status == "502") >= 1, plain
