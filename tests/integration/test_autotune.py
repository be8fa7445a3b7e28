"""The slow tuning loop end to end on the local control plane, with real sidecars.

kwok fakes the Pods, so the sidecar runs on loopback in front of a real CPU-bound
app; the operator reaches it through a test-only address map (podIP:port ->
127.0.0.1:port), and a small "kubelet" thread here copies the ConfigMap into the
sidecar's config file, as a mounted ConfigMap volume would.
"""

from __future__ import annotations

import itertools
import json
import urllib.request
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.kube import QUICK, ConfigMapVolume, Operator, condition, eventually, get
from tests.support.load import load
from tests.support.processes import free_port, sidecar, upstream_app

pytestmark = pytest.mark.timeout(300)


@pytest.fixture
def tuned_operator(cluster: Any, tmp_path: Path) -> Iterator[tuple[Path, int]]:
    address_map = tmp_path / "address-map.json"
    address_map.write_text("{}")
    metrics_port = free_port()
    flags = [*QUICK, "--metrics-port", str(metrics_port), "--scrape-address-map", str(address_map)]
    operator = Operator(cluster.kubeconfig, tmp_path / "operator.log", None, flags=flags).start()
    try:
        yield address_map, metrics_port
    finally:
        operator.stop()


def test_the_operator_tunes_a_live_sidecar_through_its_configmap(cluster, tuned_operator, tmp_path):
    address_map, operator_metrics = tuned_operator
    namespace = "autotune"
    cluster.kubectl("create", "namespace", namespace)
    cluster.wait_for_default_service_account(namespace)
    server = {
        "apiVersion": "asgi.dev/v1alpha1",
        "kind": "AsgiServer",
        "metadata": {"name": "cpu"},
        "spec": {
            "image": "example.com/cpu:1",
            "replicas": 1,
            "server": {"limitConcurrency": 8},
            "autotune": {
                "enabled": True,
                "intervalSeconds": 5,
                "limitConcurrency": {"min": 1, "max": 64},
            },
        },
    }
    try:
        cluster.kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(server))

        def pod_ip() -> str:
            pods = cluster.get_json("pods", "-n", namespace, "-l", "asgi.dev/server=cpu")
            return str(pods["items"][0]["status"]["podIP"])

        ip = eventually(pod_ip, what="a Pod IP from kwok")
        config = tmp_path / "sidecar.json"
        volume = ConfigMapVolume(cluster, namespace, "cpu-sidecar", config)
        eventually(lambda: volume.sync() or config.exists(), what="the ConfigMap")
        volume.start()
        with (
            upstream_app() as app_port,
            sidecar(app_port, "--config", str(config), tmp_path=tmp_path) as sc,
        ):
            address_map.write_text(json.dumps({f"{ip}:9090": f"127.0.0.1:{sc.metrics_port}"}))
            assert sc.metric("asgi_concurrency_limit") == 8
            runner = load(sc.url + "/cpu?ms=3", clients=24, seconds=40)

            def decided() -> list[dict[str, Any]]:
                body = get(cluster, "asgiserver", "cpu", namespace)
                decisions = body.get("status", {}).get("tuning", {}).get("decisions", [])
                return [d for d in decisions if d["setting"] == "limitConcurrency"]

            decisions = eventually(decided, timeout=90, what="a limitConcurrency decision")
            first = decisions[0]
            assert first["from"] == 8
            assert first["reason"]
            assert first["inputs"]["pods"] == 1
            assert first["inputs"]["throughputPerPod"] > 0

            def applied() -> int:
                body = get(cluster, "asgiserver", "cpu", namespace)
                target = body["status"]["tuning"]["current"]["limitConcurrency"]
                data = json.loads(
                    get(cluster, "configmap", "cpu-sidecar", namespace)["data"]["sidecar.json"]
                )
                live = sc.metric("asgi_concurrency_limit")
                return target if data["limitConcurrency"] == target == live else 0

            target = eventually(applied, timeout=30, what="the sidecar runs the tuned limit")
            assert 1 <= target <= 64
            body = get(cluster, "asgiserver", "cpu", namespace)
            assert body["spec"]["server"]["limitConcurrency"] == 8  # the spec is never written
            assert condition(body, "Tuned")["status"] == "True"
            assert body["status"]["effective"]["limitConcurrency"] == target
            events = cluster.get_json("events", "-n", namespace)["items"]
            assert any(e["reason"] == "AutotuneDecision" for e in events)
            with urllib.request.urlopen(f"http://127.0.0.1:{operator_metrics}/metrics") as r:
                text = r.read().decode()
            assert "asgi_operator_tuning_decisions_total{" in text
            assert 'setting="limitConcurrency"' in text
            runner.join(timeout=60)
            # No decision comes before the last one is live and one clean interval was
            # measured with it: at least two 5 s rounds apart.
            times = [datetime.fromisoformat(d["time"]) for d in decided()]
            gaps = [(b - a).total_seconds() for a, b in itertools.pairwise(times)]
            assert all(gap >= 9 for gap in gaps), gaps

        # The sidecar is gone: stale metrics freeze tuning and keep the settings.
        def frozen() -> dict[str, Any]:
            cond = condition(get(cluster, "asgiserver", "cpu", namespace), "Tuned")
            return cond if cond.get("reason") == "MetricsStale" else {}

        cond = eventually(frozen, timeout=60, what="Tuned=False MetricsStale")
        assert cond["status"] == "False"
        data = json.loads(
            get(cluster, "configmap", "cpu-sidecar", namespace)["data"]["sidecar.json"]
        )
        assert (
            data["limitConcurrency"]
            == get(cluster, "asgiserver", "cpu", namespace)["status"]["tuning"]["current"][
                "limitConcurrency"
            ]
        )
    finally:
        volume_stop = locals().get("volume")
        if volume_stop is not None:
            volume_stop.stopped.set()
        cluster.kubectl("delete", "namespace", namespace, "--wait=false", check=False)
