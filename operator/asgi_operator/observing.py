"""From sidecar metrics to one fleet ``Observation`` per interval. Pure (text in, data out).

A ``Snapshot`` is one Pod's counters and gauges at one moment, parsed from its
``/metrics`` text (or built from a Prometheus query).  ``observe`` turns two
rounds of snapshots into per-Pod averages over the interval between them:
throughput and mean in-flight from the admitted-request histogram (Little's
law: the growth of the duration sum per second is the mean concurrency),
quantiles from bucket deltas, and the keep-alive and backlog signals.  Pods
that restarted (a counter went down) or appeared mid-interval are left out of
that interval; too few usable Pods make the observation stale, which freezes
tuning instead of acting on partial data.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families

from asgi_operator.observations import Observation

REJECT_REASONS = frozenset({"concurrency_limit", "queue_full", "queue_timeout", "shutting_down"})
MIN_USABLE_SHARE = 0.5
NEAR_TIMEOUT = 0.8

Buckets = tuple[tuple[float, float], ...]  # (upper bound, cumulative count), ending at +Inf


@dataclass(frozen=True, slots=True)
class Snapshot:
    at: float  # seconds, any monotonic clock shared by the round
    requests: float = 0.0
    rejected: float = 0.0
    duration_sum: float = 0.0
    duration_buckets: Buckets = ()
    in_flight: float = 0.0
    limit: float | None = None
    listen_overflows: float = 0.0
    accept_queue: float = 0.0
    backlog_effective: float | None = None
    keep_alive: float = 75.0
    idle_closes: float = 0.0
    connections_opened: float = 0.0
    idle_gap_buckets: Buckets = ()
    connections_idle: float = 0.0
    max_connections: float | None = None
    reused: float = 0.0
    accept_queue_full_seconds: float = 0.0

    @property
    def duration_count(self) -> float:
        return self.duration_buckets[-1][1] if self.duration_buckets else 0.0


def _finite(value: float) -> float | None:
    return None if math.isinf(value) or math.isnan(value) else value


Sample = tuple[str, Mapping[str, str], float]


def parse_metrics(text: str, at: float) -> Snapshot:
    """One sidecar's /metrics text as a Snapshot."""
    samples = (
        (sample.name, sample.labels, float(sample.value))
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    )
    return snapshot_from_samples(samples, at)


# Labels a Prometheus server adds to every series it scrapes; not the sidecar's own.
_TARGET_LABELS = frozenset({"instance", "job", "namespace", "pod", "container", "service"})


def snapshot_from_samples(samples: Iterable[Sample], at: float) -> Snapshot:
    """A Snapshot from (name, labels, value) samples: a scrape, or a Prometheus query."""
    values: dict[str, float] = {}
    rejected = 0.0
    requests = 0.0
    idle_closes = 0.0
    duration: list[tuple[float, float]] = []
    gaps: list[tuple[float, float]] = []
    idle = 0.0
    for name, all_labels, value in samples:
        labels = {k: v for k, v in all_labels.items() if k not in _TARGET_LABELS}
        if name == "asgi_requests_total":
            requests += value
        elif name == "asgi_requests_rejected_total":
            if labels.get("reason") in REJECT_REASONS:
                rejected += value
        elif name == "asgi_connections_closed_total":
            if labels.get("reason") == "idle_timeout":
                idle_closes += value
        elif name == "asgi_request_duration_seconds_bucket":
            duration.append((float(labels["le"]), value))
        elif name == "asgi_idle_gap_seconds_bucket":
            gaps.append((float(labels["le"]), value))
        elif name == "asgi_connections" and labels.get("state") == "idle":
            idle = value
        elif not labels:
            values[name] = value
    return Snapshot(
        at=at,
        requests=requests,
        rejected=rejected,
        duration_sum=values.get("asgi_request_duration_seconds_sum", 0.0),
        duration_buckets=tuple(sorted(duration)),
        in_flight=values.get("asgi_requests_in_flight", 0.0),
        limit=_finite(values.get("asgi_concurrency_limit", math.inf)),
        listen_overflows=values.get("asgi_listen_overflows_total", 0.0),
        accept_queue=values.get("asgi_accept_queue_length", 0.0),
        backlog_effective=values.get("asgi_listen_backlog_effective"),
        keep_alive=values.get("asgi_keepalive_timeout_seconds", 75.0),
        idle_closes=idle_closes,
        connections_opened=values.get("asgi_connections_opened_total", 0.0),
        idle_gap_buckets=tuple(sorted(gaps)),
        connections_idle=idle,
        max_connections=_finite(values.get("asgi_max_connections", math.inf)),
        reused=values.get("asgi_keepalive_reused_requests_total", 0.0),
        accept_queue_full_seconds=values.get("asgi_accept_queue_full_seconds_total", 0.0),
    )


def bucket_delta(after: Buckets, before: Buckets) -> Buckets:
    if not before:
        return after
    old = dict(before)
    return tuple((bound, count - old.get(bound, 0.0)) for bound, count in after)


def quantile(buckets: Buckets, q: float) -> float | None:
    """The q-quantile of cumulative buckets, interpolated linearly inside a bucket."""
    if not buckets or buckets[-1][1] <= 0:
        return None
    rank = q * buckets[-1][1]
    lower_bound, lower_count = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if math.isinf(bound):
                return lower_bound
            share = (rank - lower_count) / (count - lower_count) if count > lower_count else 0
            return lower_bound + (bound - lower_bound) * share
        lower_bound, lower_count = bound, count
    return lower_bound


