"""hack/controlplane.py: a real control plane (etcd, kube-apiserver, kube-controller-manager,
kube-scheduler) with kwok faking one node and its Pods."""

from __future__ import annotations

import ipaddress
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hack import controlplane
from tests.support.waiting import eventually

# make test builds the binaries first (make cluster); a missing one fails loudly in start().
pytestmark = [pytest.mark.timeout(240)]

POD_NET = ipaddress.ip_network(controlplane.POD_CIDR)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    started = time.monotonic()
    with controlplane.LocalCluster(tmp_path_factory.mktemp("cluster")) as c:
        print(f"\ncluster cold start: {time.monotonic() - started:.1f}s")
        yield c


def pods(cluster: Any, selector: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = cluster.get_json("pods", "-n", "default", "-l", selector)["items"]
    return items


def test_server_version(cluster: Any) -> None:
    version = json.loads(cluster.kubectl("version", "-o", "json").stdout)
    assert version["serverVersion"]["gitVersion"] == "v1.33.13"
    assert version["clientVersion"]["gitVersion"] == "v1.33.13"
    node = cluster.get_json("node", controlplane.NODE_NAME)
    assert node["metadata"]["labels"]["type"] == "kwok"
    assert not node["spec"].get("taints")


DEPLOYMENT = {
    "apiVersion": "apps/v1",
    "kind": "Deployment",
    "metadata": {"name": "demo", "namespace": "default"},
    "spec": {
        "replicas": 2,
        "selector": {"matchLabels": {"app": "demo"}},
        "template": {
            "metadata": {"labels": {"app": "demo"}},
            "spec": {"containers": [{"name": "app", "image": "example.invalid/app:1"}]},
        },
    },
}


def test_deployment_pods_run_on_kwok_node(cluster: Any) -> None:
    started = time.monotonic()
    cluster.kubectl("apply", "-f", "-", input=json.dumps(DEPLOYMENT))

    def two_running() -> list[dict[str, Any]] | None:
        found = [p for p in pods(cluster, "app=demo") if p["status"].get("phase") == "Running"]
        return found if len(found) == 2 else None

    running = eventually(two_running, what="2 demo Pods Running")
    for pod in running:
        assert pod["spec"]["nodeName"] == controlplane.NODE_NAME
        assert ipaddress.ip_address(pod["status"]["podIP"]) in POD_NET
    replicasets = cluster.get_json("replicasets", "-n", "default", "-l", "app=demo")["items"]
    assert len(replicasets) == 1
    assert replicasets[0]["metadata"]["ownerReferences"][0]["name"] == "demo"
    print(f"\ndeployment to 2 Running Pods: {time.monotonic() - started:.1f}s")


def test_deleting_deployment_collects_replicaset_and_pods(cluster: Any) -> None:
    if not pods(cluster, "app=demo"):
        cluster.kubectl("apply", "-f", "-", input=json.dumps(DEPLOYMENT))
        eventually(lambda: len(pods(cluster, "app=demo")) == 2)
    started = time.monotonic()
    cluster.kubectl("delete", "deployment", "demo", "-n", "default", "--wait=false")

    def collected() -> bool:
        rs = cluster.get_json("replicasets", "-n", "default", "-l", "app=demo")["items"]
        return not rs and not pods(cluster, "app=demo")

    eventually(collected, what="ReplicaSet and Pods garbage-collected")
    print(f"\ngarbage collection: {time.monotonic() - started:.1f}s")


def bare_pod(name: str, annotations: dict[str, str] | None = None) -> str:
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": "default", "annotations": annotations or {}},
        "spec": {"containers": [{"name": "app", "image": "example.invalid/app:1"}]},
    }
    return json.dumps(pod)


def phase_stays(cluster: Any, name: str, phase: str, seconds: float = 3.0) -> dict[str, Any]:
    """The Pod's phase is `phase` now and for `seconds` more (kwok did not rewrite it)."""
    deadline = time.monotonic() + seconds
    while True:
        status: dict[str, Any] = cluster.get_json("pod", name, "-n", "default")["status"]
        assert status["phase"] == phase, status
        if time.monotonic() > deadline:
            return status
        time.sleep(0.5)


