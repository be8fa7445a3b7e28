"""Pure: the proxy injected into a Pod of the user's own workload (``spec.targetRef``).

The admission webhook's core.  The proxy container, its ConfigMap volume, the sysctls
and the app's drain hook are the same pieces ``pods.py`` builds for generated Pods,
merged onto the user's Pod by the same strategic merge as ``spec.podTemplate``
(``podtemplates.merge``).  Traffic reaches the proxy without touching the user's
Service: a Service's named ``targetPort`` is resolved in each Pod, so the app's port
gives its name to the proxy's and is renamed ``asgi-app`` (its own probes follow).

Injecting an injected Pod changes nothing (a re-admission, or ``kubectl get pod -o
yaml`` applied again), and a Pod that cannot take the proxy as it is raises
``InjectionError`` naming why; the webhook then admits it unchanged.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

from asgi_operator import podschema
from asgi_operator.models import AsgiServerSpec
from asgi_operator.pods import (
    CONFIG_VOLUME,
    PROXY_CONTAINER,
    PodOptions,
    PortNames,
    config_volume,
    drain_hook,
    proxy_container,
    sysctl_parts,
)
from asgi_operator.podtemplates import merge

Manifest = dict[str, Any]

INJECT_LABEL = "asgi.dev/inject"
SERVER_LABEL = "asgi.dev/server"  # building.SELECTOR_LABEL: the operator's Pod selector
INJECTED_ANNOTATION = "asgi.dev/injected"
APP_PORT_NAME = "asgi-app"
# The proxy's port names where the app gives it none to take over.
PROXY_HTTP_PORT = "asgi-http"
PROXY_METRICS_PORT = "asgi-metrics"

_PORT_USERS = ("readinessProbe", "livenessProbe", "startupProbe")
_HOOKS = ("postStart", "preStop")
_HANDLERS = ("httpGet", "tcpSocket")


class InjectionError(ValueError):
    """The Pod cannot take the proxy as it is; the message says why and what to change."""


@dataclass(frozen=True, slots=True)
class Injection:
    pod: Manifest
    app_container: str
    # The port name the proxy serves: the app's former name, or PROXY_HTTP_PORT.
    port_name: str


def _containers(pod_spec: Manifest) -> list[Manifest]:
    return [*(pod_spec.get("initContainers") or []), *(pod_spec.get("containers") or [])]


def _app(pod_spec: Manifest, app_port: int) -> Manifest:
    """The app container: the one declaring the app's port, else the first container."""
    containers = pod_spec.get("containers") or []
    if not containers:
        raise InjectionError("the Pod has no containers")
    for container in containers:
        if any(p.get("containerPort") == app_port for p in container.get("ports") or []):
            return dict(container)
    return dict(containers[0])


def _proxy_port_name(pod_spec: Manifest, spec: AsgiServerSpec) -> str | None:
    """The name an injected proxy already serves its port under (None: not injected)."""
    for container in _containers(pod_spec):
        if container.get("name") == PROXY_CONTAINER:
            for port in container.get("ports") or []:
                if port.get("containerPort") == spec.port and port.get("name"):
                    return str(port["name"])
    return None


def _rename_app_port(app: Manifest, spec: AsgiServerSpec) -> str | None:
    """Rename the app's port to APP_PORT_NAME; the name it had, if any, for the proxy."""
    old: str | None = None
    ports = []
    for port in app.get("ports") or []:
        name = port.get("name")
        if port.get("containerPort") == spec.app_port and name and name != APP_PORT_NAME:
            old = name
            ports.append({**port, "name": APP_PORT_NAME})
        else:
            ports.append(port)
    if ports:
        app["ports"] = ports
    if old:
        _follow_rename(app, old)
    return old


def _follow_rename(app: Manifest, old: str) -> None:
    """The app's probes and hooks that named the port now name APP_PORT_NAME.

    A probe's named port is looked up in its own container, so without this the app's
    probes would fail once its port is renamed."""
    handlers = [app.get(name) for name in _PORT_USERS]
    handlers += [(app.get("lifecycle") or {}).get(hook) for hook in _HOOKS]
    for handler in handlers:
        for kind in _HANDLERS:
            action = (handler or {}).get(kind)
            if isinstance(action, dict) and action.get("port") == old:
                action["port"] = APP_PORT_NAME


