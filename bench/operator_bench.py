"""The operator on a real local control plane: AsgiServer → Deployment latency, a burst
of 200 AsgiServers, and what the operator spends doing it.

hack/controlplane.py starts etcd, kube-apiserver, kube-controller-manager,
kube-scheduler and kwok (one fake node, so the Deployments' Pods "run") in the
scenario's temp dir; the CRD is installed; the operator runs as a subprocess
(``hack.operatorproc``: ``python -m asgi_operator run --all-namespaces``, default
resync).  This process creates AsgiServers with the kubernetes client and watches Deployments and
AsgiServers cluster-wide (both watches started before any create), so a latency is
"the create call returned" → "the watch saw it".  Nothing is pinned: the control
plane needs both cores.  Everything is stopped by PID at the end.
"""

from __future__ import annotations

import json
import math
import re
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from kubernetes import client, config, watch
from kubernetes.client.exceptions import ApiException

from asgi_operator.models import GROUP, PLURAL, VERSION
from bench.procs import CLK_TCK, Proc
from bench.report import Timing, table, verdict
from hack import operatorproc
from hack.controlplane import LocalCluster

ROOT = Path(__file__).resolve().parents[1]
CRD = ROOT / "crds" / "asgiservers.asgi.dev.yaml"
SEQUENTIAL = 30
BURST = 200
BURST_THREADS = 16
STEADY_SECONDS = 30.0
GOAL_P95 = 1.0
GOAL_BURST = 60.0
WAIT_ONE = 30.0
WAIT_BURST = 180.0
NS_WARMUP, NS_SEQ, NS_BURST = "bench-warmup", "bench-seq", "bench-burst"

Obj = dict[str, Any]
Ready = Callable[[str, Obj], bool]


def asgiserver(name: str) -> Obj:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "AsgiServer",
        "metadata": {"name": name},
        "spec": {"image": "example.com/app:1"},
    }


def _added(kind: str, obj: Obj) -> bool:
    return kind == "ADDED"


def _reconciled(kind: str, obj: Obj) -> bool:
    generation = obj["metadata"].get("generation")
    return (
        generation is not None and (obj.get("status") or {}).get("observedGeneration") == generation
    )


class Watcher(threading.Thread):
    """Watches one kind cluster-wide, from a list taken at construction; records when each
    object (``namespace/name``) first satisfies ``ready`` (time.monotonic())."""

    def __init__(self, name: str, list_fn: Callable[..., Any], args: Iterable[Any], ready: Ready):
        super().__init__(name=f"watch-{name}", daemon=True)
        self._list, self._args, self._ready = list_fn, tuple(args), ready
        self.seen: dict[str, float] = {}
        self.errors: list[str] = []
        self._cond = threading.Condition()
        self._halt = threading.Event()
        self._rv = self._relist()

    def _relist(self) -> str:
        listing = json.loads(self._list(*self._args, _preload_content=False).data)
        for item in listing.get("items", []):
            self._record("ADDED", item)
        rv: str = listing["metadata"]["resourceVersion"]
        return rv

    def _record(self, kind: str, obj: Obj) -> None:
        meta = obj["metadata"]
        key = f"{meta.get('namespace')}/{meta['name']}"
        if key in self.seen or not self._ready(kind, obj):
            return
        now = time.monotonic()
        with self._cond:
            self.seen.setdefault(key, now)
            self._cond.notify_all()

    def run(self) -> None:
        while not self._halt.is_set():
            try:
                stream = watch.Watch().stream(  # type: ignore[no-untyped-call]
                    self._list, *self._args, resource_version=self._rv,
                    timeout_seconds=2, deserialize=False,
                )  # fmt: skip
                for event in stream:
                    obj = event["object"]
                    self._rv = obj["metadata"]["resourceVersion"]
                    if event["type"] in ("ADDED", "MODIFIED"):
                        self._record(event["type"], obj)
                    if self._halt.is_set():
                        break
            except ApiException as exc:
                self.errors.append(f"{exc.status} {exc.reason}")
                if exc.status == 410:
                    self._rv = self._relist()
                time.sleep(0.2)
            except Exception as exc:  # a dropped connection: watch again from self._rv
                self.errors.append(repr(exc)[:200])
                time.sleep(0.2)

    def wait(self, keys: Iterable[str], timeout: float) -> bool:
        wanted = list(keys)
        with self._cond:
            return self._cond.wait_for(lambda: all(k in self.seen for k in wanted), timeout)

    def count(self, keys: Iterable[str]) -> int:
        return sum(1 for k in keys if k in self.seen)

    def halt(self) -> None:
        self._halt.set()
        self.join(timeout=10)


