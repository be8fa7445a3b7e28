"""Start, watch and stop the processes a benchmark needs: every one pinned, every one by PID
(``hack.supervisor``, as the local cluster and the tests do), and measured here."""

from __future__ import annotations

import contextlib
import os
import resource
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from hack import supervisor
from hack.cache import ROOT
from hack.supervisor import StartError, Supervisor, free_port

__all__ = ["CLK_TCK", "NOFILE", "Proc", "Processes", "StartError", "free_port", "processes"]

VENV_BIN = Path(sys.executable).parent
CLK_TCK = os.sysconf("SC_CLK_TCK")
NOFILE = 20000  # open files for the processes that hold many connections


def raise_nofile(limit: int = NOFILE) -> int:
    """Raise this process's open-file limit (children inherit it); returns the new soft limit."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = limit if hard == resource.RLIM_INFINITY else min(limit, hard)
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def _child_nofile() -> None:
    raise_nofile()


@dataclass
class Proc:
    """One started process (its descendants, such as nginx workers, count as part of it)."""

    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path
    stop_signal: int = signal.SIGTERM
    extra: dict[str, int] = field(default_factory=dict)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def pids(self) -> list[int]:
        """This process and all its descendants."""
        children: dict[int, list[int]] = {}
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(entry))
        found, todo = [], [self.pid]
        while todo:
            pid = todo.pop()
            found.append(pid)
            todo.extend(children.get(pid, []))
        return found

    def cpu_seconds(self) -> float:
        """utime + stime of the process tree, in seconds."""
        ticks = 0
        for pid in self.pids():
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            ticks += int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15)
        return ticks / CLK_TCK

    def rss_kib(self) -> int:
        """Resident memory (VmRSS) of the process tree in KiB."""
        total = 0
        for pid in self.pids():
            try:
                status = Path(f"/proc/{pid}/status").read_text()
            except OSError:
                continue
            for line in status.splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        return total

    def log_tail(self, lines: int = 15) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, timeout: float = 10.0) -> None:
        supervisor.stop(self.popen, timeout, self.stop_signal)


def wait_ready(proc: Proc, url: str | None, port: int, timeout: float = 20.0) -> None:
    """Wait until ``url`` answers 200 (or, with no URL, ``port`` accepts connections)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not proc.alive():
            raise StartError(f"{proc.name} exited with {proc.popen.returncode}:\n{proc.log_tail()}")
        try:
            if url is None:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    return
            else:
                with urllib.request.urlopen(url, timeout=2) as response:
                    if response.status == 200:
                        return
        except (OSError, urllib.error.URLError):
            pass
        time.sleep(0.1)
    raise StartError(f"{proc.name} not ready after {timeout}s:\n{proc.log_tail()}")


class Processes:
    """Everything a scenario started, each pinned to its core with ``taskset`` and logged to
    ``workdir/<name>.log``; ``close`` stops all of them (newest first)."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.supervisor = Supervisor(workdir, ROOT)
        self.procs: list[Proc] = []

    def start(
        self,
        name: str,
        cmd: list[str],
        core: int | str,
        *,
        ready_url: str | None = None,
        port: int,
        stop_signal: int = signal.SIGTERM,
        env: dict[str, str] | None = None,
        ready_timeout: float = 20.0,
    ) -> Proc:
        """``env``: variables added to the supervisor's environment for this process."""
        popen = self.supervisor.spawn(
            name,
            "taskset",  # taskset execs: the PID is the command's
            "-c",
            str(core),
            *cmd,
            stop_signal=stop_signal,
            preexec=_child_nofile,
            env={**(self.supervisor.env or os.environ), **env} if env else None,
        )
        proc = Proc(name, popen, self.workdir / f"{name}.log", stop_signal)
        self.procs.append(proc)
        wait_ready(proc, ready_url, port, ready_timeout)
        return proc

    def stop(self, proc: Proc) -> None:
        self.supervisor.stop_proc(proc.popen)
        if proc in self.procs:
            self.procs.remove(proc)

    def close(self) -> None:
        self.supervisor.stop()
        self.procs.clear()


@contextlib.contextmanager
def processes(workdir: Path) -> Iterator[Processes]:
    procs = Processes(workdir)
    try:
        yield procs
    finally:
        procs.close()


# -- the programs ------------------------------------------------------------------------------


def uvicorn_cmd(app: str, port: int, *extra: str, app_dir: str | None = None) -> list[str]:
    cmd = [str(VENV_BIN / "uvicorn"), app, "--host", "127.0.0.1", "--port", str(port)]
    cmd += ["--workers", "1", "--loop", "uvloop", "--http", "httptools"]
    cmd += ["--log-level", "warning", "--no-access-log"]
    if app_dir:
        cmd += ["--app-dir", app_dir]
    return cmd + list(extra)


def sidecar_cmd(mode: list[str], port: int, metrics_port: int, *extra: str) -> list[str]:
    cmd = [str(VENV_BIN / "asgi-sidecar"), *mode, "--host", "127.0.0.1", "--port", str(port)]
    cmd += ["--metrics-host", "127.0.0.1", "--metrics-port", str(metrics_port)]
    cmd += ["--log-level", "warning", "--timeout-graceful-shutdown", "2"]
    return cmd + list(extra)


def start_uvicorn(
    procs: Processes, name: str, app: str, core: int, *extra: str, app_dir: str | None = None
) -> tuple[Proc, int]:
    port = free_port()
    cmd = uvicorn_cmd(app, port, *extra, app_dir=app_dir)
    return procs.start(name, cmd, core, ready_url=f"http://127.0.0.1:{port}/", port=port), port


PURE = {"ASGI_SIDECAR_PURE": "1"}  # the env of a sidecar on its pure-Python build


def start_sidecar(
    procs: Processes,
    name: str,
    mode: list[str],
    core: int,
    *extra: str,
    env: dict[str, str] | None = None,
    wrapper: list[str] | None = None,
    ready_timeout: float = 20.0,
) -> tuple[Proc, int]:
    """``wrapper``: a command the sidecar runs under (valgrind), given ``python -m``."""
    port, metrics_port = free_port(), free_port()
    cmd = sidecar_cmd(mode, port, metrics_port, *extra)
    if wrapper is not None:
        cmd = [*wrapper, sys.executable, "-m", "asgi_sidecar", *cmd[1:]]
    ready = f"http://127.0.0.1:{metrics_port}/readyz"
    proc = procs.start(
        name, cmd, core, ready_url=ready, port=port, env=env, ready_timeout=ready_timeout
    )
    proc.extra["metrics_port"] = metrics_port
    return proc, port
