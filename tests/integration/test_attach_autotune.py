"""Autotuning of an attached workload: the injected sidecar's metrics in, its ConfigMap out.

As in test_autotune.py, kwok fakes the Pods, so the sidecar runs on loopback in front of
a real CPU-bound app; the operator reaches it through the test-only address map and a
thread here copies the ConfigMap into the sidecar's file, as the kubelet would.  The
Pod itself comes from a plain Deployment and got the proxy from the webhook.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.kube import QUICK, ConfigMapVolume, Operator, condition, eventually, get
from tests.support.load import load
from tests.support.processes import free_port, sidecar, upstream_app

pytestmark = pytest.mark.timeout(300)


@pytest.fixture
def attaching_operator(cluster: Any, tmp_path: Path) -> Iterator[Path]:
    suffix = uuid.uuid4().hex[:6]
    ops, configuration, port = f"asgi-ops-{suffix}", f"asgi-tune-{suffix}", free_port()
    cluster.kubectl("create", "namespace", ops)
    address_map = tmp_path / "address-map.json"
    address_map.write_text("{}")
    flags = [
        *QUICK, "--scrape-address-map", str(address_map),
        "--webhook-port", str(port), "--webhook-host", "127.0.0.1",
        "--webhook-url", f"https://127.0.0.1:{port}/mutate-pods",
        "--webhook-manage-configuration", "--webhook-configuration", configuration,
        "--webhook-secret", f"{ops}/tls",
    ]  # fmt: skip
    operator = Operator(cluster.kubeconfig, tmp_path / "operator.log", None, flags=flags)
    try:
        operator.start()

        def registered() -> bool:
            found = cluster.kubectl("get", "mutatingwebhookconfiguration", configuration,
                                    "-o", "json", check=False)  # fmt: skip
            hooks = json.loads(found.stdout)["webhooks"] if found.returncode == 0 else []
            return bool(hooks and hooks[0]["clientConfig"].get("caBundle"))

        eventually(registered, 60, "the webhook registered")
        yield address_map
    finally:
        operator.stop()
        cluster.kubectl("delete", "mutatingwebhookconfiguration", configuration, check=False)
        cluster.kubectl("delete", "namespace", ops, "--wait=false", check=False)


def workload() -> str:
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "cpu"},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": "cpu"}},
            "template": {
                "metadata": {"labels": {"app": "cpu", "asgi.dev/inject": "cpu"}},
                "spec": {
                    "containers": [
                        {
                            "name": "web",
                            "image": "example.com/cpu:1",
                            "ports": [{"name": "http", "containerPort": 8000}],
                        }
                    ]
                },
            },
        },
    }
    server = {
        "apiVersion": "asgi.dev/v1alpha1",
        "kind": "AsgiServer",
        "metadata": {"name": "cpu"},
        "spec": {
            "targetRef": {"kind": "Deployment", "name": "cpu"},
            "server": {"limitConcurrency": 8},
            "autotune": {
                "enabled": True,
                "intervalSeconds": 5,
                "limitConcurrency": {"min": 1, "max": 64},
            },
        },
    }
    return yaml.safe_dump_all([server, deployment])


def test_the_operator_tunes_an_attached_workloads_sidecar(
    cluster, attaching_operator, namespace, tmp_path
):
    address_map = attaching_operator
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=workload())

    def injected_ip() -> str | None:
        pods = cluster.get_json("pods", "-n", namespace, "-l", "asgi.dev/server=cpu")["items"]
        ready = [p for p in pods if p.get("status", {}).get("podIP")]
        return str(ready[0]["status"]["podIP"]) if ready else None

    ip = eventually(injected_ip, 60, "an injected Pod with an IP")
    config = tmp_path / "sidecar.json"
    volume = ConfigMapVolume(cluster, namespace, "cpu-sidecar", config)
    eventually(lambda: volume.sync() or config.exists(), what="the ConfigMap")
    with volume:
        with (
            upstream_app() as app_port,
            sidecar(app_port, "--config", str(config), tmp_path=tmp_path) as sc,
        ):
            address_map.write_text(json.dumps({f"{ip}:9090": f"127.0.0.1:{sc.metrics_port}"}))
            assert sc.metric("asgi_concurrency_limit") == 8
            runner = load(sc.url + "/cpu?ms=3", clients=24, seconds=30)

            def applied() -> int:
                body = get(cluster, "asgiserver", "cpu", namespace)
                decisions = body.get("status", {}).get("tuning", {}).get("decisions", [])
                if not any(d["setting"] == "limitConcurrency" for d in decisions):
                    return 0
                target = body["status"]["tuning"]["current"]["limitConcurrency"]
                data = json.loads(
                    get(cluster, "configmap", "cpu-sidecar", namespace)["data"]["sidecar.json"]
                )
                live = sc.metric("asgi_concurrency_limit")
                return int(target) if data["limitConcurrency"] == target == live else 0

            target = eventually(applied, timeout=90, what="the injected sidecar runs a tuned limit")
            runner.join(timeout=60)
            # Read while the sidecar still answers: once it stops, the next round finds
            # the Pod unreadable and rightly reports Tuned False (MetricsStale).
            body = get(cluster, "asgiserver", "cpu", namespace)
        assert 1 <= target <= 64
        assert condition(body, "Tuned")["status"] == "True"
        # The tuner may have decided again since; what the status says must agree with itself.
        current = body["status"]["tuning"]["current"]["limitConcurrency"]
        assert body["status"]["effective"]["limitConcurrency"] == current
        # The user's Deployment is never edited, tuning or not.
        deployment = get(cluster, "deployment", "cpu", namespace)
        assert deployment["metadata"]["generation"] == 1
