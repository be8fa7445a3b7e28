"""A real local Kubernetes control plane: etcd, kube-apiserver, kube-controller-manager,
kube-scheduler and kwok (fake nodes and Pods), built by ``hack/build-cluster.sh``.

    with LocalCluster(tmp_path) as cluster:
        cluster.kubectl("apply", "-f", "-", input=manifest)

or ``python -m hack.controlplane up`` for a cluster in the foreground.  Every process is
started and stopped by ``hack.supervisor``, by its process id; their output goes to
``<work_dir>/logs/<name>.log``.
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import shutil
import signal
import ssl
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from functools import partial
from pathlib import Path
from types import TracebackType
from typing import Any

from hack import kwok
from hack.cache import BIN, ROOT
from hack.kwok import KWOK_STATUS_ANNOTATION, NODE_NAME, POD_CIDR
from hack.pki import ClusterPKI
from hack.supervisor import StartError, Supervisor, free_port, tail

__all__ = ["KWOK_STATUS_ANNOTATION", "NODE_NAME", "POD_CIDR", "ClusterError", "LocalCluster"]

SERVICE_CIDR = "10.0.0.0/24"
FIRST_SERVICE_IP = "10.0.0.1"
TIMEOUT = 60.0
CONTROL_PLANE = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler")
BINARIES = (*CONTROL_PLANE, "kubectl", "kwok")
API_SANS = (
    f"IP:127.0.0.1,IP:{FIRST_SERVICE_IP},DNS:localhost,DNS:kubernetes,"
    "DNS:kubernetes.default,DNS:kubernetes.default.svc,"
    "DNS:kubernetes.default.svc.cluster.local"
)


class ClusterError(StartError):
    """A component failed to start, exited early or did not become ready."""


def default_bin_dir() -> Path:
    assets = os.environ.get("KUBEBUILDER_ASSETS")
    return Path(assets) if assets else BIN


def find_binary(name: str, bin_dir: Path | None = None) -> Path:
    """``bin_dir/name``, else ``<repo>/.cache/bin/name``: envtest's assets hold only
    etcd, kube-apiserver and kubectl."""
    path = (bin_dir or default_bin_dir()) / name
    return path if path.is_file() else BIN / name


def child_env() -> dict[str, str]:
    """The components' environment: no proxy for loopback, no inherited KUBECONFIG."""
    env = dict(os.environ)
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "KUBECONFIG"):
        env.pop(name, None)
    env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"
    return env


def http_ok(url: str, ctx: ssl.SSLContext | None = None) -> bool:
    handlers: list[urllib.request.BaseHandler] = [urllib.request.ProxyHandler({})]
    if ctx is not None:
        handlers.append(urllib.request.HTTPSHandler(context=ctx))
    try:
        with urllib.request.build_opener(*handlers).open(url, timeout=2) as resp:
            return int(resp.status) == 200
    except (OSError, ValueError):
        return False


