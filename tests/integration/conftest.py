"""A real local control plane for the operator tests, started once per session."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from tests.support.processes import ROOT

sys.path.insert(0, str(ROOT / "hack"))
localcluster = importlib.import_module("localcluster")


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    with localcluster.LocalCluster(tmp_path_factory.mktemp("cluster")) as running:
        running.kubectl("apply", "--server-side", "-f", str(ROOT / "crds"))
        running.kubectl(
            "wait", "--for=condition=Established", "crd/asgiservers.asgi.dev", "--timeout=30s"
        )
        yield running
