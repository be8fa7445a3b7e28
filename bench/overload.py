"""Overload, open loop: the scenarios of bench/scenarios.py against every contender, one run.

For each app (bench/cpuapp.py: ~1 ms of CPU a request, one uvicorn worker; bench/poolapp.py:
a pool of 8 slots of 20 ms) the capacity is measured first with wrk against uvicorn alone
(the higher of two closed-loop runs: a harsher yardstick).  Then every scenario runs,
with the app and its front started afresh, against:

* plain uvicorn;
* uvicorn ``--limit-concurrency``, swept (``UVICORN_SWEEP``), the best value per scenario;
* the sidecar with a static limit, swept (``STATIC_SWEEP``), the best value per phase;
* the sidecar's adaptive limit (``--adaptive``, bounds 1..1000, started at 100);
* the full loop: the operator's decide() (bench/tuner.py) every ``LOOP_INTERVAL`` s
  tuning the adaptive limit's bounds through the sidecar's config file.

Load is vegeta at a constant arrival rate (bench/openloop.py), 2 s timeout.  Pinning:
the app alone on core 1; vegeta, the sidecar and this process on core 0.  The sidecar
answers over its limit at once (queueDepth 0) with 503 and Retry-After: 1.  Its limit
and the adaptive baseline are read from /metrics every ``SAMPLE_EVERY`` s.
BENCH_PHASE_SECONDS sets the length of a phase (10 s); BENCH_OVERLOAD_ONLY a
comma-separated list of scenario names or apps to run.  Plots go to docs/overload/.
"""

from __future__ import annotations

import itertools
import math
import os
import pickle
import signal
import threading
import time
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from asgi_operator.models import AsgiServerSpec
from asgi_operator.observing import parse_metrics
from asgi_sidecar.adapting import UPDATE_INTERVAL
from bench import openloop, wrk
from bench.loadstats import Hit, Summary, phase_summary, series
from bench.procs import Proc, processes, raise_nofile, start_sidecar, start_uvicorn
from bench.report import Timing, ms, table, verdict
from bench.scenarios import (
    GOODPUT,
    REJECT_COST,
    SETTLE_DECISIONS,
    WARMUP,
    WARMUP_LOAD,
    Scenario,
    best_per_phase,
    p99_goal,
    reversals,
    scenarios,
    settling,
    total_goodput,
)
from bench.tuner import Tuner
from hack.cache import ROOT

APPS = {"cpu": "bench.cpuapp:app", "pool": "bench.poolapp:app"}
CAPACITY_CONNECTIONS = {"cpu": 8, "pool": 32}
UVICORN_SWEEP = {"cpu": (4, 32), "pool": (16, 64)}  # counts connections, idle ones too
STATIC_SWEEP = {"cpu": (1, 2, 4), "pool": (4, 8, 16, 32)}
ADAPTIVE = ["--adaptive", "--adaptive-min", "1", "--adaptive-max", "1000"]
ADAPTIVE_START = 100
LOOP_INTERVAL = 1.0  # seconds between the operator's decisions here (its default is 30 s)
SAMPLE_EVERY = 0.25
PLOTS = ROOT / "docs" / "overload"
RUNS = ROOT / "bench" / "results" / "overload-runs.pickle"  # every run's figures, for rereport
SIDECAR_FLAGS = ["--queue-depth", "0", "--retry-after", "1"]


@dataclass
class Run:
    """One scenario against one contender."""

    contender: str
    warmup: Summary
    phases: list[Summary]
    per_second: list[Summary]
    limits: list[tuple[float, float]] = field(default_factory=list)  # (t, limit)
    baselines: list[tuple[float, float]] = field(default_factory=list)  # (t, seconds)
    decisions: list[float] = field(default_factory=list)  # the loop's, at t


