"""The ASGI servers the interop matrix puts behind the sidecar, each as a real process.

Every server runs ``tests.support.apps:app`` with its own defaults (one worker, its default
HTTP/1.1 implementation, WebSockets on where it has them) on a free loopback port; only the
address is set.  ``running(name)`` waits until the app answers a request (not merely until
the port accepts: granian binds before its worker runs) and stops the server by process id
however the caller ends.

``keep_alive`` is each server's default idle timeout on a kept-alive connection, read in its
source and measured here (idle after a response, until the server's FIN):

- uvicorn 0.54: ``Config.timeout_keep_alive = 5`` (uvicorn/config.py), both protocols;
- hypercorn 0.18: ``Config.keep_alive_timeout = 5 * SECONDS`` (hypercorn/config.py);
- daphne 4.2.3: none of its own; Twisted's ``HTTPFactory(timeout=_REQUEST_TIMEOUT)``,
  ``_REQUEST_TIMEOUT = 1 * 60`` (twisted/web/http.py), which daphne's ``HTTPFactory``
  keeps and its command line cannot change (``--http-timeout`` bounds the app instead);
- granian 2.8.7: no idle timeout as such; hyper's ``header_read_timeout``, which runs from
  the end of a response until the next head is complete, is ``HTTP1Settings
  .header_read_timeout = 30_000`` ms (granian/http.py).
"""

from __future__ import annotations

import contextlib
import http.client
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from hack.cache import ROOT
from hack.supervisor import StartError, free_port, stop, tail

APP = "tests.support.apps:app"
READY_TIMEOUT = 30.0  # a cold start of daphne (Twisted) takes a few seconds on a busy machine


def _uvicorn(protocol: str) -> Callable[[int], list[str]]:
    def command(port: int) -> list[str]:
        return ["-m", "uvicorn", APP, "--port", str(port), "--http", protocol]

    return command


def _hypercorn(port: int) -> list[str]:
    return ["-m", "hypercorn", APP, "--bind", f"127.0.0.1:{port}"]


def _daphne(port: int) -> list[str]:
    return ["-m", "daphne", "--bind", "127.0.0.1", "--port", str(port), APP]


def _granian(port: int) -> list[str]:
    # granian's default interface is its own RSGI: asking for ASGI is the one thing it needs.
    address = ["--host", "127.0.0.1", "--port", str(port)]
    return ["-m", "granian", "--interface", "asgi", *address, APP]


@dataclass(frozen=True)
class ServerKind:
    """One ASGI server as the matrix runs it."""

    name: str
    keep_alive: float  # its default idle timeout, seconds (see the module docstring)
    arguments: Callable[[int], list[str]]  # after ``python``, for a port


SERVERS: dict[str, ServerKind] = {
    kind.name: kind
    for kind in (
        ServerKind("uvicorn-httptools", 5.0, _uvicorn("httptools")),
        ServerKind("uvicorn-h11", 5.0, _uvicorn("h11")),
        ServerKind("hypercorn", 5.0, _hypercorn),
        ServerKind("daphne", 60.0, _daphne),
        ServerKind("granian", 30.0, _granian),
    )
}


@dataclass
class RunningServer:
    kind: ServerKind
    port: int
    proc: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        return tail(self.log_path)


def _answers(port: int) -> bool:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
    try:
        conn.request("GET", "/echo")
        return conn.getresponse().status == 200
    except OSError:
        return False
    finally:
        conn.close()


def _wait_ready(proc: subprocess.Popen[bytes], port: int, log: Path) -> None:
    deadline = time.monotonic() + READY_TIMEOUT
    while not _answers(port):
        if proc.poll() is not None:
            raise StartError(f"server exited with {proc.returncode}:\n" + tail(log))
        if time.monotonic() > deadline:
            raise StartError(f"server not answering after {READY_TIMEOUT}s:\n" + tail(log))
        time.sleep(0.1)


@contextlib.contextmanager
def running(name: str, logs: Path) -> Iterator[RunningServer]:
    """Run server ``name`` (a key of SERVERS) on a free port until the block ends."""
    kind = SERVERS[name]
    port = free_port()
    log_path = logs / f"{name}-{port}.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, *kind.arguments(port)],
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        _wait_ready(proc, port, log_path)
        yield RunningServer(kind, port, proc, log_path)
    finally:
        stop(proc)
