"""The tuner's data: one interval's ``Observation``, the settings in effect, bounds, decisions.

Pure, no I/O.  A setting is named by the sidecar's own alias for it
(``limitConcurrency``, ``backlog``, ``timeoutKeepAlive``), taken from its
settings model, so the name in a decision is the name in the status, the
ConfigMap and the metrics' ``setting`` label.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from asgi_sidecar.settings import SidecarLimits


def setting_alias(name: str) -> str:
    """The sidecar's spelling (its alias) of a settings field."""
    return SidecarLimits.model_fields[name].alias or name


LIMIT = setting_alias("limit_concurrency")
BACKLOG = setting_alias("backlog")
KEEP_ALIVE = setting_alias("timeout_keep_alive")

SATURATED_REJECTIONS = 0.005  # 0.5% of requests refused means the limit binds
SATURATED_IN_FLIGHT = 0.85  # or in-flight near the limit


@dataclass(frozen=True, slots=True)
class Observation:
    """One interval of fleet metrics, as per-Pod averages, and the settings in effect."""

    limit: int | None  # limitConcurrency in effect
    throughput: float  # admitted responses per second per Pod
    in_flight: float  # average requests in flight per Pod (Little's law)
    p50: float | None  # seconds, admitted requests
    p99: float | None = None
    rejected_ratio: float = 0.0  # 503 rejections / requests
    listen_overflows: float = 0.0  # per second, Pods' network namespaces
    accept_queue_peak: float = 0.0  # connections waiting to be accepted, highest Pod
    accept_queue_full: float = 0.0  # share of the time the sidecar's accept queue was ~full
    backlog_effective: int | None = None
    keep_alive: float = 75.0  # timeout in effect
    idle_closes: float = 0.0  # idle-timeout closes per second per Pod
    new_connections: float = 0.0  # connections opened per second per Pod
    reuse_near_timeout: float = 0.0  # share of reused requests idle > 80% of the timeout
    idle_connections: float = 0.0  # per Pod
    max_connections: int | None = None
    reuse_ratio: float = 0.0  # reused requests / requests
    pods: int = 1
    stale: str | None = None  # why these figures cannot be used


@dataclass(frozen=True, slots=True)
class Current:
    limit: int | None
    backlog: int
    keep_alive: float
    somaxconn: int | None  # None: sysctls.mode none, the node's value
    can_raise_somaxconn: bool


@dataclass(frozen=True, slots=True)
class Bounds:
    limit_min: int = 1
    limit_max: int = 10_000
    keep_alive_min: float = 5.0
    keep_alive_max: float = 300.0
    backlog_min: int = 128
    backlog_max: int = 65_535


@dataclass(frozen=True, slots=True)
class Change:
    setting: str  # LIMIT | BACKLOG | KEEP_ALIVE
    old: float | None
    new: float
    reason: str

    @property
    def direction(self) -> str:
        return "up" if self.old is None or self.new > self.old else "down"


@dataclass(frozen=True, slots=True)
class Decision:
    limit: int | None
    backlog: int
    keep_alive: float
    changes: tuple[Change, ...] = ()
    frozen: str | None = None  # set when nothing could be decided, with the reason
    notes: tuple[str, ...] = field(default=())

    @property
    def needs_rollout(self) -> bool:
        return any(c.setting == BACKLOG for c in self.changes)

    def values(self) -> dict[str, float | int | None]:
        """The decided settings by their sidecar alias."""
        return {LIMIT: self.limit, BACKLOG: self.backlog, KEEP_ALIVE: self.keep_alive}


def saturated(o: Observation) -> bool:
    if o.rejected_ratio > SATURATED_REJECTIONS:
        return True
    return o.limit is not None and o.in_flight >= SATURATED_IN_FLIGHT * o.limit
