"""A kmock Kubernetes emulator that also understands server-side apply.

kmock's ``KubernetesEmulator`` treats every PATCH as a merge into an existing
object: a PATCH of a missing object answers 404, and every PATCH, even one that
changes nothing, emits a MODIFIED watch event.  A real API server creates the
object on an apply (``application/apply-patch+yaml``) and emits nothing for a
no-op apply.  The operator relies on both (its child event handlers re-apply on
every child event, so a MODIFIED per no-op apply would loop forever), so this
subclass serves applies the way the API server does:

* an apply creates a missing object (ADDED) or merges into an existing one
  (MODIFIED, only if something changed);
* it happens only when no test reaction intercepted the request first, so a
  reaction answering ``409`` or ``500`` leaves the stored object untouched, as
  a rejected request does on a real server.

Everything else (reading, listing, watching, merge patches, creation) is
kmock's own emulation; note that kmock stores a merge patch (a status patch)
even when a test reaction answered it with an error.
"""

from __future__ import annotations

from typing import Any

import aiohttp.web
import attrs
import kmock
import yaml
from kmock._internal import rendering

APPLY = "application/apply-patch+yaml"

ASGISERVERS = kmock.resource("asgi.dev", "v1alpha1", "asgiservers")
DEPLOYMENTS = kmock.resource("apps", "v1", "deployments")
SERVICES = kmock.resource("", "v1", "services")
CONFIGMAPS = kmock.resource("", "v1", "configmaps")
PODS = kmock.resource("", "v1", "pods")
EVENTS = kmock.resource("", "v1", "events")
NAMESPACES = kmock.resource("", "v1", "namespaces")


def is_apply(request: kmock.Request) -> bool:
    content_type = request.headers.get("Content-Type", "")
    return request.method == kmock.method.PATCH and content_type.startswith(APPLY)


@attrs.define(kw_only=True)
class ApplyingEmulator(kmock.KubernetesEmulator):
    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        # Below any reaction a test adds (priority 0), above kmock's fallbacks (-inf).
        (self**-1)[is_apply] << self._serve_apply

    async def _handle(self, request: kmock.Request) -> aiohttp.web.StreamResponse:
        if is_apply(request):
            # Skip KubernetesEmulator._handle: it would merge (or 404) before any reaction runs.
            return await super(kmock.KubernetesEmulator, self)._handle(request)
        return await super()._handle(request)

    def watchers(self, resource: kmock.resource) -> int:
        """How many watch streams of kmock's own emulation follow this resource now."""
        return self._buses[resource].consumer_count

    async def _serve_apply(self, request: kmock.Request) -> rendering.Payload:
        assert request.resource is not None
        assert request.name is not None
        manifest: dict[str, Any] = request.data or yaml.safe_load(request.text)
        key = (request.resource, request.namespace, request.name)
        event: str | None
        async with self._lock:
            if key not in self._objects:
                self._objects[key] = manifest
                event = "ADDED"
            elif self._objects[key].deleted:
                self._objects[key].create(manifest)
                event = "ADDED"
            else:
                before = self._objects[key].raw
                self._objects[key].patch(manifest)
                event = "MODIFIED" if self._objects[key].raw != before else None
            raw: dict[str, Any] = self._objects[key].raw
            if event is not None:
                await self._buses[request.resource].put({"type": event, "object": raw})
        return raw


def declare_resources(emulator: kmock.KubernetesEmulator) -> None:
    """What discovery must show for kopf to watch the operator's resources."""
    emulator.resources[ASGISERVERS] = kmock.ResourceInfo(
        kind="AsgiServer",
        singular="asgiserver",
        namespaced=True,
        verbs={"get", "list", "watch", "patch", "create", "delete", "update"},
        subresources={"status"},
    )
    for resource, kind in (
        (DEPLOYMENTS, "Deployment"),
        (SERVICES, "Service"),
        (CONFIGMAPS, "ConfigMap"),
        (PODS, "Pod"),
        (EVENTS, "Event"),
    ):
        emulator.resources[resource] = kmock.ResourceInfo(
            kind=kind,
            singular=kind.lower(),
            namespaced=True,
            verbs={"get", "list", "watch", "patch", "create", "delete", "update"},
        )
    # kopf waits for namespaces to be discoverable, even when it watches cluster-wide.
    emulator.resources[NAMESPACES] = kmock.ResourceInfo(
        kind="Namespace", singular="namespace", namespaced=False, verbs={"get", "list", "watch"}
    )


def status_body(code: int, reason: str, message: str) -> dict[str, Any]:
    """The body a real API server sends with an error status."""
    return {
        "apiVersion": "v1",
        "kind": "Status",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }


def asgiserver(namespace: str, name: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "asgi.dev/v1alpha1",
        "kind": "AsgiServer",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "uid": f"uid-{namespace}-{name}",
            "generation": 1,
        },
        "spec": {"image": "example.com/app:1", **spec},
    }