def _check_free(pod_spec: Manifest, spec: AsgiServerSpec, injected: bool) -> None:
    for container in _containers(pod_spec):
        name = container.get("name")
        if name == PROXY_CONTAINER and not injected:
            raise InjectionError(
                f"the Pod already has a container named {PROXY_CONTAINER}; rename it"
            )
        if name == PROXY_CONTAINER:
            continue
        for port in container.get("ports") or []:
            if port.get("containerPort") in (spec.port, spec.metrics_port):
                raise InjectionError(
                    f"container {name} declares port {port['containerPort']}, which the proxy"
                    " needs; set the AsgiServer's spec.port and spec.metricsPort to free ports"
                )
    volumes = {v.get("name") for v in pod_spec.get("volumes") or []}
    if CONFIG_VOLUME in volumes and not injected:
        raise InjectionError(f"the Pod already has a volume named {CONFIG_VOLUME}; rename it")


def inject(
    pod: Manifest, spec: AsgiServerSpec, server: str, config_map: str, options: PodOptions
) -> Injection:
    """``pod`` with the proxy of the AsgiServer ``server`` (whose tuned ``spec`` it runs)."""
    meta = pod.get("metadata") or {}
    pod_spec = copy.deepcopy(pod.get("spec") or {})
    injected = INJECTED_ANNOTATION in (meta.get("annotations") or {})
    _check_free(pod_spec, spec, injected)
    if options.somaxconn is not None and pod_spec.get("hostNetwork"):
        raise InjectionError(
            "the Pod uses hostNetwork, where net.* sysctls are refused; set the AsgiServer's"
            " spec.sysctls.mode to none"
        )
    app = _app(pod_spec, spec.app_port)
    taken = _rename_app_port(app, spec) or _proxy_port_name(pod_spec, spec) or PROXY_HTTP_PORT
    if not (app.get("lifecycle") or {}).get("preStop"):
        app["lifecycle"] = {**(app.get("lifecycle") or {}), **drain_hook(spec, options.drain_token)}
    pod_spec["containers"] = [
        app if c.get("name") == app["name"] else c for c in pod_spec.get("containers") or []
    ]
    sysctls, init_containers = sysctl_parts(spec, options)
    proxy = proxy_container(
        spec, options.sidecar_image, options.native_sidecars, PortNames(taken, PROXY_METRICS_PORT)
    )
    additions: Manifest = {"volumes": [config_volume(config_map)]}
    if sysctls:
        additions["securityContext"] = {"sysctls": sysctls}
    if options.native_sidecars:
        additions["initContainers"] = [*init_containers, proxy]
    else:
        additions["initContainers"] = init_containers
        additions["containers"] = [proxy]
    patch = {
        "metadata": {
            "labels": {SERVER_LABEL: server},
            "annotations": {INJECTED_ANNOTATION: server},
        },
        "spec": {k: v for k, v in additions.items() if v},
    }
    merged = merge({**pod, "spec": pod_spec}, patch, podschema.load()["mergeKeys"])
    return Injection(pod=merged, app_container=str(app["name"]), port_name=taken)


def is_injected(pod: Manifest) -> bool:
    annotations = (pod.get("metadata") or {}).get("annotations") or {}
    return INJECTED_ANNOTATION in annotations


def json_patch(before: Manifest, after: Manifest) -> list[dict[str, Any]]:
    """The admission response's JSON patch from ``before`` to ``after`` (RFC 6902).

    Whole members are sent: labels, annotations and the spec.  ``add`` on an existing
    member replaces it, and a Pod being created always has a spec."""
    ops: list[dict[str, Any]] = []
    for key in ("labels", "annotations"):
        new = (after.get("metadata") or {}).get(key)
        if new != (before.get("metadata") or {}).get(key):
            ops.append({"op": "add", "path": f"/metadata/{key}", "value": new})
    if after.get("spec") != before.get("spec"):
        ops.append({"op": "replace", "path": "/spec", "value": after["spec"]})
    return ops
