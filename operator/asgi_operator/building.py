"""Pure builders: an AsgiServer spec in, the manifests of its children out.

No I/O and no kopf here; handlers call these and apply the results with
server-side apply.  What the Pods run with that can change live (limits,
keep-alive) lives only in the ConfigMap; the pod template holds only what needs
new Pods (image, sysctls, ports), so a limits-only change never restarts them.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from asgi_operator.models import (
    GROUP,
    KIND,
    VERSION,
    AsgiServerSpec,
    Mode,
    SysctlMode,
    TunedSettings,
)
from asgi_sidecar.configuring import dump_settings
from asgi_sidecar.settings import SidecarLimits, SidecarSettings

Manifest = dict[str, Any]

CONFIG_DIR = "/etc/asgi-sidecar"
CONFIG_FILE = "sidecar.json"
SELECTOR_LABEL = "asgi.dev/server"
MANAGED_BY = "asgi-operator"
SIDECAR_USER = 65532
# Seconds the Pod keeps serving after it is marked for deletion, before SIGTERM,
# so endpoints and balancers stop sending it new connections first.
DEFAULT_DRAIN_SECONDS = 3
TERMINATION_MARGIN_SECONDS = 5


@dataclass(frozen=True, slots=True)
class Owner:
    name: str
    namespace: str
    uid: str


@dataclass(frozen=True, slots=True)
class BuildOptions:
    sidecar_image: str
    native_sidecars: bool = True
    # somaxconn the current Pods run with; a backlog at or below it applies live.
    current_somaxconn: int | None = None


def labels(owner: Owner) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": owner.name,
        "app.kubernetes.io/instance": owner.name,
        "app.kubernetes.io/component": "asgi-server",
        "app.kubernetes.io/managed-by": MANAGED_BY,
        SELECTOR_LABEL: owner.name,
    }


def owner_reference(owner: Owner) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": KIND,
        "name": owner.name,
        "uid": owner.uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def _metadata(owner: Owner, name: str) -> dict[str, Any]:
    return {
        "name": name,
        "namespace": owner.namespace,
        "labels": labels(owner),
        "ownerReferences": [owner_reference(owner)],
    }


def config_map_name(owner: Owner) -> str:
    return f"{owner.name}-sidecar"


def tuned_spec(spec: AsgiServerSpec, tuned: TunedSettings | None) -> AsgiServerSpec:
    """The spec with the autotuner's current values (``status.tuning.current``) applied.

    The user's spec object is never written; the tuned values reach the Pods
    through the children built from this copy.  ``TunedSettings`` shares the
    sidecar's field names, so the values go into ``spec.server`` as they are.
    """
    update = tuned.model_dump(exclude_none=True) if tuned is not None else {}
    if not update:
        return spec
    server = SidecarLimits.model_validate({**spec.server.model_dump(), **update})
    changes: dict[str, Any] = {"server": server}
    if tuned is not None and tuned.timeout_keep_alive is not None:
        changes["client_profile"] = None  # the tuned keep-alive replaces the preset
    return spec.model_copy(update=changes)


def somaxconn_for(spec: AsgiServerSpec, current: int | None) -> int | None:
    """The somaxconn the Pods should have: explicit, else enough for the backlog.

    Without an explicit value a running somaxconn that already covers the backlog is
    kept, so lowering or raising the backlog within it applies live, with no rollout.
    """
    if spec.sysctls.mode == SysctlMode.none:
        return None
    if spec.sysctls.somaxconn is not None:
        return spec.sysctls.somaxconn
    backlog = spec.server.backlog
    if current is not None and current >= backlog:
        return current
    return backlog


def drain_seconds(spec: AsgiServerSpec) -> int:
    """preStop sleep: the spec's shutdown_delay, or a default that covers endpoint updates."""
    if spec.server.shutdown_delay:
        return max(1, math.ceil(spec.server.shutdown_delay))
    return DEFAULT_DRAIN_SECONDS


