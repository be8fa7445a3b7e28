"""kwok on the local control plane: one fake node whose Pods "run" without a container, and
a way to make a Pod look rejected by its kubelet.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any, Protocol

POD_CIDR = "10.1.0.0/16"
NODE_NAME = "kwok-node-0"
KWOK_ANNOTATION = "kwok.x-k8s.io/node"
KWOK_STATUS_ANNOTATION = "kwok.x-k8s.io/status"  # "custom": kwok leaves the Pod's status alone


class Cluster(Protocol):
    """What kwok's helpers need of ``LocalCluster``."""

    def kubectl(
        self, *args: str, input: str | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]: ...

    def get_json(self, *args: str) -> Any: ...

    def wait_for_pod_ip(self, pod: str, namespace: str = "default") -> str: ...


def kwok_args(kubeconfig: Path, port: int) -> list[str]:
    """kwok's flags: it manages only the nodes annotated ``KWOK_ANNOTATION=fake``."""
    return [
        f"--kubeconfig={kubeconfig}",
        "--manage-all-nodes=false",
        f"--manage-nodes-with-annotation-selector={KWOK_ANNOTATION}=fake",
        f"--cidr={POD_CIDR}",
        "--node-ip=10.1.0.1",
        f"--server-address=127.0.0.1:{port}",
        # a heartbeat: without a renewed Lease the node-lifecycle controller finds the node
        # silent after its 50 s grace period, marks it and every Pod on it not ready, and
        # kwok never makes those Pods ready again
        "--node-lease-duration-seconds=40",
        # hidden (deprecated) in v0.7.0 but honoured; see simulate_pod_failure
        f"--disregard-status-with-annotation-selector={KWOK_STATUS_ANNOTATION}=custom",
    ]


def fake_node() -> dict[str, Any]:
    resources = {"cpu": "64", "memory": "256Gi", "pods": "1000"}
    labels = {"type": "kwok", "kubernetes.io/hostname": NODE_NAME, "kubernetes.io/os": "linux"}
    return {
        "apiVersion": "v1", "kind": "Node", "spec": {},
        "metadata": {"name": NODE_NAME, "labels": labels,
                     "annotations": {KWOK_ANNOTATION: "fake"}},
        "status": {"allocatable": resources, "capacity": resources},
    }  # fmt: skip


def node_ready(cluster: Cluster, name: str = NODE_NAME) -> bool:
    """Ready, and no taint left (the node-lifecycle controller lifts the not-ready one)."""
    out = cluster.kubectl(
        "get", "node", name, "-o",
        'jsonpath={.status.conditions[?(@.type=="Ready")].status} {.spec.taints}',
        check=False,
    )  # fmt: skip
    return out.returncode == 0 and out.stdout.strip() == "True"


def simulate_pod_failure(
    cluster: Cluster,
    pod: str,
    namespace: str = "default",
    reason: str = "SysctlForbidden",
    message: str = 'Pod forbidden sysctl: "net.core.somaxconn" not allowlisted',
) -> None:
    """Make a Pod look as if its kubelet rejected it, as one does a Pod asking for an
    unsafe sysctl: ``phase: Failed`` with ``reason`` and ``message``, Ready False.

    It patches the status subresource; two ways survive kwok v0.7.0 (both tested in
    tests/integration/test_localcluster.py):

    * Pods annotated ``kwok.x-k8s.io/status: custom`` (``KWOK_STATUS_ANNOTATION``; put
      it on a Deployment's Pod template) are left alone by kwok: scheduled onto the
      node but Pending with no IP, as a rejected Pod is.  They are patched at once.
    * Other Pods are patched once kwok made them Running: its ``pod-ready`` stage only
      matches Pods without a ``podIP``, so it does not undo the patch then (patched
      earlier, kwok would).  So this waits for the podIP first.

    A ReplicaSet counts a Failed Pod as gone and creates a replacement, as on a real
    cluster (where the kubelet rejects that one too).  Failed Pods are deleted at
    once; a Pending Pod kwok disregards stays Terminating when deleted (no kubelet)
    until its annotation is removed (kwok's pod-delete stage then finishes it) or
    it is deleted with ``--grace-period=0 --force``.
    """
    meta = cluster.get_json("pod", pod, "-n", namespace)["metadata"]
    if meta.get("annotations", {}).get(KWOK_STATUS_ANNOTATION) != "custom":
        cluster.wait_for_pod_ip(pod, namespace)
    ready = {"type": "Ready", "status": "False", "reason": reason, "message": message}
    status = {"phase": "Failed", "reason": reason, "message": message, "conditions": [ready]}
    cluster.kubectl(
        "patch", "pod", pod, "-n", namespace, "--subresource=status", "--type=strategic",
        "-p", json.dumps({"status": status}),
    )  # fmt: skip
