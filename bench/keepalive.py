"""The keep-alive race: a balancer reusing a connection just as the app's idle timer closes it.

nginx stands in for a cloud load balancer: an upstream keep-alive pool kept 60 s, no retries
(``proxy_next_upstream off``).  Between it and the Pod a relay adds DELAY each way
(``bench.delayrelay``).  Every flow has an upstream block of its own, so its pooled connection
is idle exactly for the flow's gap between requests; the gaps fall near uvicorn's 5 s timeout.
Two targets in one run: plain uvicorn, and the sidecar (defaults) in front of the same app.
"""

from __future__ import annotations

import asyncio
import random
import sys
from collections import Counter
from pathlib import Path

from bench import nginx
from bench.procs import Processes, free_port, processes, start_sidecar, start_uvicorn
from bench.report import Timing, table

APP = "tests.support.apps:app"
DELAY_MS = 25

_BODY = """\
{upstreams}
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        proxy_http_version 1.1;
        proxy_set_header Connection "";
        proxy_next_upstream off;
        proxy_read_timeout 30s;
{locations}
    }}
"""
_UPSTREAM = """\
    upstream flow{i} {{
        server 127.0.0.1:{relay};
        keepalive 4;
        keepalive_timeout 60s;
        keepalive_requests 10000;
    }}"""
_LOCATION = "        location /f{i}/ {{ proxy_pass http://flow{i}/; }}"


def _start_balancer(procs: Processes, name: str, relay: int, flows: int) -> int:
    port = free_port()
    body = _BODY.format(
        port=port,
        upstreams="\n".join(_UPSTREAM.format(i=i, relay=relay) for i in range(flows)),
        locations="\n".join(_LOCATION.format(i=i) for i in range(flows)),
    )
    nginx._start(procs, name, body, port, 0)
    return port


def start_target(procs: Processes, name: str, sidecar: bool, flows: int) -> int:
    """nginx → relay → (sidecar →) uvicorn; the balancer's port."""
    _, app_port = start_uvicorn(procs, f"{name}-uvicorn", APP, 1)
    backend = app_port
    if sidecar:
        _, backend = start_sidecar(
            procs, f"{name}-sidecar", ["proxy", "--upstream", f"http://127.0.0.1:{app_port}"], 1
        )
    relay = free_port()
    cmd = [sys.executable, "-m", "bench.delayrelay", str(relay), str(backend), str(DELAY_MS)]
    procs.start(f"{name}-relay", cmd, 0, port=relay)
    return _start_balancer(procs, f"{name}-nginx", relay, flows)


async def _request(port: int, flow: int, method: str) -> str:
    """One request on a fresh client connection to nginx; its status, or the error's name."""
    body = b"x=1" if method == "POST" else b""
    head = f"{method} /f{flow}/echo HTTP/1.1\r\nHost: bench\r\nContent-Length: {len(body)}\r\n"
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError as exc:
        return type(exc).__name__
    try:
        writer.write(head.encode() + b"Connection: close\r\n\r\n" + body)
        data = await asyncio.wait_for(reader.read(), 40)
        return data.split(b" ", 2)[1].decode() if data.startswith(b"HTTP/1.") else "garbled"
    except (OSError, TimeoutError) as exc:
        return type(exc).__name__
    finally:
        writer.close()


async def _flow(
    port: int,
    flow: int,
    requests: int,
    gaps: tuple[float, float],
    rng: random.Random,
    out: Counter[tuple[str, str]],
) -> None:
    await asyncio.sleep(rng.uniform(0, 1))
    for n in range(requests):
        if n:
            await asyncio.sleep(rng.uniform(*gaps))
        method = "POST" if (flow + n) % 2 else "GET"
        out[(method, await _request(port, flow, method))] += 1


async def drive(
    ports: dict[str, int], flows: int, requests: int, gaps: tuple[float, float], seed: int = 1
) -> dict[str, Counter[tuple[str, str]]]:
    """``flows`` independent flows per target, all targets at once; (method, status) counts."""
    results = {name: Counter[tuple[str, str]]() for name in ports}
    rng = random.Random(seed)
    await asyncio.gather(
        *(
            _flow(port, i, requests, gaps, random.Random(rng.random()), results[name])
            for name, port in ports.items()
            for i in range(flows)
        )
    )
    return results


def run(
    workdir: Path, flows: int, requests: int, gaps: tuple[float, float]
) -> dict[str, Counter[tuple[str, str]]]:
    with processes(workdir) as procs:
        ports = {
            "nginx → relay → uvicorn": start_target(procs, "plain", False, flows),
            "nginx → relay → sidecar → uvicorn": start_target(procs, "sidecar", True, flows),
        }
        return asyncio.run(drive(ports, flows, requests, gaps))


def render(results: dict[str, Counter[tuple[str, str]]]) -> str:
    rows = []
    for name, counts in results.items():
        for method in ("GET", "POST", "all"):
            picked = {k: v for k, v in counts.items() if method in ("all", k[0])}
            total = sum(picked.values())
            bad = sum(v for (_, s), v in picked.items() if s == "502")
            other = sum(v for (_, s), v in picked.items() if s not in ("200", "502"))
            pct = f"{100 * (bad + other) / total:.1f}%" if total else "—"
            rows.append([name, method, total, bad, other, pct])
    return table(["target", "method", "requests", "502s", "other errors", "error %"], rows)


def keepalive(workdir: Path, timing: Timing) -> str:
    flows, requests, gaps = 30, 14, (4.9, 5.1)
    results = run(workdir, flows, requests, gaps)
    return "\n\n".join(
        [
            "## keep-alive race: nginx (upstream keep-alive 60 s, no retries) → "
            f"{DELAY_MS} ms relay → app",
            f"{flows} flows per target, {requests} requests each, idle gaps uniform "
            f"{gaps[0]}-{gaps[1]} s on each flow's own pooled upstream connection;"
            " GET and POST alternate.",
            render(results),
        ]
    )