def sidecar_settings(spec: AsgiServerSpec) -> SidecarSettings:
    """The sidecar's complete settings: the spec's limits plus the Pod's addresses."""
    limits = spec.server.model_dump()
    limits["timeout_keep_alive"] = spec.effective_keep_alive()
    limits["adaptive"] = spec.adaptive_limit()
    # The Pod's preStop already waited for endpoints to update; the sidecar need not.
    limits["shutdown_delay"] = 0.0
    return SidecarSettings(
        **limits,
        upstream=f"http://127.0.0.1:{spec.app_port}",
        host="0.0.0.0",
        port=spec.port,
        metrics_host="0.0.0.0",
        metrics_port=spec.metrics_port,
    )


def build_config_map(owner: Owner, spec: AsgiServerSpec) -> Manifest:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _metadata(owner, config_map_name(owner)),
        "data": {CONFIG_FILE: dump_settings(sidecar_settings(spec))},
    }


def build_service(owner: Owner, spec: AsgiServerSpec) -> Manifest:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(owner, owner.name),
        "spec": {
            "selector": {SELECTOR_LABEL: owner.name},
            "ports": [
                {"name": "http", "port": spec.port, "targetPort": "http", "protocol": "TCP"},
                {
                    "name": "metrics",
                    "port": spec.metrics_port,
                    "targetPort": "metrics",
                    "protocol": "TCP",
                },
            ],
        },
    }


def _probes(spec: AsgiServerSpec) -> dict[str, Any]:
    return {
        "readinessProbe": {
            "httpGet": {"path": "/readyz", "port": "metrics"},
            "periodSeconds": 2,
            "failureThreshold": 2,
        },
        "livenessProbe": {
            "httpGet": {"path": "/healthz", "port": "metrics"},
            "periodSeconds": 10,
            "failureThreshold": 3,
        },
        "startupProbe": {
            "httpGet": {"path": "/healthz", "port": "metrics"},
            "periodSeconds": 1,
            "failureThreshold": 60,
        },
    }


def _ports(spec: AsgiServerSpec) -> list[dict[str, Any]]:
    return [
        {"name": "http", "containerPort": spec.port, "protocol": "TCP"},
        {"name": "metrics", "containerPort": spec.metrics_port, "protocol": "TCP"},
    ]


_CONFIG_MOUNT = {"name": "asgi-sidecar-config", "mountPath": CONFIG_DIR, "readOnly": True}
_CONFIG_ARGS = ["--config", f"{CONFIG_DIR}/{CONFIG_FILE}"]

_RESTRICTED = {
    "runAsNonRoot": True,
    "runAsUser": SIDECAR_USER,
    "runAsGroup": SIDECAR_USER,
    "readOnlyRootFilesystem": True,
    "allowPrivilegeEscalation": False,
    "capabilities": {"drop": ["ALL"]},
    "seccompProfile": {"type": "RuntimeDefault"},
}


def _sleep(seconds: int) -> dict[str, Any]:
    return {"preStop": {"sleep": {"seconds": seconds}}}


def _sidecar_container(spec: AsgiServerSpec, image: str, native: bool) -> dict[str, Any]:
    container: dict[str, Any] = {
        "name": "asgi-sidecar",
        "image": image,
        "args": ["proxy", *_CONFIG_ARGS],
        "ports": _ports(spec),
        **_probes(spec),
        "lifecycle": _sleep(drain_seconds(spec)),
        "volumeMounts": [_CONFIG_MOUNT],
        "securityContext": _RESTRICTED,
        "resources": {"requests": {"cpu": "50m", "memory": "64Mi"}},
    }
    if native:
        container["restartPolicy"] = "Always"
    return container


def _app_container(spec: AsgiServerSpec) -> dict[str, Any]:
    container: dict[str, Any] = {"name": "app", "image": spec.image}
    if spec.mode == Mode.embedded:
        container["command"] = ["asgi-sidecar", "serve", spec.app or "", *_CONFIG_ARGS]
        container["ports"] = _ports(spec)
        container.update(_probes(spec))
        container["volumeMounts"] = [_CONFIG_MOUNT]
    else:
        if spec.command:
            container["command"] = list(spec.command)
        container["ports"] = [{"name": "app", "containerPort": spec.app_port, "protocol": "TCP"}]
    # The app keeps serving while the Pod drains; it gets SIGTERM after this sleep.
    container["lifecycle"] = _sleep(drain_seconds(spec))
    if spec.env:
        container["env"] = [dict(e) for e in spec.env]
    if spec.resources:
        container["resources"] = dict(spec.resources)
    return container


