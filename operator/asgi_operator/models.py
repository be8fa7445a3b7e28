"""The AsgiServer API (asgi.dev/v1alpha1): spec and status as pydantic models.

These models are the single source of truth: ``make crds`` generates the CRD's
structural schema from them (see ``crdgen.py``), and the operator validates
every object it reconciles with them.  The sidecar's ``SidecarLimits`` is
embedded as ``spec.server``, so a setting is described once, in the sidecar.  The
status is ``statusmodels.py``'s.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator
from pydantic.alias_generators import to_camel

from asgi_sidecar.settings import SidecarLimits

GROUP = "asgi.dev"
VERSION = "v1alpha1"
KIND = "AsgiServer"
PLURAL = "asgiservers"
SINGULAR = "asgiserver"
SHORT_NAMES = ["asgi"]


class ApiModel(BaseModel):
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


class Sysctls(ApiModel):
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


class Bounds(ApiModel):
    model_config = ConfigDict(  # merged with ApiModel's configuration
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


class Autotune(ApiModel):
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


Percent = Annotated[str, StringConstraints(pattern=r"^([0-9]|[1-9][0-9]|100)%$")]


class DisruptionBudget(ApiModel):
    model_config = ConfigDict(  # merged with ApiModel's configuration
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "!has(self.minAvailable) || !has(self.maxUnavailable)",
                    "message": "set minAvailable or maxUnavailable, not both",
                }
            ]
        },
    )

    enabled: bool | None = Field(
        default=None,
        description=(
            "Whether the operator keeps a PodDisruptionBudget for the Pods. Unset: when more"
            " than one Pod is wanted (spec.replicas, or the Deployment's count while an"
            " autoscaler sets it)."
        ),
    )
    max_unavailable: int | Percent | None = Field(
        default=None,
        description=(
            "Pods that may be down at once for voluntary disruptions (node drains), a number"
            " or a percentage. Default: 1, when minAvailable is unset."
        ),
    )
    min_available: int | Percent | None = Field(
        default=None,
        description="Pods that must stay up during voluntary disruptions (number or percentage).",
    )


class TargetKind(StrEnum):
    deployment = "Deployment"
    stateful_set = "StatefulSet"


class TargetRef(ApiModel):
    """The user's own workload whose Pods get the proxy at admission (never edited)."""

    api_version: str = Field(
        default="apps/v1", pattern=r"^apps/v1$", description="API version of the workload."
    )
    kind: TargetKind = Field(description="Deployment or StatefulSet.")
    name: str = Field(
        min_length=1, max_length=253, description="Name of the workload in this namespace."
    )


# With targetRef the Pods are the user's workload's: these belong in its pod template.
_NOT_WITH_TARGET = (
    "podTemplate",
    "replicas",
    "command",
    "env",
    "resources",
    "nodeSelector",
    "tolerations",
    "podAnnotations",
)


class AsgiServerSpec(ApiModel):
    model_config = ConfigDict(  # merged with ApiModel's configuration
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "has(self.image) != has(self.targetRef)",
                    "message": "set image (the operator runs the Pods) or targetRef (the proxy"
                    " joins the Pods of your Deployment or StatefulSet), exactly one",
                },
                {
                    "rule": "!has(self.targetRef) || ("
                    + " && ".join(f"!has(self.{name})" for name in _NOT_WITH_TARGET)
                    + ")",
                    "message": "with targetRef the Pods are your workload's: set "
                    + ", ".join(_NOT_WITH_TARGET)
                    + " in its pod template instead",
                },
                {
                    "rule": "!has(self.targetRef) || self.mode == 'sidecar'",
                    "message": "targetRef needs mode sidecar (the proxy joins the app's Pods)",
                },
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

    image: str | None = Field(
        default=None,
        min_length=1,
        description="Container image of the application (the operator runs the Pods).",
    )
    target_ref: TargetRef | None = Field(
        default=None,
        description=(
            "Attach to your own Deployment or StatefulSet instead of running Pods: its pod"
            " template carries the label asgi.dev/inject=<this AsgiServer's name>, and the"
            " operator's admission webhook adds the proxy to each new Pod. The workload is"
            " never edited. Exclusive with image."
        ),
    )
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
    pod_template: dict[str, Any] | None = Field(
        default=None,
        description=(
            "A pod template (metadata.labels and annotations, and a Pod spec) merged onto the"
            " generated one as a strategic merge patch: containers, initContainers, volumes,"
            " env, ports and volumeMounts merge by their keys. The app container is `app`,"
            " the sidecar `proxy`. Fields the operator owns (selector labels, the proxy's"
            " image, command, args, ports and probes, the sysctls, the config volume) must"
            " not be set to other values. It wins over the shorthands env, resources,"
            " nodeSelector, tolerations and podAnnotations."
        ),
    )
    disruption_budget: DisruptionBudget = Field(
        default_factory=DisruptionBudget,
        description="The PodDisruptionBudget of the Pods (node drains keep enough of them up).",
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

    @model_validator(mode="after")
    def _image_or_target(self) -> AsgiServerSpec:
        # The CRD's CEL rule says the same; this holds where the CRD is older than the code.
        if (self.image is None) == (self.target_ref is None):
            raise ValueError("set image or targetRef, exactly one")
        return self

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
