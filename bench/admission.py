"""What the admission webhook adds to a Pod's creation, on a real local control plane.

The control plane (hack/controlplane.py, kwok's fake node) and the operator with its
webhook (self-managed certificates, registered with ``--webhook-manage-configuration``)
run here.  Pods are created one at a time with the kubernetes client, alternating a Pod
with the opt-in label (sent to the webhook, injected) and one without (never sent to it),
so both see the same API server, etcd and moment; a latency is the create call's round
trip.  The webhook's own time comes from its ``asgi_operator_admission_duration_seconds``.
"""

from __future__ import annotations

import re
import statistics
import time
import urllib.request
from pathlib import Path
from typing import Any

from kubernetes import client, config

from bench.report import Timing, table
from hack import operatorproc
from hack.controlplane import LocalCluster
from hack.supervisor import free_port, stop

ROOT = Path(__file__).resolve().parents[1]
PODS = 60  # of each kind
NAMESPACE, OPS = "bench-admission", "bench-admission-ops"


def _pod(name: str, labelled: bool) -> dict[str, Any]:
    labels = {"app": "shop", **({"asgi.dev/inject": "api"} if labelled else {})}
    container = {"name": "web", "image": "registry.example/shop:1",
                 "ports": [{"name": "http", "containerPort": 8000}]}  # fmt: skip
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": labels},
            "spec": {"containers": [container]}}  # fmt: skip


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _webhook_seconds(metrics_port: int) -> tuple[float, int]:
    """(sum, count) of the webhook's admission histogram."""
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as r:
        text = r.read().decode()
    total = re.search(r"^asgi_operator_admission_duration_seconds_sum (\S+)$", text, re.M)
    count = re.search(r"^asgi_operator_admission_duration_seconds_count (\S+)$", text, re.M)
    return (float(total.group(1)) if total else 0.0, int(float(count.group(1))) if count else 0)


def _wait_registered(admission: client.AdmissionregistrationV1Api, name: str) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            found = admission.read_mutating_webhook_configuration(name)
            if found.webhooks and found.webhooks[0].client_config.ca_bundle:
                return
        except client.ApiException:
            pass
        time.sleep(0.2)
    raise RuntimeError("the webhook was not registered within 60 s")


def measure(workdir: Path) -> dict[str, Any]:
    with LocalCluster(workdir / "cluster") as cluster:
        cluster.install_crds(ROOT / "crds")
        for ns in (NAMESPACE, OPS):
            cluster.kubectl("create", "namespace", ns)
        cluster.wait_for_default_service_account(NAMESPACE)
        port, metrics = free_port(), free_port()
        flags = [
            "--liveness", "", "--metrics-port", str(metrics), "--webhook-port", str(port),
            "--webhook-host", "127.0.0.1", "--webhook-url",
            f"https://127.0.0.1:{port}/mutate-pods", "--webhook-manage-configuration",
            "--webhook-configuration", "bench-admission", "--webhook-secret", f"{OPS}/tls",
        ]  # fmt: skip
        api = config.new_client_from_config(str(cluster.kubeconfig))
        core = client.CoreV1Api(api)
        proc = operatorproc.start(cluster.kubeconfig, *flags, log=workdir / "operator.log")
        try:
            _wait_registered(client.AdmissionregistrationV1Api(api), "bench-admission")
            body = {"apiVersion": "asgi.dev/v1alpha1", "kind": "AsgiServer",
                    "metadata": {"name": "api"},
                    "spec": {"targetRef": {"kind": "Deployment", "name": "shop"}}}  # fmt: skip
            client.CustomObjectsApi(api).create_namespaced_custom_object(
                "asgi.dev", "v1alpha1", NAMESPACE, "asgiservers", body
            )
            times: dict[bool, list[float]] = {True: [], False: []}
            for i in range(-5, PODS):  # five warm-up pairs, not counted
                for labelled in (True, False):
                    name = f"{'in' if labelled else 'plain'}-{i + 5}"
                    started = time.perf_counter()
                    created = core.create_namespaced_pod(NAMESPACE, _pod(name, labelled))
                    elapsed = time.perf_counter() - started
                    injected = any(c.name == "proxy" for c in created.spec.init_containers or [])
                    if injected != labelled:
                        raise RuntimeError(f"Pod {name}: injected={injected}, labelled={labelled}")
                    if i >= 0:
                        times[labelled].append(elapsed)
            hook_sum, hook_count = _webhook_seconds(metrics)
        finally:
            stop(proc)
    return {"times": times, "hook_mean": hook_sum / max(hook_count, 1), "hook_count": hook_count}


def admission(workdir: Path, timing: Timing) -> str:
    result = measure(workdir)
    times = result["times"]
    rows = []
    for labelled, name in ((False, "without the label (not sent)"), (True, "opted in (injected)")):
        values = [t * 1000 for t in times[labelled]]
        p50, p95, p99 = (statistics.median(values), _percentile(values, 0.95),
                         _percentile(values, 0.99))  # fmt: skip
        rows.append([name, len(values), f"{p50:.1f}", f"{p95:.1f}", f"{p99:.1f}"])
    added = (statistics.median(times[True]) - statistics.median(times[False])) * 1000
    return "\n\n".join(
        [
            "## admission webhook: Pod creation on a local control plane",
            f"{PODS} Pods of each kind, created one at a time and alternating; latency of the"
            " create call (API server, webhook over TLS, etcd).",
            table(["Pod", "pods", "p50 ms", "p95 ms", "p99 ms"], rows),
            f"Added at the median: {added:.1f} ms; the webhook's own time per review (its"
            f" histogram, {result['hook_count']} reviews): {result['hook_mean'] * 1000:.1f} ms"
            " mean.",
        ]
    )
