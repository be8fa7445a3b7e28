"""samples/production-api.yaml end to end on the real node: a Secret as an env var and as a
file, a ConfigMap volume, its own ServiceAccount, an imagePullSecret, the app's own
readiness probe and arguments, topology spread and a disruption budget, all through
spec.podTemplate; the app proves it read its secrets, reached through its Service."""

from __future__ import annotations

import hashlib
import http.client
import json
import time
from typing import Any

import pytest
import yaml

from asgi_operator.pods import APP_CONTAINER, PROXY_CONTAINER
from hack.cache import ROOT
from tests.support.kube import condition, eventually, get

pytestmark = [pytest.mark.node, pytest.mark.timeout(420)]

SAMPLE = "samples/production-api.yaml"
NAME = "orders-api"


def _documents() -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((ROOT / SAMPLE).read_text()) if d]


def _whoami(ip: str, port: int) -> dict[str, Any]:
    conn = http.client.HTTPConnection(ip, port, timeout=5)
    try:
        conn.request("GET", "/whoami")
        response = conn.getresponse()
        assert response.status == 200
        answer: dict[str, Any] = json.loads(response.read())
        return answer
    finally:
        conn.close()


def test_the_production_sample_runs_and_reads_its_secrets_through_its_service(
    node_cluster, node_operator, namespace, report
):
    documents = _documents()
    started = time.monotonic()
    node_cluster.kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump_all(documents))

    def ready() -> dict[str, Any]:
        body = get(node_cluster, "asgiserver", NAME, namespace)
        status = body.get("status", {})
        ok = condition(body, "Ready").get("status") == "True" and status.get("readyReplicas") == 3
        return body if ok else {}

    eventually(ready, 300, "three ready Pods of the production sample")
    report["production_sample_ready_seconds"] = round(time.monotonic() - started, 1)

    pods = node_cluster.get_json("pods", "-n", namespace, "-l", f"asgi.dev/server={NAME}")
    names = {p["metadata"]["name"] for p in pods["items"]}
    for pod in pods["items"]:
        spec = pod["spec"]
        assert spec["serviceAccountName"] == NAME
        assert spec["imagePullSecrets"] == [{"name": "registry-credentials"}]
        assert spec["topologySpreadConstraints"][0]["topologyKey"] == "kubernetes.io/hostname"
        assert pod["metadata"]["labels"]["team"] == "orders"
        app = next(c for c in spec["containers"] if c["name"] == APP_CONTAINER)
        assert app["readinessProbe"]["httpGet"]["path"] == "/ready"
        proxy = next(c for c in spec["initContainers"] if c["name"] == PROXY_CONTAINER)
        assert proxy["resources"]["limits"]["memory"] == "128Mi"

    secret = next(d for d in documents if d["metadata"]["name"] == "orders-db")
    settings = next(d for d in documents if d["kind"] == "ConfigMap")
    password = hashlib.sha256(secret["stringData"]["password"].encode()).hexdigest()
    settings_digest = hashlib.sha256(settings["data"]["settings.json"].encode()).hexdigest()

    service = get(node_cluster, "service", NAME, namespace)
    ip, port = service["spec"]["clusterIP"], service["spec"]["ports"][0]["port"]
    seen: set[str] = set()

    def answered_by_more_than_one_pod() -> bool:
        # Fresh connections through the ClusterIP: kube-proxy spreads them over the Pods
        # once the EndpointSlice lists all three (it may lag the Pods' readiness).
        try:
            answer = _whoami(ip, port)
        except ConnectionRefusedError:
            return False  # kube-proxy has not programmed the Service's endpoints yet
        assert answer["digests"] == {
            "env:DATABASE_PASSWORD": password,
            "file:/run/secrets/db/password": password,
            "file:/etc/orders/settings.json": settings_digest,
        }
        assert "--no-access-log" in answer["argv"]
        seen.add(answer["hostname"])
        return len(seen) >= 2

    eventually(answered_by_more_than_one_pod, 60, "answers from more than one Pod")
    assert seen <= names

    budget = json.loads(
        node_cluster.kubectl("get", "pdb", NAME, "-n", namespace, "-o", "json").stdout
    )
    assert budget["spec"]["minAvailable"] == 2
    eventually(
        lambda: (
            json.loads(
                node_cluster.kubectl("get", "pdb", NAME, "-n", namespace, "-o", "json").stdout
            )["status"].get("disruptionsAllowed")
            == 1
        ),
        60,
        "one of the three Pods may be evicted",
    )
