"""Pure builders: an AsgiServer spec in, the manifests of its children out.

No I/O and no kopf here; handlers call these and apply the results with
server-side apply.  What the Pods run with that can change live (limits,
keep-alive) lives only in the ConfigMap; the pod template holds only what needs
new Pods (image, sysctls, ports), so a limits-only change never restarts them.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from asgi_operator.models import GROUP, KIND, VERSION, AsgiServerSpec, SysctlMode
from asgi_operator.pods import CONFIG_FILE, PodOptions, build_pod_template, pod_somaxconn
from asgi_operator.statusmodels import TunedSettings
from asgi_sidecar.configuring import dump_settings
from asgi_sidecar.settings import SidecarLimits, SidecarSettings

Manifest = dict[str, Any]

SELECTOR_LABEL = "asgi.dev/server"
MANAGED_BY = "asgi-operator"


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
    # replicas of the live Deployment (an autoscaler's, when spec.replicas is unset).
    current_replicas: int | None = None


def labels(owner: Owner) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": owner.name,
        "app.kubernetes.io/instance": owner.name,
        "app.kubernetes.io/component": "asgi-server",
        "app.kubernetes.io/managed-by": MANAGED_BY,
        SELECTOR_LABEL: owner.name,
    }


def selector(owner: Owner) -> str:
    """The Pods' label selector, as the scale subresource and kubectl spell it."""
    return f"{SELECTOR_LABEL}={owner.name}"


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


def drain_token(owner: Owner) -> str:
    """The token the app container's preStop hook sends to GET /drain (from the uid).

    Not a secret from whoever may read the Pods (the hook carries it); it keeps those who
    can only reach the metrics port from draining a Pod."""
    return hashlib.sha256(f"asgi.dev/drain:{owner.uid}".encode()).hexdigest()[:32]


def sidecar_settings(spec: AsgiServerSpec, token: str | None = None) -> SidecarSettings:
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
        drain_token=token,
    )


CONFIG_HASH_ANNOTATION = "asgi.dev/config-hash"


def config_hash(config_map: Manifest) -> str:
    """A short digest of the sidecar's settings file in a ConfigMap."""
    text = str(config_map.get("data", {}).get(CONFIG_FILE, ""))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def pods_to_nudge(pods: list[Manifest], digest: str) -> list[str]:
    """Running Pods whose ``asgi.dev/config-hash`` is not ``digest``.

    Any update of a Pod makes its kubelet sync it at once, which refreshes its mounted
    ConfigMaps; otherwise a changed ConfigMap reaches a running Pod only on the kubelet's
    periodic sync (about a minute).  Pods that are not running yet mount the new one.
    """
    return [
        pod["metadata"]["name"]
        for pod in pods
        if pod.get("status", {}).get("phase") == "Running"
        and not pod["metadata"].get("deletionTimestamp")
        and (pod["metadata"].get("annotations") or {}).get(CONFIG_HASH_ANNOTATION) != digest
    ]


def build_config_map(owner: Owner, spec: AsgiServerSpec) -> Manifest:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _metadata(owner, config_map_name(owner)),
        "data": {CONFIG_FILE: dump_settings(sidecar_settings(spec, drain_token(owner)))},
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


def desired_replicas(spec: AsgiServerSpec, options: BuildOptions) -> int | None:
    """Pods wanted: spec.replicas, else what the live Deployment has (an autoscaler's)."""
    return spec.replicas if spec.replicas is not None else options.current_replicas


def build_deployment(owner: Owner, spec: AsgiServerSpec, options: BuildOptions) -> Manifest:
    """The Deployment; ``TemplateConflictError`` if spec.podTemplate sets an owned field."""
    pod_options = PodOptions(
        sidecar_image=spec.sidecar_image or options.sidecar_image,
        native_sidecars=options.native_sidecars,
        somaxconn=somaxconn_for(spec, options.current_somaxconn),
        drain_token=drain_token(owner),
    )
    template = build_pod_template(spec, labels(owner), config_map_name(owner), pod_options)
    deployment_spec: dict[str, Any] = {
        "selector": {"matchLabels": {SELECTOR_LABEL: owner.name}},
        "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0}},
        "template": template,
    }
    # Unset, the replica count is left to whoever scales the Deployment's owner (an HPA
    # through the scale subresource writes spec.replicas, so it is set again).
    if spec.replicas is not None:
        deployment_spec["replicas"] = spec.replicas
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _metadata(owner, owner.name),
        "spec": deployment_spec,
    }


def build_disruption_budget(
    owner: Owner, spec: AsgiServerSpec, options: BuildOptions
) -> Manifest | None:
    """The PodDisruptionBudget, or None when there should be none."""
    budget = spec.disruption_budget
    enabled = budget.enabled
    if enabled is None:
        wanted = desired_replicas(spec, options)
        enabled = wanted is not None and wanted > 1
    if not enabled:
        return None
    pdb_spec: dict[str, Any] = {"selector": {"matchLabels": {SELECTOR_LABEL: owner.name}}}
    if budget.min_available is not None:
        pdb_spec["minAvailable"] = budget.min_available
    else:
        pdb_spec["maxUnavailable"] = 1 if budget.max_unavailable is None else budget.max_unavailable
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": _metadata(owner, owner.name),
        "spec": pdb_spec,
    }


def current_somaxconn(deployment: Manifest | None) -> int | None:
    """The somaxconn a live Deployment's pod template sets, whichever the mode."""
    if not deployment:
        return None
    return pod_somaxconn(deployment.get("spec", {}).get("template", {}))


def build_children(owner: Owner, spec: AsgiServerSpec, options: BuildOptions) -> list[Manifest]:
    """Every child, in apply order; ``TemplateConflictError`` refuses the whole set."""
    children = [
        build_config_map(owner, spec),
        build_service(owner, spec),
        build_deployment(owner, spec, options),
    ]
    budget = build_disruption_budget(owner, spec, options)
    if budget is not None:
        children.append(budget)
    return children


def canonical(manifest: Manifest) -> str:
    """Stable text of a manifest (for golden files and comparisons)."""
    return json.dumps(manifest, indent=2, sort_keys=True) + "\n"