class Sampler:
    """The sidecar's limit and adaptive baseline, read from /metrics every SAMPLE_EVERY s."""

    def __init__(self, metrics_port: int, origin: float) -> None:
        self.url = f"http://127.0.0.1:{metrics_port}/metrics"
        self.origin = origin
        self.limits: list[tuple[float, float]] = []
        self.baselines: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sampler", daemon=True)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        while not self._stop.wait(SAMPLE_EVERY):
            try:
                with urllib.request.urlopen(self.url, timeout=1) as response:
                    text = response.read().decode()
            except OSError:
                continue
            t = time.time() - self.origin
            snap = parse_metrics(text, t)
            if snap.limit is not None and math.isfinite(snap.limit):
                self.limits.append((t, float(snap.limit)))
            for line in text.splitlines():
                if line.startswith("asgi_adaptive_baseline_seconds "):
                    value = float(line.split()[1])
                    if math.isfinite(value) and value > 0:
                        self.baselines.append((t, value))


# -- contenders ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Contender:
    name: str
    kind: str  # uvicorn | uvicorn-limit | static | adaptive | loop
    value: int | None = None


def contenders(app: str) -> list[Contender]:
    return [
        Contender("uvicorn", "uvicorn"),
        *(
            Contender(f"uvicorn --limit-concurrency {n}", "uvicorn-limit", n)
            for n in UVICORN_SWEEP[app]
        ),
        *(Contender(f"sidecar static {n}", "static", n) for n in STATIC_SWEEP[app]),
        Contender("sidecar adaptive", "adaptive"),
        Contender(f"full loop (decide every {LOOP_INTERVAL:g} s + adaptive)", "loop"),
    ]


def _proxy(app_port: int) -> list[str]:
    return ["proxy", "--upstream", f"http://127.0.0.1:{app_port}"]


def _loop_spec() -> AsgiServerSpec:
    return AsgiServerSpec.model_validate(
        {
            "image": "example.com/app:1",  # a spec needs one; nothing is deployed here
            "server": {"limitConcurrency": ADAPTIVE_START, "queueDepth": 0, "retryAfter": 1,
                       "adaptiveMin": 1, "adaptiveMax": 1000},
            "autotune": {"enabled": True, "adaptive": True, "intervalSeconds": 5},
        }
    )  # fmt: skip


def _run_scenario(
    scenario: Scenario,
    contender: Contender,
    capacity: float,
    workdir: Path,
) -> Run:
    """Start the app and the contender afresh, run warm-up plus steps, stop everything."""
    with processes(workdir) as procs:
        app, app_port = start_uvicorn(
            procs, f"{scenario.app}app", APPS[scenario.app], 1,
            *(["--limit-concurrency", str(contender.value)]
              if contender.kind == "uvicorn-limit" else []),
            app_dir=str(ROOT),
        )  # fmt: skip
        port, metrics_port, tuner = app_port, None, None
        if contender.kind in ("static", "adaptive", "loop"):
            flags = [*SIDECAR_FLAGS]
            if contender.kind == "static":
                flags += ["--limit-concurrency", str(contender.value)]
            elif contender.kind == "adaptive":
                flags += [*ADAPTIVE, "--limit-concurrency", str(ADAPTIVE_START)]
            else:
                config = workdir / "loop.json"
                tuner = Tuner("", config, _loop_spec(), LOOP_INTERVAL)
                tuner.write()
                flags += ["--config", str(config)]
            sidecar, port = start_sidecar(procs, "sidecar", _proxy(app_port), 0, *flags)
            metrics_port = sidecar.extra["metrics_port"]
            if tuner is not None:
                tuner.metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
        phases = [openloop.Phase(WARMUP_LOAD * capacity, WARMUP, _shifter(app, False))]
        phases += [
            openloop.Phase(step.load * capacity, step.seconds, _shifter(app, step.shifted))
            for step in scenario.steps
        ]
        origin = time.time()
        sampler = Sampler(metrics_port, origin) if metrics_port is not None else None
        if tuner is not None:
            tuner.start(time.monotonic())
        try:
            if sampler is not None:
                sampler.__enter__()
            url = f"http://127.0.0.1:{port}/"
            hits, origin = openloop.attack(url, phases, workdir, core=0)
        finally:
            if sampler is not None:
                sampler.__exit__()
            if tuner is not None:
                tuner.stop()
    return _judge_run(contender.name, scenario, hits, origin, sampler, tuner)


