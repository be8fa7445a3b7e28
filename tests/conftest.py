"""Shared fixtures: a real uvicorn upstream and a real sidecar process."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.processes import upstream_app


@pytest.fixture(scope="session")
def upstream_port() -> Iterator[int]:
    with upstream_app() as port:
        yield port
