"""Saturated throughput scenarios: ceiling (proxy cost), app (proxy in front of FastAPI), embedded.

Each target is measured in alternating rounds (A, B, A, B) so slow drift of a
noisy machine hits both sides alike; cells show the median and the range.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from bench import nginx, wrk
from bench.procs import Proc, processes, start_sidecar, start_uvicorn
from bench.report import Timing, median, ms, ratio, spread, table, verdict

DEMO = "asgi_sidecar.demo:app"
THINK_MS = 10
# Every sidecar feature on: limiter with a queue, connection cap, metrics (always on).
SIDECAR_FULL = ["--limit-concurrency", "10000", "--queue-depth", "100"]
SIDECAR_FULL += ["--max-connections", "10000", "--backlog", "4096"]


@dataclass
class Target:
    name: str
    port: int
    proxy: Proc | None = None  # whose CPU is charged per request
    rps: list[float] = field(default_factory=list)
    cpu_us: list[float] = field(default_factory=list)
    p50: list[float] = field(default_factory=list)
    p99: list[float] = field(default_factory=list)
    errors: int = 0


def measure(
    target: Target,
    t: Timing,
    workdir: Path,
    *,
    core: int,
    connections: int,
    delay_ms: float | None = None,
) -> None:
    url = f"http://127.0.0.1:{target.port}/"
    run = {"core": core, "connections": connections, "workdir": workdir, "delay_ms": delay_ms}
    wrk.run(url, seconds=t.warmup, **run)  # type: ignore[arg-type]
    before = target.proxy.cpu_seconds() if target.proxy else 0.0
    result = wrk.run(url, seconds=t.seconds, **run)  # type: ignore[arg-type]
    if target.proxy:
        spent = target.proxy.cpu_seconds() - before
        target.cpu_us.append(spent / max(1, result.requests) * 1e6)
    target.rps.append(result.rps)
    target.p50.append(result.p50_ms)
    target.p99.append(result.p99_ms)
    target.errors += result.non_2xx + result.socket_errors


def ceiling(workdir: Path, t: Timing) -> str:
    with processes(workdir) as procs:
        _, upstream = nginx.start_fixed(procs, "upstream", core=1)
        side, side_port = start_sidecar(
            procs, "sidecar", ["proxy", "--upstream", f"http://127.0.0.1:{upstream}"], 0,
            *SIDECAR_FULL,
        )  # fmt: skip
        ngx, ngx_port = nginx.start_proxy(procs, "nginx-proxy", upstream, core=0)
        targets = [Target("asgi-sidecar proxy", side_port, side), Target("nginx", ngx_port, ngx)]
        for _ in range(t.rounds):
            for target in targets:
                measure(target, t, workdir, core=1, connections=64)
    sidecar, peer = targets
    rows = [
        [x.name, spread(x.rps), ms(median(x.p50)), ms(median(x.p99)),
         f"{median(x.cpu_us):.1f}", f"{median(x.cpu_us) * median(x.rps) / 1e4:.0f}%",
         f"{1e6 / median(x.cpu_us):,.0f}", ratio(median(x.rps), median(peer.rps)),
         ratio(median(x.cpu_us), median(peer.cpu_us)), x.errors]
        for x in targets
    ]  # fmt: skip
    share = median(sidecar.rps) / median(peer.rps)
    per_core = median(peer.cpu_us) / median(sidecar.cpu_us)
    return "\n".join(
        [
            "## ceiling: proxy in front of a very fast upstream (nginx `return 200`)",
            "",
            f"Pinning: proxy on core 0; upstream nginx and wrk (-t1 -c64) on core 1. "
            f"{t.rounds} alternating rounds of {t.seconds:.0f} s; req/s is median (min-max). "
            "CPU µs/req: utime+stime of all the proxy's processes over the run / requests.",
            f"Sidecar flags: `{' '.join(SIDECAR_FULL)}` (metrics on). Proxy core busy = "
            "CPU µs/req x req/s: below ~95% the proxy was not the bottleneck (core 1 was).",
            "",
            table(
                [
                    "proxy",
                    "req/s",
                    "p50 ms",
                    "p99 ms",
                    "CPU µs/req",
                    "proxy core busy",
                    "req/s per core (1e6/CPU µs)",
                    "req/s vs nginx",
                    "CPU vs nginx",
                    "errors",
                ],
                rows,
            ),
            "",
            f"Throughput vs nginx: {share:.2f}x — floor 0.5x {verdict(share >= 0.5)}, "
            f"goal 0.8x {verdict(share >= 0.8)}. Per core of CPU (what each would serve "
            f"saturated on a core of its own): {per_core:.2f}x — floor 0.5x "
            f"{verdict(per_core >= 0.5)}, goal 0.8x {verdict(per_core >= 0.8)}.",
        ]
    )


def app(workdir: Path, t: Timing) -> str:
    with processes(workdir) as procs:
        _, app_port = start_uvicorn(procs, "uvicorn-demo", DEMO, core=1)
        upstream = ["proxy", "--upstream", f"http://127.0.0.1:{app_port}"]
        side, side_port = start_sidecar(procs, "sidecar", upstream, 0, *SIDECAR_FULL)
        ngx, ngx_port = nginx.start_proxy(procs, "nginx-proxy", app_port, core=0)
        sat = [
            Target("direct (uvicorn)", app_port),
            Target("nginx -> uvicorn", ngx_port, ngx),
            Target("asgi-sidecar -> uvicorn", side_port, side),
        ]
        low = [Target(x.name, x.port, x.proxy) for x in sat]
        for _ in range(t.rounds):
            for x in sat:
                measure(x, t, workdir, core=0, connections=64)
        # Half load at a fixed rate: each connection pauses THINK_MS before each request,
        # so N connections offer about N / THINK_MS whatever the latency (wrk2-like).
        base_sat = median(sat[0].rps)
        half = max(1, round(base_sat / 2 * THINK_MS / 1000))
        for _ in range(t.rounds):
            for x in low:
                measure(x, t, workdir, core=0, connections=half, delay_ms=THINK_MS)
    base_low = low[0]
    rows = []
    for s, lo in zip(sat, low, strict=True):
        added50 = median(lo.p50) - median(base_low.p50)
        added99 = median(lo.p99) - median(base_low.p99)
        rows.append(
            [s.name, spread(s.rps), ratio(median(s.rps), base_sat),
             f"{median(lo.rps):,.0f} ({median(lo.rps) / base_sat:.0%})",
             ms(median(lo.p50)), ms(median(lo.p99)),
             None if lo is base_low else f"{added50:+.2f}",
             None if lo is base_low else f"{added99:+.2f}",
             f"{median(s.cpu_us):.1f}" if s.cpu_us else None, s.errors + lo.errors]
        )  # fmt: skip
    return "\n".join(
        [
            "## app: FastAPI JSON endpoint (`asgi_sidecar.demo:app` GET /) on uvicorn",
            "",
            "Pinning: uvicorn (1 worker, httptools, uvloop, no access log) alone on core 1; "
            "the proxy and wrk on core 0. Saturated = wrk -t1 -c64. Half load = wrk "
            f"-c{half} with a {THINK_MS} ms pause before each request (about half the direct "
            "saturated rate, the same offered rate on every path; achieved req/s and its "
            "share of direct saturation shown); wrk latency excludes the pause. "
            f"{t.rounds} alternating rounds of {t.seconds:.0f} s, medians.",
            "",
            table(
                [
                    "path",
                    "req/s c64",
                    "vs direct",
                    "req/s half load",
                    "p50 ms half",
                    "p99 ms half",
                    "added p50 ms",
                    "added p99 ms",
                    "proxy CPU µs/req (c64)",
                    "errors",
                ],
                rows,
            ),
        ]
    )


def embedded(workdir: Path, t: Timing) -> str:
    with processes(workdir) as procs:
        _, plain_port = start_uvicorn(procs, "uvicorn-demo", DEMO, core=1)
        mode = ["serve", DEMO, "--limit-concurrency", "1000"]
        _, side_port = start_sidecar(procs, "sidecar-serve", mode, 1)
        targets = [
            Target("uvicorn " + DEMO, plain_port),
            Target("asgi-sidecar serve --limit-concurrency 1000", side_port),
        ]
        for _ in range(t.rounds):
            for x in targets:
                measure(x, t, workdir, core=0, connections=64)
    base = median(targets[0].rps)
    rows = [
        [x.name, spread(x.rps), ratio(median(x.rps), base), ms(median(x.p50)),
         ms(median(x.p99)), x.errors]
        for x in targets
    ]  # fmt: skip
    share = median(targets[1].rps) / base
    return "\n".join(
        [
            "## embedded: `asgi-sidecar serve` vs plain uvicorn, same app",
            "",
            "Pinning: both servers on core 1 (one measured at a time), wrk -t1 -c64 on core 0. "
            f"{t.rounds} alternating rounds of {t.seconds:.0f} s, medians.",
            "",
            table(["server", "req/s", "vs uvicorn", "p50 ms", "p99 ms", "errors"], rows),
            "",
            f"Throughput vs uvicorn: {share:.2f}x — goal 0.95x {verdict(share >= 0.95)}.",
        ]
    )
