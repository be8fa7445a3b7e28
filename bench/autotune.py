"""Autotune: the operator's scrape-and-decide code driving a live sidecar through its config file.

The app is bench/cpuapp.py (~1 ms of CPU per request, one uvicorn worker alone on
core 1), so its capacity is measured first.  wrk then offers ~OVERLOAD x that
rate (many connections, each pausing between requests, as in bench/overload.py)
to, in turn: uvicorn with its defaults (no sidecar); the sidecar with the seeds'
static advice (keep-alive 75, limit 1000, backlog 2048); a short sweep of static
limits (one sidecar, the limit changed through its config file) to find the best
static goodput; and the sidecar started at limit 1000 with ``--config FILE`` while
this process runs the operator's tuning loop against it: every INTERVAL seconds
GET /metrics, ``parse_metrics``, ``observe`` against the previous round,
``decide``, and write the new settings into the file (the sidecar polls it every
second).  After CONVERGE seconds under load the autotuned row is measured exactly
like the static ones, with the loop still running.  A low-rate probe measures
what admitted (2xx) requests wait; the per-interval series (limit, in-flight,
p99, goodput from the sidecar's own metrics) is plotted into
bench/results/autotune.png.

wrk is a closed loop: N connections can never have more than N requests in
flight, however slow the answers.  An overload from many independent clients
(open loop) piles requests up until a limit binds; CONNECTIONS is therefore well
above the seeds' limit of 1000, so that limit is actually reached, as it would
be by a real overload.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from asgi_operator.observing import Snapshot, observe, parse_metrics
from asgi_operator.tuning import Bounds, Change, Current, Observation, decide
from bench import wrk
from bench.probe import Probe, ProbeResult
from bench.procs import Processes, processes, raise_nofile, start_sidecar, start_uvicorn
from bench.report import Timing, ms, table, verdict

CPU_APP = "cpuapp:app"
BENCH_DIR = Path(__file__).resolve().parent
PLOT = BENCH_DIR / "results" / "autotune.png"
CONNECTIONS = int(os.environ.get("BENCH_AUTOTUNE_CONNECTIONS", "2000"))
OVERLOAD = 2.5  # offered / capacity while answers are fast
CAPACITY_CONNECTIONS = 8
PROBE_RATE = 100.0
UNLOADED_SECONDS = 4.0
INTERVAL = 2.0  # seconds between decisions here; the operator's default is 30 s
CONVERGE = 30.0  # seconds of load with the loop running before the measured window
SWEEP = (1, 2, 4, 8, 16, 32)
SEED = {"limitConcurrency": 1000, "timeoutKeepAlive": 75, "backlog": 2048}
FIXED = {"queueDepth": 0, "retryAfter": 1}
GOAL_GOODPUT = 0.95  # of the best static setting
GOAL_P99 = 1.5  # admitted p99 / unloaded p99


@dataclass
class Row:
    name: str
    unloaded: ProbeResult
    loaded: ProbeResult
    result: wrk.WrkResult
    limit: int | None = None  # the sidecar's static limitConcurrency


@dataclass
class Point:
    t: float  # seconds since the load started, end of the interval
    limit: int | None  # in effect during the interval
    in_flight: float  # mean over the interval (Little's law on completed requests)
    in_flight_gauge: float  # asgi_requests_in_flight at the end of the interval
    p99: float | None  # seconds, admitted requests (histogram)
    goodput: float  # admitted/s
    rejected: float  # share of requests refused with 503
    note: str = ""


@dataclass
class Tuner:
    """The operator's tuning loop for one sidecar, run in a thread of this process."""

    metrics_url: str
    config: Path
    settings: dict[str, float | int]
    somaxconn: int | None
    bounds: Bounds = field(default_factory=Bounds)
    points: list[Point] = field(default_factory=list)
    log: list[str] = field(default_factory=list)
    origin: float = 0.0
    _history: list[Observation] = field(default_factory=list)
    _past: list[tuple[int, Change]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    error: BaseException | None = None

    def start(self, origin: float) -> None:
        self.origin = origin
        self._thread = threading.Thread(target=self._guarded, name="tuner", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)

    def _snapshot(self) -> Snapshot:
        with urllib.request.urlopen(self.metrics_url, timeout=2) as response:
            text = response.read().decode()
        return parse_metrics(text, time.monotonic())

    def _guarded(self) -> None:
        try:
            self._run()
        except BaseException as exc:  # reported by the scenario
            self.error = exc

    def _run(self) -> None:
        before = self._snapshot()
        while not self._stop.wait(max(0.0, before.at + INTERVAL - time.monotonic())):
            after = self._snapshot()
            obs = observe({"pod": before}, {"pod": after})
            self._history.append(obs)
            limit = int(self.settings["limitConcurrency"])
            current = Current(
                limit=limit,
                backlog=int(self.settings["backlog"]),
                keep_alive=float(self.settings["timeoutKeepAlive"]),
                somaxconn=self.somaxconn,
                can_raise_somaxconn=False,  # one local process: no Pod rollout
            )
            decision = decide(self._history, current, self.bounds, self._past)
            self._past += [(len(self._history), c) for c in decision.changes]
            t = after.at - self.origin
            why = "; ".join(
                [f"{c.setting} {c.old} -> {c.new}: {c.reason}" for c in decision.changes]
                + list(decision.notes)
                + ([f"frozen: {decision.frozen}"] if decision.frozen else [])
            )
            self.points.append(
                Point(t, obs.limit, obs.in_flight, after.in_flight, obs.p99, obs.throughput,
                      obs.rejected_ratio, why)
            )  # fmt: skip
            p99 = "—" if obs.p99 is None else f"{obs.p99 * 1000:.1f}"
            self.log.append(
                f"t={t:5.1f}s limit={obs.limit} in-flight={obs.in_flight:.1f} "
                f"(gauge {after.in_flight:.0f}) "
                f"p50={'—' if obs.p50 is None else f'{obs.p50 * 1000:.1f}'}ms p99={p99}ms "
                f"goodput={obs.throughput:.0f}/s 503={obs.rejected_ratio:.0%} "
                f"accept-queue={obs.accept_queue_peak:.0f} | {why}"
            )
            new = {
                "limitConcurrency": decision.limit if decision.limit is not None else limit,
                "backlog": decision.backlog,
                "timeoutKeepAlive": decision.keep_alive,
            }
            if decision.changes and new != self.settings:
                self.settings = new
                write_config(self.config, new)
                # Start the next interval once the sidecar runs the new limit, so each
                # observation covers one limit (the operator's 30 s intervals make
                # the ~1 s reload lag negligible; 2 s ones would not).
                after = self._wait_applied(int(new["limitConcurrency"]))
            before = after

    def _wait_applied(self, limit: int, timeout: float = 5.0) -> Snapshot:
        deadline = time.monotonic() + timeout
        snap = self._snapshot()
        while snap.limit != limit and time.monotonic() < deadline and not self._stop.is_set():
            time.sleep(0.1)
            snap = self._snapshot()
        return snap


def write_config(path: Path, settings: dict[str, float | int]) -> None:
    """Replace the sidecar's config file atomically (it is polled once a second)."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({**settings, **FIXED}) + "\n")
    os.replace(tmp, path)


def _wait_limit(metrics_port: int, limit: int, timeout: float = 5.0) -> None:
    url = f"http://127.0.0.1:{metrics_port}/metrics"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with urllib.request.urlopen(url, timeout=2) as response:
            if parse_metrics(response.read().decode(), 0).limit == limit:
                return
        time.sleep(0.1)
    raise RuntimeError(f"the sidecar did not apply limitConcurrency {limit} in {timeout} s")


def _unloaded(port: int, t: Timing, workdir: Path) -> ProbeResult:
    url = f"http://127.0.0.1:{port}/"
    wrk.run(url, core=0, connections=2, seconds=t.warmup, workdir=workdir)
    with Probe(port, rate=PROBE_RATE) as probe:
        time.sleep(UNLOADED_SECONDS)
    return probe.result


def _loaded(
    port: int, delay_ms: float, t: Timing, workdir: Path
) -> tuple[ProbeResult, wrk.WrkResult]:
    url = f"http://127.0.0.1:{port}/"
    with Probe(port, rate=PROBE_RATE) as probe:
        result = wrk.run(
            url, core=0, connections=CONNECTIONS, seconds=t.seconds + 2, workdir=workdir,
            delay_ms=delay_ms,
        )  # fmt: skip
    return probe.result, result


def _somaxconn() -> int | None:
    try:
        return int(Path("/proc/sys/net/core/somaxconn").read_text())
    except (OSError, ValueError):
        return None


def _proxy(app_port: int) -> list[str]:
    return ["proxy", "--upstream", f"http://127.0.0.1:{app_port}", "--retry-after", "1"]


def _autotuned(
    procs: Processes, app_port: int, delay_ms: float, t: Timing, workdir: Path
) -> tuple[Row, Tuner, tuple[float, float]]:
    config = workdir / "autotune.json"
    write_config(config, dict(SEED))
    sidecar, port = start_sidecar(
        procs, "sidecar-autotune", _proxy(app_port), 0, "--config", str(config)
    )
    metrics = sidecar.extra["metrics_port"]
    _wait_limit(metrics, int(SEED["limitConcurrency"]))
    unloaded = _unloaded(port, t, workdir)
    tuner = Tuner(f"http://127.0.0.1:{metrics}/metrics", config, dict(SEED), _somaxconn())
    tuner.start(time.monotonic())
    try:
        wrk.run(
            f"http://127.0.0.1:{port}/", core=0, connections=CONNECTIONS, seconds=CONVERGE,
            workdir=workdir, delay_ms=delay_ms,
        )  # fmt: skip
        window_start = time.monotonic() - tuner.origin
        loaded, result = _loaded(port, delay_ms, t, workdir)
        window = (window_start, time.monotonic() - tuner.origin)
    finally:
        tuner.stop()
    if tuner.error is not None:
        raise RuntimeError("the tuning loop failed") from tuner.error
    final = tuner.settings["limitConcurrency"]
    return Row(f"autotuned (ended at limit {final})", unloaded, loaded, result), tuner, window


def _sweep(procs: Processes, app_port: int, delay_ms: float, t: Timing, workdir: Path) -> list[Row]:
    config = workdir / "sweep.json"
    write_config(config, {**SEED, "limitConcurrency": SWEEP[0]})
    sidecar, port = start_sidecar(procs, "sidecar-sweep", _proxy(app_port), 0, "--config",
                                  str(config))  # fmt: skip
    metrics = sidecar.extra["metrics_port"]
    unloaded = _unloaded(port, t, workdir)
    rows = []
    for limit in SWEEP:
        write_config(config, {**SEED, "limitConcurrency": limit})
        _wait_limit(metrics, limit)
        loaded, result = _loaded(port, delay_ms, t, workdir)
        rows.append(Row(f"sidecar static limit {limit}", unloaded, loaded, result, limit))
    procs.stop(sidecar)
    return rows


def autotune(workdir: Path, t: Timing) -> str:
    raise_nofile()  # wrk holds CONNECTIONS sockets
    affinity = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {0})  # probe and tuning loop with wrk and the proxy on core 0
    try:
        with processes(workdir) as procs:
            plain, app_port = start_uvicorn(procs, "cpuapp", CPU_APP, 1, app_dir=str(BENCH_DIR))
            capacity = _capacity(app_port, t, workdir)
            delay_ms = CONNECTIONS / (OVERLOAD * capacity) * 1000
            unloaded = _unloaded(app_port, t, workdir)
            loaded, result = _loaded(app_port, delay_ms, t, workdir)
            rows = [Row("uvicorn defaults (no sidecar)", unloaded, loaded, result)]
            seed_flags = ["--limit-concurrency", "1000", "--timeout-keep-alive", "75"]
            seed_flags += ["--backlog", "2048"]
            seed, port = start_sidecar(procs, "sidecar-seed", _proxy(app_port), 0, *seed_flags)
            unloaded = _unloaded(port, t, workdir)
            loaded, result = _loaded(port, delay_ms, t, workdir)
            name = "sidecar static: keep-alive 75, limit 1000, backlog 2048"
            rows.append(Row(name, unloaded, loaded, result, 1000))
            procs.stop(seed)
            sweep = _sweep(procs, app_port, delay_ms, t, workdir)
            tuned, tuner, window = _autotuned(procs, app_port, delay_ms, t, workdir)
            procs.stop(plain)
    finally:
        os.sched_setaffinity(0, affinity)
    best = max(sweep + rows[1:], key=lambda r: r.result.ok_rps)
    plot_note = _plot(tuner, window, best, tuned)
    return _report(capacity, delay_ms, t, rows, sweep, tuned, best, tuner, plot_note)


def _capacity(app_port: int, t: Timing, workdir: Path) -> float:
    url = f"http://127.0.0.1:{app_port}/"
    wrk.run(url, core=0, connections=CAPACITY_CONNECTIONS, seconds=t.warmup, workdir=workdir)
    return max(  # the higher of two runs, as in bench/overload.py
        wrk.run(
            url, core=0, connections=CAPACITY_CONNECTIONS, seconds=t.seconds, workdir=workdir
        ).rps
        for _ in range(2)
    )


def _cells(row: Row, capacity: float, best: float) -> list[object]:
    r, base, load = row.result, row.unloaded.p(99), row.loaded.p(99)
    lat = load / base if load is not None and base else None
    total = r.requests / r.seconds
    return [
        row.name, f"{total:,.0f}", f"{r.ok_rps:,.0f}", f"{r.ok_rps / capacity:.0%}",
        f"{r.ok_rps / best:.0%}", f"{r.rejected_rps:,.0f}",
        f"{r.non_2xx / r.requests:.0%}" if r.requests else None, r.socket_errors,
        ms(base), ms(row.loaded.p(50)), ms(load),
        f"{lat:.1f}x" if lat is not None else None,
        f"{len(row.loaded.ok_ms)}/{row.loaded.sent}",
    ]  # fmt: skip


def _report(
    capacity: float,
    delay_ms: float,
    t: Timing,
    rows: list[Row],
    sweep: list[Row],
    tuned: Row,
    best: Row,
    tuner: Tuner,
    plot_note: str,
) -> str:
    best_rps = best.result.ok_rps
    headers = [
        "server", "offered req/s (wrk)", "goodput 2xx/s", "of capacity", "of best static",
        "503/s", "503 share", "socket errors", "unloaded p99 ms", "admitted p50 ms",
        "admitted p99 ms", "p99 vs unloaded", "probe 2xx/sent",
    ]  # fmt: skip
    body = [_cells(r, capacity, best_rps) for r in [*rows, *sweep, tuned]]
    good = tuned.result.ok_rps / best_rps
    base, load = tuned.unloaded.p(99), tuned.loaded.p(99)
    lat = load / base if load is not None and base else math.inf
    limits = [p.limit for p in tuner.points]
    changes = sum(1 for a, b in itertools.pairwise(limits) if a != b)
    return "\n".join(
        [
            "## autotune: the operator's decide() driving a live sidecar under ~"
            f"{OVERLOAD:g}x overload",
            "",
            f"Capacity (uvicorn direct, wrk -c{CAPACITY_CONNECTIONS}, best of 2 x "
            f"{t.seconds:.0f} s): **{capacity:,.0f} req/s**. Offered: wrk -t1 -c{CONNECTIONS}, "
            f"exponential pause (mean {delay_ms:.0f} ms) before each request (~{OVERLOAD:g}x "
            f"capacity while answers are fast; closed loop), {t.seconds + 2:.0f} s per row. "
            "Pinning: uvicorn (1 worker) alone on core 1; wrk, the sidecar, the probe and the "
            f"tuning loop on core 0. Probe: {PROBE_RATE:.0f} GET/s on one keep-alive "
            f"connection; unloaded = probe alone for {UNLOADED_SECONDS:.0f} s on the same "
            "server. Sidecar rows: queueDepth 0, retryAfter 1. Sweep: one sidecar, the limit "
            "changed through its config file. Autotuned: started at limitConcurrency 1000 with "
            f"--config; every {INTERVAL:g} s (the operator's default is 30 s) GET /metrics → "
            "parse_metrics → observe → decide (tuning.Bounds() defaults, 1..10000) → new "
            "settings written to the file; the next interval starts once the sidecar reports "
            f"the new limit. {CONVERGE:.0f} s of load to converge, then measured like the "
            f"other rows with the loop still running ({len(tuner.points)} decisions, "
            f"{changes} limit changes).",
            "",
            table(headers, body),
            "",
            f"Best static: {best.name}, {best_rps:,.0f} 2xx/s.",
            f"- autotuned goodput {good:.0%} of the best static (goal ≥ "
            f"{GOAL_GOODPUT:.0%}): {verdict(good >= GOAL_GOODPUT)}",
            f"- autotuned admitted p99 {ms(load)} ms = "
            f"{'n/a' if math.isinf(lat) else f'{lat:.1f}x'} the unloaded {ms(base)} ms (goal ≤ "
            f"{GOAL_P99:g}x): {verdict(lat <= GOAL_P99)}",
            "",
            plot_note,
            "",
            "Tuning loop, one line per interval (sidecar metrics; in-flight by Little's law):",
            "",
            "```",
            *tuner.log,
            "```",
        ]
    )


def _plot(tuner: Tuner, window: tuple[float, float], best: Row, tuned: Row) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts = tuner.points
    if not pts:
        return "No tuning intervals recorded: no plot."
    edges = [0.0] + [p.t for p in pts]  # each point covers (previous t, its t]
    fig, axes = plt.subplots(4, 1, sharex=True, figsize=(9, 10), constrained_layout=True)
    series: list[tuple[str, list[float], bool]] = [
        ("limitConcurrency", [float(p.limit or math.nan) for p in pts], True),
        ("requests in flight", [max(p.in_flight, 0.1) for p in pts], True),
        ("admitted p99 ms", [math.nan if p.p99 is None else p.p99 * 1000 for p in pts], True),
        ("goodput 2xx/s", [p.goodput for p in pts], False),
    ]
    for ax, (label, values, log) in zip(axes, series, strict=True):
        ax.stairs(values, edges, baseline=None, linewidth=1.8, label="interval (metrics)")
        ax.set_ylabel(label)
        if log:
            ax.set_yscale("log")
        ax.grid(True, which="both", alpha=0.3)
        ax.axvspan(*window, color="tab:green", alpha=0.12)
    if best.limit is not None:
        axes[0].axhline(best.limit, color="tab:gray", linestyle=":",
                        label=f"best static limit ({best.limit})")  # fmt: skip
        axes[0].legend(loc="upper right", fontsize="small")
    axes[1].plot(edges[1:], [max(p.in_flight_gauge, 0.1) for p in pts], "o", markersize=3,
                 color="tab:orange", label="gauge at each scrape")  # fmt: skip
    axes[1].legend(loc="lower right", fontsize="small")
    base = tuned.unloaded.p(99)
    if base:
        goal = f"goal: {GOAL_P99:g}x unloaded p99 ({base:.1f} ms, probe)"
        axes[2].axhline(GOAL_P99 * base, color="tab:red", linestyle="--", label=goal)
        axes[2].legend(loc="upper right", fontsize="small")
    axes[3].axhline(GOAL_GOODPUT * best.result.ok_rps, color="tab:red", linestyle="--",
                    label=f"goal: {GOAL_GOODPUT:.0%} of best static ({best.name})")  # fmt: skip
    axes[3].legend(loc="lower right", fontsize="small")
    axes[3].set_xlabel("seconds since the load started (shaded: measured window)")
    fig.suptitle(f"autotune: decide() every {INTERVAL:g} s against a live sidecar, "
                 f"wrk -c{CONNECTIONS} at ~{OVERLOAD:g}x capacity")  # fmt: skip
    PLOT.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(PLOT, dpi=100)
    plt.close(fig)
    return f"Plot: {PLOT.relative_to(BENCH_DIR.parent)}"
