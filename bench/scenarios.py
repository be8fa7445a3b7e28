"""The overload scenarios of ``make bench-overload`` and how their goals are judged: pure.

A scenario is a list of steps, each an offered rate (times the app's capacity, measured
before the run) held for a number of seconds, with the app's capacity shifted or not
(``bench/shifting.py``).  Every run starts with ``WARMUP`` seconds at 0.2x, which also
gives the unloaded latency the p99 goal compares with.

The goals (issue 14), each judged against the best static sidecar limit of the same
phase (the sweep's highest goodput in that phase; within 1 %, the lowest p99):

* goodput at least ``GOODPUT`` (95 %) of it;
* admitted p99 at most ``P99`` (2x) the unloaded p99, ``P99_AT_10X`` (3x) at 10x;
* no 503 at all at 0.8x load;
* after a shift or a step, settled within ``SETTLE_DECISIONS`` decisions, and no
  oscillation after that (``settling``);
* over a shift or step scenario, more goodput than every single static limit;
* a 503 answered in at most ``REJECT_COST`` (0.1x) the unloaded p50.
"""

from __future__ import annotations

import itertools
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from bench.loadstats import Summary

WARMUP = 3.0  # seconds at WARMUP_LOAD before the scenario's steps
WARMUP_LOAD = 0.2
GOODPUT = 0.95
P99 = 2.0
P99_AT_10X = 3.0
SETTLE_DECISIONS = 10
SETTLE_BAND = 0.25  # a limit within this of its final value counts as settled
REJECT_COST = 0.1
TIE = 0.01  # goodputs this close count as equal when choosing the best static limit


@dataclass(frozen=True, slots=True)
class Step:
    load: float  # offered rate / the app's capacity before any shift
    seconds: float
    shifted: bool = False  # the app's capacity shifted (SIGUSR1) from this step on


@dataclass(frozen=True, slots=True)
class Scenario:
    name: str
    app: str  # "cpu" (CPU-bound) or "pool" (I/O-bound: a pool of slots)
    steps: tuple[Step, ...]
    about: str

    @property
    def changes(self) -> bool:
        """Whether its load or capacity changes mid-run (a shift or a step)."""
        return len(self.steps) > 1


def scenarios(phase: float) -> list[Scenario]:
    """Every scenario, each phase ``phase`` seconds long."""

    def steady(app: str, load: float) -> Scenario:
        return Scenario(f"{app} {load:g}x", app, (Step(load, phase),), f"steady {load:g}x")

    return [
        *(steady("cpu", load) for load in (2.0, 4.0, 10.0)),
        Scenario(
            "cpu shift",
            "cpu",
            (Step(2.0, phase), Step(2.0, phase, shifted=True)),
            "2x, then every request costs twice the CPU (4x of the new capacity)",
        ),
        *(steady("pool", load) for load in (2.0, 4.0, 10.0)),
        Scenario(
            "pool shift",
            "pool",
            (Step(2.0, phase), Step(2.0, phase, shifted=True)),
            "2x, then the pool doubles (1x of the new capacity)",
        ),
        Scenario(
            "pool step",
            "pool",
            (Step(0.5, phase), Step(4.0, phase), Step(0.5, phase)),
            "0.5x, 4x, 0.5x",
        ),
        steady("pool", 0.8),
    ]


def p99_goal(load: float) -> float:
    return P99_AT_10X if load >= 10 else P99


# -- judging -----------------------------------------------------------------------------------


def best_per_phase(sweep: Mapping[int, Sequence[Summary]]) -> list[tuple[int, Summary]]:
    """For each phase, the best static value there: of those within ``TIE`` (1 %) of the
    highest goodput, the one with the lowest admitted p99 (a higher limit that only adds
    queueing in the app is not better)."""
    phases = len(next(iter(sweep.values())))
    best = []
    for i in range(phases):
        top = max(s[i].goodput for s in sweep.values())
        close = [(v, s[i]) for v, s in sweep.items() if s[i].goodput >= (1 - TIE) * top]
        best.append(min(close, key=lambda vs: (_p99(vs[1]), -vs[1].goodput)))
    return best


def _p99(s: Summary) -> float:
    return s.p99 if s.p99 is not None else float("inf")


def total_goodput(phases: Sequence[Summary]) -> float:
    seconds = sum(s.seconds for s in phases)
    return sum(s.ok for s in phases) / seconds if seconds else 0.0


def settling(
    samples: Sequence[tuple[float, float]], start: float, end: float, band: float = SETTLE_BAND
) -> float | None:
    """Seconds after ``start`` from which the limit stays within ``band`` of where it ends.

    Where it ends: the median of the samples in the last quarter of ``[start, end)``.
    None when even that last quarter strays outside the band (it oscillates) or there
    are no samples.  A band of at least one request either way, for small limits.
    """
    inside = [(t, v) for t, v in samples if start <= t < end]
    tail = [v for t, v in inside if t >= end - (end - start) / 4]
    if not tail:
        return None
    final = statistics.median(tail)
    width = max(1.0, band * final)

    def ok(v: float) -> bool:
        return abs(v - final) <= width

    if not all(ok(v) for v in tail):
        return None
    settled_at = start
    for t, v in inside:
        if not ok(v):
            settled_at = t
    return max(0.0, settled_at - start)


def reversals(samples: Sequence[tuple[float, float]], start: float, end: float) -> int:
    """How often the limit changed direction in ``[start, end)`` (oscillation's count)."""
    values = [v for t, v in samples if start <= t < end]
    moves = [b - a for a, b in itertools.pairwise(values) if b != a]
    return sum(1 for a, b in itertools.pairwise(moves) if (a > 0) != (b > 0))
