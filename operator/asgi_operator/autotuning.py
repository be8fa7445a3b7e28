"""The slow tuning loop for one AsgiServer: scrape, observe, decide, apply, report.

Tuned values are kept in ``status.tuning.current`` (the user's spec is never
written); the reconciler builds the ConfigMap from the spec with those values
applied, so limits and keep-alive reach the sidecars live, and a backlog beyond
the Pods' somaxconn rolls them.  Each decision with its inputs and reason is
appended to ``status.tuning.decisions`` (the last ten), posted as an Event and
counted in the operator's metrics.  History lives in memory: after an operator
restart tuning resumes from the stored values and rebuilds its history.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge

from asgi_operator.building import SELECTOR_LABEL, current_somaxconn
from asgi_operator.kube import Kube, timestamp
from asgi_operator.models import AsgiServerSpec, SysctlMode
from asgi_operator.observing import Snapshot, observe
from asgi_operator.scraping import (
    load_address_map,
    query_prometheus,
    ready_pod_addresses,
    scrape_pods,
)
from asgi_operator.tuning import WINDOW, Bounds, Change, Current, Decision, Observation, decide

log = logging.getLogger("asgi_operator.autotune")

KEEP_DECISIONS = 10


class TuningMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.decisions = Counter(
            "asgi_operator_tuning_decisions",
            "Autotuning changes made, by setting and direction.",
            ["namespace", "name", "setting", "direction"],
            registry=registry,
        )
        self.target = Gauge(
            "asgi_operator_tuning_target",
            "Current tuned value of a setting (limitConcurrency, timeoutKeepAlive, backlog).",
            ["namespace", "name", "setting"],
            registry=registry,
        )
        self.frozen = Gauge(
            "asgi_operator_tuning_frozen",
            "1 while tuning of an AsgiServer is frozen (stale or missing metrics).",
            ["namespace", "name"],
            registry=registry,
        )


@dataclass
class TunerState:
    history: deque[Observation] = field(default_factory=lambda: deque(maxlen=WINDOW))
    last_round: dict[str, Snapshot] = field(default_factory=dict)
    past: list[tuple[int, Change]] = field(default_factory=list)
    rounds: int = 0
    next_due: float = 0.0


def bounds_of(spec: AsgiServerSpec) -> Bounds:
    auto = spec.autotune
    defaults = Bounds()
    return Bounds(
        limit_min=int(auto.limit_concurrency.min or defaults.limit_min),
        limit_max=int(auto.limit_concurrency.max or defaults.limit_max),
        keep_alive_min=float(auto.timeout_keep_alive.min or defaults.keep_alive_min),
        keep_alive_max=float(auto.timeout_keep_alive.max or defaults.keep_alive_max),
        backlog_min=int(auto.backlog.min or defaults.backlog_min),
        backlog_max=int(auto.backlog.max or defaults.backlog_max),
    )


def _inputs(o: Observation | None) -> dict[str, Any]:
    if o is None:
        return {}
    return {
        "pods": o.pods,
        "throughputPerPod": round(o.throughput, 3),
        "inFlightPerPod": round(o.in_flight, 3),
        "p50Seconds": None if o.p50 is None else round(o.p50, 6),
        "p99Seconds": None if o.p99 is None else round(o.p99, 6),
        "rejectedRatio": round(o.rejected_ratio, 4),
        "listenOverflowsPerSecond": round(o.listen_overflows, 3),
        "idleClosesPerSecond": round(o.idle_closes, 3),
    }


class Autotuner:
    def __init__(
        self, kube: Kube, metrics: TuningMetrics, address_map_file: Path | None = None
    ) -> None:
        self.kube = kube
        self.metrics = metrics
        self.address_map_file = address_map_file
        self.states: dict[str, TunerState] = {}

    def due(self, body: dict[str, Any], now: float) -> bool:
        spec = body.get("spec") or {}
        if not (spec.get("autotune") or {}).get("enabled"):
            return False
        state = self.states.get(body["metadata"]["uid"])
        return state is None or now >= state.next_due

    def tune(self, body: dict[str, Any]) -> dict[str, Any] | None:
        """One round for one AsgiServer; returns the status patch (None: nothing to say)."""
        meta = body["metadata"]
        name, namespace = meta["name"], meta["namespace"]
        spec = AsgiServerSpec.model_validate(body.get("spec") or {})
        state = self.states.setdefault(meta["uid"], TunerState())
        state.next_due = time.monotonic() + spec.autotune.interval_seconds
        status = body.get("status") or {}
        tuning = dict(status.get("tuning") or {})
        current_values = dict(tuning.get("current") or {})
        pods = self.kube.list_pods(namespace, f"{SELECTOR_LABEL}={name}")
        addresses = ready_pod_addresses(pods)
        if spec.autotune.prometheus_url:
            scraped = query_prometheus(spec.autotune.prometheus_url, namespace, addresses)
        else:
            scraped = scrape_pods(
                addresses, spec.metrics_port, load_address_map(self.address_map_file)
            )
        round_ = {pod: snap for pod, snap in scraped.items() if snap is not None}
        observation: Observation | None = None
        if not addresses:
            observation = Observation(0, 0.0, 0.0, None, stale="no ready Pods to read metrics from")
        elif state.last_round:
            observation = observe(state.last_round, round_)
            missing = [p for p, s in scraped.items() if s is None]
            if missing and observation.stale is None and len(missing) * 2 > len(scraped):
                observation = Observation(
                    0, 0.0, 0.0, None, stale=f"{len(missing)} of {len(scraped)} Pods unreadable"
                )
        state.last_round = round_
        if observation is None:
            return self._status(tuning, current_values, "Unknown", "Collecting",
                                "first round of metrics read; deciding from the next one",
                                status)  # fmt: skip
        state.history.append(observation)
        state.rounds += 1
        limit = current_values.get("limitConcurrency", spec.server.limit_concurrency)
        deployment = self.kube.get_deployment(namespace, name)
        current = Current(
            limit=None if limit is None else int(limit),
            backlog=int(current_values.get("backlog", spec.server.backlog)),
            keep_alive=float(current_values.get("timeoutKeepAlive", spec.effective_keep_alive())),
            somaxconn=current_somaxconn(deployment),
            can_raise_somaxconn=spec.sysctls.mode != SysctlMode.none
            and spec.sysctls.somaxconn is None,
        )
        decision = decide(list(state.history), current, bounds_of(spec), state.past)
        labels = {"namespace": namespace, "name": name}
        self.metrics.frozen.labels(**labels).set(1 if decision.frozen else 0)
        if decision.frozen:
            return self._status(tuning, current_values, "False", "MetricsStale",
                                f"tuning frozen, settings kept: {decision.frozen}",
                                status)  # fmt: skip
        record = self._record(decision, observation)
        for change in decision.changes:
            state.past.append((state.rounds, change))
            self.metrics.decisions.labels(
                setting=change.setting, direction=change.direction, **labels
            ).inc()
            self.kube.post_event(
                body,
                "AutotuneDecision",
                f"{change.setting} {change.old} -> {change.new}: {change.reason}",
                kind="Normal",
            )
        current_values.update(self._values(decision, spec))
        for setting, value in current_values.items():
            if value is not None:
                self.metrics.target.labels(setting=setting, **labels).set(float(value))
        if record:
            decisions = list(tuning.get("decisions") or []) + record
            tuning["decisions"] = decisions[-KEEP_DECISIONS:]
        message = "; ".join(c.reason for c in decision.changes) or "; ".join(decision.notes)
        return self._status(tuning, current_values, "True", "Tuning",
                            message or "holding", status)  # fmt: skip

    @staticmethod
    def _values(decision: Decision, spec: AsgiServerSpec) -> dict[str, Any]:
        values: dict[str, Any] = {
            "backlog": decision.backlog,
            "timeoutKeepAlive": decision.keep_alive,
        }
        if getattr(spec.server, "adaptive", False) and decision.limit is not None:
            # The sidecar runs its own latency-driven limit: tune its bounds instead.
            values["adaptiveMin"] = max(1, decision.limit // 2)
            values["adaptiveMax"] = decision.limit * 2
        else:
            values["limitConcurrency"] = decision.limit
        return values

    @staticmethod
    def _record(decision: Decision, observation: Observation) -> list[dict[str, Any]]:
        return [
            {
                "time": timestamp(),
                "setting": c.setting,
                "from": c.old,
                "to": c.new,
                "direction": c.direction,
                "reason": c.reason,
                "inputs": _inputs(observation),
            }
            for c in decision.changes
        ]

    @staticmethod
    def _status(
        tuning: dict[str, Any],
        current_values: dict[str, Any],
        condition_status: str,
        reason: str,
        message: str,
        status: dict[str, Any],
    ) -> dict[str, Any]:
        tuning = {**tuning, "current": current_values, "lastRound": timestamp()}
        conditions = [c for c in status.get("conditions") or [] if c.get("type") != "Tuned"]
        old: dict[str, Any] = next(
            (c for c in status.get("conditions") or [] if c.get("type") == "Tuned"), {}
        )
        since = old.get("lastTransitionTime") if old.get("status") == condition_status else None
        conditions.append(
            {
                "type": "Tuned",
                "status": condition_status,
                "reason": reason,
                "message": message[:1000],
                "lastTransitionTime": since or timestamp(),
            }
        )
        return {"tuning": tuning, "conditions": conditions}
