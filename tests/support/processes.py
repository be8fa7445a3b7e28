"""Start and stop real processes for the tests: the upstream app and the sidecar.

Every process started here is stopped by the fixture that started it, by its
process id, even when the test fails.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_port(port: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listening on port {port} after {timeout}s")


def stop(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return int(proc.returncode)


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
        wanted = f"{name}{{{labels}}}" if labels else name
        for line in self.metrics().splitlines():
            if line.startswith("#"):
                continue
            key, _, value = line.rpartition(" ")
            if key == wanted:
                return float(value)
        return 0.0

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