def share_above(buckets: Buckets, threshold: float) -> float:
    """Share of observations above ``threshold`` (by the largest bound at or below it)."""
    total = buckets[-1][1] if buckets else 0.0
    if total <= 0:
        return 0.0
    below = 0.0
    for bound, count in buckets:
        if bound <= threshold:
            below = count
    return max(0.0, 1 - below / total)


def _restarted(before: Snapshot, after: Snapshot) -> bool:
    return (
        after.requests < before.requests
        or after.duration_count < before.duration_count
        or after.connections_opened < before.connections_opened
    )


def observe(before: Mapping[str, Snapshot], after: Mapping[str, Snapshot]) -> Observation:
    """Per-Pod averages over the interval between two rounds of snapshots (Pod name keyed)."""
    pairs = [
        (before[name], snap)
        for name, snap in after.items()
        if name in before and not _restarted(before[name], snap) and snap.at > before[name].at
    ]
    expected = max(len(after), 1)
    if not pairs or len(pairs) < MIN_USABLE_SHARE * expected:
        return Observation(
            limit=None,
            throughput=0.0,
            in_flight=0.0,
            p50=None,
            pods=len(pairs),
            stale=f"usable metrics from {len(pairs)} of {len(after)} Pods",
        )
    n = len(pairs)
    seconds = sum(a.at - b.at for b, a in pairs) / n
    requests = sum(a.requests - b.requests for b, a in pairs)
    admitted = sum(a.duration_count - b.duration_count for b, a in pairs)
    rejected = sum(a.rejected - b.rejected for b, a in pairs)
    busy = sum(a.duration_sum - b.duration_sum for b, a in pairs)
    durations = _sum_buckets(
        [bucket_delta(a.duration_buckets, b.duration_buckets) for b, a in pairs]
    )
    gaps = _sum_buckets([bucket_delta(a.idle_gap_buckets, b.idle_gap_buckets) for b, a in pairs])
    latest = [a for _, a in pairs]
    limits = [a.limit for a in latest if a.limit is not None]
    keep_alive = max(a.keep_alive for a in latest)
    reused = sum(a.reused - b.reused for b, a in pairs)
    effective = [a.backlog_effective for a in latest if a.backlog_effective is not None]
    caps = [a.max_connections for a in latest if a.max_connections is not None]
    # Little's law undercounts when requests outlast the interval or are abandoned; the
    # gauge read at both ends of the interval bounds it from the other side.
    gauge = sum(a.in_flight + b.in_flight for b, a in pairs) / 2 / n
    in_flight = max(busy / seconds / n, gauge)
    if limits:  # requests admitted long ago and still finishing cannot push it past the limit
        in_flight = min(in_flight, max(limits))
    return Observation(
        limit=round(max(limits)) if limits else None,
        throughput=admitted / seconds / n,
        in_flight=in_flight,
        p50=quantile(durations, 0.5),
        p99=quantile(durations, 0.99),
        rejected_ratio=rejected / requests if requests > 0 else 0.0,
        listen_overflows=sum(a.listen_overflows - b.listen_overflows for b, a in pairs)
        / seconds
        / n,
        accept_queue_peak=max(a.accept_queue for a in latest),
        accept_queue_full=sum(
            a.accept_queue_full_seconds - b.accept_queue_full_seconds for b, a in pairs
        )
        / seconds
        / n,
        backlog_effective=round(min(effective)) if effective else None,
        keep_alive=keep_alive,
        idle_closes=sum(a.idle_closes - b.idle_closes for b, a in pairs) / seconds / n,
        new_connections=sum(a.connections_opened - b.connections_opened for b, a in pairs)
        / seconds
        / n,
        reuse_near_timeout=share_above(gaps, NEAR_TIMEOUT * keep_alive),
        idle_connections=sum(a.connections_idle for a in latest) / n,
        max_connections=round(min(caps)) if caps else None,
        reuse_ratio=reused / requests if requests > 0 else 0.0,
        pods=n,
    )


def _sum_buckets(all_buckets: list[Buckets]) -> Buckets:
    totals: dict[float, float] = {}
    for buckets in all_buckets:
        for bound, count in buckets:
            totals[bound] = totals.get(bound, 0.0) + count
    return tuple(sorted(totals.items()))


def not_yet_live(
    round_: Mapping[str, Snapshot],
    limit: int | None,
    keep_alive: float | None,
    adaptive_bounds: tuple[int, int] | None = None,
) -> list[str]:
    """The Pods whose scrape does not show the tuned values yet (sorted).

    ``limit`` and ``keep_alive`` are the targets (None: not tuned); with the adaptive
    limit on, its limit moves by itself, so a Pod runs the target when its limit lies
    within ``adaptive_bounds``.
    """
    behind = []
    for pod, snap in round_.items():
        if adaptive_bounds is not None:
            low, high = adaptive_bounds
            limit_ok = snap.limit is not None and low <= snap.limit <= high
        else:
            limit_ok = limit is None or snap.limit == limit
        keep_ok = keep_alive is None or math.isclose(snap.keep_alive, keep_alive)
        if not (limit_ok and keep_ok):
            behind.append(pod)
    return sorted(behind)
