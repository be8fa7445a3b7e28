"""The scale subresource (kubectl scale, an HPA) and the PodDisruptionBudget, on a real
control plane with its controllers (the HPA controller among them)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.support.kube import apply, eventually, get, server

pytestmark = pytest.mark.timeout(300)


def _replicas(cluster: Any, namespace: str, name: str) -> tuple[int | None, int | None]:
    body = get(cluster, "asgiserver", name, namespace)
    deployment = get(cluster, "deployment", name, namespace)
    return body["spec"].get("replicas"), deployment["spec"].get("replicas")


def _budget(cluster: Any, namespace: str, name: str) -> dict[str, Any] | None:
    result = cluster.kubectl("get", "pdb", name, "-n", namespace, "-o", "json", check=False)
    return json.loads(result.stdout) if result.returncode == 0 else None


def _reconciled(cluster: Any, namespace: str, name: str) -> bool:
    body = get(cluster, "asgiserver", name, namespace)
    return bool(body.get("status", {}).get("observedGeneration") == body["metadata"]["generation"])


def test_kubectl_scale_goes_through_the_scale_subresource(cluster, operator, namespace):
    apply(cluster, server("web", replicas=1), namespace)
    eventually(lambda: _replicas(cluster, namespace, "web") == (1, 1), what="one replica")
    cluster.kubectl("scale", "asgi", "web", "--replicas=3", "-n", namespace)
    eventually(lambda: _replicas(cluster, namespace, "web") == (3, 3), what="scaled to 3")

    path = f"/apis/asgi.dev/v1alpha1/namespaces/{namespace}/asgiservers/web/scale"

    def scale_status() -> dict[str, Any]:
        scale = json.loads(cluster.kubectl("get", "--raw", path).stdout)
        return scale if scale["status"].get("replicas") == 3 else {}

    scale = eventually(scale_status, what="status replicas 3 in the scale subresource")
    assert scale["kind"] == "Scale"
    assert scale["spec"]["replicas"] == 3
    assert scale["status"]["selector"] == "asgi.dev/server=web"


def test_an_hpa_scales_an_asgi_server_and_the_operator_does_not_fight_it(
    cluster, operator, namespace
):
    apply(cluster, server("auto", replicas=1), namespace)
    eventually(lambda: _replicas(cluster, namespace, "auto") == (1, 1), what="one replica")
    hpa = {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": "auto"},
        "spec": {
            "scaleTargetRef": {"apiVersion": "asgi.dev/v1alpha1", "kind": "AsgiServer",
                               "name": "auto"},
            "minReplicas": 2,
            "maxReplicas": 4,
            "metrics": [{"type": "Resource", "resource": {
                "name": "cpu", "target": {"type": "Utilization", "averageUtilization": 70}}}],
        },
    }  # fmt: skip
    apply(cluster, hpa, namespace)
    # Below minReplicas, the HPA controller scales up without metrics (none run here).
    eventually(lambda: _replicas(cluster, namespace, "auto") == (2, 2), 90, "the HPA's two")
    hpa_status = json.loads(
        cluster.kubectl("get", "hpa", "auto", "-n", namespace, "-o", "json").stdout
    )["status"]
    assert hpa_status["desiredReplicas"] == 2
    # A reconcile (a spec change elsewhere) keeps the HPA's count.
    apply(cluster, server("auto", replicas=2, server={"limitConcurrency": 9}), namespace)
    eventually(
        lambda: json.loads(get(cluster, "configmap", "auto-sidecar", namespace)["data"][
            "sidecar.json"])["limitConcurrency"] == 9,
        what="the change applied",
    )  # fmt: skip
    assert _replicas(cluster, namespace, "auto") == (2, 2)


def test_the_disruption_budget_follows_the_replicas(cluster, operator, namespace):
    apply(cluster, server("pdb", replicas=2), namespace)
    budget = eventually(lambda: _budget(cluster, namespace, "pdb"), what="a budget")
    assert budget["spec"]["maxUnavailable"] == 1
    assert budget["spec"]["selector"] == {"matchLabels": {"asgi.dev/server": "pdb"}}
    assert budget["metadata"]["ownerReferences"][0]["kind"] == "AsgiServer"

    def allowed() -> bool:
        status = _budget(cluster, namespace, "pdb")["status"]  # type: ignore[index]
        return bool(status.get("expectedPods") == 2 and status.get("disruptionsAllowed") == 1)

    eventually(allowed, 90, "the disruption controller counts two Pods, one may go")
    apply(cluster, server("pdb", replicas=1), namespace)
    eventually(lambda: _budget(cluster, namespace, "pdb") is None, what="the budget deleted")
    apply(cluster, server("pdb", replicas=1, disruptionBudget={"minAvailable": 1}), namespace)
    eventually(lambda: _reconciled(cluster, namespace, "pdb"), what="the new spec reconciled")
    assert _budget(cluster, namespace, "pdb") is None  # one replica, enabled unset: none
    spec = {"enabled": True, "minAvailable": "50%"}
    apply(cluster, server("pdb", replicas=1, disruptionBudget=spec), namespace)
    budget = eventually(lambda: _budget(cluster, namespace, "pdb"), what="explicitly enabled")
    assert budget["spec"] == {
        "minAvailable": "50%",
        "selector": {"matchLabels": {"asgi.dev/server": "pdb"}},
    }
