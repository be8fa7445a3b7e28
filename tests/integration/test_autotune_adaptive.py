"""``spec.autotune.adaptive: true`` on the local control plane, with a real sidecar.

The sidecar runs the adaptive limit and the operator tunes its bounds
(``adaptiveMin``/``adaptiveMax``) rather than ``limitConcurrency``.  As in
``test_autotune.py``, kwok fakes the Pod, the sidecar runs on loopback, the
operator reaches it through the test-only address map and a poller copies the
ConfigMap into the sidecar's config file, as the kubelet would.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.kube import QUICK, ConfigMapVolume, Operator, condition, eventually, get
from tests.support.load import load
from tests.support.processes import sidecar, upstream_app

pytestmark = pytest.mark.timeout(300)

NAMESPACE = "autotune-adaptive"


@pytest.fixture
def operator(cluster: Any, tmp_path: Path) -> Iterator[tuple[Path, Operator]]:
    address_map = tmp_path / "address-map.json"
    address_map.write_text("{}")
    flags = [*QUICK, "--scrape-address-map", str(address_map)]
    running = Operator(cluster.kubeconfig, tmp_path / "operator.log", flags=flags).start()
    try:
        yield address_map, running
    finally:
        running.stop()


def test_autotune_adaptive_runs_the_adaptive_limit_and_tunes_its_bounds(
    cluster: Any, operator: tuple[Path, Operator], tmp_path: Path
) -> None:
    address_map, running = operator
    cluster.kubectl("create", "namespace", NAMESPACE)
    cluster.wait_for_default_service_account(NAMESPACE)
    server = {
        "apiVersion": "asgi.dev/v1alpha1",
        "kind": "AsgiServer",
        "metadata": {"name": "adaptive"},
        "spec": {
            "image": "example.com/cpu:1",
            "replicas": 1,
            "server": {"limitConcurrency": 8},
            "autotune": {
                "enabled": True,
                "adaptive": True,
                "intervalSeconds": 5,
                "limitConcurrency": {"min": 1, "max": 64},
            },
        },
    }
    volume: ConfigMapVolume | None = None
    try:
        cluster.kubectl("apply", "-n", NAMESPACE, "-f", "-", input=yaml.safe_dump(server))

        def pod_ip() -> str:
            pods = cluster.get_json("pods", "-n", NAMESPACE, "-l", "asgi.dev/server=adaptive")
            return str(pods["items"][0]["status"]["podIP"])

        ip = eventually(pod_ip, what="a Pod IP from kwok")
        config = tmp_path / "sidecar.json"
        volume = ConfigMapVolume(cluster, NAMESPACE, "adaptive-sidecar", config)
        eventually(lambda: volume.sync() or config.exists(), what="the ConfigMap")
        assert json.loads(config.read_text())["adaptive"] is True  # from autotune.adaptive
        volume.start()
        with (
            upstream_app() as app_port,
            sidecar(app_port, "--config", str(config), tmp_path=tmp_path) as sc,
        ):
            address_map.write_text(json.dumps({f"{ip}:9090": f"127.0.0.1:{sc.metrics_port}"}))
            assert sc.metric("asgi_adaptive_limit") >= 1  # present only with the adaptive limit
            runner = load(sc.url + "/cpu?ms=3", clients=24, seconds=40)

            def bounds_live() -> tuple[int, int] | None:
                body = get(cluster, "asgiserver", "adaptive", NAMESPACE)
                current = body.get("status", {}).get("tuning", {}).get("current", {})
                if "adaptiveMax" not in current:
                    return None
                data = json.loads(
                    get(cluster, "configmap", "adaptive-sidecar", NAMESPACE)["data"]["sidecar.json"]
                )
                low, high = current["adaptiveMin"], current["adaptiveMax"]
                if (data["adaptiveMin"], data["adaptiveMax"]) != (low, high):
                    return None
                limit = sc.metric("asgi_adaptive_limit")
                return (low, high) if low <= limit <= high else None

            low, high = eventually(bounds_live, timeout=90, what="tuned adaptive bounds live")
            assert 1 <= low <= high <= 128  # twice the autotune.limitConcurrency ceiling
            body = get(cluster, "asgiserver", "adaptive", NAMESPACE)
            current = body["status"]["tuning"]["current"]
            assert "limitConcurrency" not in current  # the adaptive limit's own, not tuned
            assert body["spec"]["server"]["limitConcurrency"] == 8  # the spec is never written
            assert body["spec"]["server"]["adaptive"] is False  # autotune.adaptive alone did it
            data = json.loads(
                get(cluster, "configmap", "adaptive-sidecar", NAMESPACE)["data"]["sidecar.json"]
            )
            assert data["adaptive"] is True
            assert data["limitConcurrency"] == 8  # only the starting value
            assert condition(body, "Tuned")["status"] == "True"
            runner.join(timeout=60)
        log = running.log()
        assert "inconsistencies" not in log  # kopf's bookkeeping lives in annotations
        assert "Handler 'reconcile-owner-of-child' succeeded" not in log  # debug level only
        assert "AsgiServer autotune-adaptive/adaptive: " in log  # what changed, at info
    finally:
        if volume is not None:
            volume.stopped.set()
        cluster.kubectl("delete", "namespace", NAMESPACE, "--wait=false", check=False)
