"""Attach to a workload a team already runs, on the real node (``spec.targetRef``).

The team's own manifest (tests/node/manifests/plain-app.yaml: a Deployment of plain
uvicorn and its Service, nothing of this project in them) runs first, and the keep-alive
race benchmark's balancer (``bench.keepalive``: nginx keeping upstream connections 60 s,
no retries, 25 ms away through its relay) gets 502s through the Service's ClusterIP.
Then the team adds the opt-in label to its manifest; its Pods roll, and are admitted
unchanged while there is no AsgiServer.  The AsgiServer with ``targetRef`` comes next, its
``Injected`` condition names the restart, and ``kubectl rollout restart`` gives new Pods
with the proxy: the unchanged Service now sends traffic to it (the proxy took the app's
port name), its metrics count every request, and the same balancer gets no 502.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import yaml

from asgi_operator.injecting import APP_PORT_NAME, INJECT_LABEL, INJECTED_ANNOTATION
from asgi_operator.pods import PROXY_CONTAINER
from bench import keepalive
from bench.procs import free_port, processes
from hack import nodeimages
from hack.cache import ROOT
from tests.support.kube import apply, condition, eventually, get
from tests.support.nodes import cluster_ip, fetch, ready_endpoints, routed, scrape_labelled

pytestmark = [pytest.mark.node, pytest.mark.timeout(600)]

MANIFEST = ROOT / "tests" / "node" / "manifests" / "plain-app.yaml"
NAME = "shop"  # the Deployment, its Service and the AsgiServer attached to them
PORT = 80  # the Service's port
APP_PORT, PROXY_PORT = 8000, 8080
# The race: each flow's pooled connection idles 4.9-5.1 s, around uvicorn's 5 s timeout.
FLOWS, REQUESTS, GAPS = 20, 8, (4.9, 5.1)
# The drive's path, /echo, is not one of the demo app's: 404 is the app's own answer.
ANSWER = "404"


def documents(inject: str | None = None) -> str:
    """The team's manifest, with the opt-in label in its pod template if ``inject``."""
    docs = [d for d in yaml.safe_load_all(MANIFEST.read_text()) if d]
    (deployment,) = [d for d in docs if d["kind"] == "Deployment"]
    assert deployment["spec"]["template"]["spec"]["containers"][0]["image"] == (
        nodeimages.DEMO_IMAGE
    ), f"{MANIFEST.name} names another version of the demo image than hack/nodeimages.py"
    if inject:
        deployment["spec"]["template"]["metadata"]["labels"][INJECT_LABEL] = inject
    return yaml.safe_dump_all(docs)


def attach(name: str, target: str) -> dict[str, Any]:
    return {
        "apiVersion": "asgi.dev/v1alpha1",
        "kind": "AsgiServer",
        "metadata": {"name": name},
        "spec": {
            "targetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": target},
            "clientProfile": "loadBalancer",  # keep-alive 65 s, above the balancer's 60 s
        },
    }


def rollout(cluster: Any, namespace: str) -> float:
    """Seconds until ``kubectl rollout status`` says the Deployment rolled out."""
    started = time.monotonic()
    cluster.kubectl("rollout", "status", f"deployment/{NAME}", "-n", namespace, "--timeout=240s")
    return time.monotonic() - started


def settled(cluster: Any, namespace: str) -> list[dict[str, Any]]:
    """The Deployment's two Pods once the old ones are gone, both ready and both the
    Service's endpoints."""

    def check() -> list[dict[str, Any]] | None:
        found = cluster.get_json("pods", "-n", namespace, "-l", f"app={NAME}")["items"]
        names = {p["metadata"]["name"] for p in found}
        ready = set(ready_endpoints(cluster, namespace, NAME))
        return list(found) if len(found) == 2 and ready == names else None

    pods: list[dict[str, Any]] = eventually(check, 120, f"two ready Pods of {NAME}, the old gone")
    return pods