def _shifter(app: Proc, shifted: bool) -> Callable[[], None]:
    def shift() -> None:
        app.popen.send_signal(signal.SIGUSR1 if shifted else signal.SIGUSR2)

    return shift


def _judge_run(
    name: str,
    scenario: Scenario,
    hits: list[Hit],
    origin: float,
    sampler: Sampler | None,
    tuner: Tuner | None,
) -> Run:
    edges = list(itertools.accumulate([WARMUP] + [s.seconds for s in scenario.steps], initial=0.0))
    spans = list(itertools.pairwise(edges))
    run = Run(
        contender=name,
        warmup=phase_summary(hits, 0, *spans[0]),
        phases=[phase_summary(hits, i, *span) for i, span in enumerate(spans) if i > 0],
        per_second=series(hits, 0.0, edges[-1]),
    )
    if sampler is not None:
        shift = sampler.origin - origin  # sampler times are from its own origin
        run.limits = [(t + shift, v) for t, v in sampler.limits]
        run.baselines = [(t + shift, v) for t, v in sampler.baselines]
    if tuner is not None:
        run.decisions = [d.t for d in tuner.decisions]
    return run


# -- capacity ---------------------------------------------------------------------------------


def _capacity(app: str, t: Timing, workdir: Path) -> float:
    with processes(workdir) as procs:
        _, port = start_uvicorn(procs, f"{app}app", APPS[app], 1, app_dir=str(ROOT))
        url = f"http://127.0.0.1:{port}/"
        c = CAPACITY_CONNECTIONS[app]
        wrk.run(url, core=0, connections=c, seconds=t.warmup, workdir=workdir)
        return max(wrk.run(url, core=0, connections=c, seconds=5, workdir=workdir).rps
                   for _ in range(2))  # fmt: skip


# -- the benchmark -----------------------------------------------------------------------------


def overload(workdir: Path, t: Timing) -> str:
    raise_nofile()  # vegeta may hold thousands of connections
    phase = float(os.environ.get("BENCH_PHASE_SECONDS", "10"))
    only = {s.strip() for s in os.environ.get("BENCH_OVERLOAD_ONLY", "").split(",") if s.strip()}
    chosen = [s for s in scenarios(phase) if not only or s.name in only or s.app in only]
    affinity = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {0})
    results: dict[str, dict[str, Run]] = {}
    capacities: dict[str, float] = {}
    try:
        for app in sorted({s.app for s in chosen}):
            capacities[app] = _capacity(app, t, workdir)
        for scenario in chosen:
            cap = capacities[scenario.app]
            results[scenario.name] = {
                c.name: _run_scenario(scenario, c, cap, workdir) for c in contenders(scenario.app)
            }
    finally:
        os.sched_setaffinity(0, affinity)
    RUNS.parent.mkdir(parents=True, exist_ok=True)
    RUNS.write_bytes(pickle.dumps((chosen, capacities, results, phase)))
    return report(chosen, capacities, results, phase)


def rereport() -> str:
    """The report of the last run again, from RUNS (``python -m bench.overload``)."""
    return report(*pickle.loads(RUNS.read_bytes()))


# -- the report --------------------------------------------------------------------------------


@dataclass
class Judged:
    """What one scenario's goals came to, for the adaptive limit and the full loop."""

    lines: list[str]
    rows: list[list[object]]


def _p99_ratio(run: Run, i: int) -> float | None:
    base, p99 = run.warmup.p99, run.phases[i].p99
    return p99 / base if base and p99 is not None else None


