"""kube-proxy for the real node (``hack.node.LocalNode``), in iptables mode, so that
ClusterIP Services route from this host to the Pods on the node's bridge.

    proxy = KubeProxy(supervisor, work_dir, kubeconfig, name=..., node_ip=..., ...)
    proxy.start()   # rules programmed once; the Services' ClusterIPs answer
    proxy.stop()    # kube-proxy stopped, every rule it made removed

kube-proxy programs the iptables of the machine's own network namespace, where the tests
run: the ``KUBE-*`` chains and the jumps to them in the nat and filter tables (IPv4 and
IPv6).  That is one per machine, so ``start`` takes a machine-wide lock: two real nodes
(``make run-node`` and ``make node``, say) would each rewrite the other's rules.  The rules
do not outlive the node: ``cleanup()`` runs before start (leftovers of a run that was
killed) and after stop; ``leftover_rules()`` lists what is left.  ``kube-proxy --cleanup``
alone leaves a few chains (the ``KUBE-FIREWALL`` and ``KUBE-MARK-MASQ`` it shares with a
kubelet that makes them, its canaries), so ``cleanup`` removes every ``KUBE-*`` chain
left: on this machine they are the local node's.

The Service CIDR is routed onto the node's bridge while the proxy runs, so that a packet
to a ClusterIP that has no rule yet (a Service created a moment ago) stays on the node's
own network instead of leaving by the default route.  The route goes with the bridge.

kube-proxy is told to leave the machine's sysctls alone (the conntrack table size and TCP
timeouts, ``route_localnet``): the defaults would change them for the whole machine.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import json
import os
import shlex
import subprocess
import urllib.request
from pathlib import Path
from typing import IO

from hack.controlplane import ClusterError, find_binary
from hack.supervisor import Supervisor, free_port

# The API server's bootstrap RBAC binds this user to the ClusterRole system:node-proxier.
USER = "system:kube-proxy"
LOCK = Path("/run/asgi-operator-kube-proxy.lock")
CHAIN_PREFIX = "KUBE-"
FAMILIES = ("iptables", "ip6tables")
TABLES = ("nat", "filter", "mangle")  # kube-proxy's in iptables mode
TIMEOUT = 60.0
SYNCED_METRIC = "kubeproxy_sync_proxy_rules_last_timestamp_seconds"


def kube_proxy_config(
    *,
    kubeconfig: Path,
    hostname: str,
    node_ip: str,
    cluster_cidr: str,
    healthz_port: int,
    metrics_port: int,
) -> dict[str, object]:
    """KubeProxyConfiguration: iptables mode for the node ``hostname``; health and metrics
    on loopback; NodePorts only on the node's own address; no machine-wide sysctl
    changed (0 leaves a conntrack setting as it is)."""
    return {
        "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
        "kind": "KubeProxyConfiguration",
        "mode": "iptables",
        "clientConnection": {"kubeconfig": str(kubeconfig)},
        "hostnameOverride": hostname,
        "bindAddress": node_ip,  # the node's primary address: IPv4
        # Traffic from outside this CIDR to a ClusterIP is masqueraded, from inside not.
        "clusterCIDR": cluster_cidr,
        "detectLocalMode": "ClusterCIDR",
        "healthzBindAddress": f"127.0.0.1:{healthz_port}",
        "metricsBindAddress": f"127.0.0.1:{metrics_port}",
        "nodePortAddresses": [f"{node_ip}/32"],
        "iptables": {
            # true would set net.ipv4.conf.all.route_localnet=1 on the machine
            "localhostNodePorts": False,
            # the defaults: a change is programmed at most once a second
            "minSyncPeriod": "1s",
            "syncPeriod": "30s",
        },
        "conntrack": {
            "maxPerCore": 0,
            "min": 0,
            "tcpEstablishedTimeout": "0s",
            "tcpCloseWaitTimeout": "0s",
        },
        # the default -999 is refused here (no CAP_SYS_RESOURCE); it is only logged, but
        # 0 says what this process gets
        "oomScoreAdj": 0,
        "logging": {"format": "text", "verbosity": 2},
    }


def _run(cmd: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, check=False)


def leftover_rules() -> list[str]:
    """kube-proxy's chains and rules still in this machine's iptables, both families."""
    left = []
    for save in ("iptables-save", "ip6tables-save"):
        out = _run([save]).stdout
        left += [f"{save}: {line}" for line in out.splitlines() if CHAIN_PREFIX in line]
    return left


def cleanup() -> None:
    """Remove every kube-proxy rule and chain on this machine, such as a killed run's.

    ``kube-proxy --cleanup`` first (iptables, IPVS and nftables: it exits 1 here because
    it finds no ``ipset`` or ``nft`` binary for the two modes not used), then whatever
    ``KUBE-*`` chain it leaves.  Raises if some are still there."""
    done = _run([str(find_binary("kube-proxy")), "--cleanup", "--v=0"])
    for tool in FAMILIES:
        for table in TABLES:
            _remove_chains(tool, table)
    left = leftover_rules()
    if left:
        output = (done.stdout + done.stderr).strip()
        raise ClusterError(
            f"kube-proxy --cleanup ({done.returncode}) left {len(left)} rules:\n"
            + "\n".join(left[:20])
            + f"\n{output}"
        )


def _remove_chains(tool: str, table: str) -> None:
    """Unlink the ``KUBE-*`` chains of ``table`` from the built-in chains, flush and delete
    them."""
    rules = _run([tool, "-t", table, "-S"]).stdout.splitlines()
    chains = [rule.split()[1] for rule in rules if rule.startswith(f"-N {CHAIN_PREFIX}")]
    for rule in rules:
        words = shlex.split(rule)
        if words[:1] == ["-A"] and not words[1].startswith(CHAIN_PREFIX) and CHAIN_PREFIX in rule:
            _run([tool, "-t", table, "-D", *words[1:]])
    for flag in ("-F", "-X"):  # all flushed before any is deleted: they jump to each other
        for chain in chains:
            _run([tool, "-t", table, flag, chain])


def synced(metrics_port: int) -> bool:
    """True once kube-proxy has programmed its rules (a sync's timestamp is set)."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(f"http://127.0.0.1:{metrics_port}/metrics", timeout=2) as resp:
            text = resp.read().decode()
    except OSError:
        return False
    for line in text.splitlines():
        if line.startswith(SYNCED_METRIC):
            return float(line.split()[-1]) > 0
    return False


class KubeProxy:
    """kube-proxy as one of ``processes`` (the node's supervisor), with its rules and the
    Service CIDR's route on ``bridge``; see the module's docstring."""

    def __init__(
        self,
        processes: Supervisor,
        work_dir: Path,
        kubeconfig: Path,
        *,
        name: str,
        node_ip: str,
        cluster_cidr: str,
        service_cidr: str,
        bridge: str,
    ) -> None:
        self.processes, self.work_dir, self.kubeconfig = processes, work_dir, kubeconfig
        self.name, self.node_ip, self.bridge = name, node_ip, bridge
        self.cluster_cidr = str(ipaddress.ip_network(cluster_cidr))
        self.service_cidr = str(ipaddress.ip_network(service_cidr))
        self.metrics_port = 0
        self._lock: IO[str] | None = None

    def start(self) -> None:
        self._take_lock()
        cleanup()
        route = ["ip", "route", "replace", self.service_cidr, "dev", self.bridge,
                 "src", self.node_ip]  # fmt: skip
        done = _run(route)
        if done.returncode != 0:
            raise ClusterError(f"{' '.join(route)} failed: {done.stderr.strip()}")
        self.metrics_port = free_port()
        config = kube_proxy_config(
            kubeconfig=self.kubeconfig,
            hostname=self.name,
            node_ip=self.node_ip,
            cluster_cidr=self.cluster_cidr,
            healthz_port=free_port(),
            metrics_port=self.metrics_port,
        )
        path = self.work_dir / "kube-proxy.yaml"
        path.write_text(json.dumps(config, indent=2) + "\n")  # JSON is YAML
        self.processes.spawn("kube-proxy", find_binary("kube-proxy"), f"--config={path}")
        self.processes.wait("kube-proxy's first sync", lambda: synced(self.metrics_port),
                            TIMEOUT)  # fmt: skip

    def stop(self) -> None:
        """Stop kube-proxy, remove its rules and the route; idempotent."""
        self.processes.stop_one("kube-proxy")
        if self._lock is None:
            return
        try:
            cleanup()
        finally:
            _run(["ip", "route", "del", self.service_cidr, "dev", self.bridge])
            self._release_lock()

    def _take_lock(self) -> None:
        if self._lock is not None:
            return
        lock = LOCK.open("a+")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            holder = lock.read().strip() or "?"
            lock.close()
            raise ClusterError(
                f"another real node runs kube-proxy on this machine (process {holder}, "
                f"{LOCK}): the machine's iptables hold one kube-proxy's rules at a time"
            ) from None
        lock.seek(0)
        lock.truncate()
        lock.write(f"{os.getpid()}\n")
        lock.flush()
        self._lock = lock

    def _release_lock(self) -> None:
        if self._lock is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(self._lock, fcntl.LOCK_UN)
            self._lock.close()
            self._lock = None
