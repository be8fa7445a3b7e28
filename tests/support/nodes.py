"""Helpers of the real-node tests: a Service's address and endpoints, requests through it,
the sidecar's metrics on a Pod's IP."""

from __future__ import annotations

import http.client
import time
from typing import Any

from tests.support import metrics
from tests.support.kube import get

HTTP_PORT = 8080  # the Service's port "http" (spec.port's default), the sidecar's


def cluster_ip(cluster: Any, namespace: str, service: str) -> str:
    ip: str = get(cluster, "service", service, namespace)["spec"]["clusterIP"]
    return ip


def ready_endpoints(cluster: Any, namespace: str, service: str) -> dict[str, str]:
    """The Service's ready endpoints as its EndpointSlices list them: Pod name -> IP."""
    slices = cluster.get_json(
        "endpointslices", "-n", namespace, "-l", f"kubernetes.io/service-name={service}"
    )["items"]
    return {
        e["targetRef"]["name"]: address
        for s in slices
        for e in s.get("endpoints") or []
        if e.get("conditions", {}).get("ready")
        for address in e["addresses"]
    }


def fetch(
    host: str, path: str = "/", timeout: float = 5.0, port: int = HTTP_PORT
) -> tuple[int, bytes]:
    """GET on a fresh connection: through a ClusterIP, each one is routed anew."""
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def routed(host: str, path: str = "/", timeout: float = 60.0, port: int = HTTP_PORT) -> float:
    """Seconds until ``host`` first answers 200, trying a fresh connection every 50 ms.

    Until kube-proxy has programmed a ClusterIP, its packets go onto the node's bridge
    (hack/kubeproxy.py routes the Service CIDR there), where nobody answers: each try
    gives up after 0.2 s."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        try:
            if fetch(host, path, timeout=0.2, port=port)[0] == 200:
                return time.monotonic() - started
        except (OSError, http.client.HTTPException):
            pass
        time.sleep(0.05)
    raise AssertionError(f"{host}:{port}{path} not routed after {timeout:.0f}s")


def scrape_labelled(ip: str, port: int = 9090) -> dict[str, float]:
    return metrics.scrape(f"http://{ip}:{port}/metrics")
