"""Plain counters and histograms updated on the hot path.

Incrementing an attribute or a dict entry costs a fraction of what a
prometheus_client metric with labels costs per request, so the data plane counts
here and ``metrics.py`` turns these figures into Prometheus metrics at scrape
time.  Pure: no I/O, no clock.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TypeVar

K = TypeVar("K")

# Buckets sized for a proxy in front of a web app: sub-millisecond to a minute.
DURATION_BUCKETS: tuple[float, ...] = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0,
)  # fmt: skip
# Idle gaps between requests on one connection: the interesting edges are the
# keep-alive timeouts people use (5 s uvicorn, 60 s balancers, 75 s mobile).
IDLE_GAP_BUCKETS: tuple[float, ...] = (
    0.1, 0.5, 1.0, 2.0, 5.0, 10.0, 15.0, 30.0, 45.0, 60.0, 75.0, 90.0, 120.0, 300.0, 600.0,
)  # fmt: skip


def count(counts: dict[K, int], key: K) -> None:
    """``counts[key] += 1`` on a plain dict.  The counters are dicts, not ``Counter``s:
    ``Counter`` defines ``__delitem__`` in Python, which makes every item assignment a
    Python-level slot call (about 1,000 instructions per request, compiled or not)."""
    counts[key] = counts.get(key, 0) + 1


class Histogram:
    """Cumulative-on-read histogram: a short scan and two additions per observation."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last slot is +Inf
        self.sum = 0.0

    def observe(self, value: float) -> None:
        # A scan up from the smallest bound, not a binary search: what is observed is
        # mostly in the first buckets (sub-millisecond proxying, idle gaps under 0.1 s),
        # where the scan stops after a comparison or two; a search always takes four.
        index = 0
        for bound in self.bounds:
            if value <= bound:
                break
            index += 1
        self.counts[index] += 1
        self.sum += value

    @property
    def count(self) -> int:
        return sum(self.counts)

    def cumulative(self) -> list[tuple[float, int]]:
        """(upper bound, count of observations <= bound), ending with +Inf."""
        running = 0
        result = []
        for bound, count in zip((*self.bounds, float("inf")), self.counts, strict=True):
            running += count
            result.append((bound, running))
        return result


@dataclass(slots=True)
class Stats:
    """Everything the sidecar counts.  Gauges are read from live state at scrape time."""

    connections_opened: int = 0
    connections_closed: dict[str, int] = field(default_factory=dict)
    requests: dict[int, int] = field(default_factory=dict)
    rejected: dict[str, int] = field(default_factory=dict)
    upstream_errors: dict[str, int] = field(default_factory=dict)
    keepalive_reused: int = 0
    accept_queue_full_seconds: float = 0.0
    config_reloads: dict[str, int] = field(default_factory=dict)
    request_duration: Histogram = field(default_factory=lambda: Histogram(DURATION_BUCKETS))
    queue_wait: Histogram = field(default_factory=lambda: Histogram(DURATION_BUCKETS))
    idle_gap: Histogram = field(default_factory=lambda: Histogram(IDLE_GAP_BUCKETS))
