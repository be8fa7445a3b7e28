"""End to end on a real node: the kubelet starts the containers, applies (or refuses) the
sysctls, mounts the ConfigMap and drains Pods.  Traffic goes from this host to the Pod
IPs on the node's private bridge.

The scenarios run in this order: the kubelet allows net.core.somaxconn for 1, 4 and 5,
and is restarted without the allow-list for 2 and 3.
"""

from __future__ import annotations

import json
import re
import subprocess
import threading
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from hack import nodeimages
from hack.nodeconfig import ALLOWED_SYSCTLS
from tests.support import metrics
from tests.support.endpointload import EndpointLoad
from tests.support.kube import ConfigMapWatch, condition, eventually, get

pytestmark = [pytest.mark.node, pytest.mark.timeout(420)]

DEMO = nodeimages.DEMO_IMAGE
SELECTOR = "asgi.dev/server"


def server(name: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "asgi.dev/v1alpha1",
        "kind": "AsgiServer",
        "metadata": {"name": name},
        "spec": {"image": DEMO, "replicas": 1, **spec},
    }


def apply(cluster: Any, body: dict[str, Any], namespace: str) -> float:
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(body))
    return time.monotonic()


def pods(cluster: Any, namespace: str, name: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = cluster.get_json(
        "pods", "-n", namespace, "-l", f"{SELECTOR}={name}"
    )["items"]
    return items


def ready_pod(cluster: Any, namespace: str, name: str, timeout: float = 180) -> dict[str, Any]:
    def one_ready() -> dict[str, Any] | None:
        for pod in pods(cluster, namespace, name):
            conds = pod.get("status", {}).get("conditions", [])
            meta = pod["metadata"]
            if "deletionTimestamp" not in meta and any(
                c["type"] == "Ready" and c["status"] == "True" for c in conds
            ):
                return pod
        return None

    pod: dict[str, Any] = eventually(one_ready, timeout=timeout, what=f"a ready Pod of {name}")
    return pod


def wait_ready(cluster: Any, namespace: str, name: str, timeout: float = 180) -> dict[str, Any]:
    def ready() -> dict[str, Any]:
        body = get(cluster, "asgiserver", name, namespace)
        return body if condition(body, "Ready").get("status") == "True" else {}

    body: dict[str, Any] = eventually(ready, timeout=timeout, what=f"{name} Ready")
    return body


def in_pod(cluster: Any, namespace: str, pod: str, container: str, *cmd: str) -> str:
    out = cluster.kubectl("exec", "-n", namespace, pod, "-c", container, "--", *cmd)
    return str(out.stdout).strip()


def scrape(ip: str, port: int = 9090) -> dict[str, float]:
    """The sidecar's unlabelled samples, from its /metrics on the Pod IP."""
    return metrics.scrape(f"http://{ip}:{port}/metrics", labelled=False)


def wrk(url: str, connections: int, seconds: int) -> dict[str, float]:
    out = subprocess.run(
        ["wrk", "-t", "2", "-c", str(connections), "-d", f"{seconds}s", "--latency", url],
        capture_output=True, text=True, timeout=seconds + 60, check=True,
    ).stdout  # fmt: skip
    total = re.search(r"(\d+) requests in", out)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    assert total, out
    return {
        "requests": float(total.group(1)),
        "non_2xx": float(non2xx.group(1)) if non2xx else 0.0,
        "socket_errors": float(sum(int(g) for g in errors.groups())) if errors else 0.0,
    }


def test_sysctls_in_the_security_context_reach_the_pods_network_namespace(
    node_cluster, node, node_operator, namespace, report
):
    started = apply(
        node_cluster,
        server("hello", server={"backlog": 1536}, sysctls={"mode": "securityContext"}),
        namespace,
    )
    pod = ready_pod(node_cluster, namespace, "hello")
    pod_ready = time.monotonic() - started
    body = wait_ready(node_cluster, namespace, "hello")
    report["pod_start_seconds"] = round(pod_ready, 2)
    name, ip = pod["metadata"]["name"], pod["status"]["podIP"]
    assert ip.startswith("10.89.1.")
    # Read inside the Pod's network namespace, by the kubelet's exec.
    assert in_pod(node_cluster, namespace, name, "app", "cat", "/proc/sys/net/core/somaxconn") == (
        "1536"
    )
    # The host's own namespace keeps its value: the sysctl is the Pod's alone.
    with open("/proc/sys/net/core/somaxconn") as f:
        assert f.read().strip() != "1536"
    metrics = scrape(ip)
    assert metrics["asgi_listen_backlog"] == 1536
    assert metrics["asgi_net_core_somaxconn"] == 1536
    assert metrics["asgi_listen_backlog_effective"] == 1536
    assert condition(body, "SysctlsApplied")["status"] == "True"
    assert body["status"]["effective"]["somaxconn"] == 1536
    with urllib.request.urlopen(f"http://{ip}:8080/", timeout=5) as response:
        assert json.loads(response.read()) == {"hello": "world"}
    spec = pod["spec"]
    assert spec["securityContext"]["sysctls"] == [{"name": "net.core.somaxconn", "value": "1536"}]
    assert [c["name"] for c in spec["initContainers"]] == ["asgi-sidecar"]  # native sidecar


def test_limits_metrics_and_autotuning_on_real_pods(
    node_cluster, node, node_operator, namespace, report
):
    # Phase 1, static: limit 4 and no queue, /slow holds each slot 0.2 s.
    apply(
        node_cluster,
        server("tuned", server={"limitConcurrency": 4, "queueDepth": 0}),
        namespace,
    )
    pod = ready_pod(node_cluster, namespace, "tuned")
    ip = pod["status"]["podIP"]
    wait_ready(node_cluster, namespace, "tuned")
    assert scrape(ip)["asgi_concurrency_limit"] == 4
    seconds = 5
    static = wrk(f"http://{ip}:8080/slow?seconds=0.2", connections=16, seconds=seconds)
    metrics = scrape(ip)
    ok = static["requests"] - static["non_2xx"]
    # At most 4 at a time for 0.2 s each: 20 per second (plus the last ones in flight).
    assert ok <= 4 / 0.2 * (seconds + 1), static
    assert ok >= 4 / 0.2 * seconds * 0.5, static
    assert static["non_2xx"] > 0, static
    assert static["socket_errors"] == 0, static
    rejected = sum(
        v for k, v in scrape_labelled(ip).items() if k.startswith("asgi_requests_rejected_total")
    )
    # wrk stops counting at its deadline; up to one response per connection was not read
    assert static["non_2xx"] <= rejected <= static["non_2xx"] + 16
    assert metrics["asgi_requests_in_flight"] == 0
    report["static_limit"] = {"limit": 4, **static}

    # Phase 2: the operator tunes limitConcurrency from what it scrapes off the Pod IP.
    # 32 clients keep limit 16 binding on /cpu (3 ms of CPU each, one event loop).
    tuned = server(
        "tuned",
        server={"limitConcurrency": 16, "queueDepth": 0},
        autotune={
            "enabled": True,
            "intervalSeconds": 5,
            "limitConcurrency": {"min": 1, "max": 64},
        },
    )
    apply(node_cluster, tuned, namespace)
    eventually(lambda: scrape(ip)["asgi_concurrency_limit"] == 16, timeout=180,
               what="the ConfigMap's limit 16 reaches the sidecar")  # fmt: skip
    assert pods(node_cluster, namespace, "tuned")[0]["metadata"]["name"] == pod["metadata"]["name"]
    watch = ConfigMapWatch(node_cluster, namespace, "tuned-sidecar")
    with watch:
        load = threading.Thread(
            target=wrk, args=(f"http://{ip}:8080/cpu?ms=3", 32, 150), daemon=True
        )
        load.start()
        changed_at, target = eventually(
            watch.first_change, timeout=120, what="a tuned limit in the ConfigMap"
        )
        live_at = time.monotonic()

        def applied() -> bool:
            nonlocal live_at
            live_at = time.monotonic()
            return scrape(ip)["asgi_concurrency_limit"] != 16

        eventually(applied, timeout=150, what="the sidecar runs the tuned limit")
    live = scrape(ip)["asgi_concurrency_limit"]
    body = get(node_cluster, "asgiserver", "tuned", namespace)
    decisions = [
        d for d in body["status"]["tuning"]["decisions"] if d["setting"] == "limitConcurrency"
    ]
    assert decisions
    assert decisions[0]["from"] == 16
    assert decisions[0]["to"] == target
    assert live in [d["to"] for d in decisions]
    assert decisions[0]["inputs"]["throughputPerPod"] > 0
    assert body["spec"]["server"]["limitConcurrency"] == 16  # the spec is never written
    report["autotune"] = {
        "first_decision": f"{decisions[0]['from']} -> {decisions[0]['to']}",
        "reason": decisions[0]["reason"],
        "configmap_to_sidecar_seconds": round(live_at - changed_at, 1),
    }
    load.join(timeout=200)


def scrape_labelled(ip: str, port: int = 9090) -> dict[str, float]:
    return metrics.scrape(f"http://{ip}:{port}/metrics")


def test_a_rolling_update_under_load_fails_no_request(
    node_cluster, node, node_operator, namespace, report
):
    apply(node_cluster, server("rolling", replicas=2), namespace)
    wait_ready(node_cluster, namespace, "rolling")

    def ready_endpoints() -> list[str]:
        slices = node_cluster.get_json(
            "endpointslices", "-n", namespace, "-l", "kubernetes.io/service-name=rolling"
        )["items"]
        return sorted(
            address
            for s in slices
            for e in s.get("endpoints") or []
            if e.get("conditions", {}).get("ready")
            for address in e["addresses"]
        )

    before = set(eventually(lambda: len(ready_endpoints()) == 2 and ready_endpoints(),
                            timeout=60, what="2 ready endpoints"))  # fmt: skip
    with EndpointLoad(ready_endpoints, 8080, "/", clients=4, seconds=180) as load:
        time.sleep(3)
        rolled = server("rolling", replicas=2, env=[{"name": "ROLLOUT", "value": "2"}])
        started = apply(node_cluster, rolled, namespace)

        def rolled_out() -> set[str]:
            now = set(ready_endpoints())
            names = pods(node_cluster, namespace, "rolling")
            done = len(now) == 2 and not now & before and len(names) == 2
            return now if done else set()

        after = eventually(rolled_out, timeout=180, what="both Pods replaced")
        rollout = time.monotonic() - started
        time.sleep(3)
    result = load.result
    report["rolling_update"] = {
        "seconds": round(rollout, 1),
        "requests": result.total,
        "ok": result.ok,
        "designed_503": result.designed_503,
        "failures": len(result.failures),
    }
    assert result.failures == []
    assert result.total > 100
    assert any(result.by_endpoint[ip] for ip in before)
    assert any(result.by_endpoint[ip] for ip in after)


@pytest.fixture
def forbidding_node(node: Any) -> Iterator[Any]:
    """The node's kubelet without the unsafe-sysctl allow-list, restored afterwards."""
    node.restart_kubelet(())
    try:
        yield node
    finally:
        node.restart_kubelet(ALLOWED_SYSCTLS)


def test_a_kubelet_without_the_allow_list_refuses_the_pod(
    node_cluster, forbidding_node, node_operator, namespace
):
    apply(node_cluster, server("forbidden", sysctls={"mode": "securityContext"}), namespace)

    def refused() -> dict[str, Any] | None:
        for pod in pods(node_cluster, namespace, "forbidden"):
            if pod.get("status", {}).get("reason") == "SysctlForbidden":
                return pod
        return None

    pod = eventually(refused, timeout=120, what="a Pod refused with SysctlForbidden")
    assert pod["status"]["phase"] == "Failed"
    assert "net.core.somaxconn" in pod["status"]["message"]

    def reported() -> dict[str, Any]:
        cond = condition(get(node_cluster, "asgiserver", "forbidden", namespace), "SysctlsApplied")
        return cond if cond.get("reason") == "SysctlForbidden" else {}

    cond = eventually(reported, timeout=60, what="SysctlsApplied=False SysctlForbidden")
    assert cond["status"] == "False"
    assert f"node {forbidding_node.name}" in cond["message"]
    assert "allowedUnsafeSysctls" in cond["message"]
    assert "initContainer" in cond["message"]
    body = get(node_cluster, "asgiserver", "forbidden", namespace)
    assert condition(body, "Ready")["status"] == "False"
    events = node_cluster.get_json("events", "-n", namespace)["items"]
    assert any(
        e["reason"] == "SysctlForbidden" and e["involvedObject"]["kind"] == "AsgiServer"
        for e in events
    )


def test_init_container_mode_applies_the_sysctl_on_that_node(
    node_cluster, forbidding_node, node_operator, namespace
):
    apply(
        node_cluster,
        server("init", server={"backlog": 2048}, sysctls={"mode": "initContainer"}),
        namespace,
    )
    pod = ready_pod(node_cluster, namespace, "init")
    body = wait_ready(node_cluster, namespace, "init")
    name, ip = pod["metadata"]["name"], pod["status"]["podIP"]
    assert in_pod(node_cluster, namespace, name, "app", "cat", "/proc/sys/net/core/somaxconn") == (
        "2048"
    )
    assert "sysctls" not in pod["spec"].get("securityContext", {})
    assert pod["spec"]["initContainers"][0]["name"] == "sysctls"
    assert scrape(ip)["asgi_listen_backlog_effective"] == 2048
    assert condition(body, "SysctlsApplied")["status"] == "True"
