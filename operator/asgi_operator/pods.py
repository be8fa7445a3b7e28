"""Pure builder of the pod template: the app, the proxy, the sysctls, and the user's template.

The generated template is built from the spec (with its shorthands ``env``,
``resources``, ``command``, ``nodeSelector``, ``tolerations``, ``podAnnotations``),
then ``spec.podTemplate`` is merged onto it (``podtemplates.py``), so the template
wins over the shorthands; the fields ``owned_paths`` lists win over both, and a
template that changes one is refused, naming the field.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from asgi_operator import podschema
from asgi_operator.models import AsgiServerSpec, Mode, SysctlMode
from asgi_operator.podtemplates import Path, container_path, each_item, merge_owned

Manifest = dict[str, Any]

APP_CONTAINER = "app"
PROXY_CONTAINER = "proxy"
SYSCTLS_CONTAINER = "sysctls"
CONFIG_VOLUME = "asgi-sidecar-config"
CONFIG_DIR = "/etc/asgi-sidecar"
CONFIG_FILE = "sidecar.json"
SIDECAR_USER = 65532
# Seconds the Pod keeps serving after it is marked for deletion, before SIGTERM,
# so endpoints and balancers stop sending it new connections first.
DEFAULT_DRAIN_SECONDS = 3
TERMINATION_MARGIN_SECONDS = 5
SOMAXCONN = "net.core.somaxconn"
DRAIN_TOKEN_HEADER = "X-Drain-Token"
SYN_BACKLOG = "net.ipv4.tcp_max_syn_backlog"

# The proxy's fields a user's template may not change (it may add env, resources...).
_PROBES = ("readinessProbe", "livenessProbe", "startupProbe")
_PROXY_OWNED = ("image", "command", "args", "ports", *_PROBES, "restartPolicy")
# In embedded mode the app container is the server the operator configures.
_EMBEDDED_OWNED = ("command", "args", "ports", *_PROBES)


@dataclass(frozen=True, slots=True)
class PodOptions:
    sidecar_image: str
    native_sidecars: bool
    somaxconn: int | None  # what the Pods' sysctls set; None: set none
    drain_token: str | None = None  # for the app's preStop GET /drain


def drain_seconds(spec: AsgiServerSpec) -> int:
    """preStop sleep: the spec's shutdown_delay, or a default that covers endpoint updates."""
    if spec.server.shutdown_delay:
        return max(1, math.ceil(spec.server.shutdown_delay))
    return DEFAULT_DRAIN_SECONDS


@dataclass(frozen=True, slots=True)
class PortNames:
    """What the server's ports are called in the Pod (a Service's named targetPort)."""

    http: str = "http"
    metrics: str = "metrics"


GENERATED_PORTS = PortNames()


def _probes(metrics: str) -> dict[str, Any]:
    return {
        "readinessProbe": {
            "httpGet": {"path": "/readyz", "port": metrics},
            "periodSeconds": 2,
            "failureThreshold": 2,
        },
        "livenessProbe": {
            "httpGet": {"path": "/healthz", "port": metrics},
            "periodSeconds": 10,
            "failureThreshold": 3,
        },
        "startupProbe": {
            "httpGet": {"path": "/healthz", "port": metrics},
            "periodSeconds": 1,
            "failureThreshold": 60,
        },
    }


def _ports(spec: AsgiServerSpec, names: PortNames) -> list[dict[str, Any]]:
    return [
        {"name": names.http, "containerPort": spec.port, "protocol": "TCP"},
        {"name": names.metrics, "containerPort": spec.metrics_port, "protocol": "TCP"},
    ]


_CONFIG_MOUNT = {"name": CONFIG_VOLUME, "mountPath": CONFIG_DIR, "readOnly": True}
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


# The sysctls init container: root and privileged, by design (see "sysctls.mode" in the
# README); it writes only /proc/sys, which a privileged container gets writable.
_SYSCTLS_SECURITY = {
    "privileged": True,
    "runAsUser": 0,
    "runAsNonRoot": False,
    "readOnlyRootFilesystem": True,
}
# About 35 MB at its peak. The requests stay below the proxy's, so the Pod's effective
# request (the larger of an init container's and the running containers') is unchanged.
_SYSCTLS_RESOURCES = {"requests": {"cpu": "10m", "memory": "64Mi"}, "limits": {"memory": "128Mi"}}


