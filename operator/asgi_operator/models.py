"""The AsgiServer API (asgi.dev/v1alpha1): spec and status as pydantic models.

These models are the single source of truth: ``make crds`` generates the CRD's
structural schema from them (see ``crdgen.py``), and the operator validates
every object it reconciles with them.  The sidecar's ``SidecarLimits`` is
embedded as ``spec.server``, so a setting is described once, in the sidecar;
``status.tuning.current`` is a partial of the same model, with the same names.
``AsgiServerStatus`` is the only way the operator writes a status.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

from asgi_sidecar.settings import SidecarLimits

GROUP = "asgi.dev"
VERSION = "v1alpha1"
KIND = "AsgiServer"
PLURAL = "asgiservers"
SINGULAR = "asgiserver"
SHORT_NAMES = ["asgi"]


class _Model(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True
    )


class Mode(StrEnum):
    sidecar = "sidecar"
    embedded = "embedded"


class ClientProfile(StrEnum):
    """Who reuses connections in front of the server, and so how long to keep them idle."""

    mobile = "mobile"
    load_balancer = "loadBalancer"
    browser = "browser"
    custom = "custom"


# The server's idle timeout must outlast the reuse window of whatever is in front of it,
# or it closes connections just as they are reused (502s, "connection closed" errors).
PROFILE_KEEP_ALIVE: dict[ClientProfile, float] = {
    # iOS/Android HTTP stacks reuse idle connections for about 75 s.
    ClientProfile.mobile: 80.0,
    # Cloud balancers (AWS ALB default idle timeout 60 s) reuse until their own timeout.
    ClientProfile.load_balancer: 65.0,
    # Firefox keeps idle connections 115 s; Chrome's idle sockets live longer still but
    # are re-validated, so outlasting Firefox covers the common case.
    ClientProfile.browser: 120.0,
}


class SysctlMode(StrEnum):
    security_context = "securityContext"
    init_container = "initContainer"
    none = "none"


class Sysctls(_Model):
    mode: SysctlMode = Field(
        default=SysctlMode.security_context,
        description=(
            "How net.core.somaxconn reaches the Pod. securityContext: Pod sysctls (each node's"
            " kubelet must allow these unsafe sysctls with --allowed-unsafe-sysctls);"
            " initContainer: a privileged init container writes them in the Pod's network"
            " namespace (needs a namespace at the privileged Pod Security level); none: set"
            " nothing, the status reports the clamp."
        ),
    )
    somaxconn: int | None = Field(
        default=None,
        ge=1,
        le=1_048_576,
        description="net.core.somaxconn for the Pod's network namespace; default: the backlog.",
    )
    tcp_max_syn_backlog: int | None = Field(
        default=None,
        ge=1,
        le=1_048_576,
        description="net.ipv4.tcp_max_syn_backlog for the Pod's network namespace; unset: leave.",
    )


class Bounds(_Model):
    model_config = ConfigDict(  # merged with _Model's configuration
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "!has(self.min) || !has(self.max) || self.min <= self.max",
                    "message": "min must not exceed max",
                }
            ]
        },
    )

    min: float | None = Field(default=None, ge=0, description="Lowest value autotuning may set.")
    max: float | None = Field(default=None, ge=0, description="Highest value autotuning may set.")


class Autotune(_Model):
    enabled: bool = Field(default=False, description="Let the operator tune the limits.")
    interval_seconds: int = Field(
        default=30, ge=5, le=3600, description="Seconds between two tuning decisions."
    )
    limit_concurrency: Bounds = Field(
        default_factory=Bounds, description="Bounds for server.limitConcurrency."
    )
    timeout_keep_alive: Bounds = Field(
        default_factory=Bounds, description="Bounds (seconds) for server.timeoutKeepAlive."
    )
    backlog: Bounds = Field(default_factory=Bounds, description="Bounds for server.backlog.")
    adaptive: bool = Field(
        default=False,
        description=(
            "Run the sidecar's latency-driven limit (as server.adaptive does) and, while"
            " autotuning is enabled, let the operator tune its bounds (server.adaptiveMin and"
            " adaptiveMax) instead of limitConcurrency. The adaptive limit runs when either"
            " this or server.adaptive is true; autotuning tunes the bounds whenever it runs."
        ),
    )
    prometheus_url: str | None = Field(
        default=None,
        description="Read metrics from this Prometheus HTTP API instead of scraping Pods.",
    )


class AsgiServerSpec(_Model):
    model_config = ConfigDict(  # merged with _Model's configuration
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "self.mode != 'embedded' || has(self.app)",
                    "message": "app (module:attribute) is required when mode is embedded",
                },
                {"rule": "self.appPort != self.port", "message": "appPort and port must differ"},
                {
                    "rule": "!has(self.sysctls) || !has(self.sysctls.somaxconn) ||"
                    " !has(self.server) || !has(self.server.backlog) ||"
                    " self.sysctls.mode == 'none' || self.sysctls.somaxconn >= self.server.backlog",
                    "message": "sysctls.somaxconn must be at least server.backlog, or the"
                    " kernel clamps the backlog",
                },
            ]
        },
    )

    image: str = Field(min_length=1, description="Container image of the application.")
    replicas: int | None = Field(
        default=None,
        ge=0,
        description=(
            "Pods to run. Unset: the operator leaves the replica count to others (an HPA)."
        ),
    )
    app_port: int = Field(
        default=8000, ge=1, le=65535, description="Port the application listens on in the Pod."
    )
    port: int = Field(
        default=8080,
        ge=1,
        le=65535,
        description="Public port, served by the sidecar; the Service exposes it.",
    )
    metrics_port: int = Field(
        default=9090, ge=1, le=65535, description="Port of the sidecar's /metrics and probes."
    )
    mode: Mode = Field(
        default=Mode.sidecar,
        description=(
            "sidecar: the sidecar proxies to the app container. embedded: the app container"
            " runs `asgi-sidecar serve <app>` (the image must contain asgi-sidecar)."
        ),
    )
    app: str | None = Field(
        default=None,
        pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$",
        description="The ASGI application as module:attribute, for embedded mode.",
    )
    command: list[str] | None = Field(
        default=None, description="Command of the app container in sidecar mode (image default)."
    )
    sidecar_image: str | None = Field(
        default=None, description="Image of the sidecar; default: the operator's setting."
    )
    server: SidecarLimits = Field(
        default_factory=SidecarLimits,
        description="Keep-alive, concurrency, backlog and timeouts of the sidecar.",
    )
    client_profile: ClientProfile | None = Field(
        default=None,
        description=(
            "Preset for the keep-alive timeout from who reuses connections: mobile (80 s, above"
            " the ~75 s reuse of mobile HTTP stacks), loadBalancer (65 s, above a 60 s balancer"
            " idle timeout), browser (120 s, above Firefox's 115 s), custom or unset: use"
            " server.timeoutKeepAlive."
        ),
    )
    sysctls: Sysctls = Field(
        default_factory=Sysctls, description="Kernel settings of the Pod's network namespace."
    )
    autotune: Autotune = Field(
        default_factory=Autotune, description="Closed-loop tuning of the server settings."
    )
    env: list[dict[str, Any]] = Field(
        default_factory=list, description="Environment variables of the app container."
    )
    resources: dict[str, Any] = Field(
        default_factory=dict, description="Resource requests and limits of the app container."
    )
    pod_annotations: dict[str, str] = Field(
        default_factory=dict, description="Annotations added to the Pods."
    )
    node_selector: dict[str, str] = Field(
        default_factory=dict, description="Node selector of the Pods."
    )
    tolerations: list[dict[str, Any]] = Field(
        default_factory=list, description="Tolerations of the Pods."
    )

    def effective_keep_alive(self) -> float:
        profile = self.client_profile
        if profile is None or profile == ClientProfile.custom:
            return self.server.timeout_keep_alive
        return PROFILE_KEEP_ALIVE[profile]

    def adaptive_limit(self) -> bool:
        """Whether the sidecars run the adaptive limit: server.adaptive or autotune.adaptive."""
        return self.server.adaptive or self.autotune.adaptive

    def effective_somaxconn(self) -> int | None:
        if self.sysctls.mode == SysctlMode.none:
            return None
        return self.sysctls.somaxconn or self.server.backlog


class ConditionStatus(StrEnum):
    true = "True"
    false = "False"
    unknown = "Unknown"


class Condition(_Model):
    type: str = Field(
        description=(
            "Ready, Progressing, SysctlsApplied and Degraded (from reconciling), Tuned (from"
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


class Effective(_Model):
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


class TunedSettings(_Model):
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


class TuningInputs(_Model):
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


class TuningDecision(_Model):
    time: str = Field(description="When the change was decided (RFC 3339).")
    setting: str = Field(description="The setting changed, as spelled in spec.server.")
    from_: float | None = Field(
        default=None, alias="from", description="The value before (null: no limit)."
    )
    to: float = Field(description="The value after.")
    direction: str = Field(description="up or down.")
    reason: str = Field(description="Why, from the metrics of the interval.")
    inputs: TuningInputs = Field(description="The fleet metrics the change was decided from.")


class Tuning(_Model):
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


class AsgiServerStatus(_Model):
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
