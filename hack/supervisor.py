"""Processes started and stopped by process id, for the local cluster, the tests and the benchmarks.

One rule everywhere: a process started here is stopped here (SIGTERM, then SIGKILL after a
grace period), by its id, newest first, however the caller ends.  Children get
``PR_SET_PDEATHSIG`` so none outlives a Python process that was killed itself.
"""

from __future__ import annotations

import contextlib
import ctypes
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Mapping
from pathlib import Path


class StartError(RuntimeError):
    """A process exited early or did not become ready in time."""


# Every port handed out by this process: the kernel may give a closed port out again, and a
# port free here can be in use in a network namespace a test made (tests/support/netns.py),
# so a port is never handed out twice.
_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """A loopback port nobody listens on right now, and not handed out before by this process."""
    for _ in range(1000):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port
    raise RuntimeError(f"no fresh loopback port after 1000 tries ({len(_HANDED_OUT)} handed out)")


def wait_port(port: int, timeout: float = 15.0) -> None:
    """Wait until something accepts connections on 127.0.0.1:``port``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listening on port {port} after {timeout}s")


def stop(proc: subprocess.Popen[bytes], timeout: float = 10.0, sig: int = signal.SIGTERM) -> int:
    """Send ``sig`` (SIGTERM) and wait ``timeout`` seconds, then SIGKILL; the exit status."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(sig)
        try:
            return proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            proc.wait()
    return int(proc.returncode)


def tail(log: Path, lines: int = 30) -> str:
    """The last ``lines`` lines of a log, headed by its path (for error messages)."""
    try:
        text = log.read_text(errors="replace").splitlines()
    except OSError:
        return f"(no log at {log})"
    return f"--- last {lines} lines of {log} ---\n" + "\n".join(text[-lines:])


def die_with_parent() -> None:
    """Runs in the child before exec: SIGKILL it if this Python process dies."""
    with contextlib.suppress(Exception):
        ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


class Supervisor:
    """Processes started here, each with its log ``<logs>/<name>.log``; stopped by process id,
    newest first.

    ``env`` is every child's environment (None: this process's); ``error`` is the exception
    ``wait`` raises, so a caller's own error type (``ClusterError``) reaches its callers.
    """

    def __init__(
        self,
        logs: Path,
        cwd: Path,
        env: Mapping[str, str] | None = None,
        error: type[Exception] = StartError,
    ) -> None:
        self.logs, self.cwd = logs, cwd
        self.env = dict(env) if env is not None else None
        self.error = error
        self.procs: list[tuple[str, subprocess.Popen[bytes], Path]] = []
        self.stop_signals: dict[int, int] = {}

    def spawn(
        self,
        name: str,
        binary: Path | str,
        *args: str,
        stop_signal: int = signal.SIGTERM,
        preexec: Callable[[], None] | None = None,
        env: Mapping[str, str] | None = None,
    ) -> subprocess.Popen[bytes]:
        """Start ``binary args`` in its own session; ``preexec`` runs in the child too."""

        def before_exec() -> None:
            die_with_parent()
            if preexec is not None:
                preexec()

        log = self.logs / f"{name}.log"
        with log.open("ab") as out:
            proc = subprocess.Popen(
                [str(binary), *args],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=dict(env) if env is not None else self.env,
                cwd=self.cwd,
                start_new_session=True,
                # only prctl(2) and setrlimit(2) run there; processes start from one thread
                preexec_fn=before_exec,  # noqa: PLW1509
            )
        self.procs.append((name, proc, log))
        self.stop_signals[proc.pid] = stop_signal
        return proc

    def exited(self) -> tuple[str, int, Path] | None:
        """The first process that is no longer running: name, exit status, log."""
        for name, proc, log in self.procs:
            if proc.poll() is not None:
                return name, proc.returncode, log
        return None

    def wait(self, what: str, ready: Callable[[], bool], timeout: float) -> None:
        """Poll ``ready`` until true; raise ``error`` with a log tail if a process exits or
        ``timeout`` seconds pass."""
        deadline = time.monotonic() + timeout
        while True:
            gone = self.exited()
            if gone is not None:
                name, code, log = gone
                raise self.error(
                    f"{name} exited with {code} while waiting for {what}:\n" + tail(log)
                )
            if ready():
                return
            if time.monotonic() > deadline:
                name, _, log = self.procs[-1] if self.procs else ("nothing", None, Path("-"))
                raise self.error(
                    f"{what} not ready after {timeout:.0f}s; last started: {name}\n" + tail(log)
                )
            time.sleep(0.2)

    def running(self, name: str) -> bool:
        return any(n == name for n, _, _ in self.procs)

    def stop_proc(self, proc: subprocess.Popen[bytes], grace: float = 10.0) -> None:
        for entry in [e for e in self.procs if e[1] is proc]:
            self.procs.remove(entry)
        stop(proc, grace, self.stop_signals.pop(proc.pid, signal.SIGTERM))

    def stop_one(self, name: str, grace: float = 10.0) -> None:
        for _, proc, _ in [e for e in self.procs if e[0] == name]:
            self.stop_proc(proc, grace)

    def stop(self, grace: float = 10.0) -> None:
        """Stop every process (newest first): its stop signal, SIGKILL after ``grace`` s."""
        while self.procs:
            self.stop_proc(self.procs[-1][1], grace)
