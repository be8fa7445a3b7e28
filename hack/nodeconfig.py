"""The real node's configuration, as pure functions: what it needs of this machine, and the
CNI, containerd and kubelet configurations ``hack.node.LocalNode`` writes (kube-proxy's is
``hack.kubeproxy.kube_proxy_config``).
"""

from __future__ import annotations

import ipaddress
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

from hack.controlplane import find_binary

CNI_BIN_DIR = Path("/usr/lib/cni")
CGROUP_V1 = Path("/sys/fs/cgroup")
ALLOWED_SYSCTLS = ("net.core.somaxconn", "net.ipv4.tcp_max_syn_backlog")
TIMEOUT = 120.0
# Debian packages providing what the node runs (installed by `make system-deps`).
PACKAGES = {
    "containerd": "containerd",
    "runc": "runc",
    "ctr": "containerd",
    "iptables": "iptables",
    "iptables-save": "iptables",
    "ip6tables-save": "iptables",
}


def missing_requirements() -> list[str]:
    """Why a real node cannot run here; empty when it can."""
    missing = []
    if os.geteuid() != 0:
        missing.append("root (the kubelet and containerd run as root)")
    for tool in ("containerd", "ctr", "runc", "ip", "iptables", "iptables-save", "ip6tables-save"):
        if shutil.which(tool) is None and not Path("/usr/sbin", tool).exists():
            missing.append(f"{tool} on PATH")
    if not (CNI_BIN_DIR / "bridge").exists():
        missing.append(f"the CNI plugins in {CNI_BIN_DIR} (containernetworking-plugins)")
    if not os.access("/sys/fs/cgroup/memory", os.W_OK) and not os.access(
        "/sys/fs/cgroup/cgroup.procs", os.W_OK
    ):
        missing.append("a writable cgroup hierarchy under /sys/fs/cgroup")
    for binary in ("kubelet", "kube-proxy"):
        if not find_binary(binary).is_file():
            missing.append(f"{binary} in .cache/bin (make cluster)")
    return missing


def cni_config(name: str, bridge: str, subnet: str, data_dir: Path) -> dict[str, object]:
    """A bridge network with host-local IPAM; the gateway (first address) is the host."""
    net = ipaddress.ip_network(subnet)
    return {
        "cniVersion": "0.4.0",
        "name": name,
        "plugins": [
            {
                "type": "bridge",
                "bridge": bridge,
                "isGateway": True,
                "ipMasq": False,
                "hairpinMode": True,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": str(net), "gateway": str(net[1])}]],
                    "dataDir": str(data_dir),
                },
            },
            {"type": "portmap", "capabilities": {"portMappings": True}},
        ],
    }


def containerd_config(
    root: Path, state: Path, socket: Path, cni_conf_dir: Path, pause: str, *, registry_hosts: Path
) -> str:
    """containerd 1.6 (Debian's; config version 2) for the kubelet's CRI: cgroupfs, the
    local pause image, the CNI bridge, and a registry's hosts.toml read from
    ``registry_hosts/<host:port>/`` at each pull (``registry_hosts_toml``)."""
    return f"""version = 2
root = "{root}"
state = "{state}"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.internal.v1.tracing"]
[grpc]
  address = "{socket}"
[plugins."io.containerd.internal.v1.opt"]
  path = "{root}/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{pause}"
  # this machine refuses a lower oom_score_adj than the caller's (no CAP_SYS_RESOURCE)
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{CNI_BIN_DIR}"
    conf_dir = "{cni_conf_dir}"
  [plugins."io.containerd.grpc.v1.cri".registry]
    config_path = "{registry_hosts}"
"""


def registry_hosts_toml(address: str, *, plain_http: bool) -> str:
    """containerd's hosts.toml for the registry at ``address`` (host:port): pull and
    resolve there, over plain HTTP for a registry on loopback (``hack/registry.py``)."""
    url = f"{'http' if plain_http else 'https'}://{address}"
    return f"""server = "{url}"

[host."{url}"]
  capabilities = ["pull", "resolve"]
"""


def kubelet_config(
    *,
    node_ip: str,
    port: int,
    healthz_port: int,
    runtime_socket: Path,
    client_ca: Path,
    cgroup_root: str,
    pod_logs: Path,
    allowed_unsafe_sysctls: Sequence[str],
) -> dict[str, object]:
    """KubeletConfiguration for this machine: cgroupfs on cgroup v1, swap allowed, disk
    pressure and image GC out of the way, no iptables chains of its own (kube-proxy makes
    the Services' rules); the rest are the defaults a
    production kubelet has (sync period, ConfigMap propagation, probes)."""
    return {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "address": node_ip,
        "port": port,
        "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1",
        "healthzPort": healthz_port,
        "cgroupDriver": "cgroupfs",
        "cgroupRoot": cgroup_root,
        "failSwapOn": False,
        "failCgroupV1": False,
        "containerRuntimeEndpoint": f"unix://{runtime_socket}",
        "authentication": {
            "anonymous": {"enabled": False},
            "webhook": {"enabled": False},
            "x509": {"clientCAFile": str(client_ca)},
        },
        "authorization": {"mode": "AlwaysAllow"},
        "podLogsDir": str(pod_logs),
        "resolvConf": "/etc/resolv.conf",
        "clusterDomain": "cluster.local",
        "evictionHard": {
            "memory.available": "100Mi",
            "nodefs.available": "1%",
            "imagefs.available": "1%",
            "nodefs.inodesFree": "1%",
        },
        "imageGCHighThresholdPercent": 100,
        "imageGCLowThresholdPercent": 99,
        "makeIPTablesUtilChains": False,
        "serializeImagePulls": False,
        "allowedUnsafeSysctls": list(allowed_unsafe_sysctls),
    }
