"""End to end on a real node: the kubelet starts the containers, applies (or refuses) the
sysctls, mounts the ConfigMap and drains Pods, and kube-proxy routes the Services.  Traffic
goes from this host through the Services' ClusterIPs, as an application in the cluster
sends it; a Pod's own IP is used only to read that Pod's metrics.

The scenarios run in file order: the kubelet allows net.core.somaxconn until the last two,
which restart it without the allow-list (``forbidding_node``).
"""

from __future__ import annotations

import json
import re
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from asgi_operator.pods import PROXY_CONTAINER
from hack import nodeimages
from hack.nodeconfig import ALLOWED_SYSCTLS
from tests.support import apps, metrics
from tests.support.endpointload import EndpointLoad
from tests.support.kube import ConfigMapWatch, condition, eventually, get
from tests.support.nodes import (
    HTTP_PORT,
    cluster_ip,
    fetch,
    ready_endpoints,
    routed,
    scrape_labelled,
)

pytestmark = [pytest.mark.node, pytest.mark.timeout(420)]

DEMO = nodeimages.DEMO_IMAGE
SELECTOR = "asgi.dev/server"
# tests.support.apps on the demo image's uvicorn: GET /hostname names the Pod that answered
WHOAMI = apps.uvicorn_command(nodeimages.DEMO_PORT)


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
    service = cluster_ip(node_cluster, namespace, "hello")
    routed(service)
    status, answer = fetch(service)
    assert (status, json.loads(answer)) == (200, {"hello": "world"})
    spec = pod["spec"]
    assert spec["securityContext"]["sysctls"] == [{"name": "net.core.somaxconn", "value": "1536"}]
    assert [c["name"] for c in spec["initContainers"]] == [PROXY_CONTAINER]  # native sidecar


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
    ip = pod["status"]["podIP"]  # the one Pod's metrics; the traffic goes through the Service
    wait_ready(node_cluster, namespace, "tuned")
    service = cluster_ip(node_cluster, namespace, "tuned")
    routed(service)
    assert scrape(ip)["asgi_concurrency_limit"] == 4
    seconds = 5
    static = wrk(f"http://{service}:{HTTP_PORT}/slow?seconds=0.2", connections=16,
                 seconds=seconds)  # fmt: skip
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
    # a request admitted as wrk stopped ends within its 0.2 s, or when its client is gone
    eventually(lambda: scrape(ip)["asgi_requests_in_flight"] == 0, timeout=5,
               what="no request in flight after the load")  # fmt: skip
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
            target=wrk, args=(f"http://{service}:{HTTP_PORT}/cpu?ms=3", 32, 150), daemon=True
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


def test_a_service_routes_to_every_ready_pod(node_cluster, node, node_operator, namespace, report):
    apply(node_cluster, server("whoami", replicas=2, command=WHOAMI), namespace)
    wait_ready(node_cluster, namespace, "whoami")
    names = set(
        eventually(lambda: len(e := ready_endpoints(node_cluster, namespace, "whoami")) == 2 and e,
                   timeout=60, what="2 ready endpoints")
    )  # fmt: skip
    service = cluster_ip(node_cluster, namespace, "whoami")
    routed(service, "/hostname")

    def answering() -> Counter[str]:
        seen = Counter(fetch(service, "/hostname")[1].decode() for _ in range(40))
        return seen if set(seen) == names else Counter()

    # kube-proxy picks an endpoint at random per connection: 40 miss one with p = 2 ** -39
    seen = eventually(answering, timeout=30, what=f"every Pod of {sorted(names)} answering")
    # by iptables DNAT: the ClusterIP is in kube-proxy's KUBE-SERVICES chain
    nat = subprocess.run(["iptables-save", "-t", "nat"], capture_output=True, text=True,
                         check=True).stdout  # fmt: skip
    assert any(f"-d {service}/32" in line and "KUBE-SVC-" in line for line in nat.splitlines())

    # A new Service for the same Pods: how long until kube-proxy has it programmed (the
    # EndpointSlice controller first, then kube-proxy's next sync, at most one a second).
    probe = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "whoami-probe"},
        "spec": {
            "selector": {SELECTOR: "whoami"},
            "ports": [{"name": "http", "port": HTTP_PORT, "targetPort": "http"}],
        },
    }
    created = apply(node_cluster, probe, namespace)
    routed(cluster_ip(node_cluster, namespace, "whoami-probe"), "/hostname")
    first = time.monotonic() - created
    report["service_routing"] = {
        "requests_by_pod": sorted(seen.values()),
        "new_service_first_answer_seconds": round(first, 2),
    }


def test_a_rolling_update_under_load_fails_no_request(
    node_cluster, node, node_operator, namespace, report
):
    apply(node_cluster, server("rolling", replicas=2, command=WHOAMI), namespace)
    wait_ready(node_cluster, namespace, "rolling")

    def ready() -> set[str]:
        return set(ready_endpoints(node_cluster, namespace, "rolling"))

    before = eventually(lambda: len(r := ready()) == 2 and r, timeout=60, what="2 ready endpoints")
    service = cluster_ip(node_cluster, namespace, "rolling")
    routed(service, "/hostname")
    # Every request to the ClusterIP, over kept-alive connections: kube-proxy picks the Pod
    # of each new connection, the response names it.
    with EndpointLoad(lambda: [service], HTTP_PORT, "/hostname", clients=4, seconds=180,
                      served_by=bytes.decode) as load:  # fmt: skip
        time.sleep(3)
        rolled = server("rolling", replicas=2, command=WHOAMI,
                        env=[{"name": "ROLLOUT", "value": "2"}])  # fmt: skip
        started = apply(node_cluster, rolled, namespace)

        def rolled_out() -> set[str]:
            now = ready()
            names = pods(node_cluster, namespace, "rolling")
            done = len(now) == 2 and not now & before and len(names) == 2
            return now if done else set()

        after = eventually(rolled_out, timeout=180, what="both Pods replaced")
        rollout = time.monotonic() - started
        time.sleep(3)
    result = load.result
    report["rolling_update"] = {
        "through": "ClusterIP",
        "seconds": round(rollout, 1),
        "requests": result.total,
        "ok": result.ok,
        "designed_503": result.designed_503,
        "failures": len(result.failures),
        "connections_closed_by_pods": result.closed_idle,
    }
    assert result.failures == []
    assert result.total > 100
    assert any(result.by_server[name] for name in before), result.by_server
    assert any(result.by_server[name] for name in after), result.by_server


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