def test_patched_failure_of_running_pod_sticks(cluster: Any) -> None:
    """kwok's pod-ready stage only matches Pods without a podIP: once Running, a status
    patch to Failed/SysctlForbidden is left alone."""
    cluster.kubectl("apply", "-f", "-", input=bare_pod("sysctl-running"))
    eventually(
        lambda: cluster.get_json("pod", "sysctl-running")["status"].get("phase") == "Running"
    )
    cluster.simulate_pod_failure("sysctl-running")
    status = phase_stays(cluster, "sysctl-running", "Failed")
    assert status["reason"] == "SysctlForbidden"
    assert "net.core.somaxconn" in status["message"]
    cluster.kubectl("delete", "pod", "sysctl-running", "--wait=true", "--timeout=60s")


def test_pod_kwok_disregards_can_be_failed_before_running(cluster: Any) -> None:
    """As a kubelet does with an unsafe sysctl: the Pod never runs and ends Failed."""
    annotations = {controlplane.KWOK_STATUS_ANNOTATION: "custom"}
    cluster.kubectl("apply", "-f", "-", input=bare_pod("sysctl-never-ran", annotations))
    eventually(lambda: cluster.get_json("pod", "sysctl-never-ran")["spec"].get("nodeName"))
    time.sleep(2)  # were kwok to manage it, it would have a podIP by now
    assert "podIP" not in cluster.get_json("pod", "sysctl-never-ran")["status"]
    cluster.simulate_pod_failure("sysctl-never-ran")
    status = phase_stays(cluster, "sysctl-never-ran", "Failed")
    assert status["reason"] == "SysctlForbidden"
    cluster.kubectl("delete", "pod", "sysctl-never-ran", "--wait=true", "--timeout=60s")


def test_failed_start_reports_log_and_leaves_nothing_behind(tmp_path: Path) -> None:
    """A component that exits early: start() raises with its log and stops the others."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in controlplane.BINARIES:
        (bin_dir / name).symlink_to(controlplane.find_binary(name))
    broken = bin_dir / "kube-scheduler"
    broken.unlink()
    broken.write_text("#!/bin/sh\necho 'scheduler: simulated crash' >&2\nexit 3\n")
    broken.chmod(0o755)
    cluster = controlplane.LocalCluster(tmp_path / "work", bin_dir)
    pids: list[int] = []
    spawn = cluster._spawn

    def recording_spawn(name: str, *args: str) -> None:
        spawn(name, *args)
        pids.append(cluster.processes.procs[-1][1].pid)

    cluster._spawn = recording_spawn
    with pytest.raises(controlplane.ClusterError, match="simulated crash") as caught:
        cluster.start()
    assert "kube-scheduler exited with 3" in str(caught.value)
    assert len(pids) == 5  # etcd, kube-apiserver, kube-controller-manager, scheduler, kwok
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    cluster.stop()  # idempotent


def test_pending_pod_kwok_disregards_is_deleted_once_annotation_goes(cluster: Any) -> None:
    """No kubelet: deleting a Pod kwok disregards leaves it Terminating, until the
    annotation is removed and kwok's pod-delete stage finishes it."""
    annotations = {controlplane.KWOK_STATUS_ANNOTATION: "custom"}
    cluster.kubectl("apply", "-f", "-", input=bare_pod("never-runs", annotations))
    eventually(lambda: cluster.get_json("pod", "never-runs")["spec"].get("nodeName"))
    cluster.kubectl("delete", "pod", "never-runs", "--wait=false")
    time.sleep(2)
    assert cluster.get_json("pod", "never-runs")["metadata"]["deletionTimestamp"]
    cluster.kubectl("annotate", "pod", "never-runs", f"{controlplane.KWOK_STATUS_ANNOTATION}-")
    eventually(
        lambda: cluster.kubectl("get", "pod", "never-runs", check=False).returncode != 0,
        what="never-runs deleted",
    )
