"""Prometheus metrics of the sidecar, built at scrape time from ``Stats`` and live gauges.

They are written by ``exposition`` on the sidecar's own metrics port, never into
prometheus_client's global registry, so embedding it (``asgi-sidecar serve``) next to an
app that exports its own metrics cannot clash.  Names follow Prometheus conventions: base units,
``_total`` for counters; ``promtool check metrics`` runs on a real scrape in the
tests.  Every metric is listed, with its meaning, in README.md.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Final

from asgi_sidecar import exposition
from asgi_sidecar.exposition import Family, by_label, counter, gauge
from asgi_sidecar.stats import Histogram, Stats

# Settings whose values a scrape must not show (anyone who can reach /metrics could
# otherwise drain the Pod with the token).
SECRET_SETTINGS: Final = frozenset({"drain_token"})


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


def _gauge(name: str, doc: str, value: float | None) -> Iterator[Family]:
    if value is not None:
        yield gauge(name, doc, value)


def _histogram(name: str, doc: str, hist: Histogram) -> Family:
    buckets = [(exposition.number(bound), n) for bound, n in hist.cumulative()]
    return exposition.histogram(name, doc, buckets, hist.sum)


def _counter_by(name: str, doc: str, label: str, values: dict[str, int]) -> Family:
    return by_label("counter", name, doc, label, values)


class SidecarCollector:
    """Every metric of one sidecar process, read from its stats and gauges when scraped."""

    def __init__(
        self, stats: Stats, gauges: Callable[[], Gauges], info: Callable[[], dict[str, str]]
    ) -> None:
        self._stats = stats
        self._gauges = gauges
        self._info = info

    def scrape(self) -> bytes:
        """The body of GET /metrics (``exposition.CONTENT_TYPE``)."""
        return exposition.render(self.collect())

    def collect(self) -> Iterator[Family]:
        s = self._stats
        g = self._gauges()
        yield by_label(
            "gauge",
            "asgi_connections",
            "Open client connections by state.",
            "state",
            {"active": g.connections_active, "idle": g.connections_idle},
        )
        yield counter(
            "asgi_connections_opened", "Client connections accepted.", s.connections_opened
        )
        yield _counter_by(
            "asgi_connections_closed",
            "Client connections closed, by reason.",
            "reason",
            dict(s.connections_closed),
        )
        yield gauge(
            "asgi_requests_in_flight",
            "Requests holding a concurrency slot (sent to the app, response not finished).",
            g.in_flight,
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
        yield counter(
            "asgi_keepalive_reused_requests",
            "Requests that arrived on a connection that had already served one.",
            s.keepalive_reused,
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
        yield counter(
            "asgi_accept_queue_full_seconds",
            "Time the public socket's accept queue was at least 90% full (sampled every 0.1 s).",
            s.accept_queue_full_seconds,
        )
        yield from _gauge(
            "asgi_net_core_somaxconn",
            "net.core.somaxconn of the Pod's network namespace.",
            g.somaxconn,
        )
        if g.listen_overflows is not None:
            yield counter(
                "asgi_listen_overflows",
                "TcpExt ListenOverflows of the Pod's network namespace: SYNs dropped because"
                " an accept queue was full (retransmissions count again; read as a rate).",
                g.listen_overflows,
            )
        if g.listen_drops is not None:
            yield counter(
                "asgi_listen_drops",
                "TcpExt ListenDrops of the Pod's network namespace.",
                g.listen_drops,
            )
        yield _counter_by(
            "asgi_upstream_errors",
            "Failed exchanges with the app, by reason (502/504 or an aborted response).",
            "reason",
            dict(s.upstream_errors),
        )
        yield by_label(
            "gauge",
            "asgi_upstream_connections",
            "Connections to the app, by state.",
            "state",
            {"idle": g.upstream_idle, "active": g.upstream_connections - g.upstream_idle},
        )
        yield _counter_by(
            "asgi_config_reloads",
            "Config file reloads, by result (applied, invalid).",
            "result",
            dict(s.config_reloads),
        )
        yield gauge("asgi_ready", "1 while the sidecar reports ready, 0 while draining.", g.ready)
        yield exposition.info(
            "asgi_sidecar", "Version and effective settings of the sidecar.", self._info()
        )


def settings_info(
    settings_dump: dict[str, object], mode: str, version: str, build: str
) -> dict[str, str]:
    """The labels of asgi_sidecar_info: every setting, except that a secret's value is
    never exported (``set`` or empty), and the version, mode and build."""
    labels = {"version": version, "mode": mode, "build": build}
    for key, value in settings_dump.items():
        if value is None:
            labels[key] = ""
        else:
            labels[key] = "set" if key in SECRET_SETTINGS else str(value)
    return labels
