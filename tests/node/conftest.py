"""A real node for the end-to-end tests: the local control plane without kwok's fake node,
containerd, runc, a CNI bridge, the kubelet and kube-proxy (hack/node.py), the project's images
built locally (hack/nodeimages.py), and the operator.  Started once for the directory.

The figures measured here (node start-up, Pod start, ConfigMap propagation, load
results) are written to ``bench/results/node-e2e.json``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hack import kubeproxy, nodeimages
from hack.cache import ROOT
from hack.controlplane import LocalCluster
from hack.node import LocalNode, missing_requirements
from tests.support.kube import Operator, own_namespace, running_operator

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
    log = tmp_path_factory.mktemp("node-operator") / "operator.log"
    with running_operator(
        node_cluster.kubeconfig, log, sidecar_image=nodeimages.SIDECAR_IMAGE
    ) as op:
        yield op


@pytest.fixture
def namespace(node_cluster: Any, request: pytest.FixtureRequest) -> Iterator[str]:
    with own_namespace(node_cluster, "n", request.node.name, request.node.nodeid) as name:
        yield name
