"""``make run``: a local control plane, the AsgiServer CRD and sample, and the operator.

Starts the control plane from ``.cache/bin`` (``make cluster`` builds it), installs
the CRD, applies ``samples/asgiserver.yaml``, prints how to look at the result with
kubectl, and runs the operator in the foreground until Ctrl-C; then stops it all.
Pods are faked by kwok (no container runtime here), so they turn Running without
running the image.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from localcluster import LocalCluster

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    work = ROOT / ".cache" / "run"
    work.mkdir(parents=True, exist_ok=True)
    with LocalCluster(work) as cluster:
        cluster.kubectl("apply", "--server-side", "-f", str(ROOT / "crds"))
        cluster.kubectl(
            "wait", "--for=condition=Established", "crd/asgiservers.asgi.dev", "--timeout=60s"
        )
        cluster.wait_for_default_service_account()
        cluster.kubectl("apply", "-f", str(ROOT / "samples" / "asgiserver.yaml"))
        kubectl = ROOT / ".cache" / "bin" / "kubectl"
        print(
            "\n  the control plane is up and samples/asgiserver.yaml is applied; in another shell:"
            f"\n    export KUBECONFIG={cluster.kubeconfig}"
            f"\n    {kubectl} get asgi,deployments,services,configmaps,pods"
            f"\n    {kubectl} describe asgi hello"
            "\n  the operator runs below; Ctrl-C stops it and the control plane.\n",
            flush=True,
        )
        env = {**os.environ, "KUBECONFIG": str(cluster.kubeconfig)}
        operator = subprocess.Popen(
            [sys.executable, "-m", "asgi_operator", "run", "--all-namespaces", "--liveness", ""],
            cwd=ROOT,
            env=env,
        )
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


if __name__ == "__main__":
    sys.exit(main())
