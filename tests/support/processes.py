"""Start and stop real processes for the tests: the upstream app and the sidecar.

Every process started here is stopped by the fixture that started it, by its
process id, even when the test fails (``hack.supervisor.stop``, as everywhere).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from hack.cache import ROOT
from hack.supervisor import free_port, stop, wait_port
from tests.support import metrics

__all__ = ["ROOT", "Sidecar", "free_port", "sidecar", "stop", "upstream_app", "wait_port"]


@dataclass
class Sidecar:
    proc: subprocess.Popen[bytes]
    port: int
    metrics_port: int
    log_path: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics") as r:
            return str(r.read().decode())

    def metric(self, name: str, labels: str = "") -> float:
        """Value of one sample, e.g. metric("asgi_requests_total", 'code="200"'); 0 if absent."""
        found = metrics.value(self.metrics(), name, labels)
        return 0.0 if found is None else found

    def log(self) -> str:
        return self.log_path.read_text()


@contextlib.contextmanager
def upstream_app(port: int | None = None, app: str = "tests.support.apps:app") -> Iterator[int]:
    """Run a real uvicorn with the test app; yields its port."""
    port = port or free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", app, "--port", str(port), "--log-level", "warning"],
        cwd=ROOT,
    )
    try:
        wait_port(port)
        yield port
    finally:
        stop(proc)


@contextlib.contextmanager
def sidecar(
    upstream_port: int,
    *args: str,
    tmp_path: Path,
    command: str = "proxy",
    env: dict[str, str] | None = None,
    prefix: list[str] | None = None,
    wait: bool = True,
) -> Iterator[Sidecar]:
    """Run ``asgi-sidecar proxy`` as a real process in front of ``upstream_port``."""
    port, metrics_port = free_port(), free_port()
    log_path = tmp_path / f"sidecar-{port}.log"
    cmd = [
        *(prefix or []),
        sys.executable,
        "-m",
        "asgi_sidecar",
        command,
        *(["--upstream", f"http://127.0.0.1:{upstream_port}"] if command == "proxy" else []),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--metrics-host",
        "127.0.0.1",
        "--metrics-port",
        str(metrics_port),
        *args,
    ]
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}
        )
    handle = Sidecar(proc, port, metrics_port, log_path)
    try:
        if wait:
            wait_port(metrics_port)
            wait_port(port)
        yield handle
    finally:
        stop(proc)
