"""helm (``make helm`` builds it into ``.cache/bin``) as the chart's tests call it: the chart's
metadata test renders and lints with it, the lifecycle test packages, installs and upgrades.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.support.processes import ROOT

HELM = ROOT / ".cache" / "bin" / "helm"
CHART = ROOT / "charts" / "asgi-operator"
# The local control plane's version; helm is told it when it renders without a cluster.
KUBE_VERSION = "1.33.13"


def helm(*args: str, kubeconfig: Path | None = None) -> str:
    """``helm ARGS`` (against ``kubeconfig`` if given); its stdout, or an AssertionError with
    both streams."""
    if not HELM.is_file():
        raise RuntimeError(f"{HELM} missing: run `make helm` (hack/build-helm.sh)")
    cmd = [str(HELM), *args]
    if kubeconfig is not None:
        cmd += ["--kubeconfig", str(kubeconfig)]
    result = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)}:\n{result.stdout}\n{result.stderr}")
    return result.stdout


def package(chart: Path, destination: Path) -> Path:
    """``helm package``: the archive ``<name>-<version>.tgz`` in ``destination``."""
    out = helm("package", str(chart), "--destination", str(destination))
    # "Successfully packaged chart and saved it to: /path/name-version.tgz"
    archive = Path(out.strip().rsplit(": ", 1)[1])
    assert archive.is_file(), out
    return archive
