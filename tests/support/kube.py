"""Helpers for tests on the local control plane (``hack.controlplane.LocalCluster``): reading
objects, waiting through a busy API server, the operator as a process, ConfigMap polling.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import yaml

from hack import operatorproc
from hack.supervisor import stop
from tests.support import waiting

# What a busy API server or a not-yet-created object looks like from kubectl.
TRANSIENT = (RuntimeError, subprocess.CalledProcessError, LookupError, TypeError)

# The operator's flags in the tests: no liveness endpoint, no fixed metrics port, quick
# resyncs so a test does not wait long for a periodic pass.
QUICK = ("--liveness", "", "--resync-seconds", "2", "--metrics-port", "0")


def eventually(check: Callable[[], Any], timeout: float = 60.0, what: str = "") -> Any:
    """``waiting.eventually`` that takes ``TRANSIENT`` errors for "not yet"."""
    return waiting.eventually(check, timeout, what, tolerate=TRANSIENT)


def get(cluster: Any, kind: str, name: str, namespace: str) -> dict[str, Any]:
    result: dict[str, Any] = cluster.get_json(kind, name, "-n", namespace)
    return result


@contextlib.contextmanager
def own_namespace(cluster: Any, prefix: str, test_name: str, node_id: str) -> Iterator[str]:
    """A namespace for one test, named after it, ready for Pods; deleted afterwards.

    The name is ``prefix-<test name>-<digest of its node id>``: unique per test and
    parameter, and within Kubernetes' 63 characters.
    """
    slug = re.sub(r"[^a-z0-9]+", "-", test_name.lower())[:44].strip("-")
    digest = hashlib.sha256(node_id.encode()).hexdigest()[:8]
    name = f"{prefix}-{slug}-{digest}"
    cluster.kubectl("create", "namespace", name)
    cluster.wait_for_default_service_account(name)
    try:
        yield name
    finally:
        cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


@contextlib.contextmanager
def running_operator(kubeconfig: Path, log: Path, **options: Any) -> Iterator[Operator]:
    """The operator as a process for as long as the block runs."""
    op = Operator(kubeconfig, log, **options)
    op.start()
    try:
        yield op
    finally:
        op.stop()


def apply(cluster: Any, manifest: dict[str, Any] | str, namespace: str) -> Any:
    """``kubectl apply`` of a manifest (a dict or YAML text) into ``namespace``."""
    text = manifest if isinstance(manifest, str) else yaml.safe_dump(manifest)
    return cluster.kubectl("apply", "-n", namespace, "-f", "-", input=text)


def server(name: str, **spec: Any) -> dict[str, Any]:
    """An AsgiServer named ``name`` with an image and the given spec fields."""
    return {
        "apiVersion": "asgi.dev/v1alpha1",
        "kind": "AsgiServer",
        "metadata": {"name": name},
        "spec": {"image": "example.com/app:1", **spec},
    }


def condition(body: dict[str, Any], kind: str) -> dict[str, Any]:
    """The status condition of type ``kind``, or {}."""
    for cond in body.get("status", {}).get("conditions", []):
        if cond["type"] == kind:
            return cond
    return {}


class Operator:
    """``asgi-operator run`` (``hack.operatorproc``) with its output in ``log``.

    ``flags`` default to ``QUICK``; ``sidecar_image`` None keeps the operator's default;
    ``all_namespaces`` False leaves the scope to ``flags`` (``--namespace``).
    """

    def __init__(
        self,
        kubeconfig: Path,
        log: Path,
        sidecar_image: str | None = "sidecar:test",
        *,
        flags: Sequence[str] = QUICK,
        all_namespaces: bool = True,
    ) -> None:
        self.kubeconfig = kubeconfig
        self.log_path = log
        self.sidecar_image = sidecar_image
        self.flags = [*flags, *(["--sidecar-image", sidecar_image] if sidecar_image else [])]
        self.all_namespaces = all_namespaces
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Operator:
        self.proc = operatorproc.start(
            self.kubeconfig, *self.flags, log=self.log_path, all_namespaces=self.all_namespaces
        )
        return self

    def stop(self) -> None:
        if self.proc is not None:
            stop(self.proc)
            self.proc = None

    def log(self) -> str:
        return self.log_path.read_text()


class ConfigMapPoller(threading.Thread):
    """Reads one ConfigMap key every ``interval`` seconds and hands each new value to
    ``changed`` (the value); a failed read (a busy API server) is retried next time."""

    def __init__(
        self, cluster: Any, namespace: str, name: str, key: str = "sidecar.json",
        interval: float = 0.5,
    ) -> None:  # fmt: skip
        super().__init__(daemon=True)
        self.cluster, self.namespace, self.name, self.key = cluster, namespace, name, key
        self.interval = interval
        self.stopped = threading.Event()
        self.last: str | None = None

    def read(self) -> str:
        return str(get(self.cluster, "configmap", self.name, self.namespace)["data"][self.key])

    def changed(self, value: str) -> None:
        """Called with every new value (the first read included)."""

    def sync(self) -> None:
        """Read the key once; ``changed`` if it differs from the last read."""
        value = self.read()
        if value != self.last:
            self.last = value
            self.changed(value)

    def run(self) -> None:
        while not self.stopped.wait(self.interval):
            try:
                self.sync()
            except Exception:  # the API server was busy: next time
                continue

    def __enter__(self) -> ConfigMapPoller:
        self.sync()
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopped.set()
        self.join(timeout=10)


class ConfigMapVolume(ConfigMapPoller):
    """Copies the ConfigMap's key into ``path`` every half second, as the kubelet does for a
    mounted ConfigMap volume."""

    def __init__(self, cluster: Any, namespace: str, name: str, path: Path) -> None:
        super().__init__(cluster, namespace, name, interval=0.5)
        self.path = path

    def changed(self, value: str) -> None:
        self.path.write_text(value)


class ConfigMapWatch(ConfigMapPoller):
    """Polls a ConfigMap's limitConcurrency every 0.2 s; remembers when it first changed."""

    def __init__(self, cluster: Any, namespace: str, name: str) -> None:
        super().__init__(cluster, namespace, name, interval=0.2)
        self.initial: int | None = None
        self.change: tuple[float, int] | None = None

    def changed(self, value: str) -> None:
        limit = int(json.loads(value)["limitConcurrency"])
        if self.initial is None:
            self.initial = limit
        elif limit != self.initial:
            self.change = (time.monotonic(), limit)
            self.stopped.set()  # seen: stop polling

    def first_change(self) -> tuple[float, int] | None:
        return self.change