def percentile(values: list[float], pct: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(pct / 100 * len(ordered)) - 1)]


def _dist(values: list[float]) -> str:
    if not values:
        return "—"
    p50, p95, top = percentile(values, 50), percentile(values, 95), max(values)
    return f"{p50 * 1000:,.0f} / {p95 * 1000:,.0f} / {top * 1000:,.0f}"


def _latencies(created: dict[str, float], seen: dict[str, float]) -> list[float]:
    return [seen[k] - t for k, t in created.items() if k in seen]


def _status_kib(pid: int, field: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _ticks(pid: int) -> int:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0
    return int(fields[11]) + int(fields[12])  # utime, stime


def _machine() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs from /proc/stat."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    return sum(values) - idle, sum(values)


class Snapshot:
    """CPU seconds of the operator and of the control plane, the machine's busy jiffies and
    the operator's RSS, at one moment."""

    def __init__(self, op: Proc, control_plane: list[int]) -> None:
        self.op_cpu = op.cpu_seconds()
        self.cp_cpu = sum(_ticks(pid) for pid in control_plane) / CLK_TCK
        self.busy, self.total = _machine()
        self.rss_mb = _status_kib(op.pid, "VmRSS") / 1024

    def row(self, before: Snapshot, wall: float) -> list[object]:
        op, cp = self.op_cpu - before.op_cpu, self.cp_cpu - before.cp_cpu
        busy = (self.busy - before.busy) / max(1, self.total - before.total)
        return [f"{op:.1f} ({100 * op / wall:.0f}%)", f"{cp:.1f}", f"{100 * busy:.0f}%",
                f"{self.rss_mb:.0f}"]  # fmt: skip


def _start_operator(workdir: Path, kubeconfig: Path) -> Proc:
    log_path = workdir / "operator.log"
    popen = operatorproc.start(kubeconfig, "--liveness", "", "--sidecar-image", "sidecar:bench",
                               log=log_path)  # fmt: skip
    return Proc("operator", popen, log_path)


def _log_summary(path: Path) -> list[str]:
    """What the operator's log (``LEVEL:logger:message`` lines) says: handler runs per handler,
    and its distinct warnings and errors (digits folded, shutdown noise left out)."""
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return ["(no operator log)"]
    handlers: Counter[str] = Counter()
    problems: Counter[str] = Counter()
    for line in lines:
        match = re.match(r"(DEBUG|INFO|WARNING|ERROR|CRITICAL):([\w.]+):(.*)", line)
        if not match:
            continue
        level, logger, message = match.groups()
        handler = re.match(r"Handler '(?:build_registry\.<locals>\.)?(\w+)' (\w+)", message)
        if handler and handler[2] == "succeeded":
            handlers[handler[1]] += 1
        elif level in ("WARNING", "ERROR", "CRITICAL") and "stopping" not in message:
            if "Unprocessed streams" in message or "is cancelled" in message:
                continue  # the SIGTERM at the end
            problems[f"{level} {logger}: " + re.sub(r"\d+", "N", message)[:140]] += 1
    runs = ", ".join(f"{name} {n}" for name, n in handlers.most_common()) or "none"
    out = [f"Operator log: handler runs: {runs}."]
    out += [f"- {n}x {p}" for p, n in problems.most_common(6)]
    return out


def operator(workdir: Path, t: Timing) -> str:
    started = time.monotonic()
    with LocalCluster(workdir / "cluster") as cluster:
        cluster.kubectl("apply", "--server-side", "-f", str(CRD))
        cluster.kubectl(
            "wait", "--for=condition=Established", "crd/asgiservers.asgi.dev", "--timeout=30s"
        )
        for ns in (NS_WARMUP, NS_SEQ, NS_BURST):
            cluster.kubectl("create", "namespace", ns)
            cluster.wait_for_default_service_account(ns)
        cluster_seconds = time.monotonic() - started
        settings = client.Configuration()
        config.load_kube_config(  # type: ignore[no-untyped-call]
            config_file=str(cluster.kubeconfig), client_configuration=settings
        )
        settings.connection_pool_maxsize = BURST_THREADS + 4
        api = client.ApiClient(settings)
        custom, apps = client.CustomObjectsApi(api), client.AppsV1Api(api)
        deployments = Watcher("deployments", apps.list_deployment_for_all_namespaces, (), _added)
        servers = Watcher(
            "asgiservers", custom.list_cluster_custom_object, (GROUP, VERSION, PLURAL), _reconciled
        )
        deployments.start()
        servers.start()
        op = _start_operator(workdir, cluster.kubeconfig)
        try:
            control_plane = [proc.pid for _, proc, _ in cluster.processes.procs]
            return _measure(op, control_plane, custom, deployments, servers, cluster_seconds)
        finally:
            op.stop()
            deployments.halt()
            servers.halt()
            api.close()  # type: ignore[no-untyped-call]


def _create(custom: Any, namespace: str, name: str) -> tuple[str, float]:
    custom.create_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, asgiserver(name), _preload_content=False
    )
    return f"{namespace}/{name}", time.monotonic()


