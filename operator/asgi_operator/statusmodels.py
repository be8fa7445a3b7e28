"""The AsgiServer status as pydantic models: the only way the operator writes a status.

``crdgen.py`` generates the CRD's status schema from ``AsgiServerStatus``;
``status.tuning.current`` is a partial of the sidecar's ``SidecarLimits``, with the
same names.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from pydantic import Field

from asgi_operator.models import ApiModel
from asgi_sidecar.settings import SidecarLimits


class ConditionStatus(StrEnum):
    true = "True"
    false = "False"
    unknown = "Unknown"


class Condition(ApiModel):
    type: str = Field(
        description=(
            "Ready, Progressing, SysctlsApplied and Degraded (from reconciling), Injected (with"
            " spec.targetRef: whether every Pod of the workload runs the proxy), Tuned (from"
            " autotuning)."
        )
    )
    status: ConditionStatus = Field(description="True, False or Unknown.")
    reason: str = Field(description="CamelCase reason for the last transition.")
    message: str = Field(default="", description="What happened and what to do about it.")
    last_transition_time: str | None = Field(
        default=None, description="When the status last changed (RFC 3339)."
    )
    observed_generation: int | None = Field(
        default=None, description="The spec generation this condition describes."
    )


class Effective(ApiModel):
    backlog: int | None = Field(default=None, description="Backlog the sidecars listen with.")
    somaxconn: int | None = Field(
        default=None, description="net.core.somaxconn set in the Pods (null: not set)."
    )
    backlog_effective: int | None = Field(
        default=None, description="Backlog after the kernel's clamp, as far as it is known."
    )
    limit_concurrency: int | None = Field(
        default=None,
        description="Requests in flight (with the adaptive limit: its starting value).",
    )
    timeout_keep_alive: float | None = Field(default=None, description="Idle timeout (s).")


def _sidecar_description(name: str) -> str:
    field = SidecarLimits.model_fields[name]
    text = (field.description or "").replace(" null means no limit.", "")
    return f"Tuned server.{field.alias}, in place of the spec's (unset: not tuned). {text}"


class TunedSettings(ApiModel):
    """What autotuning set: a partial of the sidecar's settings, with the same names.

    Unset fields keep the spec's value.  The field names and aliases are the
    sidecar's own, so a tuned value is spelled the same in the decision, here, in
    the ConfigMap and in the sidecar (a unit test holds this).
    """

    limit_concurrency: int | None = Field(
        default=None, ge=1, description=_sidecar_description("limit_concurrency")
    )
    timeout_keep_alive: float | None = Field(
        default=None, gt=0, description=_sidecar_description("timeout_keep_alive")
    )
    backlog: int | None = Field(default=None, ge=1, description=_sidecar_description("backlog"))
    adaptive_min: int | None = Field(
        default=None, ge=1, description=_sidecar_description("adaptive_min")
    )
    adaptive_max: int | None = Field(
        default=None, ge=1, description=_sidecar_description("adaptive_max")
    )


class TuningInputs(ApiModel):
    pods: int = Field(description="Pods whose metrics were used.")
    throughput_per_pod: float = Field(description="Admitted responses per second per Pod.")
    in_flight_per_pod: float = Field(description="Mean requests in flight per Pod.")
    p50_seconds: float | None = Field(default=None, description="Median latency (s).")
    p99_seconds: float | None = Field(default=None, description="99th percentile latency (s).")
    rejected_ratio: float = Field(description="Share of requests refused with 503.")
    listen_overflows_per_second: float = Field(
        description="ListenOverflows per second in the Pods' network namespaces."
    )
    idle_closes_per_second: float = Field(
        description="Idle keep-alive connections closed per second per Pod."
    )


class TuningDecision(ApiModel):
    time: str = Field(description="When the change was decided (RFC 3339).")
    setting: str = Field(description="The setting changed, as spelled in spec.server.")
    from_: float | None = Field(
        default=None, alias="from", description="The value before (null: no limit)."
    )
    to: float = Field(description="The value after.")
    direction: str = Field(description="up or down.")
    reason: str = Field(description="Why, from the metrics of the interval.")
    inputs: TuningInputs = Field(description="The fleet metrics the change was decided from.")


class Tuning(ApiModel):
    current: TunedSettings = Field(
        default_factory=TunedSettings,
        description="Values autotuning set; the Pods run the spec with these applied.",
    )
    decisions: list[TuningDecision] = Field(
        default_factory=list, description="The last ten changes, oldest first."
    )
    last_round: str | None = Field(
        default=None, description="When metrics were last read (RFC 3339)."
    )


class AsgiServerStatus(ApiModel):
    observed_generation: int | None = Field(
        default=None, description="The spec generation the operator last reconciled."
    )
    conditions: list[Condition] = Field(
        default_factory=list,
        description="Current state, one entry per type.",
        json_schema_extra={
            "x-kubernetes-list-type": "map",
            "x-kubernetes-list-map-keys": ["type"],
        },
    )
    effective: Effective | None = Field(default=None, description="The settings the Pods run with.")
    replicas: int | None = Field(default=None, description="Pods of the current Deployment.")
    selector: str | None = Field(
        default=None,
        description="Label selector of the Pods (for the scale subresource, an HPA or KEDA).",
    )
    ready_replicas: int | None = Field(default=None, description="Pods that are ready.")
    tuning: Tuning | None = Field(
        default=None, description="Autotuning's current values and recent decisions."
    )

    def condition(self, kind: str) -> Condition | None:
        return next((c for c in self.conditions if c.type == kind), None)

    @classmethod
    def read(cls, status: dict[str, Any] | None) -> AsgiServerStatus:
        """A stored status, leniently: unknown keys are left out, an unreadable one is empty."""
        known = {f.alias or n for n, f in cls.model_fields.items()}
        try:
            return cls.model_validate({k: v for k, v in (status or {}).items() if k in known})
        except ValueError:
            return cls()

    def to_patch(self) -> dict[str, Any]:
        """The status as a merge patch: unset fields are null, so stale ones are removed."""
        patch: dict[str, Any] = self.model_dump(by_alias=True, mode="json")
        return patch
