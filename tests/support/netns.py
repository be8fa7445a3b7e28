"""A network namespace of a test's own (``ip netns``), with processes and requests inside it.

The listen backlog is clamped to the namespace's net.core.somaxconn, so tests of the clamp
run the upstream and the sidecar in a namespace with a small one, and reach them from
inside it too.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator

from hack.cache import ROOT
from hack.supervisor import free_port, stop
from tests.support import metrics
from tests.support.processes import Sidecar
from tests.support.waiting import wait_for


@contextlib.contextmanager
def netns(somaxconn: int) -> Iterator[list[str]]:
    """A fresh network namespace with lo up and the given somaxconn; yields the exec prefix."""
    name = f"asgi-test-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    prefix = ["ip", "netns", "exec", name]
    try:
        subprocess.run([*prefix, "ip", "link", "set", "lo", "up"], check=True)
        subprocess.run(
            [*prefix, "sysctl", "-q", "-w", f"net.core.somaxconn={somaxconn}"], check=True
        )
        yield prefix
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


def ns_get(prefix: list[str], port: int, path: str) -> tuple[int, str]:
    """GET http://127.0.0.1:port/path from inside the namespace: (status, body); 0 if refused."""
    result = subprocess.run(
        [
            *prefix,
            "curl",
            "-s",
            "--max-time",
            "5",
            "-w",
            "\n%{http_code}",
            f"http://127.0.0.1:{port}{path}",
        ],
        capture_output=True,
        text=True,
        timeout=10,
        check=False,
    )
    body, _, code = result.stdout.rpartition("\n")
    return int(code or 0), body


def ns_metric(prefix: list[str], sc: Sidecar, name: str, labels: str = "") -> float:
    """One sample of the sidecar's scrape, fetched from inside the namespace; fails if absent."""
    status, text = ns_get(prefix, sc.metrics_port, "/metrics")
    assert status == 200
    found = metrics.value(text, name, labels)
    assert found is not None, f"{name}{{{labels}}} not in the scrape"
    return found


@contextlib.contextmanager
def upstream_in(prefix: list[str]) -> Iterator[int]:
    """The test app on uvicorn inside the namespace; yields its port."""
    port = free_port()
    app = ["uvicorn", "tests.support.apps:app", "--port", str(port), "--log-level", "warning"]
    proc = subprocess.Popen(
        [*prefix, sys.executable, "-m", *app],
        cwd=ROOT,
    )
    try:
        wait_for(lambda: ns_get(prefix, port, "/echo")[0] == 200, 15, "upstream in netns")
        yield port
    finally:
        stop(proc)


def wait_ready_in(prefix: list[str], sc: Sidecar) -> None:
    """Wait until the sidecar in the namespace serves; fail at once, with its log, if it exits."""

    def healthy() -> bool:
        assert sc.proc.poll() is None, f"the sidecar exited:\n{sc.log()}"
        return ns_get(prefix, sc.metrics_port, "/healthz")[0] == 200

    wait_for(healthy, 15, "metrics port")
    wait_for(lambda: ns_get(prefix, sc.port, "/echo")[0] == 200, 15, "sidecar in netns")
