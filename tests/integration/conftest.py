"""A real local control plane for the operator tests, started once per session."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from hack.cache import ROOT
from hack.controlplane import LocalCluster
from tests.support.kube import Operator, own_namespace, running_operator


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    with LocalCluster(tmp_path_factory.mktemp("cluster")) as running:
        running.install_crds(ROOT / "crds")
        yield running


@pytest.fixture(scope="module")
def operator(cluster: LocalCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Operator]:
    """The operator as a process, for one test module, against the shared control plane."""
    log = tmp_path_factory.mktemp("operator") / "operator.log"
    with running_operator(cluster.kubeconfig, log) as op:
        yield op


@pytest.fixture
def namespace(cluster: LocalCluster, request: pytest.FixtureRequest) -> Iterator[str]:
    """A namespace of the test's own, deleted afterwards."""
    with own_namespace(cluster, "t", request.node.name, request.node.nodeid) as name:
        yield name
