"""The slow tuning loop for one AsgiServer: scrape, observe, decide, report.

The tuner keeps its values in memory and hands them to reconcile directly
(``Autotuner.report``); the user's spec is never written.  Reconcile builds the
ConfigMap from the spec with those values applied, so limits and keep-alive
reach the sidecars live and a backlog beyond the Pods' somaxconn rolls them, and
writes them, with the ``Tuned`` condition, into ``status.tuning`` in the same
status as its own conditions.  Each decision with its inputs and reason is kept
in ``status.tuning.decisions`` (the last ten), posted as an Event, logged and
counted in the operator's metrics.  After an operator restart tuning resumes
from the stored values (read once) and rebuilds its history.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge
from pydantic import ValidationError

from asgi_operator.attaching import fleet_somaxconn
from asgi_operator.building import SELECTOR_LABEL, current_somaxconn
from asgi_operator.kube import Kube, timestamp
from asgi_operator.models import AsgiServerSpec, SysctlMode
from asgi_operator.observations import LIMIT, setting_alias
from asgi_operator.observing import Snapshot, not_yet_live, observe
from asgi_operator.scraping import (
    load_address_map,
    query_prometheus,
    ready_pod_addresses,
    scrape_pods,
)
from asgi_operator.statusing import Tuned, Verdict
from asgi_operator.statusmodels import (
    AsgiServerStatus,
    TunedSettings,
    Tuning,
    TuningDecision,
    TuningInputs,
)
from asgi_operator.tuning import WINDOW, Bounds, Change, Current, Decision, Observation, decide

log = logging.getLogger("asgi_operator.autotune")

KEEP_DECISIONS = 10
# At most this long (or two intervals) the tuner waits for a decision to show in the
# Pods' scrapes before it decides again; the kubelet is nudged, so it takes seconds.
APPLY_TIMEOUT = 60.0


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
    tuned: Tuned
    history: deque[Observation] = field(default_factory=lambda: deque(maxlen=WINDOW))
    last_round: dict[str, Snapshot] = field(default_factory=dict)
    past: list[tuple[int, Change]] = field(default_factory=list)
    rounds: int = 0
    next_due: float = 0.0
    # Since when the last decision waits to show in the Pods' scrapes (None: nothing waits).
    applying_since: float | None = None


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


def _inputs(o: Observation) -> TuningInputs:
    return TuningInputs(
        pods=o.pods,
        throughput_per_pod=round(o.throughput, 3),
        in_flight_per_pod=round(o.in_flight, 3),
        p50_seconds=None if o.p50 is None else round(o.p50, 6),
        p99_seconds=None if o.p99 is None else round(o.p99, 6),
        rejected_ratio=round(o.rejected_ratio, 4),
        listen_overflows_per_second=round(o.listen_overflows, 3),
        idle_closes_per_second=round(o.idle_closes, 3),
    )


def tuned_values(decision: Decision, spec: AsgiServerSpec) -> TunedSettings:
    """The decision as sidecar settings: with the adaptive limit on, its bounds follow."""
    values = decision.values()
    limit = decision.limit
    if spec.adaptive_limit():
        # The sidecar runs its own latency-driven limit: tune its bounds instead.
        del values[LIMIT]
        if limit is not None:
            values[setting_alias("adaptive_min")] = max(1, limit // 2)
            values[setting_alias("adaptive_max")] = limit * 2
    return TunedSettings.model_validate(values)


def current_settings(spec: AsgiServerSpec, tuned: TunedSettings, somaxconn: int | None) -> Current:
    """What decide() starts from: the tuned values over the spec's (the adaptive bounds' middle)."""
    limit = tuned.limit_concurrency or spec.server.limit_concurrency
    if spec.adaptive_limit() and tuned.adaptive_max is not None:
        limit = max(1, tuned.adaptive_max // 2)  # the middle of the tuned bounds
    return Current(
        limit=limit,
        backlog=tuned.backlog or spec.server.backlog,
        keep_alive=tuned.timeout_keep_alive or spec.effective_keep_alive(),
        somaxconn=somaxconn,
        can_raise_somaxconn=spec.sysctls.mode != SysctlMode.none and spec.sysctls.somaxconn is None,
    )


def _resumed(body: dict[str, Any]) -> Tuned:
    """What an earlier run of the operator stored, so tuning resumes from its values."""
    status = AsgiServerStatus.read(body.get("status"))
    condition = status.condition("Tuned")
    verdict = (
        Verdict(condition.status.value, condition.reason, condition.message)
        if condition is not None
        else Verdict("Unknown", "Collecting", "no metrics read yet")
    )
    return Tuned(tuning=status.tuning or Tuning(), verdict=verdict)


class Autotuner:
    """Tunes every AsgiServer with autotune enabled; ``report`` hands the results to reconcile."""

    def __init__(
        self, kube: Kube, metrics: TuningMetrics, address_map_file: Path | None = None
    ) -> None:
        self.kube = kube
        self.metrics = metrics
        self.address_map_file = address_map_file
        self.states: dict[str, TunerState] = {}

    def due(self, body: dict[str, Any], now: float) -> bool:
        try:
            spec = AsgiServerSpec.model_validate(body.get("spec") or {})
        except ValidationError:
            return False  # reconcile reports it as InvalidSpec
        if not spec.autotune.enabled:
            return False
        state = self.states.get(body["metadata"]["uid"])
        return state is None or now >= state.next_due

    def report(self, body: dict[str, Any], spec: AsgiServerSpec) -> Tuned | None:
        """The tuned values and the Tuned verdict for reconcile (None: not tuned)."""
        uid = body["metadata"]["uid"]
        if not spec.autotune.enabled:
            self.states.pop(uid, None)
            return None
        state = self.states.get(uid)
        if state is None:
            state = self.states[uid] = TunerState(tuned=_resumed(body))
        return state.tuned

    def forget(self, uid: str) -> None:
        self.states.pop(uid, None)

    def tune(self, body: dict[str, Any]) -> bool:
        """One round for one AsgiServer; True when the tuned values changed."""
        meta = body["metadata"]
        name, namespace = meta["name"], meta["namespace"]
        spec = AsgiServerSpec.model_validate(body.get("spec") or {})
        self.report(body, spec)
        state = self.states[meta["uid"]]
        state.next_due = time.monotonic() + spec.autotune.interval_seconds
        before = state.tuned.tuning
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
        if (
            state.applying_since is not None
            and round_
            and self._applying(state, before, spec, round_)
        ):
            return False
        if observation is None:
            self._report(state, before, Verdict("Unknown", "Collecting",
                         "first round of metrics read; deciding from the next one"))  # fmt: skip
            return False
        state.history.append(observation)
        state.rounds += 1
        if spec.target_ref is not None:  # the Pods are the user's; the webhook set their sysctls
            somaxconn = fleet_somaxconn(pods)
        else:
            somaxconn = current_somaxconn(self.kube.get_deployment(namespace, name))
        current = current_settings(spec, before.current, somaxconn)
        decision = decide(list(state.history), current, bounds_of(spec), state.past)
        labels = {"namespace": namespace, "name": name}
        self.metrics.frozen.labels(**labels).set(1 if decision.frozen else 0)
        if decision.frozen:
            self._report(state, before, Verdict("False", "MetricsStale",
                         f"tuning frozen, settings kept: {decision.frozen}"))  # fmt: skip
            return False
        now = timestamp()
        records = [
            TuningDecision(
                time=now,
                setting=c.setting,
                from_=c.old,
                to=c.new,
                direction=c.direction,
                reason=c.reason,
                inputs=_inputs(observation),
            )
            for c in decision.changes
        ]
        tuned = tuned_values(decision, spec)
        within = ""
        if spec.adaptive_limit() and tuned.adaptive_max is not None:
            within = f" (the adaptive limit within {tuned.adaptive_min}..{tuned.adaptive_max})"
        for change in decision.changes:
            state.past.append((state.rounds, change))
            self.metrics.decisions.labels(
                setting=change.setting, direction=change.direction, **labels
            ).inc()
            said = f"{change.setting} {change.old} -> {change.new}{within}: {change.reason}"
            log.info("AsgiServer %s/%s: %s", namespace, name, said)
            self.kube.post_event(body, "AutotuneDecision", said, kind="Normal")
        current_values = TunedSettings.model_validate(
            {
                **before.current.model_dump(exclude_none=True),
                **tuned.model_dump(exclude_none=True),
            }
        )
        for setting, value in current_values.model_dump(by_alias=True).items():
            if value is not None:
                self.metrics.target.labels(setting=setting, **labels).set(float(value))
        tuning = before.model_copy(
            update={
                "current": current_values,
                "decisions": [*before.decisions, *records][-KEEP_DECISIONS:],
            }
        )
        if decision.changes:
            state.applying_since = time.monotonic()
        message = "; ".join(c.reason for c in decision.changes) or "; ".join(decision.notes)
        self._report(state, tuning, Verdict("True", "Tuning", message or "holding"))
        return current_values != before.current

    def _applying(
        self,
        state: TunerState,
        tuning: Tuning,
        spec: AsgiServerSpec,
        round_: dict[str, Snapshot],
    ) -> bool:
        """Whether the last decision is still on its way to the Pods (then no new one).

        A decision is judged only once every Pod runs it, or after ``APPLY_TIMEOUT``
        (a Pod that never reloads should not freeze tuning); the round in which it shows
        only starts a clean interval, measured wholly with the new values.
        """
        assert state.applying_since is not None
        current = tuning.current
        bounds = None
        if spec.adaptive_limit() and current.adaptive_max is not None:
            bounds = (current.adaptive_min or 1, current.adaptive_max)
        behind = not_yet_live(round_, current.limit_concurrency, current.timeout_keep_alive, bounds)
        waited = time.monotonic() - state.applying_since
        if behind and waited < max(APPLY_TIMEOUT, 2 * spec.autotune.interval_seconds):
            self._report(state, tuning, Verdict("True", "Applying",
                         f"waiting for {len(behind)} Pods to run the last decision"))  # fmt: skip
            return True
        if behind:
            log.warning("%d Pods still not running the tuned values after %.0fs: %s",
                        len(behind), waited, ", ".join(behind))  # fmt: skip
        state.applying_since = None
        self._report(state, tuning, Verdict("True", "Applied",
                     f"the last decision runs in the Pods after {waited:.1f}s"))  # fmt: skip
        return True

    @staticmethod
    def _report(state: TunerState, tuning: Tuning, verdict: Verdict) -> None:
        state.tuned = Tuned(
            tuning=tuning.model_copy(update={"last_round": timestamp()}), verdict=verdict
        )