def _sysctl_list(spec: AsgiServerSpec, somaxconn: int) -> list[tuple[str, int]]:
    values = [("net.core.somaxconn", somaxconn)]
    if spec.sysctls.tcp_max_syn_backlog is not None:
        values.append(("net.ipv4.tcp_max_syn_backlog", spec.sysctls.tcp_max_syn_backlog))
    return values


def build_deployment(owner: Owner, spec: AsgiServerSpec, options: BuildOptions) -> Manifest:
    sidecar_image = spec.sidecar_image or options.sidecar_image
    somaxconn = somaxconn_for(spec, options.current_somaxconn)
    pod_spec: dict[str, Any] = {
        "containers": [_app_container(spec)],
        "volumes": [{"name": "asgi-sidecar-config", "configMap": {"name": config_map_name(owner)}}],
        "terminationGracePeriodSeconds": (
            drain_seconds(spec)
            + math.ceil(spec.server.timeout_graceful_shutdown)
            + TERMINATION_MARGIN_SECONDS
        ),
    }
    init_containers: list[dict[str, Any]] = []
    if somaxconn is not None and spec.sysctls.mode == SysctlMode.security_context:
        pod_spec["securityContext"] = {
            "sysctls": [{"name": n, "value": str(v)} for n, v in _sysctl_list(spec, somaxconn)]
        }
    elif somaxconn is not None and spec.sysctls.mode == SysctlMode.init_container:
        init_containers.append(
            {
                "name": "sysctls",
                "image": sidecar_image,
                "args": ["sysctl", *(f"{n}={v}" for n, v in _sysctl_list(spec, somaxconn))],
                "securityContext": {"privileged": True, "runAsUser": 0, "runAsNonRoot": False},
            }
        )
    if spec.mode == Mode.sidecar:
        sidecar = _sidecar_container(spec, sidecar_image, options.native_sidecars)
        if options.native_sidecars:
            init_containers.append(sidecar)
        else:
            pod_spec["containers"].insert(0, sidecar)
    if init_containers:
        pod_spec["initContainers"] = init_containers
    if spec.node_selector:
        pod_spec["nodeSelector"] = dict(spec.node_selector)
    if spec.tolerations:
        pod_spec["tolerations"] = [dict(t) for t in spec.tolerations]
    template_metadata: dict[str, Any] = {"labels": labels(owner)}
    annotations = dict(spec.pod_annotations)
    annotations.update(
        {
            "prometheus.io/scrape": "true",
            "prometheus.io/port": str(spec.metrics_port),
            "prometheus.io/path": "/metrics",
        }
    )
    template_metadata["annotations"] = annotations
    deployment_spec: dict[str, Any] = {
        "selector": {"matchLabels": {SELECTOR_LABEL: owner.name}},
        "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0}},
        "template": {"metadata": template_metadata, "spec": pod_spec},
    }
    if spec.replicas is not None:
        deployment_spec["replicas"] = spec.replicas
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _metadata(owner, owner.name),
        "spec": deployment_spec,
    }


def current_somaxconn(deployment: Manifest | None) -> int | None:
    """The somaxconn a live Deployment's pod template sets, whichever the mode."""
    if not deployment:
        return None
    pod = deployment.get("spec", {}).get("template", {}).get("spec", {})
    for sysctl in pod.get("securityContext", {}).get("sysctls", []) or []:
        if sysctl.get("name") == "net.core.somaxconn":
            return int(sysctl["value"])
    for init in pod.get("initContainers", []) or []:
        for arg in init.get("args", []) or []:
            if isinstance(arg, str) and arg.startswith("net.core.somaxconn="):
                return int(arg.split("=", 1)[1])
    return None


def build_children(owner: Owner, spec: AsgiServerSpec, options: BuildOptions) -> list[Manifest]:
    return [
        build_config_map(owner, spec),
        build_service(owner, spec),
        build_deployment(owner, spec, options),
    ]


def canonical(manifest: Manifest) -> str:
    """Stable text of a manifest (for golden files and comparisons)."""
    return json.dumps(manifest, indent=2, sort_keys=True) + "\n"