class LocalCluster:
    def __init__(
        self, work_dir: Path, bin_dir: Path | None = None, *, fake_node: bool = True
    ) -> None:
        """``fake_node``: register kwok's fake node; without it Pods stay Pending until a
        real node (``hack.node.LocalNode``) joins."""
        self.work_dir = Path(work_dir).resolve()
        self.bin_dir = (bin_dir or default_bin_dir()).resolve()
        self.fake_node = fake_node
        self.certs = self.work_dir / "certs"
        self.logs = self.work_dir / "logs"
        self.pki = ClusterPKI(self.certs, ClusterError)
        self.processes = Supervisor(self.logs, self.work_dir, child_env(), ClusterError)
        self._port = 0

    # -- public surface -------------------------------------------------------------
    @property
    def kubeconfig(self) -> Path:
        return self.work_dir / "kubeconfig"

    @property
    def server(self) -> str:
        return f"https://127.0.0.1:{self._port}"

    def __enter__(self) -> LocalCluster:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def kubectl(
        self, *args: str, input: str | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        cmd = [
            str(find_binary("kubectl", self.bin_dir)),
            "--kubeconfig",
            str(self.kubeconfig),
            *args,
        ]
        result = subprocess.run(
            cmd, input=input, text=True, capture_output=True, env=child_env(), check=False
        )
        if check and result.returncode != 0:
            raise ClusterError(f"kubectl {' '.join(args)} failed: {result.stderr.strip()}")
        return result

    def get_json(self, *args: str) -> Any:
        return json.loads(self.kubectl("get", *args, "-o", "json").stdout)

    def start(self) -> None:
        missing = [b for b in BINARIES if not find_binary(b, self.bin_dir).is_file()]
        if missing:
            raise ClusterError(
                f"missing {', '.join(missing)} in {self.bin_dir}; run hack/build-cluster.sh"
            )
        atexit.register(self.stop)
        try:
            self._start()
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """SIGTERM every process started here (reverse order), SIGKILL after 10 s."""
        self.processes.stop()
        atexit.unregister(self.stop)

    def install_crds(self, path: Path, timeout: float = TIMEOUT) -> None:
        """Apply the CRDs in ``path`` (server-side: the AsgiServer CRD is too large for the
        last-applied annotation) and wait until each is Established.

        A large CRD's status is written a moment after the apply, and ``kubectl wait``
        fails at once while it has no conditions, so this polls them instead; then it
        waits until the schema is published too.
        """
        names = self.kubectl("apply", "--server-side", "-f", str(path), "-o", "name").stdout
        for name in names.split():

            def established(name: str = name) -> bool:
                body = self.get_json(name)
                conditions = body.get("status", {}).get("conditions") or []
                return any(c["type"] == "Established" and c["status"] == "True" for c in conditions)

            self._wait(f"{name} Established", established, timeout)
            # Its schema reaches the published OpenAPI (kubectl explain, client-side
            # validation) a moment after it is Established.
            resource = name.split("/", 1)[1]

            def published(resource: str = resource) -> bool:
                return self.kubectl("explain", resource, check=False).returncode == 0

            self._wait(f"{resource} in the OpenAPI", published, timeout)

    def wait_for_default_service_account(
        self, namespace: str = "default", timeout: float = TIMEOUT
    ) -> None:
        """kube-controller-manager creates it; the ServiceAccount admission refuses Pods
        until it exists."""
        self._wait(
            f"serviceaccount {namespace}/default",
            lambda: (
                self.kubectl("get", "sa", "default", "-n", namespace, check=False).returncode == 0
            ),
            timeout,
        )

    def simulate_pod_failure(
        self,
        pod: str,
        namespace: str = "default",
        reason: str = "SysctlForbidden",
        message: str = 'Pod forbidden sysctl: "net.core.somaxconn" not allowlisted',
    ) -> None:
        """``hack.kwok.simulate_pod_failure``: the Pod looks rejected by its kubelet."""
        kwok.simulate_pod_failure(self, pod, namespace, reason, message)

    def wait_for_pod_ip(self, pod: str, namespace: str = "default") -> str:
        ip = ""

        def has_ip() -> bool:
            nonlocal ip
            ip = self.get_json("pod", pod, "-n", namespace)["status"].get("podIP", "")
            return bool(ip)

        self._wait(f"pod {namespace}/{pod} IP", has_ip, TIMEOUT)
        return ip

    def issue_cert(self, name: str, subject: str, usage: str, alt: str | None = None) -> Path:
        """``certs/<name>.crt`` and ``.key``, signed by the cluster's CA; returns the .crt."""
        return self.pki.issue(name, subject, usage, alt)

    def write_kubeconfig(self, path: Path, user: str) -> None:
        """A kubeconfig for ``certs/<user>.crt``/``.key`` (see ``issue_cert``)."""
        self.pki.write_kubeconfig(path, user, self.server)

    # -- start-up --------------------------------------------------------------------
    def _start(self) -> None:
        for sub in ("certs", "logs", "etcd"):
            shutil.rmtree(self.work_dir / sub, ignore_errors=True)
        self.certs.mkdir(parents=True)
        self.logs.mkdir(parents=True)
        self.pki.make_all(API_SANS)
        c = self.certs
        etcd_port, peer_port = free_port(), free_port()
        etcd_url, peer_url = f"http://127.0.0.1:{etcd_port}", f"http://127.0.0.1:{peer_port}"
        self._spawn(
            "etcd", f"--data-dir={self.work_dir / 'etcd'}", "--unsafe-no-fsync",
            f"--listen-client-urls={etcd_url}", f"--advertise-client-urls={etcd_url}",
            f"--listen-peer-urls={peer_url}", f"--initial-advertise-peer-urls={peer_url}",
            f"--initial-cluster=default={peer_url}",
        )  # fmt: skip
        self._wait("etcd", partial(http_ok, f"{etcd_url}/health"), TIMEOUT)

        self._port = free_port()
        self._spawn(
            "kube-apiserver", f"--etcd-servers={etcd_url}",
            "--bind-address=127.0.0.1", f"--secure-port={self._port}",
            f"--tls-cert-file={c / 'apiserver.crt'}",
            f"--tls-private-key-file={c / 'apiserver.key'}",
            f"--client-ca-file={c / 'ca.crt'}", f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--allow-privileged=true", "--authorization-mode=Node,RBAC",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-account-key-file={c / 'sa.pub'}",
            f"--service-account-signing-key-file={c / 'sa.key'}",
            # the default reconciler would publish 127.0.0.1, which Endpoints refuse
            "--endpoint-reconciler-type=none",
            # for kubectl exec and logs on a real node (hack/node.py)
            f"--kubelet-client-certificate={c / 'kubelet-client.crt'}",
            f"--kubelet-client-key={c / 'kubelet-client.key'}",
            "--kubelet-preferred-address-types=InternalIP",
        )  # fmt: skip
        ctx = ssl.create_default_context(cafile=str(c / "ca.crt"))
        ctx.load_cert_chain(str(c / "admin.crt"), str(c / "admin.key"))
        self._wait("kube-apiserver", partial(http_ok, f"{self.server}/readyz", ctx), TIMEOUT)

        for user in ("admin", "kcm", "scheduler", "kwok"):
            path = self.kubeconfig if user == "admin" else self.work_dir / f"{user}.kubeconfig"
            self.write_kubeconfig(path, user)
        kcm_port, sched_port, kwok_port = free_port(), free_port(), free_port()
        kcm = str(self.work_dir / "kcm.kubeconfig")
        self._spawn(
            "kube-controller-manager", f"--kubeconfig={kcm}",
            f"--authentication-kubeconfig={kcm}", f"--authorization-kubeconfig={kcm}",
            f"--service-account-private-key-file={c / 'sa.key'}", f"--root-ca-file={c / 'ca.crt'}",
            f"--cluster-signing-cert-file={c / 'ca.crt'}",
            f"--cluster-signing-key-file={c / 'ca.key'}",
            f"--service-cluster-ip-range={SERVICE_CIDR}", "--controllers=*",
            "--leader-elect=false", "--use-service-account-credentials=true",
            # the default client rate limit (20/s) spaces out the controllers' start by
            # ~0.15 s each: the node-lifecycle one, which lifts the new node's not-ready
            # taint, would start ~3 s later
            "--kube-api-qps=200", "--kube-api-burst=400", "--node-monitor-period=1s",
            "--bind-address=127.0.0.1", f"--secure-port={kcm_port}",
            f"--cert-dir={self.work_dir / 'kcm-serving'}",
        )  # fmt: skip
        sched = str(self.work_dir / "scheduler.kubeconfig")
        self._spawn(
            "kube-scheduler", f"--kubeconfig={sched}",
            f"--authentication-kubeconfig={sched}", f"--authorization-kubeconfig={sched}",
            "--leader-elect=false", "--bind-address=127.0.0.1", f"--secure-port={sched_port}",
            f"--cert-dir={self.work_dir / 'scheduler-serving'}",
        )  # fmt: skip
        self._spawn("kwok", *kwok.kwok_args(self.work_dir / "kwok.kubeconfig", kwok_port))
        insecure = ssl.create_default_context()
        insecure.check_hostname = False
        insecure.verify_mode = ssl.CERT_NONE
        for name, port in (("kube-controller-manager", kcm_port), ("kube-scheduler", sched_port)):
            self._wait(
                name, partial(http_ok, f"https://127.0.0.1:{port}/healthz", insecure), TIMEOUT
            )
        self._wait("kwok", partial(http_ok, f"http://127.0.0.1:{kwok_port}/healthz"), TIMEOUT)
        if self.fake_node:
            self.kubectl("apply", "-f", "-", input=json.dumps(kwok.fake_node()))
            self._wait(f"node {NODE_NAME} Ready", partial(kwok.node_ready, self), TIMEOUT)
        self.wait_for_default_service_account()

    def _spawn(self, name: str, *args: str) -> None:
        self.processes.spawn(name, find_binary(name, self.bin_dir), *args)

    def _wait(self, what: str, ready: Callable[[], bool], timeout: float) -> None:
        self.processes.wait(what, ready, timeout)


def _up(work_dir: Path) -> int:
    def on_term(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    # started in the background by a shell, SIGINT comes ignored; Ctrl-C must still stop
    signal.signal(signal.SIGINT, signal.default_int_handler)
    started = time.monotonic()
    cluster = LocalCluster(work_dir)
    try:
        cluster.start()
        print(f"cluster ready in {time.monotonic() - started:.1f}s; logs in {cluster.logs}")
        print(f"export KUBECONFIG={cluster.kubeconfig}")
        print(f"{find_binary('kubectl')} get nodes,pods -A   # Ctrl-C stops the cluster")
        sys.stdout.flush()
        while True:
            gone = cluster.processes.exited()
            if gone is not None:
                name, code, log = gone
                print(f"{name} exited with {code}\n{tail(log)}", file=sys.stderr)
                return 1
            time.sleep(1)
    except KeyboardInterrupt:
        return 0
    except ClusterError as exc:
        print(exc, file=sys.stderr)
        return 1
    finally:
        cluster.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="A local Kubernetes control plane with kwok.")
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="start a cluster and keep it running until Ctrl-C")
    up.add_argument("--dir", type=Path, default=ROOT / ".cache" / "localcluster")
    sub.add_parser("build", help="build the binaries (hack/build-cluster.sh)")
    args = parser.parse_args(argv)
    if args.command == "build":
        return subprocess.call(["bash", str(ROOT / "hack" / "build-cluster.sh")])
    return int(_up(args.dir))


if __name__ == "__main__":
    sys.exit(main())
