"""``make podschema``: spec.podTemplate's schema from the OpenAPI the control plane serves.

Starts the local control plane (``make cluster`` builds it), reads its core API's OpenAPI
v3 document (``/openapi/v3/api/v1``, which carries the enums the document published in
Kubernetes' module leaves out) and its version, and writes
``operator/asgi_operator/podtemplate.json`` through ``asgi_operator.podschema``; then
``make crds`` puts it into the CRD.  tests/integration/test_pod_template.py checks that
the file is what the running API server serves.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from asgi_operator import podschema
from hack.cache import ROOT
from hack.controlplane import LocalCluster

OUT = ROOT / "operator" / "asgi_operator" / "podtemplate.json"


def main() -> None:
    with tempfile.TemporaryDirectory() as work, LocalCluster(Path(work) / "cluster") as cluster:
        served = json.loads(cluster.kubectl("get", "--raw", "/openapi/v3/api/v1").stdout)
        version = json.loads(cluster.kubectl("version", "-o", "json").stdout)["serverVersion"]
    OUT.write_text(podschema.render(podschema.convert(served, version["gitVersion"])))
    print(f"wrote {OUT.relative_to(ROOT)} for Kubernetes {version['gitVersion']}")


if __name__ == "__main__":
    main()
