"""A real local control plane for the operator tests, started once per session."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator

import pytest

from hack.cache import ROOT
from hack.controlplane import LocalCluster
from tests.support.kube import Operator


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    with LocalCluster(tmp_path_factory.mktemp("cluster")) as running:
        running.install_crds(ROOT / "crds")
        yield running


@pytest.fixture(scope="module")
def operator(cluster: LocalCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Operator]:
    """The operator as a process, for one test module, against the shared control plane."""
    op = Operator(cluster.kubeconfig, tmp_path_factory.mktemp("operator") / "operator.log")
    op.start()
    try:
        yield op
    finally:
        op.stop()


@pytest.fixture
def namespace(cluster: LocalCluster, request: pytest.FixtureRequest) -> Iterator[str]:
    """A namespace of the test's own (named after it), deleted afterwards."""
    slug = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower())[:44].strip("-")
    digest = hashlib.sha256(request.node.nodeid.encode()).hexdigest()[:8]
    name = f"t-{slug}-{digest}"  # unique per test and parameter, within 63 characters
    cluster.kubectl("create", "namespace", name)
    cluster.wait_for_default_service_account(name)
    try:
        yield name
    finally:
        cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)