def _measure(
    op: Proc,
    control_plane: list[int],
    custom: Any,
    deployments: Watcher,
    servers: Watcher,
    cluster_seconds: float,
) -> str:
    both = (deployments, servers)
    start = Snapshot(op, control_plane)
    # -- start-up: the operator is up once it reconciled a first AsgiServer
    began = time.monotonic()
    key, _ = _create(custom, NS_WARMUP, "warmup")
    if not all(w.wait([key], 90) for w in both):
        raise RuntimeError(f"the operator did not reconcile {key} in 90 s:\n{op.log_tail()}")
    time.sleep(2.0)  # let the warm-up's Pod events settle
    rows: list[list[object]] = [["start-up + 1 warm-up object", f"{time.monotonic() - began:.1f}"]]
    marks = [Snapshot(op, control_plane)]

    # -- 1: one at a time, each after the previous one's Deployment appeared
    began = time.monotonic()
    seq: dict[str, float] = {}
    for i in range(SEQUENTIAL):
        key, at = _create(custom, NS_SEQ, f"seq-{i:03d}")
        seq[key] = at
        if not deployments.wait([key], WAIT_ONE):
            raise RuntimeError(f"no Deployment for {key} after {WAIT_ONE} s:\n{op.log_tail()}")
    servers.wait(seq, WAIT_ONE)
    rows.append([f"{SEQUENTIAL} one at a time", f"{time.monotonic() - began:.1f}"])
    marks.append(Snapshot(op, control_plane))
    seq_deploy = _latencies(seq, deployments.seen)
    seq_status = _latencies(seq, servers.seen)

    # -- 2: BURST at once from a thread pool
    time.sleep(2.0)
    marks[-1] = Snapshot(op, control_plane)
    began = time.monotonic()
    with ThreadPoolExecutor(BURST_THREADS) as pool:
        burst = dict(pool.map(lambda i: _create(custom, NS_BURST, f"burst-{i:03d}"), range(BURST)))
    created_in = time.monotonic() - began
    deployments.wait(burst, WAIT_BURST)
    all_deployments = (
        max(deployments.seen[k] for k in burst) - began
        if deployments.count(burst) == BURST
        else None
    )
    servers.wait(burst, max(1.0, began + WAIT_BURST - time.monotonic()))
    done = servers.count(burst)
    all_reconciled = max(servers.seen[k] for k in burst) - began if done == BURST else None
    rows.append([f"{BURST} at once ({BURST_THREADS} threads)", f"{time.monotonic() - began:.1f}"])
    marks.append(Snapshot(op, control_plane))
    burst_deploy = _latencies(burst, deployments.seen)
    burst_status = _latencies(burst, servers.seen)

    # -- afterwards: nothing is created; resyncs and child/Pod events are all the work
    time.sleep(STEADY_SECONDS)
    rows.append(
        [
            f"next {STEADY_SECONDS:.0f} s, nothing created ({SEQUENTIAL + BURST + 1} objects)",
            f"{STEADY_SECONDS:.1f}",
        ]
    )
    marks.append(Snapshot(op, control_plane))
    peak_mb = _status_kib(op.pid, "VmHWM") / 1024
    rss_mb = _status_kib(op.pid, "VmRSS") / 1024

    cpu_rows = [
        [*row, *after.row(before, float(str(row[1])))]
        for row, before, after in zip(rows, [start, *marks[:-1]], marks, strict=True)
    ]

    p95 = percentile(seq_deploy, 95)
    total = (
        max(all_deployments, all_reconciled)
        if all_deployments is not None and all_reconciled is not None
        else None
    )
    burst_line = (
        f"all {BURST} Deployments after {all_deployments:.1f} s, all reconciled after "
        f"{all_reconciled:.1f} s"
        if all_deployments is not None and all_reconciled is not None
        else f"after {WAIT_BURST:.0f} s: {deployments.count(burst)} Deployments, "
        f"{done} reconciled of {BURST}"
    )
    watch_errors = deployments.errors + servers.errors
    return "\n".join(
        [
            f"## operator: AsgiServer → Deployment on a local control plane ({SEQUENTIAL} one "
            f"at a time, {BURST} at once)",
            "",
            "kube-apiserver v1.33 + etcd + controller-manager + scheduler + kwok (1 fake node, "
            "the Deployments' Pods run there) from hack/controlplane.py; the operator is "
            "`python -m asgi_operator run --all-namespaces` (default resync 10 s). No pinning: "
            "the control plane, the operator and this process (kubernetes client creates, "
            "cluster-wide watches on Deployments and AsgiServers) share both cores. Latency "
            "= create call returned → the watch saw the Deployment ADDED / the AsgiServer's "
            "status.observedGeneration == metadata.generation. Spec: `image` only "
            f"(1 replica). CPU: utime+stime from /proc; operator % is of one core, machine "
            f"busy is of both. Cluster start-up: {cluster_seconds:.0f} s.",
            "",
            table(
                [
                    "phase",
                    "objects",
                    "→ Deployment p50 / p95 / max ms",
                    "→ reconciled p50 / p95 / max ms",
                    "create calls s",
                ],
                [
                    ["one at a time", SEQUENTIAL, _dist(seq_deploy), _dist(seq_status), "—"],
                    [
                        "at once",
                        BURST,
                        _dist(burst_deploy),
                        _dist(burst_status),
                        f"{created_in:.1f}",
                    ],
                ],
            ),
            "",
            table(
                [
                    "phase",
                    "wall s",
                    "operator CPU s (% of a core)",
                    "control plane CPU s",
                    "machine busy",
                    "operator RSS MB",
                ],
                cpu_rows,
            ),
            "",
            f"Operator peak memory (VmHWM): {peak_mb:.1f} MB; RSS at the end {rss_mb:.1f} MB.",
            f"One at a time, p95 create → Deployment: {p95 * 1000:,.0f} ms — goal ≤ "
            f"{GOAL_P95:.0f} s {verdict(p95 <= GOAL_P95)}.",
            f"{BURST} at once: {burst_line} — goal ≤ {GOAL_BURST:.0f} s "
            f"{verdict(total is not None and total <= GOAL_BURST)}.",
            *([f"Watch reconnects/errors: {len(watch_errors)}"] if watch_errors else []),
            "",
            *_log_summary(op.log_path),
        ]
    )
