"""The chart's life on a cluster, as a platform team lives it: `helm package`, `helm install`
of the previous chart version from its archive, AsgiServers in place, the documented CRD
upgrade, `helm upgrade` to this version's archive, `helm uninstall`.

A control plane of its own: the shared one has this version's CRDs installed already, and
the upgrade is from the previous version's. As in the other control-plane tests the operator
runs on this host (the chart's operator Pod runs on kwok's fake node and does nothing).
"""

from __future__ import annotations

import io
import json
import subprocess
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from asgi_operator.building import SELECTOR_LABEL
from hack.controlplane import LocalCluster
from tests.support.helm import CHART, helm, package
from tests.support.kube import condition, eventually, running_operator, server
from tests.support.processes import ROOT

pytestmark = pytest.mark.timeout(300)

# The chart before the admission webhook and spec.targetRef: version 0.1.0.
PREVIOUS_COMMIT = "6140034"
PREVIOUS_VERSION = "0.1.0"
VERSION = yaml.safe_load((CHART / "Chart.yaml").read_text())["version"]
RELEASE, RELEASE_NS, NAMESPACE = "life", "asgi-system", "apps"
FULLNAME = f"{RELEASE}-asgi-operator"
# What the operator makes for an AsgiServer, and the AsgiServers themselves.
RECORDED = "asgiservers,deployments,replicasets,pods,services,configmaps,poddisruptionbudgets"
SERVERS = {
    "web": server("web", replicas=2, disruptionBudget={"minAvailable": 1}),
    "api": server("api"),
}
PODS = {"web": 2, "api": 1}
# Only the new CRD has spec.targetRef (and lets spec.image go).
ATTACHED = {
    "apiVersion": "asgi.dev/v1alpha1",
    "kind": "AsgiServer",
    "metadata": {"name": "shop"},
    "spec": {"targetRef": {"kind": "Deployment", "name": "shop"}},
}
RECONCILED = "Handler 'reconcile' succeeded."


@pytest.fixture(scope="module")
def bare_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """A control plane with no CRDs: the previous chart's install brings them."""
    with LocalCluster(tmp_path_factory.mktemp("lifecycle-cluster")) as running:
        yield running


def previous_chart(into: Path) -> Path:
    """The chart as of ``PREVIOUS_COMMIT``, from this clone's history."""
    known = subprocess.run(
        ["git", "-C", str(ROOT), "cat-file", "-e", f"{PREVIOUS_COMMIT}^{{commit}}"],
        capture_output=True, check=False,
    )  # fmt: skip
    if known.returncode != 0:
        pytest.fail(
            f"commit {PREVIOUS_COMMIT} (chart {PREVIOUS_VERSION}) is not in {ROOT}: this test "
            "upgrades from it and needs the repository's history (a full clone, or "
            "`git fetch --unshallow`)"
        )
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", "--format=tar", PREVIOUS_COMMIT,
         "charts/asgi-operator"],
        capture_output=True, check=True,
    )  # fmt: skip
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as opened:
        opened.extractall(into, filter="data")
    return into / "charts" / "asgi-operator"


def uids(cluster: LocalCluster) -> dict[str, str]:
    """kind/name -> UID of the AsgiServers and everything in their namespace."""
    items = cluster.get_json(RECORDED, "-n", NAMESPACE)["items"]
    return {f"{i['kind']}/{i['metadata']['name']}": i["metadata"]["uid"] for i in items}


def generations(cluster: LocalCluster) -> dict[str, int]:
    items = cluster.get_json("deployments", "-n", NAMESPACE)["items"]
    return {i["metadata"]["name"]: i["metadata"]["generation"] for i in items}


def settled(cluster: LocalCluster) -> bool:
    """Both AsgiServers Ready, their Pods all running, nothing rolling out, the budget there
    (one kubectl call a poll)."""
    items = cluster.get_json("asgiservers,deployments,pods,pdb", "-n", NAMESPACE)["items"]
    by_kind: dict[str, list[dict[str, Any]]] = {}
    for item in items:
        by_kind.setdefault(item["kind"], []).append(item)
    ready = {s["metadata"]["name"] for s in by_kind.get("AsgiServer", [])
             if condition(s, "Ready").get("status") == "True"}  # fmt: skip
    rolled_out = {
        d["metadata"]["name"]
        for d in by_kind.get("Deployment", [])
        if d["status"].get("observedGeneration") == d["metadata"]["generation"]
    }
    pods = by_kind.get("Pod", [])
    running = [p["metadata"]["labels"].get(SELECTOR_LABEL) for p in pods
               if p["status"].get("phase") == "Running"]  # fmt: skip
    budgets = [b["metadata"]["name"] for b in by_kind.get("PodDisruptionBudget", [])]
    return (
        ready == rolled_out == set(PODS)
        and {name: running.count(name) for name in PODS} == PODS
        and len(pods) == sum(PODS.values())
        and budgets == ["web"]
    )


def create_attached(cluster: LocalCluster) -> subprocess.CompletedProcess[str]:
    # kubectl's default --validate=strict: the API server refuses unknown fields.
    return cluster.kubectl(
        "create", "-n", NAMESPACE, "-f", "-", input=json.dumps(ATTACHED), check=False
    )


