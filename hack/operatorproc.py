"""``asgi-operator run`` as a child process: the one way ``make run``, the tests and the
benchmarks start the operator against a local control plane.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from hack.cache import ROOT
from hack.controlplane import child_env


def command(*flags: str, all_namespaces: bool = True) -> list[str]:
    """The operator's command line; ``all_namespaces``: watch every namespace."""
    scope = ["--all-namespaces"] if all_namespaces else []
    return [sys.executable, "-m", "asgi_operator", "run", *scope, *flags]


def environment(kubeconfig: Path) -> dict[str, str]:
    """The control plane's child environment (no proxy for loopback), with ``kubeconfig``."""
    return {**child_env(), "KUBECONFIG": str(kubeconfig)}


def start(
    kubeconfig: Path, *flags: str, log: Path | None = None, all_namespaces: bool = True
) -> subprocess.Popen[bytes]:
    """Start the operator; its output goes to ``log`` (appended), else to this terminal.

    The caller stops it by process id (``hack.supervisor.stop``)."""
    cmd = command(*flags, all_namespaces=all_namespaces)
    env = environment(kubeconfig)
    if log is None:
        return subprocess.Popen(cmd, cwd=ROOT, env=env)
    with log.open("ab") as out:
        return subprocess.Popen(
            cmd, cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT
        )
