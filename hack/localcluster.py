"""A real local Kubernetes control plane: etcd, kube-apiserver, kube-controller-manager,
kube-scheduler and kwok (fake nodes and Pods), built by ``hack/build-cluster.sh``.

    with LocalCluster(tmp_path) as cluster:
        cluster.kubectl("apply", "-f", "-", input=manifest)

or ``python hack/localcluster.py up`` for a cluster in the foreground.  Every process is
started here and stopped here, by its process id; their output goes to
``<work_dir>/logs/<name>.log``.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import ctypes
import json
import os
import shutil
import signal
import socket
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

ROOT = Path(__file__).resolve().parents[1]
SERVICE_CIDR = "10.0.0.0/24"
FIRST_SERVICE_IP = "10.0.0.1"
POD_CIDR = "10.1.0.0/16"
NODE_NAME = "kwok-node-0"
KWOK_ANNOTATION = "kwok.x-k8s.io/node"
KWOK_STATUS_ANNOTATION = "kwok.x-k8s.io/status"  # "custom": kwok leaves the Pod's status alone
TIMEOUT = 60.0
CONTROL_PLANE = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler")
BINARIES = (*CONTROL_PLANE, "kubectl", "kwok")
_EC_KEY = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")


class ClusterError(RuntimeError):
    """A component failed to start, exited early or did not become ready."""


def default_bin_dir() -> Path:
    assets = os.environ.get("KUBEBUILDER_ASSETS")
    return Path(assets) if assets else ROOT / ".cache" / "bin"


def find_binary(name: str, bin_dir: Path | None = None) -> Path:
    """``bin_dir/name``, else ``<repo>/.cache/bin/name``: envtest's assets hold only
    etcd, kube-apiserver and kubectl."""
    path = (bin_dir or default_bin_dir()) / name
    return path if path.is_file() else ROOT / ".cache" / "bin" / name


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _die_with_parent() -> None:
    """Runs in the child before exec: SIGKILL it if this Python process dies."""
    with contextlib.suppress(Exception):
        ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "KUBECONFIG"):
        env.pop(name, None)
    env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"
    return env


class Supervisor:
    """Processes started here, each with its log; stopped here by process id, newest first."""

    def __init__(self, logs: Path, cwd: Path) -> None:
        self.logs, self.cwd = logs, cwd
        self.procs: list[tuple[str, subprocess.Popen[bytes], Path]] = []

    def spawn(self, name: str, binary: Path | str, *args: str) -> subprocess.Popen[bytes]:
        log = self.logs / f"{name}.log"
        with log.open("ab") as out:
            proc = subprocess.Popen(
                [str(binary), *args],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=_child_env(),
                cwd=self.cwd,
                start_new_session=True,
                # only prctl(2) runs there; processes are started from one thread
                preexec_fn=_die_with_parent,  # noqa: PLW1509
            )
        self.procs.append((name, proc, log))
        return proc

    def exited(self) -> tuple[str, int, Path] | None:
        """The first process that is no longer running: name, exit status, log."""
        for name, proc, log in self.procs:
            if proc.poll() is not None:
                return name, proc.returncode, log
        return None

    def wait(self, what: str, ready: Callable[[], bool], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            gone = self.exited()
            if gone is not None:
                name, code, log = gone
                raise ClusterError(
                    f"{name} exited with {code} while waiting for {what}:\n" + _tail(log)
                )
            if ready():
                return
            if time.monotonic() > deadline:
                name, _, log = self.procs[-1] if self.procs else ("nothing", None, Path("-"))
                raise ClusterError(
                    f"{what} not ready after {timeout:.0f}s; last started: {name}\n" + _tail(log)
                )
            time.sleep(0.2)

    def stop_one(self, name: str, grace: float = 10.0) -> None:
        for entry in [e for e in self.procs if e[0] == name]:
            self.procs.remove(entry)
            _terminate(entry[1], grace)

    def stop(self, grace: float = 10.0) -> None:
        """SIGTERM every process (newest first), SIGKILL after ``grace`` seconds."""
        while self.procs:
            _, proc, _ = self.procs.pop()
            _terminate(proc, grace)


def _terminate(proc: subprocess.Popen[bytes], grace: float) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class LocalCluster:
    def __init__(
        self, work_dir: Path, bin_dir: Path | None = None, *, fake_node: bool = True
    ) -> None:
        """``fake_node``: register kwok's fake node; without it Pods stay Pending until a
        real node (hack/localnode.py) joins."""
        self.work_dir = Path(work_dir).resolve()
        self.bin_dir = (bin_dir or default_bin_dir()).resolve()
        self.fake_node = fake_node
        self.certs = self.work_dir / "certs"
        self.logs = self.work_dir / "logs"
        self.processes = Supervisor(self.logs, self.work_dir)
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
            cmd, input=input, text=True, capture_output=True, env=_child_env(), check=False
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
        """Make a Pod look as if its kubelet rejected it, as one does a Pod asking for an
        unsafe sysctl: ``phase: Failed`` with ``reason`` and ``message``, Ready False.

        It patches the status subresource; two ways survive kwok v0.7.0 (both tested in
        tests/integration/test_localcluster.py):

        * Pods annotated ``kwok.x-k8s.io/status: custom`` (``KWOK_STATUS_ANNOTATION``; put
          it on a Deployment's Pod template) are left alone by kwok: scheduled onto the
          node but Pending with no IP, as a rejected Pod is.  They are patched at once.
        * Other Pods are patched once kwok made them Running: its ``pod-ready`` stage only
          matches Pods without a ``podIP``, so it does not undo the patch then (patched
          earlier, kwok would).  So this waits for the podIP first.

        A ReplicaSet counts a Failed Pod as gone and creates a replacement, as on a real
        cluster (where the kubelet rejects that one too).  Failed Pods are deleted at
        once; a Pending Pod kwok disregards stays Terminating when deleted (no kubelet)
        until its annotation is removed (kwok's pod-delete stage then finishes it) or
        it is deleted with ``--grace-period=0 --force``.
        """
        meta = self.get_json("pod", pod, "-n", namespace)["metadata"]
        if meta.get("annotations", {}).get(KWOK_STATUS_ANNOTATION) != "custom":
            self.wait_for_pod_ip(pod, namespace)
        ready = {"type": "Ready", "status": "False", "reason": reason, "message": message}
        status = {"phase": "Failed", "reason": reason, "message": message, "conditions": [ready]}
        self.kubectl(
            "patch", "pod", pod, "-n", namespace, "--subresource=status", "--type=strategic",
            "-p", json.dumps({"status": status}),
        )  # fmt: skip

    def wait_for_pod_ip(self, pod: str, namespace: str = "default") -> str:
        ip = ""

        def has_ip() -> bool:
            nonlocal ip
            ip = self.get_json("pod", pod, "-n", namespace)["status"].get("podIP", "")
            return bool(ip)

        self._wait(f"pod {namespace}/{pod} IP", has_ip, TIMEOUT)
        return ip

    # -- start-up --------------------------------------------------------------------
    def _start(self) -> None:
        for sub in ("certs", "logs", "etcd"):
            shutil.rmtree(self.work_dir / sub, ignore_errors=True)
        self.certs.mkdir(parents=True)
        self.logs.mkdir(parents=True)
        self._make_certs()
        c = self.certs
        etcd_port, peer_port = free_port(), free_port()
        etcd_url, peer_url = f"http://127.0.0.1:{etcd_port}", f"http://127.0.0.1:{peer_port}"
        self._spawn(
            "etcd", f"--data-dir={self.work_dir / 'etcd'}", "--unsafe-no-fsync",
            f"--listen-client-urls={etcd_url}", f"--advertise-client-urls={etcd_url}",
            f"--listen-peer-urls={peer_url}", f"--initial-advertise-peer-urls={peer_url}",
            f"--initial-cluster=default={peer_url}",
        )  # fmt: skip
        self._wait("etcd", partial(_http_ok, f"{etcd_url}/health"), TIMEOUT)

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
            # for kubectl exec and logs on a real node (hack/localnode.py)
            f"--kubelet-client-certificate={c / 'kubelet-client.crt'}",
            f"--kubelet-client-key={c / 'kubelet-client.key'}",
            "--kubelet-preferred-address-types=InternalIP",
        )  # fmt: skip
        ctx = ssl.create_default_context(cafile=str(c / "ca.crt"))
        ctx.load_cert_chain(str(c / "admin.crt"), str(c / "admin.key"))
        self._wait("kube-apiserver", partial(_http_ok, f"{self.server}/readyz", ctx), TIMEOUT)

        for user in ("admin", "kcm", "scheduler", "kwok"):
            path = self.kubeconfig if user == "admin" else self.work_dir / f"{user}.kubeconfig"
            self._write_kubeconfig(path, user)
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
        self._spawn(
            "kwok", f"--kubeconfig={self.work_dir / 'kwok.kubeconfig'}",
            "--manage-all-nodes=false",
            f"--manage-nodes-with-annotation-selector={KWOK_ANNOTATION}=fake",
            f"--cidr={POD_CIDR}", "--node-ip=10.1.0.1", f"--server-address=127.0.0.1:{kwok_port}",
            # hidden (deprecated) in v0.7.0 but honoured; see simulate_pod_failure
            f"--disregard-status-with-annotation-selector={KWOK_STATUS_ANNOTATION}=custom",
        )  # fmt: skip
        insecure = ssl.create_default_context()
        insecure.check_hostname = False
        insecure.verify_mode = ssl.CERT_NONE
        for name, port in (("kube-controller-manager", kcm_port), ("kube-scheduler", sched_port)):
            self._wait(
                name, partial(_http_ok, f"https://127.0.0.1:{port}/healthz", insecure), TIMEOUT
            )
        self._wait("kwok", partial(_http_ok, f"http://127.0.0.1:{kwok_port}/healthz"), TIMEOUT)
        if self.fake_node:
            self._create_node()
        self.wait_for_default_service_account()

    def _create_node(self) -> None:
        resources = {"cpu": "64", "memory": "256Gi", "pods": "1000"}
        labels = {"type": "kwok", "kubernetes.io/hostname": NODE_NAME, "kubernetes.io/os": "linux"}
        node = {
            "apiVersion": "v1", "kind": "Node", "spec": {},
            "metadata": {"name": NODE_NAME, "labels": labels,
                         "annotations": {KWOK_ANNOTATION: "fake"}},
            "status": {"allocatable": resources, "capacity": resources},
        }  # fmt: skip
        self.kubectl("apply", "-f", "-", input=json.dumps(node))

        def ready() -> bool:
            out = self.kubectl(
                "get", "node", NODE_NAME, "-o",
                'jsonpath={.status.conditions[?(@.type=="Ready")].status} {.spec.taints}',
                check=False,
            )  # fmt: skip
            return out.returncode == 0 and out.stdout.strip() == "True"

        self._wait(f"node {NODE_NAME} Ready", ready, TIMEOUT)

    def _spawn(self, name: str, *args: str) -> None:
        self.processes.spawn(name, find_binary(name, self.bin_dir), *args)

    def _wait(self, what: str, ready: Callable[[], bool], timeout: float) -> None:
        self.processes.wait(what, ready, timeout)

    # -- certificates and kubeconfigs ------------------------------------------------
    def _openssl(self, *args: str) -> None:
        cmd = ["openssl", *args]
        done = subprocess.run(cmd, cwd=self.certs, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise ClusterError(f"openssl {' '.join(args)} failed: {done.stderr.strip()}")

    def _make_certs(self) -> None:
        self._openssl(
            "req", "-x509", *_EC_KEY, "-keyout", "ca.key", "-out", "ca.crt", "-days", "365",
            "-subj", "/CN=localcluster-ca",
            "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign,digitalSignature",
        )  # fmt: skip
        sans = (
            f"IP:127.0.0.1,IP:{FIRST_SERVICE_IP},DNS:localhost,DNS:kubernetes,"
            "DNS:kubernetes.default,DNS:kubernetes.default.svc,"
            "DNS:kubernetes.default.svc.cluster.local"
        )
        leaves = {
            "apiserver": ("/CN=kube-apiserver", "serverAuth", sans),
            "admin": ("/O=system:masters/CN=admin", "clientAuth", None),
            "kcm": ("/CN=system:kube-controller-manager", "clientAuth", None),
            "scheduler": ("/CN=system:kube-scheduler", "clientAuth", None),
            "kwok": ("/O=system:masters/CN=kwok", "clientAuth", None),
            "kubelet-client": ("/O=system:masters/CN=kube-apiserver-kubelet-client",
                               "clientAuth", None),
        }  # fmt: skip
        for name, (subject, usage, alt) in leaves.items():
            self.issue_cert(name, subject, usage, alt)
        self._openssl(
            "genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", "sa.key"
        )
        self._openssl("pkey", "-in", "sa.key", "-pubout", "-out", "sa.pub")

    def issue_cert(self, name: str, subject: str, usage: str, alt: str | None = None) -> Path:
        """``certs/<name>.crt`` and ``.key``, signed by the cluster's CA; returns the .crt."""
        ext = self.certs / f"{name}.ext"
        lines = [
            "basicConstraints=critical,CA:FALSE",
            "keyUsage=critical,digitalSignature,keyEncipherment",
            f"extendedKeyUsage={usage}",
        ] + ([f"subjectAltName={alt}"] if alt else [])
        ext.write_text("\n".join(lines) + "\n")
        self._openssl(
            "req", "-new", *_EC_KEY, "-keyout", f"{name}.key", "-out", f"{name}.csr",
            "-subj", subject,
        )  # fmt: skip
        self._openssl(
            "x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
            "-CAcreateserial", "-out", f"{name}.crt", "-days", "365", "-extfile", ext.name,
        )  # fmt: skip
        return self.certs / f"{name}.crt"

    def write_kubeconfig(self, path: Path, user: str) -> None:
        """A kubeconfig for ``certs/<user>.crt``/``.key`` (see ``issue_cert``)."""
        self._write_kubeconfig(path, user)

    def _write_kubeconfig(self, path: Path, user: str) -> None:
        cluster = {"server": self.server, "certificate-authority": str(self.certs / "ca.crt")}
        creds = {
            k: str(self.certs / f"{user}.{ext}")
            for k, ext in (("client-certificate", "crt"), ("client-key", "key"))
        }
        config = {
            "apiVersion": "v1", "kind": "Config", "current-context": "local",
            "clusters": [{"name": "local", "cluster": cluster}],
            "users": [{"name": user, "user": creds}],
            "contexts": [{"name": "local", "context": {"cluster": "local", "user": user}}],
        }  # fmt: skip
        path.write_text(json.dumps(config, indent=2) + "\n")


def _http_ok(url: str, ctx: ssl.SSLContext | None = None) -> bool:
    handlers: list[urllib.request.BaseHandler] = [urllib.request.ProxyHandler({})]
    if ctx is not None:
        handlers.append(urllib.request.HTTPSHandler(context=ctx))
    try:
        with urllib.request.build_opener(*handlers).open(url, timeout=2) as resp:
            return int(resp.status) == 200
    except (OSError, ValueError):
        return False


def _tail(log: Path, lines: int = 30) -> str:
    try:
        text = log.read_text(errors="replace").splitlines()
    except OSError:
        return f"(no log at {log})"
    return f"--- last {lines} lines of {log} ---\n" + "\n".join(text[-lines:])


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
                print(f"{name} exited with {code}\n{_tail(log)}", file=sys.stderr)
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
    return _up(args.dir)


if __name__ == "__main__":
    sys.exit(main())