def _sleep(seconds: int) -> dict[str, Any]:
    return {"preStop": {"sleep": {"seconds": seconds}}}


def proxy_container(
    spec: AsgiServerSpec, image: str, native: bool, names: PortNames = GENERATED_PORTS
) -> dict[str, Any]:
    """The sidecar container (an init container with restartPolicy Always when native)."""
    container: dict[str, Any] = {
        "name": PROXY_CONTAINER,
        "image": image,
        "args": ["proxy", *_CONFIG_ARGS],
        "ports": _ports(spec, names),
        **_probes(names.metrics),
        "lifecycle": _sleep(drain_seconds(spec)),
        "volumeMounts": [dict(_CONFIG_MOUNT)],
        "securityContext": dict(_RESTRICTED),
        "resources": {"requests": {"cpu": "50m", "memory": "64Mi"}},
    }
    if native:
        container["restartPolicy"] = "Always"
    return container


def drain_hook(spec: AsgiServerSpec, token: str | None) -> dict[str, Any]:
    """The app container's preStop: GET /drain on the metrics port, answered after the
    drain time.  Meanwhile the server is unready and closes each connection after its
    response, so clients whose kept-alive connection (to a ClusterIP, say) stays on this
    Pod reconnect elsewhere before the app gets SIGTERM; a plain sleep left them to 502s.
    The port is a number: a hook's named port is looked up in its own container."""
    get: dict[str, Any] = {
        "path": f"/drain?seconds={drain_seconds(spec)}",
        "port": spec.metrics_port,
    }
    if token is not None:
        get["httpHeaders"] = [{"name": DRAIN_TOKEN_HEADER, "value": token}]
    return {"preStop": {"httpGet": get}}


def _app_container(spec: AsgiServerSpec, token: str | None) -> dict[str, Any]:
    container: dict[str, Any] = {"name": APP_CONTAINER, "image": spec.image}
    if spec.mode == Mode.embedded:
        container["command"] = ["asgi-sidecar", "serve", spec.app or "", *_CONFIG_ARGS]
        container["ports"] = _ports(spec, GENERATED_PORTS)
        container.update(_probes(GENERATED_PORTS.metrics))
        container["volumeMounts"] = [dict(_CONFIG_MOUNT)]
    else:
        if spec.command:
            container["command"] = list(spec.command)
        container["ports"] = [{"name": "app", "containerPort": spec.app_port, "protocol": "TCP"}]
    # The app keeps serving while the Pod drains; it gets SIGTERM after the hook returns.
    container["lifecycle"] = drain_hook(spec, token)
    if spec.env:
        container["env"] = [dict(e) for e in spec.env]
    if spec.resources:
        container["resources"] = dict(spec.resources)
    return container


def sysctl_list(spec: AsgiServerSpec, somaxconn: int) -> list[tuple[str, int]]:
    values = [(SOMAXCONN, somaxconn)]
    if spec.sysctls.tcp_max_syn_backlog is not None:
        values.append((SYN_BACKLOG, spec.sysctls.tcp_max_syn_backlog))
    return values


def config_volume(config_map: str) -> dict[str, Any]:
    return {"name": CONFIG_VOLUME, "configMap": {"name": config_map}}


def sysctl_parts(
    spec: AsgiServerSpec, options: PodOptions
) -> tuple[list[dict[str, str]], list[dict[str, Any]]]:
    """(Pod securityContext sysctls, init containers) that set the kernel values."""
    somaxconn = options.somaxconn
    if somaxconn is None:
        return [], []
    values = sysctl_list(spec, somaxconn)
    if spec.sysctls.mode == SysctlMode.security_context:
        return [{"name": n, "value": str(v)} for n, v in values], []
    if spec.sysctls.mode == SysctlMode.init_container:
        init = {
            "name": SYSCTLS_CONTAINER,
            "image": options.sidecar_image,
            "args": ["sysctl", *(f"{n}={v}" for n, v in values)],
            "securityContext": dict(_SYSCTLS_SECURITY),
            "resources": dict(_SYSCTLS_RESOURCES),
        }
        return [], [init]
    return [], []


