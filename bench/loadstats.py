"""What an open-loop run measured, from its results alone: pure (no I/O, no clock).

A ``Hit`` is one request vegeta sent: when it was sent (seconds since the run's origin),
how long its answer took, and its status (0: no answer, such as a timeout or a reset).
``phase_summary`` turns the hits of one phase (``summarize``: of one span of time) into
the figures the overload tables report; ``series`` bins them per second for the plots.
Goodput is the 2xx that ended in the span, per second of it (a backlog that drains after
the span counts where it drains); the counts and latency percentiles are of the requests
sent in it, of the 2xx alone (a fast 503 must not make the admitted requests look fast),
by the nearest-rank method.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Hit:
    sent: float  # seconds since the run's origin
    latency: float  # seconds
    code: int  # HTTP status, 0 when no response came (timeout, reset, refused)
    phase: int = 0  # the index of the phase (the vegeta process) that sent it


@dataclass(frozen=True, slots=True)
class Summary:
    seconds: float
    sent: int
    ok: int  # 2xx among the requests sent in the span
    rejected: int  # 503
    failed: int  # neither: other statuses and no response at all
    p50: float | None  # seconds, 2xx only
    p99: float | None
    rejected_p50: float | None  # seconds: what producing a 503 took
    completed: int = 0  # 2xx that ended in the span, whenever they were sent

    @property
    def goodput(self) -> float:
        """2xx per second: those that ended in the span (a backlog drains into the next)."""
        return self.completed / self.seconds if self.seconds > 0 else 0.0

    @property
    def offered(self) -> float:
        return self.sent / self.seconds if self.seconds > 0 else 0.0


def percentile(sorted_values: Sequence[float], q: float) -> float | None:
    """The nearest-rank ``q``-th percentile (0 < q <= 100) of already sorted values."""
    if not sorted_values:
        return None
    rank = max(1, math.ceil(q / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


def summarize(hits: Sequence[Hit], start: float, end: float) -> Summary:
    """The hits sent in ``[start, end)``, and the 2xx that ended in it."""
    return _summary([h for h in hits if start <= h.sent < end], hits, start, end)


def phase_summary(hits: Sequence[Hit], phase: int, start: float, end: float) -> Summary:
    """The hits the given phase sent, and the 2xx that ended in ``[start, end)``, its span.

    A phase's process starts a little after its scheduled time, so its hits are told apart
    by the phase they came from, not by when they were sent.
    """
    return _summary([h for h in hits if h.phase == phase], hits, start, end)


def _summary(mine: Iterable[Hit], every: Iterable[Hit], start: float, end: float) -> Summary:
    ok: list[float] = []
    rejected: list[float] = []
    sent = failed = 0
    for hit in mine:
        sent += 1
        if 200 <= hit.code < 300:
            ok.append(hit.latency)
        elif hit.code == 503:
            rejected.append(hit.latency)
        else:
            failed += 1
    ok.sort()
    rejected.sort()
    completed = sum(1 for h in every if 200 <= h.code < 300 and start <= h.sent + h.latency < end)
    return Summary(
        seconds=end - start,
        sent=sent,
        ok=len(ok),
        rejected=len(rejected),
        failed=failed,
        p50=percentile(ok, 50),
        p99=percentile(ok, 99),
        rejected_p50=percentile(rejected, 50),
        completed=completed,
    )


def series(hits: Sequence[Hit], start: float, end: float, step: float = 1.0) -> list[Summary]:
    """One summary per ``step`` seconds of ``[start, end)``."""
    bins = max(1, math.ceil((end - start) / step - 1e-9))
    return [
        summarize(hits, start + i * step, min(end, start + (i + 1) * step)) for i in range(bins)
    ]
