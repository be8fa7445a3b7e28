"""The images as a user ships them, on the real node: ``make images`` (OCI archives built
without an engine), ``make push`` (skopeo) to the distribution registry on loopback, and
the node's containerd pulling them from there (hosts.toml, ``LocalNode.trust_registry``)
where the other node tests use the imported archive.

An AsgiServer runs the pushed demo app and sidecar, pulled with imagePullPolicy Always;
the pushed operator image runs the operator itself against the control plane, on the
host's network (the API server listens on loopback only) with a read-only root.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from asgi_operator.pods import APP_CONTAINER, PROXY_CONTAINER
from hack import nodeimages
from hack.registry import LocalRegistry, Request, push
from hack.supervisor import free_port
from tests.support.kube import eventually, get, server
from tests.support.nodes import fetch

pytestmark = [pytest.mark.node, pytest.mark.timeout(420)]

VERSION = nodeimages.VERSION
PREFIX = "asgi-dev"
ALWAYS = {"imagePullPolicy": "Always"}


@dataclass(frozen=True)
class Pushed:
    registry: LocalRegistry
    repository: str  # 127.0.0.1:<port>/asgi-dev
    digests: dict[str, str]  # image name -> the manifest digest skopeo pushed
    layers: dict[str, list[str]]  # image name -> its layers' digests (gzipped), bottom up

    def image(self, name: str) -> str:
        return f"{self.repository}/{name}:{VERSION}"

    def by_digest(self, name: str) -> str:
        return f"{self.repository}/{name}@{self.digests[name]}"

    def pulls(self) -> list[Request]:
        """What containerd (not skopeo) asked the registry for."""
        return [r for r in self.registry.requests() if r.agent.startswith("containerd/")]


def manifests_pulled(pushed: Pushed, name: str) -> int:
    return sum(f"/v2/{PREFIX}/{name}/manifests/" in r.path for r in pushed.pulls())


@pytest.fixture(scope="module")
def pushed(
    node: Any, report: dict[str, Any], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Pushed]:
    started = time.monotonic()
    archives = nodeimages.build_oci()
    report["images_oci_build_seconds"] = round(time.monotonic() - started, 1)
    report["images_oci_megabytes"] = {
        name: round(path.stat().st_size / 1e6, 1) for name, path in archives.items()
    }
    with LocalRegistry(tmp_path_factory.mktemp("registry")) as registry:
        repository = f"{registry.address}/{PREFIX}"
        started = time.monotonic()
        done = push(archives, repository, VERSION)
        report["images_push_seconds"] = round(time.monotonic() - started, 1)
        node.trust_registry(registry.address)
        layers = {name: skopeo_inspect(f"oci-archive:{path}")["Layers"]
                  for name, path in archives.items()}  # fmt: skip
        yield Pushed(registry, repository, {p.name: p.digest for p in done}, layers)


def skopeo_inspect(image: str) -> Any:
    done = subprocess.run(["skopeo", "inspect", image], capture_output=True, text=True,
                          check=True)  # fmt: skip
    return json.loads(done.stdout)


def ready_pod(cluster: Any, namespace: str, selector: str, other_than: str = "") -> Any:
    def one() -> Any:
        for pod in cluster.get_json("pods", "-n", namespace, "-l", selector)["items"]:
            ready = any(c["type"] == "Ready" and c["status"] == "True"
                        for c in pod.get("status", {}).get("conditions", []))  # fmt: skip
            meta = pod["metadata"]
            if ready and "deletionTimestamp" not in meta and meta["name"] != other_than:
                return pod
        return None

    return eventually(one, 180, f"a ready Pod ({selector}) but {other_than or 'none'}")


def statuses(pod: dict[str, Any]) -> dict[str, dict[str, Any]]:
    found = pod["status"].get("initContainerStatuses", []) + pod["status"]["containerStatuses"]
    return {s["name"]: s for s in found}


def test_an_asgiserver_runs_the_pushed_images_pulled_from_the_registry(
    node_cluster, node, node_operator, namespace, pushed, report
):
    demo, sidecar = pushed.image("asgi-demo"), pushed.image("asgi-sidecar")
    present = node.ctr("images", "ls", "-q").stdout.split()
    assert demo not in present  # not imported: pulled below
    assert sidecar not in present
    body = server(
        "pulled", image=demo, sidecarImage=sidecar, replicas=1,
        podTemplate={"spec": {"containers": [{"name": APP_CONTAINER, **ALWAYS},
                                             {"name": PROXY_CONTAINER, **ALWAYS}]}},
    )  # fmt: skip
    started = time.monotonic()
    node_cluster.kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(body))
    pod = ready_pod(node_cluster, namespace, "asgi.dev/server=pulled")
    report["registry_pod_ready_seconds"] = round(time.monotonic() - started, 1)

    # The kubelet ran exactly what skopeo pushed: the registry's digests.
    running = statuses(pod)
    assert running[APP_CONTAINER]["imageID"] == pushed.by_digest("asgi-demo")
    assert running[PROXY_CONTAINER]["imageID"] == pushed.by_digest("asgi-sidecar")
    spec = pod["spec"]
    pulled = {c["name"]: c for c in spec.get("initContainers", []) + spec["containers"]}
    assert pulled[APP_CONTAINER]["imagePullPolicy"] == "Always"
    assert pulled[PROXY_CONTAINER]["imagePullPolicy"] == "Always"
    # containerd resolved them over plain HTTP at the registry (its access log). Their
    # layers and configs are the imported images' (same diff_ids, same config bytes), so
    # containerd fetched no blob of them: the operator's image below has new ones.
    assert manifests_pulled(pushed, "asgi-demo") >= 1
    assert manifests_pulled(pushed, "asgi-sidecar") >= 1
    assert demo in node.ctr("images", "ls", "-q").stdout.split()
    # ...and they serve: the demo app through the sidecar, on the Pod's IP
    status, answer = fetch(pod["status"]["podIP"], "/")
    assert status == 200, answer

    # Always: a new Pod asks the registry again, though the image is on the node.
    before = manifests_pulled(pushed, "asgi-demo")
    first = pod["metadata"]["name"]
    node_cluster.kubectl("delete", "pod", "-n", namespace, first, "--wait=false")
    again = ready_pod(node_cluster, namespace, "asgi.dev/server=pulled", other_than=first)
    assert statuses(again)[APP_CONTAINER]["imageID"] == pushed.by_digest("asgi-demo")
    assert manifests_pulled(pushed, "asgi-demo") > before


def kubeconfig_files(cluster: Any, user: str, path: Path, mounted: str) -> dict[str, str]:
    """A kubeconfig of ``user`` and its certificates, as a Secret's files mounted at
    ``mounted``.  Files, not inline data: the Kubernetes client writes inline data to
    temporary files, which a read-only root refuses (in a cluster the operator uses its
    ServiceAccount's token and CA, files too)."""
    cluster.write_kubeconfig(path, user)
    config = json.loads(path.read_text())
    files: dict[str, str] = {}

    def mount(section: dict[str, str], key: str, name: str) -> None:
        files[name] = Path(section[key]).read_text()
        section[key] = f"{mounted}/{name}"

    for entry in config["clusters"]:
        mount(entry["cluster"], "certificate-authority", "ca.crt")
    for entry in config["users"]:
        mount(entry["user"], "client-certificate", "user.crt")
        mount(entry["user"], "client-key", "user.key")
    return {**files, "config": json.dumps(config)}


def http_get(url: str) -> tuple[int, str]:
    with urllib.request.urlopen(url, timeout=2) as response:
        return response.status, response.read().decode()


def test_the_pushed_operator_image_runs_the_operator(
    node_cluster, node, namespace, pushed, report, tmp_path
):
    user = "pushed-operator"
    node_cluster.issue_cert(user, f"/O=system:masters/CN={user}", "clientAuth", None)
    mounted = "/etc/asgi-operator/kube"
    secret = {
        "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "operator-kubeconfig"},
        "stringData": kubeconfig_files(node_cluster, user, tmp_path / "kubeconfig", mounted),
    }  # fmt: skip
    liveness, metrics_port = free_port(), free_port()
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "operator", "labels": {"app": "pushed-operator"}},
        "spec": {
            "hostNetwork": True,  # the API server is on the host's loopback
            "automountServiceAccountToken": False,  # so the kubeconfig is what it uses
            "restartPolicy": "Never",
            "containers": [{
                "name": "operator", "image": pushed.image("asgi-operator"), **ALWAYS,
                # the image's entrypoint, asgi-operator; its default command is `run`
                "args": ["run", "--namespace", namespace, "--verbose",
                         "--liveness", f"http://127.0.0.1:{liveness}/healthz",
                         "--metrics-port", str(metrics_port)],
                "env": [{"name": "KUBECONFIG", "value": f"{mounted}/config"}],
                "volumeMounts": [{"name": "kube", "mountPath": mounted, "readOnly": True}],
                "securityContext": {"readOnlyRootFilesystem": True, "runAsNonRoot": True,
                                    "allowPrivilegeEscalation": False},
            }],
            "volumes": [{"name": "kube", "secret": {"secretName": "operator-kubeconfig"}}],
        },
    }  # fmt: skip
    started = time.monotonic()
    node_cluster.kubectl("apply", "-n", namespace, "-f", "-",
                         input=yaml.safe_dump_all([secret, pod]))  # fmt: skip

    def healthy() -> bool:
        phase = get(node_cluster, "pod", "operator", namespace).get("status", {}).get("phase")
        if phase in ("Failed", "Succeeded"):
            logs = node_cluster.kubectl("logs", "-n", namespace, "operator", check=False)
            pytest.fail(f"the operator's Pod ended ({phase}):\n{logs.stdout}{logs.stderr}")
        with contextlib.suppress(OSError):
            return http_get(f"http://127.0.0.1:{liveness}/healthz")[0] == 200
        return False

    eventually(healthy, 180, "the pushed operator's /healthz")
    report["registry_operator_healthy_seconds"] = round(time.monotonic() - started, 1)
    running = get(node_cluster, "pod", "operator", namespace)
    assert statuses(running)["operator"]["imageID"] == pushed.by_digest("asgi-operator")
    assert manifests_pulled(pushed, "asgi-operator") >= 1
    # the layers the node did not have (the operator's dependencies and wheels) came from
    # the registry; the base it shares with the imported images did not need to
    fetched = {r.path.rsplit("/", 1)[1] for r in pushed.pulls()
               if r.method == "GET" and r.status == 200 and "/blobs/" in r.path}  # fmt: skip
    base, *own = pushed.layers["asgi-operator"]
    assert set(own) <= fetched
    assert base not in fetched
    # it reached the API server: kopf watches the AsgiServers of its namespace
    eventually(
        lambda: "asgiservers" in node_cluster.kubectl("logs", "-n", namespace, "operator").stdout,
        60, "the operator's watch on asgiservers",
    )  # fmt: skip
    status, exposition = http_get(f"http://127.0.0.1:{metrics_port}/metrics")
    assert status == 200
    assert "# TYPE asgi_operator_tuning_target gauge" in exposition