def _pod_spec(spec: AsgiServerSpec, config_map: str, options: PodOptions) -> dict[str, Any]:
    pod_spec: dict[str, Any] = {
        "containers": [_app_container(spec, options.drain_token)],
        "volumes": [config_volume(config_map)],
        "terminationGracePeriodSeconds": (
            drain_seconds(spec)
            + math.ceil(spec.server.timeout_graceful_shutdown)
            + TERMINATION_MARGIN_SECONDS
        ),
    }
    sysctls, init_containers = sysctl_parts(spec, options)
    if sysctls:
        pod_spec["securityContext"] = {"sysctls": sysctls}
    if spec.mode == Mode.sidecar:
        proxy = proxy_container(spec, options.sidecar_image, options.native_sidecars)
        if options.native_sidecars:
            init_containers.append(proxy)
        else:
            pod_spec["containers"].insert(0, proxy)
    if init_containers:
        pod_spec["initContainers"] = init_containers
    if spec.node_selector:
        pod_spec["nodeSelector"] = dict(spec.node_selector)
    if spec.tolerations:
        pod_spec["tolerations"] = [dict(t) for t in spec.tolerations]
    return pod_spec


def pod_somaxconn(pod: Manifest) -> int | None:
    """net.core.somaxconn a Pod or pod template sets, by its sysctls or its init container."""
    spec = pod.get("spec") or {}
    for sysctl in (spec.get("securityContext") or {}).get("sysctls") or []:
        if sysctl.get("name") == SOMAXCONN:
            return int(sysctl["value"])
    for init in spec.get("initContainers") or []:
        for arg in init.get("args") or []:
            if isinstance(arg, str) and arg.startswith(SOMAXCONN + "="):
                return int(arg.split("=", 1)[1])
    return None


def owned_paths(template: Manifest, spec: AsgiServerSpec) -> list[Path]:
    """The fields of a generated template that a user's template must leave as they are."""
    owned: list[Path] = [("metadata", "labels", name) for name in template["metadata"]["labels"]]
    owned += [
        ("metadata", "annotations", name)
        for name in template["metadata"]["annotations"]
        if name.startswith("prometheus.io/")
    ]
    owned += list(each_item(template, ("spec", "securityContext", "sysctls"), "name"))
    owned.append(("spec", "volumes", ("name", CONFIG_VOLUME)))
    sysctls = container_path(template, SYSCTLS_CONTAINER)
    if sysctls is not None:
        owned.append(sysctls)
    app = container_path(template, APP_CONTAINER)
    if app is not None:
        owned.append((*app, "image"))
        if spec.mode == Mode.embedded:
            owned += [(*app, name) for name in _EMBEDDED_OWNED]
        else:
            owned.append((*app, "ports", ("containerPort", spec.app_port)))
    proxy = container_path(template, PROXY_CONTAINER)
    if proxy is not None:
        owned += [(*proxy, name) for name in _PROXY_OWNED]
    for container in (app, proxy):
        if container is not None:
            owned.append((*container, "volumeMounts", ("mountPath", CONFIG_DIR)))
    return owned


def build_pod_template(
    spec: AsgiServerSpec, labels: dict[str, str], config_map: str, options: PodOptions
) -> Manifest:
    """The Deployment's pod template; ``TemplateConflictError`` names refused fields."""
    annotations = dict(spec.pod_annotations)
    annotations.update(
        {
            "prometheus.io/scrape": "true",
            "prometheus.io/port": str(spec.metrics_port),
            "prometheus.io/path": "/metrics",
        }
    )
    generated: Manifest = {
        "metadata": {"labels": dict(labels), "annotations": annotations},
        "spec": _pod_spec(spec, config_map, options),
    }
    if not spec.pod_template:
        return generated
    merge_keys = podschema.load()["mergeKeys"]
    return merge_owned(generated, spec.pod_template, merge_keys, owned_paths(generated, spec))
