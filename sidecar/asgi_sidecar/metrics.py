"""Prometheus metrics of the sidecar, built at scrape time from ``Stats`` and live gauges.

The sidecar uses its own registry, never prometheus_client's global one, so
embedding it (``asgi-sidecar serve``) next to an app that exports its own
metrics cannot clash.  Names follow Prometheus conventions: base units,
``_total`` for counters; ``promtool check metrics`` runs on a real scrape in the
tests.  Every metric is listed, with its meaning, in README.md.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector, CollectorRegistry

from asgi_sidecar.stats import Histogram, Stats


@dataclass(frozen=True, slots=True)
class Gauges:
    connections_active: int
    connections_idle: int
    in_flight: int
    concurrency_limit: int | None
    queue_length: int
    queue_depth: int
    backlog: int
    backlog_effective: int
    accept_queue: int | None
    listen_overflows: int | None
    listen_drops: int | None
    somaxconn: int | None
    keep_alive_timeout: float
    max_connections: int | None
    upstream_connections: int
    upstream_idle: int
    ready: bool
    adaptive_limit: int | None = None  # only with --adaptive
    adaptive_baseline: float | None = None  # seconds; None until measured


def _gauge(name: str, doc: str, value: float | None) -> Iterator[Metric]:
    if value is not None:
        yield GaugeMetricFamily(name, doc, value=value)


def _histogram(name: str, doc: str, hist: Histogram) -> Metric:
    buckets = [("+Inf" if math.isinf(b) else repr(b), c) for b, c in hist.cumulative()]
    return HistogramMetricFamily(name, doc, buckets=buckets, sum_value=hist.sum)


def _counter_by(name: str, doc: str, label: str, values: dict[str, int]) -> Metric:
    family = CounterMetricFamily(name, doc, labels=[label])
    for key in sorted(values):
        family.add_metric([key], values[key])
    return family


class SidecarCollector(Collector):
    def __init__(
        self,
        stats: Stats,
        gauges: Callable[[], Gauges],
        info: Callable[[], dict[str, str]],
        extra: Callable[[], Iterator[Metric]] | None = None,
    ) -> None:
        self._stats = stats
        self._gauges = gauges
        self._info = info
        self._extra = extra

    def collect(self) -> Iterator[Metric]:
        s = self._stats
        g = self._gauges()
        connections = GaugeMetricFamily(
            "asgi_connections", "Open client connections by state.", labels=["state"]
        )
        connections.add_metric(["active"], g.connections_active)
        connections.add_metric(["idle"], g.connections_idle)
        yield connections
        yield CounterMetricFamily(
            "asgi_connections_opened", "Client connections accepted.", value=s.connections_opened
        )
        yield _counter_by(
            "asgi_connections_closed",
            "Client connections closed, by reason.",
            "reason",
            dict(s.connections_closed),
        )
        yield GaugeMetricFamily(
            "asgi_requests_in_flight",
            "Requests holding a concurrency slot (sent to the app, response not finished).",
            value=g.in_flight,
        )
        yield _counter_by(
            "asgi_requests",
            "Responses sent to clients, by status code.",
            "code",
            {str(code): n for code, n in s.requests.items()},
        )
        yield _histogram(
            "asgi_request_duration_seconds",
            "Time from a request's admission to the end of its response.",
            s.request_duration,
        )
        yield _counter_by(
            "asgi_requests_rejected",
            "Requests refused by the sidecar, by reason (503s: concurrency_limit, queue_full,"
            " queue_timeout, shutting_down; bad input: bad_request, bad_field, smuggling,"
            " header_too_large, uri_too_long, header_timeout, body_timeout, bad_host,"
            " bad_version, bad_target, connect, unsupported_coding, bad_chunk).",
            "reason",
            dict(s.rejected),
        )
        yield CounterMetricFamily(
            "asgi_keepalive_reused_requests",
            "Requests that arrived on a connection that had already served one.",
            value=s.keepalive_reused,
        )
        yield _histogram(
            "asgi_idle_gap_seconds",
            "Idle time of a keep-alive connection before the request that reused it.",
            s.idle_gap,
        )
        yield _histogram(
            "asgi_queue_wait_seconds",
            "Time admitted requests waited in the queue for a concurrency slot.",
            s.queue_wait,
        )
        limit = math.inf if g.concurrency_limit is None else g.concurrency_limit
        yield from _gauge(
            "asgi_concurrency_limit",
            "Current limit on requests in flight (+Inf when unlimited).",
            limit,
        )
        yield from _gauge(
            "asgi_adaptive_limit",
            "Concurrency limit set by the adaptive limit (only with adaptive on).",
            g.adaptive_limit,
        )
        yield from _gauge(
            "asgi_adaptive_baseline_seconds",
            "No-load latency (median) the adaptive limit compares the current latency with.",
            g.adaptive_baseline,
        )
        yield from _gauge("asgi_queue_length", "Requests waiting for a slot.", g.queue_length)
        yield from _gauge("asgi_queue_depth", "Capacity of the wait queue.", g.queue_depth)
        max_connections = math.inf if g.max_connections is None else g.max_connections
        yield from _gauge(
            "asgi_max_connections",
            "Cap on open client connections (+Inf when unlimited).",
            max_connections,
        )
        yield from _gauge(
            "asgi_keepalive_timeout_seconds",
            "Idle timeout of client connections.",
            g.keep_alive_timeout,
        )
        yield from _gauge(
            "asgi_listen_backlog", "Backlog requested for the public socket.", g.backlog
        )
        yield from _gauge(
            "asgi_listen_backlog_effective",
            "Backlog the kernel actually gave the public socket (clamped by somaxconn).",
            g.backlog_effective,
        )
        yield from _gauge(
            "asgi_accept_queue_length",
            "Connections in the public socket's accept queue, not yet accepted.",
            g.accept_queue,
        )
        yield CounterMetricFamily(
            "asgi_accept_queue_full_seconds",
            "Time the public socket's accept queue was at least 90% full (sampled every 0.1 s).",
            value=s.accept_queue_full_seconds,
        )
        yield from _gauge(
            "asgi_net_core_somaxconn",
            "net.core.somaxconn of the Pod's network namespace.",
            g.somaxconn,
        )
        if g.listen_overflows is not None:
            yield CounterMetricFamily(
                "asgi_listen_overflows",
                "TcpExt ListenOverflows of the Pod's network namespace: SYNs dropped because"
                " an accept queue was full (retransmissions count again; read as a rate).",
                value=g.listen_overflows,
            )
        if g.listen_drops is not None:
            yield CounterMetricFamily(
                "asgi_listen_drops",
                "TcpExt ListenDrops of the Pod's network namespace.",
                value=g.listen_drops,
            )
        yield _counter_by(
            "asgi_upstream_errors",
            "Failed exchanges with the app, by reason (502/504 or an aborted response).",
            "reason",
            dict(s.upstream_errors),
        )
        upstream = GaugeMetricFamily(
            "asgi_upstream_connections", "Connections to the app, by state.", labels=["state"]
        )
        upstream.add_metric(["idle"], g.upstream_idle)
        upstream.add_metric(["active"], g.upstream_connections - g.upstream_idle)
        yield upstream
        yield _counter_by(
            "asgi_config_reloads",
            "Config file reloads, by result (applied, invalid).",
            "result",
            dict(s.config_reloads),
        )
        yield GaugeMetricFamily(
            "asgi_ready", "1 while the sidecar reports ready, 0 while draining.", value=g.ready
        )
        info = InfoMetricFamily("asgi_sidecar", "Version and effective settings of the sidecar.")
        info.add_metric([], self._info())
        yield info
        if self._extra is not None:
            yield from self._extra()


def make_registry(collector: Collector) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    return registry


def settings_info(
    settings_dump: dict[str, object], mode: str, version: str, build: str
) -> dict[str, str]:
    labels = {"version": version, "mode": mode, "build": build}
    for key, value in settings_dump.items():
        labels[key] = "" if value is None else str(value)
    return labels