def _judge(scenario: Scenario, runs: dict[str, Run]) -> Judged:
    kinds = {c.name: c for c in contenders(scenario.app)}
    sweep = {kinds[n].value or 0: r.phases for n, r in runs.items() if kinds[n].kind == "static"}
    best = best_per_phase(sweep)
    lines: list[str] = []
    rows: list[list[object]] = []
    for name, run in runs.items():
        for i, (step, summary) in enumerate(zip(scenario.steps, run.phases, strict=True)):
            value, top = best[i]
            ratio = _p99_ratio(run, i)
            rows.append([
                name, i + 1, f"{step.load:g}x{' shifted' if step.shifted else ''}",
                f"{summary.offered:,.0f}", f"{summary.goodput:,.0f}",
                f"{summary.goodput / top.goodput:.0%}" if top.goodput else None,
                ms(_ms(summary.p50)), ms(_ms(summary.p99)),
                f"{ratio:.1f}x" if ratio is not None else None,
                summary.rejected, summary.failed, ms(_ms(summary.rejected_p50)),
            ])  # fmt: skip
    for name in [n for n, c in kinds.items() if c.kind in ("adaptive", "loop")]:
        run = runs[name]
        for i, (step, summary) in enumerate(zip(scenario.steps, run.phases, strict=True)):
            value, top = best[i]
            good = summary.goodput / top.goodput if top.goodput else 0.0
            ratio = _p99_ratio(run, i)
            goal = p99_goal(step.load)
            lines.append(
                f"- {name}, phase {i + 1} ({step.load:g}x): goodput {good:.0%} of static "
                f"{value}'s (goal ≥ {GOODPUT:.0%}): {verdict(good >= GOODPUT)}; admitted p99 "
                + (f"{ratio:.1f}x" if ratio is not None else "n/a")
                + f" the unloaded (goal ≤ {goal:g}x): "
                + verdict(ratio is not None and ratio <= goal)
            )
            if step.load < 1:
                lines.append(
                    f"  - 503s at {step.load:g}x: {summary.rejected} (goal 0 at 0.8x): "
                    + verdict(summary.rejected == 0)
                )
        if scenario.changes and run.limits:
            start = WARMUP
            for i, step in enumerate(scenario.steps):
                end = start + step.seconds
                if i > 0:
                    settle = settling(run.limits, start, end)
                    flips = reversals(run.limits, start + (settle or 0.0), end)
                    windows = None if settle is None else math.ceil(settle / UPDATE_INTERVAL)
                    ops = sum(1 for t in run.decisions if start <= t < end)
                    said = (
                        "never settled"
                        if settle is None
                        else (f"settled after {settle:.2f} s = {windows} adaptive decisions")
                    )
                    lines.append(
                        f"  - after step {i + 1}: {said}, {flips} reversals after"
                        + (f", {ops} operator decisions in the phase" if run.decisions else "")
                        + f" (goal ≤ {SETTLE_DECISIONS} decisions): "
                        + verdict(windows is not None and windows <= SETTLE_DECISIONS)
                    )  # fmt: skip
                start = end
        if scenario.changes:
            mine = total_goodput(run.phases)
            statics = {v: total_goodput(p) for v, p in sweep.items()}
            top_value = max(statics, key=lambda v: statics[v])
            lines.append(
                f"  - whole run: {mine:,.0f} 2xx/s against the best single static "
                f"({top_value}) {statics[top_value]:,.0f} (goal: more than every one): "
                + verdict(all(mine > g for g in statics.values()))
            )
        cost = [p.rejected_p50 for p in run.phases if p.rejected_p50 is not None]
        base50 = runs[name].warmup.p50
        if cost and base50:
            worst = max(cost) / base50
            lines.append(
                f"  - a 503 took {max(cost) * 1000:.2f} ms (p50, worst phase) = {worst:.2f}x "
                f"the unloaded p50 (goal ≤ {REJECT_COST:g}x): {verdict(worst <= REJECT_COST)}"
            )
    return Judged(lines, rows)


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else seconds * 1000


