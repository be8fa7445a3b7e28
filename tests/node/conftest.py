"""A real node for the end-to-end tests: the local control plane without kwok's fake node,
containerd, runc, a CNI bridge, the kubelet and kube-proxy (hack/node.py), the project's images
built locally (hack/nodeimages.py), and the operator.  Started once for the directory.

The figures measured here (node start-up, Pod start, ConfigMap propagation, load
results) are written to ``bench/results/node-e2e.json``.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hack import kubeproxy, nodeimages
from hack.cache import ROOT
from hack.controlplane import LocalCluster
from hack.node import LocalNode, missing_requirements
from hack.supervisor import free_port
from tests.support.kube import QUICK, Operator, eventually, own_namespace, running_operator

REPORT = ROOT / "bench" / "results" / "node-e2e.json"
# The tests' own bridge and subnet: `make run-node` uses asgi0 and 10.89.0.0/24.
BRIDGE, SUBNET = "asgi1", "10.89.1.0/24"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    missing = missing_requirements()
    for item in items:
        if item.get_closest_marker("node") and missing:
            item.add_marker(pytest.mark.skip(reason="no real node here: " + "; ".join(missing)))


@pytest.fixture(scope="session")
def report() -> Iterator[dict[str, Any]]:
    figures: dict[str, Any] = {}
    yield figures
    REPORT.parent.mkdir(parents=True, exist_ok=True)
    REPORT.write_text(json.dumps(figures, indent=2, sort_keys=True) + "\n")


@pytest.fixture(scope="session")
def node_images(report: dict[str, Any]) -> Path:
    started = time.monotonic()
    images: Path = nodeimages.build()
    report["images_build_seconds"] = round(time.monotonic() - started, 1)
    return images


@pytest.fixture(scope="session")
def node_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    work = tmp_path_factory.mktemp("node-cluster")
    with LocalCluster(work, fake_node=False) as cluster:
        cluster.install_crds(ROOT / "crds")
        yield cluster


@pytest.fixture(scope="session")
def node(
    node_cluster: Any,
    node_images: Path,
    tmp_path_factory: pytest.TempPathFactory,
    report: dict[str, Any],
) -> Iterator[Any]:
    work = tmp_path_factory.mktemp("node")
    with LocalNode(node_cluster, work, node_images, bridge=BRIDGE, subnet=SUBNET) as running:
        report["node"] = {k: round(v, 2) for k, v in running.timings.items()}
        yield running
    # kube-proxy's iptables rules go with the node (LocalNode.stop raises if it cannot)
    assert kubeproxy.leftover_rules() == []


@pytest.fixture(scope="session")
def node_operator(
    node: Any, node_cluster: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Operator]:
    """The operator, also serving its admission webhook as it runs without the chart: its
    own certificates in a namespace of its own (outside the webhook's scope), and the
    webhook configuration it registers, reached by the API server on this host.  Only Pods
    labelled ``asgi.dev/inject`` (tests/node/test_attach.py) pass through the webhook."""
    suffix = uuid.uuid4().hex[:6]
    own, configuration, port = f"asgi-ops-{suffix}", f"asgi-inject-{suffix}", free_port()
    flags = [
        *QUICK, "--webhook-port", str(port), "--webhook-host", "127.0.0.1",
        "--webhook-url", f"https://127.0.0.1:{port}/mutate-pods",
        "--webhook-manage-configuration", "--webhook-configuration", configuration,
        "--webhook-secret", f"{own}/asgi-webhook-tls",
    ]  # fmt: skip
    log = tmp_path_factory.mktemp("node-operator") / "operator.log"
    node_cluster.kubectl("create", "namespace", own)
    try:
        with running_operator(
            node_cluster.kubeconfig, log, sidecar_image=nodeimages.SIDECAR_IMAGE, flags=flags
        ) as op:
            eventually(lambda: _registered(node_cluster, configuration), 60,
                       f"the webhook configuration {configuration} with its CA")  # fmt: skip
            yield op
    finally:
        node_cluster.kubectl("delete", "mutatingwebhookconfiguration", configuration, check=False)
        node_cluster.kubectl("delete", "namespace", own, "--wait=false", check=False)


def _registered(cluster: Any, configuration: str) -> bool:
    found = cluster.get_json("mutatingwebhookconfiguration", configuration)
    return bool(found["webhooks"][0]["clientConfig"].get("caBundle"))


@pytest.fixture
def namespace(node_cluster: Any, request: pytest.FixtureRequest) -> Iterator[str]:
    with own_namespace(node_cluster, "n", request.node.name, request.node.nodeid) as name:
        yield name
