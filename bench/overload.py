"""Overload: 3x an app's capacity against uvicorn, uvicorn --limit-concurrency, and the sidecar.

The app (bench/cpuapp.py) burns ~1 ms of CPU per request, so its capacity on one
core is known and measured first.  wrk offers about 3x that rate: many
connections, each pausing (wrk's delay() hook) between requests, so fast 503s
do not turn into an unbounded retry storm.  wrk counts 2xx vs the rest; a
separate low-rate probe measures what an admitted (2xx) request waits, because
wrk's own percentiles mix 503s with admitted requests.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

from bench import wrk
from bench.probe import Probe, ProbeResult
from bench.procs import processes, start_sidecar, start_uvicorn
from bench.report import Timing, ms, table, verdict

CPU_APP = "cpuapp:app"
BENCH_DIR = str(Path(__file__).resolve().parent)
LIMIT = 4  # in-flight requests at the knee of a one-core, ~1 ms/request app
CONNECTIONS = 300  # wrk connections offering the overload
OVERLOAD = 3.0
PROBE_RATE = 100.0
CAPACITY_CONNECTIONS = 8


@dataclass
class Row:
    name: str
    unloaded: ProbeResult
    loaded: ProbeResult
    result: wrk.WrkResult


def _run_one(name: str, port: int, delay_ms: float, t: Timing, workdir: Path) -> Row:
    url = f"http://127.0.0.1:{port}/"
    wrk.run(url, core=0, connections=2, seconds=t.warmup, workdir=workdir)
    with Probe(port, rate=PROBE_RATE) as unloaded:
        time.sleep(4.0)
    with Probe(port, rate=PROBE_RATE) as loaded:
        result = wrk.run(
            url, core=0, connections=CONNECTIONS, seconds=t.seconds + 2, workdir=workdir,
            delay_ms=delay_ms,
        )  # fmt: skip
    return Row(name, unloaded.result, loaded.result, result)


def overload(workdir: Path, t: Timing) -> str:
    affinity = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {0})  # the probe runs with wrk and the proxy on core 0
    try:
        with processes(workdir) as procs:
            plain, app_port = start_uvicorn(procs, "cpuapp", CPU_APP, 1, app_dir=BENCH_DIR)
            url = f"http://127.0.0.1:{app_port}/"
            wrk.run(url, core=0, connections=CAPACITY_CONNECTIONS, seconds=t.warmup,
                    workdir=workdir)  # fmt: skip
            capacity = max(  # the higher of two runs: a harsher yardstick for goodput
                wrk.run(
                    url, core=0, connections=CAPACITY_CONNECTIONS, seconds=t.seconds,
                    workdir=workdir,
                ).rps
                for _ in range(2)
            )  # fmt: skip
            # offered rate = connections / delay while responses are fast
            delay_ms = CONNECTIONS / (OVERLOAD * capacity) * 1000
            rows = [_run_one("uvicorn (no limit)", app_port, delay_ms, t, workdir)]
            procs.stop(plain)
            limit = ["--limit-concurrency", str(LIMIT)]
            limited, limited_port = start_uvicorn(
                procs, "cpuapp-limited", CPU_APP, 1, *limit, app_dir=BENCH_DIR
            )
            rows.append(
                _run_one(f"uvicorn --limit-concurrency {LIMIT}", limited_port, delay_ms, t, workdir)
            )
            procs.stop(limited)
            _, app_port = start_uvicorn(procs, "cpuapp", CPU_APP, 1, app_dir=BENCH_DIR)
            mode = ["proxy", "--upstream", f"http://127.0.0.1:{app_port}"]
            sidecar, side_port = start_sidecar(
                procs, "sidecar", mode, 0, *limit, "--retry-after", "1"
            )
            name = f"asgi-sidecar --limit-concurrency {LIMIT} -> uvicorn"
            rows.append(_run_one(name, side_port, delay_ms, t, workdir))
            procs.stop(sidecar)
            # Sensitivity: the same with twice the limit (more slack for the proxy hop).
            wide = ["--limit-concurrency", str(2 * LIMIT), "--retry-after", "1"]
            _, side_port = start_sidecar(procs, "sidecar-wide", mode, 0, *wide)
            name = f"asgi-sidecar --limit-concurrency {2 * LIMIT} -> uvicorn"
            rows.append(_run_one(name, side_port, delay_ms, t, workdir))
    finally:
        os.sched_setaffinity(0, affinity)
    table_rows = []
    verdicts = []
    for row in rows:
        r, base, load = row.result, row.unloaded.p(99), row.loaded.p(99)
        good = r.ok_rps / capacity
        lat_ratio = load / base if load is not None and base else None
        table_rows.append(
            [row.name, f"{r.rps:,.0f}", f"{r.ok_rps:,.0f}", f"{good:.0%}",
             f"{r.rejected_rps:,.0f}", r.socket_errors, ms(base), ms(load),
             f"{lat_ratio:.1f}x" if lat_ratio is not None else None,
             f"{len(row.loaded.ok_ms)}/{row.loaded.sent}", ms(r.p99_ms)]
        )  # fmt: skip
        met = good >= 0.9 and lat_ratio is not None and lat_ratio <= 3
        verdicts.append(
            f"- {row.name}: goodput {good:.0%} of capacity (goal ≥ 90%), admitted p99 "
            f"{'n/a' if lat_ratio is None else f'{lat_ratio:.1f}x'} unloaded (goal ≤ 3x): "
            f"{verdict(met)}"
        )
    return "\n".join(
        [
            "## overload: 3x capacity offered to a CPU-bound endpoint (~1 ms/request)",
            "",
            f"Capacity (uvicorn direct, wrk -c{CAPACITY_CONNECTIONS}, best of 2 x "
            f"{t.seconds:.0f} s): "
            f"**{capacity:,.0f} req/s**. Offered: wrk -t1 -c{CONNECTIONS} with an exponential "
            f"pause (mean {delay_ms:.0f} ms) before each request on a connection (~{OVERLOAD:.0f}x "
            f"capacity while answers are fast; closed loop, so slow answers lower it), "
            f"{t.seconds + 2:.0f} s.",
            "Pinning: app alone on core 1; wrk, the sidecar and this script's probe on core 0. "
            f"Sidecar limit {LIMIT}: the direct knee is ~2 in flight, doubled for the proxy hop "
            f"(and {2 * LIMIT} as a sensitivity check); no queue (`--queue-depth 0`). "
            f"Probe: one keep-alive connection, {PROBE_RATE:.0f} GET/s; its 2xx latencies give "
            "the admitted p99, unloaded = probe alone for a few seconds. uvicorn's "
            "--limit-concurrency counts open connections as well as requests.",
            "",
            table(
                [
                    "server",
                    "offered req/s (wrk)",
                    "goodput 2xx/s",
                    "of capacity",
                    "rejected/s",
                    "socket errors",
                    "unloaded p99 ms",
                    "admitted p99 ms",
                    "vs unloaded",
                    "probe 2xx/sent",
                    "wrk p99 ms (all)",
                ],
                table_rows,
            ),
            "",
            *verdicts,
        ]
    )