def answered_only_by(service: str, pods: list[dict[str, Any]]) -> bool:
    """Whether 10 fresh connections to the ClusterIP all reach ``pods`` (kube-proxy may
    still route to a Pod just deleted for a moment)."""
    names = {p["metadata"]["name"] for p in pods}
    try:
        seen = {json.loads(fetch(service, "/whoami", port=PORT)[1])["hostname"] for _ in range(10)}
    except (OSError, http.client.HTTPException):
        return False
    return seen <= names


def target_ports(cluster: Any, namespace: str) -> set[int]:
    """The Pod ports the Service's EndpointSlices resolved its named targetPort to."""
    slices = cluster.get_json(
        "endpointslices", "-n", namespace, "-l", f"kubernetes.io/service-name={NAME}"
    )["items"]
    return {p["port"] for s in slices for p in s.get("ports") or []}


def containers(pod: dict[str, Any]) -> dict[str, dict[str, Any]]:
    spec = pod["spec"]
    return {c["name"]: c for c in [*spec.get("initContainers", []), *spec["containers"]]}


def proxied(pods: list[dict[str, Any]], metric: str = "asgi_requests_total") -> float:
    """A counter of the proxies, summed over ``pods`` and over its labels."""
    return sum(
        value
        for pod in pods
        for key, value in scrape_labelled(pod["status"]["podIP"]).items()
        if key == metric or key.startswith(metric + "{")
    )


def race(workdir: Path, service: str) -> Counter[str]:
    """The keep-alive race benchmark's drive against the Service: nginx (upstream pool kept
    60 s, no retries) → the 25 ms relay → the ClusterIP; how many of each status."""
    workdir.mkdir()
    with processes(workdir) as procs:
        relay = free_port()
        cmd = [sys.executable, "-m", "bench.delayrelay", str(relay), f"{service}:{PORT}",
               str(keepalive.DELAY_MS)]  # fmt: skip
        procs.start("relay", cmd, 1, port=relay)
        balancer = keepalive._start_balancer(procs, "balancer", relay, FLOWS)
        results = asyncio.run(keepalive.drive({NAME: balancer}, FLOWS, REQUESTS, GAPS))
    statuses: Counter[str] = Counter()
    for (_, status), n in results[NAME].items():
        statuses[status] += n
    return statuses


