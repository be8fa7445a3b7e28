"""Idle keep-alive connections: memory of the sidecar and of nginx holding 10,000 of them.

The clients live in this process (asyncio streams): each connection sends one
request, reads the answer, then stays open and silent while the proxy's RSS
is read from /proc.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from pathlib import Path

from bench import nginx
from bench.procs import (
    PURE,
    Proc,
    Processes,
    processes,
    raise_nofile,
    start_sidecar,
    start_uvicorn,
)
from bench.report import Timing, table, verdict

CONNECTIONS = 10_000
BATCH = 500
REQUEST = b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n"
OPEN_TIMEOUT = 120.0
GOAL_MB = 50
DEMO = "asgi_sidecar.demo:app"  # the rows of the app in-process (FastAPI)


Conn = tuple[asyncio.StreamReader, asyncio.StreamWriter]


async def _one(port: int) -> Conn | None:
    """Open a connection, make one request, return the (still open) writer."""
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return None
    try:
        writer.write(REQUEST)
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 20)
        length = 0
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":", 1)[1])
        if length:
            await asyncio.wait_for(reader.readexactly(length), 20)
        if not head.startswith(b"HTTP/1.1 200"):
            raise ConnectionError(head[:40])
    except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError):
        writer.close()
        return None
    return reader, writer


async def _hold(port: int, proxy: Proc) -> tuple[int, int, float, int]:
    """Open CONNECTIONS in batches; returns (held, rss KiB, seconds to open, still open)."""
    conns: list[Conn] = []
    started = time.monotonic()
    try:
        for offset in range(0, CONNECTIONS, BATCH):
            count = min(BATCH, CONNECTIONS - offset)
            batch = await asyncio.gather(*(_one(port) for _ in range(count)))
            conns.extend(c for c in batch if c is not None)
        elapsed = time.monotonic() - started
        await asyncio.sleep(2.0)  # let the proxy settle (pools, freed buffers)
        rss = proxy.rss_kib()
        still_open = sum(1 for r, w in conns if not r.at_eof() and not w.is_closing())
        return len(conns), rss, elapsed, still_open
    finally:
        for _, w in conns:
            w.close()
        for _, w in conns:
            with contextlib.suppress(OSError, ConnectionError):
                await w.wait_closed()


def _measure(port: int, proxy: Proc) -> list[object]:
    before = proxy.rss_kib()
    held, after, elapsed, still_open = asyncio.run(
        asyncio.wait_for(_hold(port, proxy), OPEN_TIMEOUT)
    )
    per_conn = (after - before) / held if held else 0
    return [
        f"{held:,} ({still_open:,} open at the reading)",
        f"{elapsed:.1f}",
        f"{before / 1024:.1f}",
        f"{after / 1024:.1f}",
        f"{per_conn:.1f}",
    ]


def idle(workdir: Path, t: Timing) -> str:
    soft = raise_nofile()
    affinity = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {1})
    try:
        with processes(workdir) as procs:
            _, upstream = nginx.start_fixed(procs, "upstream", core=1)
            mode = ["proxy", "--upstream", f"http://127.0.0.1:{upstream}"]
            flags = ["--timeout-keep-alive", "300", "--backlog", "4096"]
            flags += ["--limit-concurrency", "10000", "--max-connections", "20000"]
            rows, held = [], {}
            for label, name, env in (
                ("asgi-sidecar compiled", "sidecar", None),
                ("asgi-sidecar pure", "sidecar-pure", PURE),
            ):
                side, side_port = start_sidecar(procs, name, mode, 0, *flags, env=env)
                rows.append([label, *_measure(side_port, side)])
                held[label] = float(str(rows[-1][4]))
                time.sleep(1.0)
                rows[-1].append(f"{side.rss_kib() / 1024:.1f} (peak {_peak_mb(side)})")
                procs.stop(side)
            ngx, ngx_port = nginx.start_proxy(procs, "nginx-proxy", upstream, core=0)
            rows.append(["nginx (master + worker)", *_measure(ngx_port, ngx), None])
            procs.stop(ngx)
            rows += _embedded(procs, flags)
    finally:
        os.sched_setaffinity(0, affinity)
    return "\n".join(
        [
            f"## idle: {CONNECTIONS:,} idle keep-alive connections (one request each, then silent)",
            "",
            f"Clients: asyncio in this process (RLIMIT_NOFILE {soft}), opened {BATCH} at a time, "
            "on core 1 with the upstream (nginx `return 200`); proxy on core 0. Sidecar: "
            "`--timeout-keep-alive 300 --backlog 4096`; nginx: `keepalive_timeout 300s`. "
            "RSS = VmRSS of all the proxy's processes, read 2 s after the last connection opened. "
            f"The last two rows hold the connections with the app in-process ({DEMO}): "
            "`asgi-sidecar serve` with the sidecar's flags, and plain uvicorn "
            "`--timeout-keep-alive 300 --backlog 4096`; the goal is the proxy's.",
            "",
            table(
                [
                    "proxy",
                    "connections held",
                    "seconds to open",
                    "RSS before MB",
                    "RSS holding MB",
                    "KiB per connection",
                    "RSS after the clients closed MB",
                ],
                rows,
            ),
            "",
            *(
                f"- {label} holding {CONNECTIONS:,}: {mb:.1f} MB — goal ≤ {GOAL_MB} MB "
                f"{verdict(mb <= GOAL_MB)}."
                for label, mb in held.items()
            ),
        ]
    )


def _embedded(procs: Processes, flags: list[str]) -> list[list[object]]:
    """The same for the app in-process: ``serve`` and plain uvicorn, on the demo app."""
    rows: list[list[object]] = []
    side, port = start_sidecar(procs, "sidecar-serve", ["serve", DEMO], 0, *flags)
    rows.append([f"asgi-sidecar serve {DEMO}", *_measure(port, side), None])
    procs.stop(side)
    keep = ["--timeout-keep-alive", "300", "--backlog", "4096"]
    plain, port = start_uvicorn(procs, "uvicorn-demo", DEMO, 0, *keep)
    rows.append([f"uvicorn {DEMO}", *_measure(port, plain), None])
    procs.stop(plain)
    return rows


def _peak_mb(proc: Proc) -> str:
    try:
        for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return f"{int(line.split()[1]) / 1024:.1f} MB"
    except OSError:
        pass
    return "n/a"
