"""The operator's thin edge to the Kubernetes API (the official client, plain dicts out).

Children are written with server-side apply under one field manager with
``force``: repeated applies of the same manifest are no-ops, fields owned by
others (an HPA's ``replicas``) are left alone because the operator never sends
them, and a hand edit of a field the operator owns is overwritten.
"""

from __future__ import annotations

import datetime
import json
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from asgi_operator.models import GROUP, PLURAL, VERSION

FIELD_MANAGER = "asgi-operator"
APPLY = "application/apply-patch+yaml"

Manifest = dict[str, Any]


def timestamp() -> str:
    """Now, as the API's RFC 3339 timestamps (conditions, events)."""
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _json(response: Any) -> Manifest:
    data: Manifest = json.loads(response.data)
    return data


class Kube:
    def __init__(self, api_client: client.ApiClient) -> None:
        self.api_client = api_client
        self.core = client.CoreV1Api(api_client)
        self.apps = client.AppsV1Api(api_client)
        self.policy = client.PolicyV1Api(api_client)
        self.custom = client.CustomObjectsApi(api_client)
        self.version = client.VersionApi(api_client)
        self.admission = client.AdmissionregistrationV1Api(api_client)

    def apply(self, manifest: Manifest) -> Manifest:
        kind = manifest["kind"]
        meta = manifest["metadata"]
        name, namespace = meta["name"], meta.get("namespace", "")
        common: dict[str, Any] = {
            "field_manager": FIELD_MANAGER,
            "force": True,
            "_content_type": APPLY,
            "_preload_content": False,
        }
        call: Any
        if kind == "Deployment":
            call = self.apps.patch_namespaced_deployment
        elif kind == "Service":
            call = self.core.patch_namespaced_service
        elif kind == "ConfigMap":
            call = self.core.patch_namespaced_config_map
        elif kind == "PodDisruptionBudget":
            call = self.policy.patch_namespaced_pod_disruption_budget
        elif kind == "MutatingWebhookConfiguration":  # cluster-scoped
            return _json(
                self.admission.patch_mutating_webhook_configuration(name, manifest, **common)
            )
        else:  # pragma: no cover - builders make only these kinds
            raise ValueError(f"cannot apply {kind}")
        return _json(call(name, namespace, manifest, **common))

    def delete_disruption_budget(self, namespace: str, name: str) -> bool:
        """Delete the PodDisruptionBudget; False if there was none."""
        try:
            self.policy.delete_namespaced_pod_disruption_budget(
                name, namespace, _preload_content=False
            )
        except ApiException as exc:
            if exc.status == 404:
                return False
            raise
        return True

    def get_deployment(self, namespace: str, name: str) -> Manifest | None:
        try:
            return _json(
                self.apps.read_namespaced_deployment(name, namespace, _preload_content=False)
            )
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def get_asgiserver(self, namespace: str, name: str) -> Manifest | None:
        try:
            return _json(
                self.custom.get_namespaced_custom_object(
                    GROUP, VERSION, namespace, PLURAL, name, _preload_content=False
                )
            )
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def get_workload(self, namespace: str, kind: str, name: str) -> Manifest | None:
        """A Deployment or StatefulSet (an AsgiServer's targetRef); None if absent."""
        read = (
            self.apps.read_namespaced_stateful_set
            if kind == "StatefulSet"
            else self.apps.read_namespaced_deployment
        )
        try:
            return _json(read(name, namespace, _preload_content=False))
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def list_services(self, namespace: str) -> list[Manifest]:
        response = self.core.list_namespaced_service(namespace, _preload_content=False)
        items: list[Manifest] = _json(response).get("items", [])
        return items

    def list_pods(self, namespace: str, selector: str) -> list[Manifest]:
        response = self.core.list_namespaced_pod(
            namespace, label_selector=selector, _preload_content=False
        )
        items: list[Manifest] = _json(response).get("items", [])
        return items

    def annotate_pod(self, namespace: str, name: str, key: str, value: str) -> None:
        """Set one annotation on a Pod (a merge patch); a Pod gone meanwhile is no error."""
        body = {"metadata": {"annotations": {key: value}}}
        try:
            self.core.patch_namespaced_pod(name, namespace, body, _preload_content=False)
        except ApiException as exc:
            if exc.status != 404:
                raise

    def namespace_labels(self, namespace: str) -> dict[str, str]:
        try:
            body = _json(self.core.read_namespace(namespace, _preload_content=False))
        except ApiException as exc:
            if exc.status in (403, 404):
                return {}  # without the right to read namespaces, rely on what Pods show
            raise
        labels: dict[str, str] = body.get("metadata", {}).get("labels") or {}
        return labels

    def patch_status(self, namespace: str, name: str, status: Manifest) -> None:
        self.custom.patch_namespaced_custom_object_status(
            GROUP, VERSION, namespace, PLURAL, name, {"status": status}
        )

    def post_event(self, body: Manifest, reason: str, message: str, kind: str = "Warning") -> None:
        """A core/v1 Event about ``body`` (works from any thread, unlike kopf.warn)."""
        meta = body["metadata"]
        now = timestamp()
        event: Any = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
            "involvedObject": {
                "apiVersion": body.get("apiVersion", f"{GROUP}/{VERSION}"),
                "kind": body.get("kind", "AsgiServer"),
                "name": meta["name"],
                "namespace": meta["namespace"],
                "uid": meta.get("uid"),
            },
            "reason": reason,
            "message": message[:1024],
            "type": kind,
            "source": {"component": FIELD_MANAGER},
            "reportingComponent": FIELD_MANAGER,
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        self.core.create_namespaced_event(meta["namespace"], event, _preload_content=False)

    def server_minor_version(self) -> int:
        info = self.version.get_code()
        digits = "".join(ch for ch in str(info.minor) if ch.isdigit())
        return int(digits or 0)
