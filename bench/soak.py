"""Soak: does the adaptive limit's baseline stay at the app's true no-load latency for 30 min?

The pool app (bench/poolapp.py: 8 slots of 20 ms) behind the sidecar with ``--adaptive``
(bounds 1..1000, started at 100), under open-loop load (vegeta) that varies slowly:
phases of ``STEP`` seconds whose rate follows ``capacity * (1.2 - 0.9 cos(2 pi t / PERIOD))``,
from 0.3x to 2.1x the pool's capacity and back every ``PERIOD`` seconds, for
BENCH_SOAK_SECONDS (1800).  The true no-load latency is measured first: the p50 of a
warm-up at 0.1x through the same sidecar.  The sidecar's ``asgi_adaptive_baseline_seconds``
is read every ``SAMPLE_EVERY`` s; the goal is every sample after the first minute
within ``GOAL`` (20 %) of the true latency: no upward drift (Uber Cinnamon's failure)
and no downward one.  Plot: docs/overload/soak.png.
"""

from __future__ import annotations

import math
import os
import time
from datetime import UTC, datetime
from pathlib import Path

from bench import openloop
from bench.loadstats import Hit, phase_summary, series
from bench.overload import (
    ADAPTIVE,
    ADAPTIVE_START,
    APPS,
    PLOTS,
    SAMPLE_EVERY,
    SIDECAR_FLAGS,
    Sampler,
)
from bench.procs import processes, raise_nofile, start_sidecar, start_uvicorn
from bench.report import Timing, table, verdict
from hack.cache import ROOT

STEP = 10.0  # seconds per constant-rate phase
PERIOD = 600.0  # seconds per rise and fall of the load
LOW, HIGH = 0.3, 2.1  # offered load, x capacity
CAPACITY = 8 / 0.020  # the pool app's: 8 slots of 20 ms
WARMUP = 10.0
GOAL = 0.20
SETTLE = 60.0  # seconds before the baseline is judged


def load_at(t: float) -> float:
    middle, swing = (HIGH + LOW) / 2, (HIGH - LOW) / 2
    return middle - swing * math.cos(2 * math.pi * t / PERIOD)


def soak(workdir: Path, t: Timing) -> str:
    raise_nofile()
    seconds = float(os.environ.get("BENCH_SOAK_SECONDS", "1800"))
    steps = max(1, round(seconds / STEP))
    affinity = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {0})
    try:
        with processes(workdir) as procs:
            _, app_port = start_uvicorn(procs, "poolapp", APPS["pool"], 1, app_dir=str(ROOT))
            flags = [*SIDECAR_FLAGS, *ADAPTIVE, "--limit-concurrency", str(ADAPTIVE_START)]
            upstream = ["proxy", "--upstream", f"http://127.0.0.1:{app_port}"]
            sidecar, port = start_sidecar(procs, "sidecar", upstream, 0, *flags)
            phases = [openloop.Phase(0.1 * CAPACITY, WARMUP)]
            phases += [
                openloop.Phase(load_at(i * STEP + STEP / 2) * CAPACITY, STEP) for i in range(steps)
            ]
            origin = time.time()
            with Sampler(sidecar.extra["metrics_port"], origin) as sampler:
                hits, origin = openloop.attack(f"http://127.0.0.1:{port}/", phases, workdir)
    finally:
        os.sched_setaffinity(0, affinity)
    shift = sampler.origin - origin
    baselines = [(ts + shift, v) for ts, v in sampler.baselines]
    limits = [(ts + shift, v) for ts, v in sampler.limits]
    true = phase_summary(hits, 0, 0.0, WARMUP).p50
    if true is None:
        raise RuntimeError("the warm-up got no 2xx: no true latency to compare with")
    judged = [v for ts, v in baselines if ts >= WARMUP + SETTLE]
    worst_up = max(judged) / true - 1 if judged else math.inf
    worst_down = 1 - min(judged) / true if judged else math.inf
    ok = bool(judged) and max(worst_up, worst_down) <= GOAL
    quarters = []
    span = seconds / 4
    for q in range(4):
        start = WARMUP + q * span
        values = [v for ts, v in baselines if start <= ts < start + span]
        if values:
            quarters.append([f"{q * span / 60:.0f}-{(q + 1) * span / 60:.0f} min",
                             f"{min(values) * 1000:.2f}", f"{max(values) * 1000:.2f}",
                             f"{sorted(values)[len(values) // 2] * 1000:.2f}"])  # fmt: skip
    plot = _plot(baselines, limits, hits, true, seconds)
    return "\n".join(
        [
            f"## soak: the adaptive baseline over {seconds / 60:.0f} min of slowly varying load",
            "",
            f"Pool app (capacity {CAPACITY:.0f}/s) behind the sidecar with `--adaptive`; "
            f"vegeta at {LOW:g}x-{HIGH:g}x capacity, rising and falling every {PERIOD:.0f} s "
            f"in {STEP:.0f}-s steps. True no-load latency: p50 of a {WARMUP:.0f}-s warm-up at "
            f"0.1x through the sidecar, **{true * 1000:.2f} ms**. Baseline read every "
            f"{SAMPLE_EVERY:g} s; judged from {SETTLE:.0f} s on "
            f"({len(judged)} samples).",
            "",
            table(["span", "baseline min ms", "max ms", "median ms"], quarters),
            "",
            f"- highest baseline {max(judged, default=math.nan) * 1000:.2f} ms "
            f"({worst_up:+.0%}), lowest {min(judged, default=math.nan) * 1000:.2f} ms "
            f"({-worst_down:+.0%}) of the true {true * 1000:.2f} ms (goal: within "
            f"{GOAL:.0%}): {verdict(ok)}",
            "",
            f"Plot: {plot}",
        ]
    )


def _plot(
    baselines: list[tuple[float, float]],
    limits: list[tuple[float, float]],
    hits: list[Hit],
    true: float,
    seconds: float,
) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(3, 1, sharex=True, figsize=(9, 8), constrained_layout=True)
    minutes = [ts / 60 for ts, _ in baselines]
    axes[0].plot(minutes, [v * 1000 for _, v in baselines], label="asgi_adaptive_baseline_seconds")
    axes[0].axhline(true * 1000, color="tab:green", linestyle="--", label="true no-load p50")
    for k in (1 - GOAL, 1 + GOAL):
        axes[0].axhline(true * 1000 * k, color="tab:red", linestyle=":", linewidth=1)
    axes[0].set_ylabel("baseline ms")
    axes[0].legend(fontsize="small")
    axes[1].step([ts / 60 for ts, _ in limits], [v for _, v in limits], where="post")
    axes[1].set_ylabel("concurrency limit")
    per = series(hits, 0.0, WARMUP + seconds, step=10.0)
    mids = [(i * 10 + 5) / 60 for i in range(len(per))]
    axes[2].plot(mids, [s.offered for s in per], label="offered/s")
    axes[2].plot(mids, [s.goodput for s in per], label="goodput 2xx/s")
    axes[2].set_ylabel("requests/s")
    axes[2].set_xlabel("minutes")
    axes[2].legend(fontsize="small")
    for ax in axes:
        ax.grid(True, alpha=0.3)
    today = datetime.now(UTC).strftime("%Y-%m-%d")
    fig.suptitle(f"soak: the adaptive limit's baseline under slowly varying load, {today}")
    PLOTS.mkdir(parents=True, exist_ok=True)
    path = PLOTS / "soak.png"
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return str(path.relative_to(ROOT))
