"""A real node on this machine: containerd, runc, a CNI bridge, the kubelet and kube-proxy,
joined to a ``LocalCluster``.  Pods run for real, with images built by ``hack/nodeimages.py``.

    with LocalCluster(work, fake_node=False) as cluster, LocalNode(cluster, work / "node"):
        ...

Everything belongs to this object and goes when it stops: containerd (its own config,
root, state and socket; the machine's containerd, if any, is not touched), the kubelet
(its own root directory and cgroup root), the Linux bridge ``bridge`` with the private
subnet ``subnet`` (host-local IPAM; its gateway address is also the node's IP, so the
host reaches Pod IPs directly and the API server reaches the kubelet), kube-proxy in
iptables mode (``hack/kubeproxy.py``: Services' ClusterIPs route from this host to their
Pods; its rules go when it stops), and every Pod and mount they made.

Needs root, a writable cgroup hierarchy, containerd, runc, iptables and the CNI plugins
(``missing_requirements()`` says what is missing).  One real node per machine at a time:
kube-proxy owns the machine's ``KUBE-*`` iptables chains.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

from hack import kubeproxy
from hack.controlplane import SERVICE_CIDR, ClusterError, LocalCluster, child_env, find_binary
from hack.kubeproxy import KubeProxy
from hack.nodeconfig import (
    ALLOWED_SYSCTLS,
    CGROUP_V1,
    TIMEOUT,
    cni_config,
    containerd_config,
    kubelet_config,
    missing_requirements,
    registry_hosts_toml,
)
from hack.supervisor import Supervisor, free_port

__all__ = ["ALLOWED_SYSCTLS", "LocalNode", "missing_requirements"]


class LocalNode:
    def __init__(
        self,
        cluster: LocalCluster,
        work_dir: Path,
        images: Path,
        *,
        name: str = "asgi-node-0",
        bridge: str = "asgi0",
        subnet: str = "10.89.0.0/24",
        allowed_unsafe_sysctls: Sequence[str] = ALLOWED_SYSCTLS,
        pause_image: str = "localhost/asgi-pause:1.0",
    ) -> None:
        self.cluster = cluster
        self.work_dir = Path(work_dir).resolve()
        self.images = images
        self.name, self.bridge = name, bridge
        self.subnet = ipaddress.ip_network(subnet)
        self.node_ip = str(self.subnet[1])
        self.allowed_unsafe_sysctls = tuple(allowed_unsafe_sysctls)
        self.pause_image = pause_image
        self.logs = self.work_dir / "logs"
        self.processes = Supervisor(self.logs, self.work_dir, child_env(), ClusterError)
        # the socket path must stay under 108 bytes, so state lives in /run
        self.state = Path(tempfile.mkdtemp(prefix=f"asgi-node-{bridge}-", dir="/run"))
        self.socket = self.state / "containerd.sock"
        self.kubelet_root = self.work_dir / "kubelet"
        self.registry_hosts = self.work_dir / "registry-hosts"  # containerd's config_path
        self.cgroup_root = f"/asgi-{bridge}"  # the kubelet's; it must exist in every hierarchy
        self.timings: dict[str, float] = {}
        self._netns_before = _cni_netns()
        self.proxy = KubeProxy(
            self.processes, self.work_dir, self.work_dir / "kube-proxy.kubeconfig",
            name=name, node_ip=self.node_ip, cluster_cidr=str(self.subnet),
            service_cidr=SERVICE_CIDR, bridge=bridge,
        )  # fmt: skip

    def __enter__(self) -> LocalNode:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- public surface ------------------------------------------------------------------
    def ctr(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        cmd = ["ctr", "--address", str(self.socket), "--namespace", "k8s.io", *args]
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if check and done.returncode != 0:
            raise ClusterError(f"ctr {' '.join(args)} failed: {done.stderr.strip()}")
        return done

    def trust_registry(self, address: str) -> None:
        """Let the kubelet's pulls from ``address`` (a loopback registry, host:port) use
        plain HTTP; containerd reads it at the next pull, no restart."""
        folder = self.registry_hosts / address
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "hosts.toml").write_text(registry_hosts_toml(address, plain_http=True))

    def start(self) -> None:
        missing = missing_requirements()
        if missing:
            raise ClusterError("a real node cannot run here: needs " + "; ".join(missing))
        started = time.monotonic()
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        self.timings["node_ready_seconds"] = time.monotonic() - started

    def restart_kubelet(self, allowed_unsafe_sysctls: Sequence[str]) -> None:
        """Restart the kubelet with another sysctl allow-list (Pods keep running)."""
        self.processes.stop_one("kubelet")
        self.allowed_unsafe_sysctls = tuple(allowed_unsafe_sysctls)
        self._start_kubelet()

    def stop(self) -> None:
        """Remove every Pod of the node through its kubelet, then stop it all and clean up.

        Deleting the Pods first lets the kubelet stop their sandboxes the normal way (CNI
        DEL frees the addresses; mounts go).  Whatever is left (the kubelet was already
        gone, say) is killed through containerd before containerd itself stops.
        """
        with contextlib.suppress(ClusterError, OSError):
            if self.processes.exited() is None and self.processes.running("kubelet"):
                self._drain_pods(timeout=60)
        self.processes.stop_one("kubelet")
        try:
            self.proxy.stop()  # raises if its rules could not all be removed: after the rest
        finally:
            if self.processes.running("containerd"):
                self._kill_containers()
            self.processes.stop()
            self._remove_cgroup_root()
            self._unmount_under(self.work_dir)
            self._unmount_under(self.state)
            subprocess.run(["ip", "link", "del", self.bridge], capture_output=True, check=False)
            shutil.rmtree(self.state, ignore_errors=True)

    # -- start-up ------------------------------------------------------------------------
    def _start(self) -> None:
        for sub in ("logs", "cni", "kubelet", "pod-logs"):
            self._unmount_under(self.work_dir / sub)
            shutil.rmtree(self.work_dir / sub, ignore_errors=True)
        self.logs.mkdir(parents=True, exist_ok=True)
        self._make_bridge()
        cni = self.work_dir / "cni"
        (cni / "net.d").mkdir(parents=True)
        conf = cni_config(f"asgi-{self.bridge}", self.bridge, str(self.subnet), cni / "ipam")
        (cni / "net.d" / "10-asgi.conflist").write_text(json.dumps(conf, indent=2) + "\n")
        root = self.work_dir / "containerd"
        root.mkdir(parents=True, exist_ok=True)
        config = self.work_dir / "containerd.toml"
        shutil.rmtree(self.registry_hosts, ignore_errors=True)
        self.registry_hosts.mkdir(parents=True)
        config.write_text(
            containerd_config(root, self.state / "state", self.socket, cni / "net.d",
                              self.pause_image, registry_hosts=self.registry_hosts)
        )  # fmt: skip
        t0 = time.monotonic()
        self.processes.spawn("containerd", shutil.which("containerd") or "containerd",
                             "--config", str(config))  # fmt: skip
        self.processes.wait("containerd", self._containerd_up, TIMEOUT)
        self.timings["containerd_seconds"] = time.monotonic() - t0
        t0 = time.monotonic()
        self.ctr("images", "import", str(self.images))
        self.timings["image_import_seconds"] = time.monotonic() - t0
        self._make_credentials()
        self._make_cgroup_root()
        self._start_kubelet()
        t0 = time.monotonic()
        self.proxy.start()
        self.timings["kube_proxy_seconds"] = time.monotonic() - t0

    def _make_bridge(self) -> None:
        subprocess.run(["ip", "link", "del", self.bridge], capture_output=True, check=False)
        prefix = self.subnet.prefixlen
        for cmd in (
            ["ip", "link", "add", self.bridge, "type", "bridge"],
            ["ip", "addr", "add", f"{self.node_ip}/{prefix}", "dev", self.bridge],
            ["ip", "link", "set", self.bridge, "up"],
        ):
            done = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if done.returncode != 0:
                raise ClusterError(f"{' '.join(cmd)} failed: {done.stderr.strip()}")

    def _cgroup_dirs(self) -> list[Path]:
        return [
            h / self.cgroup_root.lstrip("/")
            for h in sorted(CGROUP_V1.iterdir())
            if h.is_dir() and not h.is_symlink() and h.name != "unified"
        ]

    def _make_cgroup_root(self) -> None:
        for path in self._cgroup_dirs():
            path.mkdir(exist_ok=True)
            if path.parent.name == "cpuset":  # empty cpus/mems take no tasks: inherit
                for name in ("cpuset.cpus", "cpuset.mems"):
                    (path / name).write_text((path.parent / name).read_text())

    def _remove_cgroup_root(self) -> None:
        """rmdir the kubelet's cgroup tree (only empty cgroups go), deepest first."""
        for top in self._cgroup_dirs():
            if top.is_dir():
                for path in sorted((p for p in top.rglob("*") if p.is_dir()), reverse=True):
                    with contextlib.suppress(OSError):
                        path.rmdir()
                with contextlib.suppress(OSError):
                    top.rmdir()

    def _containerd_up(self) -> bool:
        return self.socket.exists() and self.ctr("version", check=False).returncode == 0

    def _make_credentials(self) -> None:
        """The kubelet's identity (group system:nodes) and kube-proxy's from the cluster's CA."""
        user = f"node-{self.name}"
        self.cluster.issue_cert(
            user, f"/O=system:nodes/CN=system:node:{self.name}", "clientAuth", None
        )
        self.cluster.write_kubeconfig(self.work_dir / "kubelet.kubeconfig", user)
        self.cluster.issue_cert("kube-proxy", f"/CN={kubeproxy.USER}", "clientAuth", None)
        self.cluster.write_kubeconfig(self.proxy.kubeconfig, "kube-proxy")

    def _start_kubelet(self) -> None:
        t0 = time.monotonic()
        config = kubelet_config(
            node_ip=self.node_ip,
            port=free_port(),
            healthz_port=free_port(),
            runtime_socket=self.socket,
            client_ca=self.cluster.certs / "ca.crt",
            cgroup_root=self.cgroup_root,
            pod_logs=self.work_dir / "pod-logs",
            allowed_unsafe_sysctls=self.allowed_unsafe_sysctls,
        )
        path = self.work_dir / "kubelet.yaml"
        path.write_text(json.dumps(config, indent=2) + "\n")  # JSON is YAML
        self.processes.spawn(
            "kubelet", find_binary("kubelet"), f"--config={path}",
            f"--kubeconfig={self.work_dir / 'kubelet.kubeconfig'}",
            f"--hostname-override={self.name}", f"--node-ip={self.node_ip}",
            f"--root-dir={self.kubelet_root}", f"--cert-dir={self.work_dir / 'kubelet-pki'}",
            "--v=1",
        )  # fmt: skip
        self.processes.wait(f"node {self.name} Ready", self._node_ready, TIMEOUT)
        self.timings["kubelet_ready_seconds"] = time.monotonic() - t0

    def _node_ready(self) -> bool:
        out = self.cluster.kubectl(
            "get", "node", self.name, "-o",
            'jsonpath={.status.conditions[?(@.type=="Ready")].status}', check=False,
        )  # fmt: skip
        return out.returncode == 0 and out.stdout.strip() == "True"

    # -- shutdown ------------------------------------------------------------------------
    def _drain_pods(self, timeout: float) -> None:
        """Cordon, then delete the node's Pods (as ``kubectl drain`` does): their
        controllers' replacements stay Pending instead of landing here again."""
        self.cluster.kubectl("cordon", self.name, check=False)
        selector = f"spec.nodeName={self.name}"
        self.cluster.kubectl(
            "delete", "pods", "-A", "--field-selector", selector, "--wait=false", check=False
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            out = self.cluster.kubectl(
                "get", "pods", "-A", "--field-selector", selector, "-o", "name", check=False
            )
            if out.returncode == 0 and not out.stdout.strip():
                return
            time.sleep(0.5)

    def _kill_containers(self) -> None:
        tasks = self.ctr("tasks", "ls", "-q", check=False).stdout.split()
        for task in tasks:
            self.ctr("tasks", "kill", "--signal", "SIGKILL", task, check=False)
        for task in tasks:
            for _ in range(50):
                if self.ctr("tasks", "delete", task, check=False).returncode == 0:
                    break
                time.sleep(0.1)
        for container in self.ctr("containers", "ls", "-q", check=False).stdout.split():
            self.ctr("containers", "delete", container, check=False)
        # network namespaces of sandboxes the CRI plugin could not tear down (new ones only)
        for netns in _cni_netns() - self._netns_before:
            if not _netns_in_use(netns):
                subprocess.run(["ip", "netns", "delete", netns.name], check=False)

    @staticmethod
    def _unmount_under(path: Path) -> None:
        """Lazily unmount whatever is still mounted below ``path``, deepest first."""
        prefix = str(path).rstrip("/") + "/"
        with open("/proc/self/mountinfo") as f:
            points = [line.split()[4] for line in f]
        for point in sorted((p for p in points if p.startswith(prefix)), reverse=True):
            subprocess.run(["umount", "-l", point], capture_output=True, check=False)


def _cni_netns() -> set[Path]:
    return set(Path("/var/run/netns").glob("cni-*"))


def _netns_in_use(netns: Path) -> bool:
    try:
        target = os.stat(netns).st_ino
    except OSError:
        return False
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            with contextlib.suppress(OSError):
                if os.stat(proc / "ns" / "net").st_ino == target:
                    return True
    return False
