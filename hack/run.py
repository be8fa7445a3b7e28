"""``make run``: a local control plane, the AsgiServer CRD and sample, and the operator.

Starts the control plane from ``.cache/bin`` (``make cluster`` builds it), installs
the CRD, applies a sample, prints how to look at the result with kubectl, and runs the
operator in the foreground until Ctrl-C; then stops it all.

* ``make run``: Pods are faked by kwok (no container runtime), so they turn Running
  without running the image; the sample is ``samples/asgiserver.yaml``.
* ``make run-node`` (``--node``): a real node joins instead (hack/node.py:
  containerd, runc, a CNI bridge and the kubelet, images built by hack/nodeimages.py),
  so the Pods run for real; the sample is ``samples/node/asgiserver.yaml`` and the
  Pods answer on their IPs from this host.
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import subprocess
import sys
import time

from hack import operatorproc
from hack.cache import ROOT
from hack.controlplane import LocalCluster
from hack.node import LocalNode
from hack.nodeimages import SIDECAR_IMAGE, build


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--node", action="store_true", help="run Pods on a real node")
    args = parser.parse_args(argv)
    work = ROOT / ".cache" / ("run-node" if args.node else "run")
    work.mkdir(parents=True, exist_ok=True)
    sample = ROOT / "samples" / ("node" if args.node else "") / "asgiserver.yaml"
    started = time.monotonic()
    with contextlib.ExitStack() as stack:
        images = build() if args.node else None
        cluster = stack.enter_context(LocalCluster(work / "cluster", fake_node=not args.node))
        if images is not None:
            node = stack.enter_context(LocalNode(cluster, work / "node", images))
            print(f"node {node.name} Ready after {time.monotonic() - started:.1f}s", flush=True)
        cluster.install_crds(ROOT / "crds")
        cluster.wait_for_default_service_account()
        cluster.kubectl("apply", "-f", str(sample))
        kubectl = ROOT / ".cache" / "bin" / "kubectl"
        print(
            f"\n  the control plane is up and {sample.relative_to(ROOT)} is applied;"
            " in another shell:"
            f"\n    export KUBECONFIG={cluster.kubeconfig}"
            f"\n    {kubectl} get asgi,deployments,services,configmaps,pods -o wide"
            f"\n    {kubectl} describe asgi hello"
            + (
                "\n    curl http://<pod IP>:8080/        # the demo app through the sidecar"
                "\n    curl http://<pod IP>:9090/metrics # the sidecar's metrics"
                f"\n    {kubectl} exec <pod> -c app -- cat /proc/sys/net/core/somaxconn"
                if args.node
                else ""
            )
            + "\n  the operator runs below; Ctrl-C stops it and the control plane.\n",
            flush=True,
        )
        flags = ["--liveness", ""]
        if args.node:
            flags += ["--sidecar-image", SIDECAR_IMAGE]
        operator = operatorproc.start(cluster.kubeconfig, *flags)
        signal.signal(signal.SIGTERM, lambda *_: operator.send_signal(signal.SIGINT))
        try:
            return operator.wait()
        except KeyboardInterrupt:
            operator.send_signal(signal.SIGINT)
            try:
                operator.wait(timeout=15)
            except subprocess.TimeoutExpired:
                operator.kill()
            return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