def test_install_previous_upgrade_with_asgiservers_in_place_uninstall(
    bare_cluster: LocalCluster, tmp_path: Path
) -> None:
    cluster, kubeconfig = bare_cluster, bare_cluster.kubeconfig
    dist = tmp_path / "dist"
    previous = package(previous_chart(tmp_path / "previous"), dist)
    current = package(CHART, dist)
    assert previous.name == f"asgi-operator-{PREVIOUS_VERSION}.tgz"
    assert current.name == f"asgi-operator-{VERSION}.tgz"

    # The previous version, from its archive; its crds/ come with the install.
    helm("install", RELEASE, str(previous), "-n", RELEASE_NS, "--create-namespace",
         kubeconfig=kubeconfig)  # fmt: skip
    cluster.kubectl("create", "namespace", NAMESPACE)
    cluster.wait_for_default_service_account(NAMESPACE)
    log = tmp_path / "operator.log"
    with running_operator(kubeconfig, log):
        cluster.kubectl("apply", "-n", NAMESPACE, "-f", "-",
                        input=yaml.safe_dump_all(SERVERS.values()))  # fmt: skip
        eventually(lambda: settled(cluster), 90, "the AsgiServers Ready with all their Pods")
        before, rolled = uids(cluster), generations(cluster)
        recorded = sorted(key.split("/")[0] for key in before)
        assert recorded.count("AsgiServer") == 2
        assert recorded.count("Pod") == 3
        for kind in ("Deployment", "ReplicaSet", "Service", "ConfigMap", "PodDisruptionBudget"):
            assert kind in recorded, kind

        refused = create_attached(cluster)
        assert refused.returncode != 0
        assert 'unknown field "spec.targetRef"' in refused.stderr, refused.stderr

        # The CRD upgrade, as the README's "Upgrading" gives it: the new archive's crds/,
        # applied server-side and forced. Client-side apply would store the whole CRD in an
        # annotation, over its 256 KiB limit; and Helm's create made its field manager the
        # owner of every field, so only a forced apply takes them over.
        subprocess.run(["tar", "-xzf", str(current), "-C", str(tmp_path), "asgi-operator/crds"],
                       check=True)  # fmt: skip
        crds = str(tmp_path / "asgi-operator" / "crds")
        client_side = cluster.kubectl("apply", "--dry-run=server", "-f", crds, check=False)
        assert client_side.returncode != 0
        assert "Too long" in client_side.stderr, client_side.stderr
        unforced = cluster.kubectl("apply", "--server-side", "--dry-run=server", "-f", crds,
                                   check=False)  # fmt: skip
        assert unforced.returncode != 0
        assert "conflict" in unforced.stderr, unforced.stderr
        cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", crds)
        # The API server serves the new schema a moment after the CRD is updated.
        eventually(lambda: create_attached(cluster).returncode == 0, 30, "spec.targetRef accepted")

        helm("upgrade", RELEASE, str(current), "-n", RELEASE_NS, "--wait", "--timeout", "60s",
             kubeconfig=kubeconfig)  # fmt: skip

    # The upgrade replaced the operator Pod (its flags changed): so the operator here too.
    # Its first pass reconciles every AsgiServer under the new chart and CRD.
    log = tmp_path / "operator-upgraded.log"
    with running_operator(kubeconfig, log) as upgraded:
        eventually(lambda: upgraded.log().count(RECONCILED) >= 3, 60, "every AsgiServer resumed")
        shop = eventually(
            lambda: condition(cluster.get_json("asgiserver", "shop", "-n", NAMESPACE),
                              "Injected") or None,
            30, "the attached AsgiServer reconciled",
        )  # fmt: skip
        assert shop["reason"] == "TargetNotFound"
        after = uids(cluster)
        assert {key: after.get(key) for key in before} == before, "deleted or replaced"
        assert generations(cluster) == rolled, "the upgrade rolled a Deployment"
        # Nothing re-applied either (the attached AsgiServer's first pass in a new process
        # logs its ConfigMap, unchanged or not).
        attached = f"AsgiServer {NAMESPACE}/shop:"
        applied = [line for line in upgraded.log().splitlines()
                   if ": applied" in line and not line.startswith(attached)]  # fmt: skip
        assert applied == [], applied

    history = json.loads(helm("history", RELEASE, "-n", RELEASE_NS, "-o", "json",
                              kubeconfig=kubeconfig))  # fmt: skip
    assert [(r["revision"], r["chart"], r["status"]) for r in history] == [
        (1, f"asgi-operator-{PREVIOUS_VERSION}", "superseded"),
        (2, f"asgi-operator-{VERSION}", "deployed"),
    ]
    cluster.kubectl("get", "mutatingwebhookconfiguration", FULLNAME)
    cluster.kubectl("get", "service", f"{FULLNAME}-webhook", "-n", RELEASE_NS)

    # Uninstalled, the chart's objects go; the CRDs stay (Helm never deletes crds/), and so
    # do the AsgiServers and what the operator made for them.
    helm("uninstall", RELEASE, "-n", RELEASE_NS, "--wait", kubeconfig=kubeconfig)
    gone = cluster.kubectl("get", "mutatingwebhookconfiguration", FULLNAME, check=False)
    assert gone.returncode != 0
    cluster.kubectl("get", "crd", "asgiservers.asgi.dev")
    left = uids(cluster)
    assert {key: left.get(key) for key in before} == before
    assert "AsgiServer/shop" in left