def report(
    chosen: Sequence[Scenario],
    capacities: dict[str, float],
    results: dict[str, dict[str, Run]],
    phase: float,
) -> str:
    today = datetime.now(UTC).strftime("%Y-%m-%d")
    out = [
        "## overload: open-loop scenarios (vegeta at a constant rate)",
        "",
        "Capacity (uvicorn alone, wrk, best of 2 x 5 s): "
        + ", ".join(f"{app} app **{cap:,.0f} req/s**" for app, cap in capacities.items())
        + f". Every run: {WARMUP:g} s at {WARMUP_LOAD:g}x (the unloaded figures), then the "
        f"scenario's phases of {phase:g} s. vegeta {openloop.version()}, timeout "
        f"{openloop.TIMEOUT:g} s. `p99 vs unloaded`: the admitted p99 over the same "
        "contender's warm-up p99. `failed`: neither 2xx nor 503 (timeouts, resets, other "
        "statuses).",
    ]
    headers = ["contender", "phase", "load", "offered/s", "goodput 2xx/s", "of best static",
               "p50 ms", "p99 ms", "p99 vs unloaded", "503", "failed", "503 p50 ms"]  # fmt: skip
    for scenario in chosen:
        runs = results[scenario.name]
        judged = _judge(scenario, runs)
        plot = _plot(scenario, runs, today)
        out += ["", f"### {scenario.name}: {scenario.about}", "", table(headers, judged.rows),
                "", *judged.lines, "", f"Plot: {plot}"]  # fmt: skip
    return "\n".join(out)


# -- plots -------------------------------------------------------------------------------------


def _plot(scenario: Scenario, runs: dict[str, Run], today: str) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kinds = {c.name: c for c in contenders(scenario.app)}
    sweep = {kinds[n].value or 0: r.phases for n, r in runs.items() if kinds[n].kind == "static"}
    best_values = {v for v, _ in best_per_phase(sweep)}
    shown = [n for n, c in kinds.items()
             if c.kind in ("uvicorn", "adaptive", "loop")
             or (c.kind == "static" and c.value in best_values)]  # fmt: skip
    uv = [n for n, c in kinds.items() if c.kind == "uvicorn-limit"]
    if uv:
        shown.append(max(uv, key=lambda n: total_goodput(runs[n].phases)))
    fig, axes = plt.subplots(3, 1, sharex=True, figsize=(9, 9), constrained_layout=True)
    for i, name in enumerate(shown):
        run, style = runs[name], {"label": name, "linewidth": 1.4, "color": f"C{i}"}
        ts = [k + 0.5 for k in range(len(run.per_second))]
        axes[1].plot(ts, [s.goodput for s in run.per_second], **style)
        axes[2].plot(ts, [_ms(s.p99) or math.nan for s in run.per_second], **style)
        if run.limits:
            axes[0].step([t for t, _ in run.limits], [v for _, v in run.limits], where="post",
                         **style)  # fmt: skip
    axes[0].set_ylabel("sidecar concurrency limit")
    axes[0].set_yscale("log")
    axes[1].set_ylabel("goodput 2xx/s")
    axes[2].set_ylabel("admitted p99 ms")
    axes[2].set_yscale("log")
    edge = WARMUP
    for step in scenario.steps:
        for ax in axes:
            ax.axvline(edge, color="tab:gray", linestyle=":", linewidth=1)
        edge += step.seconds
    for ax in axes:
        ax.grid(True, which="both", alpha=0.3)
    axes[1].legend(fontsize="small", loc="upper right")
    axes[2].set_xlabel("seconds (dotted: phase edges; the first phase is the warm-up)")
    fig.suptitle(f"{scenario.name}: {scenario.about} — vegeta open loop, {today}")
    PLOTS.mkdir(parents=True, exist_ok=True)
    path = PLOTS / f"{scenario.name.replace(' ', '-').replace('.', '_')}.png"
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return str(path.relative_to(ROOT))


if __name__ == "__main__":
    print(rereport())
