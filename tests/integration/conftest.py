"""A real local control plane for the operator tests, started once per session."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from hack.cache import ROOT
from hack.controlplane import LocalCluster


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    with LocalCluster(tmp_path_factory.mktemp("cluster")) as running:
        running.kubectl("apply", "--server-side", "-f", str(ROOT / "crds"))
        running.kubectl(
            "wait", "--for=condition=Established", "crd/asgiservers.asgi.dev", "--timeout=30s"
        )
        yield running