def test_an_asgiserver_attached_to_a_plain_deployment_takes_its_traffic_and_ends_the_502s(
    node_cluster, node, node_operator, namespace, report, tmp_path
):
    # 1. The team's Deployment and Service as they are: plain uvicorn behind the Service.
    apply(node_cluster, documents(), namespace)
    rollout(node_cluster, namespace)
    plain = settled(node_cluster, namespace)
    for pod in plain:
        assert list(containers(pod)) == ["web"]
        assert containers(pod)["web"]["ports"][0]["name"] == "http"
    service = cluster_ip(node_cluster, namespace, NAME)
    routed(service, port=PORT)
    assert target_ports(node_cluster, namespace) == {APP_PORT}
    before = race(tmp_path / "before", service)
    assert sum(before.values()) == FLOWS * REQUESTS
    assert set(before) <= {ANSWER, "502"}, before
    # P(no 502) is tiny: about a quarter of reuses fall in the race window (keepalive.py)
    assert before["502"] >= 1, before

    # 2. The opt-in label lands in the team's manifest first: the Pods roll, and the webhook
    # admits them unchanged while there is no AsgiServer of that name.
    apply(node_cluster, documents(inject=NAME), namespace)
    label_rollout = rollout(node_cluster, namespace)
    labelled = settled(node_cluster, namespace)
    for pod in labelled:
        assert list(containers(pod)) == ["web"]
        assert INJECTED_ANNOTATION not in (pod["metadata"].get("annotations") or {})

    def not_found() -> bool:
        events = node_cluster.get_json("events", "-n", namespace)["items"]
        return any(e["reason"] == "AsgiServerNotFound" for e in events)

    eventually(not_found, 60, "an AsgiServerNotFound Event")

    # 3. The AsgiServer: the condition asks for the restart the new Pods need.
    apply(node_cluster, attach(NAME, NAME), namespace)

    def injected(reason: str) -> dict[str, Any]:
        found = condition(get(node_cluster, "asgiserver", NAME, namespace), "Injected")
        return found if found.get("reason") == reason else {}

    said = eventually(lambda: injected("PodsWithoutProxy"), 60, "Injected PodsWithoutProxy")
    restart = f"kubectl rollout restart deployment/{NAME} -n {namespace}"
    assert said["message"].endswith(restart), said
    started = time.monotonic()
    node_cluster.kubectl(*restart.split()[1:])
    rollout(node_cluster, namespace)
    restart_seconds = time.monotonic() - started

    # 4. The new Pods carry the proxy, which took the app's port name.
    pods = settled(node_cluster, namespace)
    for pod in pods:
        by_name = containers(pod)
        assert [c["name"] for c in pod["spec"]["initContainers"]] == [PROXY_CONTAINER]
        proxy, web = by_name[PROXY_CONTAINER], by_name["web"]
        assert proxy["restartPolicy"] == "Always"  # a native sidecar
        assert {"name": "http", "containerPort": PROXY_PORT, "protocol": "TCP"} in proxy["ports"]
        assert web["ports"][0]["name"] == APP_PORT_NAME
        assert web["ports"][0]["containerPort"] == APP_PORT
        assert web["readinessProbe"]["httpGet"]["port"] == APP_PORT_NAME
        assert pod["metadata"]["annotations"][INJECTED_ANNOTATION] == NAME
    deployment = get(node_cluster, "deployment", NAME, namespace)
    template = deployment["spec"]["template"]["spec"]["containers"]
    assert [(c["name"], c["ports"][0]["name"]) for c in template] == [("web", "http")]
    managers = {m["manager"] for m in deployment["metadata"].get("managedFields", [])}
    assert "asgi-operator" not in managers
    cond = eventually(lambda: injected("Injected"), 60, "Injected True")
    assert cond["status"] == "True"
    assert cond["message"] == f"all 2 Pods of Deployment {NAME} run the proxy"

    # 5. The unchanged Service sends its traffic to the proxies, which count it.
    assert target_ports(node_cluster, namespace) == {PROXY_PORT}
    eventually(lambda: answered_only_by(service, pods), 30, "only the new Pods answering")
    counted = proxied(pods)
    sent = 20
    for _ in range(sent):
        assert fetch(service, "/", port=PORT) == (200, b'{"hello":"world"}')
    eventually(lambda: proxied(pods) - counted == sent, 10, f"{sent} more requests counted")

    # 6. The same race through the proxy: its keep-alive outlasts the balancer's pool.
    counted, reused = proxied(pods), proxied(pods, "asgi_keepalive_reused_requests_total")
    after = race(tmp_path / "after", service)
    through = proxied(pods) - counted
    report["attach"] = {
        "drive": {"flows": FLOWS, "requests_per_flow": REQUESTS, "gaps_seconds": list(GAPS),
                  "relay_delay_ms": keepalive.DELAY_MS},
        "requests_per_drive": FLOWS * REQUESTS,
        "plain_uvicorn_502s": before["502"],
        "through_proxy_502s": after["502"],
        "through_proxy_counted_by_proxies": through,
        "label_rollout_seconds": round(label_rollout, 1),
        "rollout_restart_seconds": round(restart_seconds, 1),
    }  # fmt: skip
    assert after == Counter({ANSWER: FLOWS * REQUESTS}), after
    assert through == FLOWS * REQUESTS
    # every flow kept one connection to a proxy, idle about 5 s between its requests
    assert proxied(pods, "asgi_keepalive_reused_requests_total") - reused == FLOWS * (REQUESTS - 1)
