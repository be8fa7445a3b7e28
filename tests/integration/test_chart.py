"""The Helm chart with the real tools: helm lint/template/install on the local control plane,
and the operator run under exactly the chart's RBAC to prove it sufficient and minimal."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.kube import QUICK, Operator, condition, eventually
from tests.support.processes import ROOT

pytestmark = pytest.mark.timeout(240)

CHART = ROOT / "charts" / "asgi-operator"
HELM = ROOT / ".cache" / "bin" / "helm"
KUBE_VERSION = "1.33.13"
CI_VALUES = sorted(p.name for p in (CHART / "ci").glob("*-values.yaml"))
RELEASE_NS = "asgi-system"
PERMISSION_PROBLEMS = ("403", "forbidden", "not enough permissions")

# Minimal Prometheus Operator CRDs: the local control plane has none, and the real ones are
# large; a schema that keeps unknown fields lets the server-side dry run admit the objects.
MONITORING_CRDS = [
    {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.monitoring.coreos.com"},
        "spec": {
            "group": "monitoring.coreos.com",
            "scope": "Namespaced",
            "names": {"kind": kind, "plural": plural, "singular": plural[:-1]},
            "versions": [
                {
                    "name": "v1",
                    "served": True,
                    "storage": True,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "x-kubernetes-preserve-unknown-fields": True,
                        }
                    },
                }
            ],
        },
    }
    for kind, plural in (
        ("ServiceMonitor", "servicemonitors"),
        ("PrometheusRule", "prometheusrules"),
    )
]


def helm(*args: str, kubeconfig: Path | None = None) -> str:
    if not HELM.is_file():
        raise RuntimeError(f"{HELM} missing: run `make helm` (hack/build-helm.sh)")
    cmd = [str(HELM), *args]
    if kubeconfig is not None:
        cmd += ["--kubeconfig", str(kubeconfig)]
    result = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)}:\n{result.stdout}\n{result.stderr}")
    return result.stdout


def render(*values: str, release: str = "asgi", sets: tuple[str, ...] = ()) -> list[Any]:
    args = ["template", release, str(CHART), "-n", RELEASE_NS, "--kube-version", KUBE_VERSION]
    for name in values:
        args += ["-f", str(CHART / "ci" / name)]
    for item in sets:
        args += ["--set", item]
    return [doc for doc in yaml.safe_load_all(helm(*args)) if doc]


def kinds(docs: list[Any], kind: str) -> list[Any]:
    return [d for d in docs if d["kind"] == kind]


def rules(role: dict[str, Any]) -> list[tuple[str, str, tuple[str, ...]]]:
    return sorted(
        (group, resource, tuple(rule["verbs"]))
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
    )


NAMESPACED_RULES = [
    ("", "configmaps", ("list", "watch", "create", "patch")),
    ("", "events", ("create",)),
    ("", "pods", ("list", "watch", "patch")),
    ("", "services", ("list", "watch", "create", "patch")),
    ("apps", "deployments", ("get", "list", "watch", "create", "patch")),
    ("asgi.dev", "asgiservers", ("get", "list", "watch", "patch")),
    ("asgi.dev", "asgiservers/status", ("patch",)),
    ("policy", "poddisruptionbudgets", ("create", "patch", "delete")),
]
CRDS_RULE = ("apiextensions.k8s.io", "customresourcedefinitions", ("list", "watch"))


@pytest.fixture(scope="module")
def chart_cluster(cluster: Any) -> Any:
    cluster.kubectl("apply", "--server-side", "-f", "-", input=json.dumps(
        {"apiVersion": "v1", "kind": "List", "items": MONITORING_CRDS}))  # fmt: skip
    for crd in MONITORING_CRDS:
        cluster.kubectl("wait", "--for=condition=Established", f"crd/{crd['metadata']['name']}")
    for namespace in (RELEASE_NS, "team-a", "team-b"):
        cluster.kubectl("create", "namespace", namespace, check=False)
    return cluster


# -- helm itself -------------------------------------------------------------------------


@pytest.mark.parametrize("values", CI_VALUES)
def test_lint_strict(values: str) -> None:
    out = helm("lint", "--strict", str(CHART), "-f", str(CHART / "ci" / values))
    assert "0 chart(s) failed" in out


@pytest.mark.parametrize("values", CI_VALUES)
def test_rendered_manifests_pass_a_server_side_dry_run(chart_cluster: Any, values: str) -> None:
    text = yaml.safe_dump_all(render(values))
    result = chart_cluster.kubectl("apply", "--dry-run=server", "-f", "-", input=text)
    assert "(server dry run)" in result.stdout


def test_helm_install_and_uninstall(chart_cluster: Any) -> None:
    kubeconfig = chart_cluster.kubeconfig
    helm("install", "inst", str(CHART), "-n", "chart-install", "--create-namespace",
         "-f", str(CHART / "ci" / "monitoring-values.yaml"), kubeconfig=kubeconfig)  # fmt: skip
    owned = ["deployment/inst-asgi-operator", "serviceaccount/inst-asgi-operator",
             "service/inst-asgi-operator", "configmap/inst-asgi-operator-dashboard",
             "servicemonitor/inst-asgi-operator", "prometheusrule/inst-asgi-operator"]  # fmt: skip
    try:
        for obj in owned:
            chart_cluster.kubectl("get", "-n", "chart-install", obj)
        for obj in ("clusterrole/inst-asgi-operator", "clusterrolebinding/inst-asgi-operator"):
            chart_cluster.kubectl("get", obj)
        # kwok fakes the kubelet: the operator Pod is scheduled and reported running.
        eventually(
            lambda: chart_cluster.get_json("pods", "-n", "chart-install")["items"],
            what="operator Pod",
        )
    finally:
        helm("uninstall", "inst", "-n", "chart-install", "--wait", kubeconfig=kubeconfig)
    for obj in ("clusterrole/inst-asgi-operator", "clusterrolebinding/inst-asgi-operator"):
        assert chart_cluster.kubectl("get", obj, check=False).returncode != 0
    left = chart_cluster.kubectl(
        "get", "-n", "chart-install", "all,cm,sa,servicemonitor,prometheusrule",
        "-l", "app.kubernetes.io/instance=inst", "-o", "name",
    ).stdout  # fmt: skip
    assert left.strip() == ""
    chart_cluster.kubectl("delete", "namespace", "chart-install", "--wait=false")


# -- what the chart renders --------------------------------------------------------------


def test_cluster_wide_rbac_is_exactly_the_least_privilege_set() -> None:
    docs = render("default-values.yaml")
    [role] = kinds(docs, "ClusterRole")
    assert rules(role) == sorted([CRDS_RULE, ("", "namespaces", ("get",)), *NAMESPACED_RULES])
    assert kinds(docs, "Role") == []
    assert kinds(docs, "RoleBinding") == []
    ha = render("ha-values.yaml")
    [ha_role] = kinds(ha, "ClusterRole")
    assert ("kopf.dev", "clusterkopfpeerings", ("get", "list", "watch", "patch")) in rules(ha_role)
    [peering] = kinds(ha, "ClusterKopfPeering")
    [sts] = kinds(ha, "StatefulSet")
    assert kinds(ha, "Deployment") == []
    assert sts["spec"]["replicas"] == 2
    args = sts["spec"]["template"]["spec"]["containers"][0]["args"]
    assert f"--peering={peering['metadata']['name']}" in args
    assert "--priority=$(POD_INDEX)" in args  # distinct priorities: kopf pauses equal ones


def test_watched_namespaces_get_a_role_each_and_only_cluster_reads() -> None:
    docs = render("namespaces-values.yaml", sets=("peering.enabled=true",))
    [cluster_role] = kinds(docs, "ClusterRole")
    assert rules(cluster_role) == sorted([CRDS_RULE, ("", "namespaces", ("get", "list", "watch"))])
    roles = kinds(docs, "Role")
    assert sorted(r["metadata"]["namespace"] for r in roles) == ["team-a", "team-b"]
    peering = ("kopf.dev", "kopfpeerings", ("get", "list", "watch", "patch"))
    for role in roles:
        assert rules(role) == sorted([*NAMESPACED_RULES, peering])
    assert len(kinds(docs, "RoleBinding")) == 2
    assert len(kinds(docs, "KopfPeering")) == 2
    args = kinds(docs, "StatefulSet")[0]["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--namespace=team-a" in args
    assert "--all-namespaces" not in args


def test_pod_is_restricted_with_probes_ports_and_resources() -> None:
    [deployment] = kinds(render("default-values.yaml"), "Deployment")
    assert deployment["spec"]["replicas"] == 1
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    [container] = pod["containers"]
    ctx = container["securityContext"]
    assert ctx["readOnlyRootFilesystem"] is True
    assert ctx["allowPrivilegeEscalation"] is False
    assert ctx["capabilities"]["drop"] == ["ALL"]
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "healthz"}
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"healthz": 8081, "metrics": 8082}
    assert "--liveness=http://0.0.0.0:8081/healthz" in container["args"]
    assert "--metrics-port=8082" in container["args"]
    assert container["resources"]["requests"]
    assert container["resources"]["limits"]["memory"]


def test_a_long_release_name_gives_names_within_63_and_stable_selectors() -> None:
    release = "a-very-long-release-name-that-goes-on-and-on-for-a-wh"  # helm's limit, 53
    assert len(release) == 53
    docs = render("monitoring-values.yaml", "ha-values.yaml", release=release)
    for doc in docs:
        assert len(doc["metadata"]["name"]) <= 63, doc["metadata"]["name"]
        assert not doc["metadata"]["name"].endswith("-")
        for value in doc["metadata"].get("labels", {}).values():
            assert len(value) <= 63
    for workload in kinds(docs, "StatefulSet"):
        selector = workload["spec"]["selector"]["matchLabels"]
        assert "helm.sh/chart" not in selector
        assert "app.kubernetes.io/version" not in selector
        assert selector.items() <= workload["spec"]["template"]["metadata"]["labels"].items()
    [service] = kinds(docs, "Service")
    assert "helm.sh/chart" not in service["spec"]["selector"]
    [dashboard] = kinds(docs, "ConfigMap")
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    json.loads(dashboard["data"]["asgi-server.json"])


def test_more_than_one_replica_without_peering_is_refused() -> None:
    with pytest.raises(AssertionError, match=r"needs peering\.enabled"):
        render(sets=("replicaCount=2",))


# -- least privilege, proven by running the operator under the chart's identity ----------


class Identity:
    """The chart's ServiceAccount and RBAC for one release, and a kubeconfig with its token."""

    def __init__(self, cluster: Any, release: str, workdir: Path, docs: list[Any]) -> None:
        self.cluster, self.release = cluster, release
        wanted = {"ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"}
        self.docs = [d for d in docs if d["kind"] in wanted]
        cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(self.docs))
        token = cluster.kubectl(
            "create", "token", f"{release}-asgi-operator", "-n", RELEASE_NS
        ).stdout.strip()
        admin = json.loads(cluster.kubeconfig.read_text())
        self.kubeconfig = workdir / f"{release}.kubeconfig"
        self.kubeconfig.write_text(json.dumps({
            "apiVersion": "v1", "kind": "Config", "current-context": "sa",
            "clusters": admin["clusters"],
            "users": [{"name": "sa", "user": {"token": token}}],
            "contexts": [{"name": "sa", "context": {"cluster": "local", "user": "sa"}}],
        }))  # fmt: skip
        self.log = workdir / f"{release}.log"
        self.operator: Operator | None = None

    def start(self, *scope: str) -> None:
        flags = [*scope, *QUICK]
        self.operator = Operator(
            self.kubeconfig, self.log, "s:t", flags=flags, all_namespaces=False
        )
        self.operator.start()

    def stop(self) -> None:
        if self.operator is not None:
            self.operator.stop()
            self.operator = None
        self.cluster.kubectl("delete", "-f", "-", "--wait=false", check=False,
                             input=yaml.safe_dump_all(self.docs))  # fmt: skip

    def problems(self) -> list[str]:
        lines = self.log.read_text().splitlines()
        return [line for line in lines if any(p in line.lower() for p in PERMISSION_PROBLEMS)]


@pytest.fixture
def workdir(tmp_path: Path) -> Iterator[Path]:
    return tmp_path


def _sample(cluster: Any, namespace: str) -> None:
    cluster.kubectl("create", "namespace", namespace, check=False)
    cluster.wait_for_default_service_account(namespace)
    cluster.kubectl("apply", "-n", namespace, "-f", str(ROOT / "samples" / "asgiserver.yaml"))


def _reconciled(cluster: Any, namespace: str) -> bool:
    for obj in ("deployment/hello", "service/hello", "configmap/hello-sidecar"):
        if cluster.kubectl("get", "-n", namespace, obj, check=False).returncode != 0:
            return False
    body = cluster.get_json("asgiserver", "hello", "-n", namespace)
    return bool(condition(body, "Ready").get("status") == "True")


def test_operator_reconciles_fully_under_the_charts_cluster_role(chart_cluster, workdir):
    identity = Identity(chart_cluster, "lp", workdir, render("default-values.yaml", release="lp"))
    try:
        identity.start("--all-namespaces")
        _sample(chart_cluster, "lp-all")
        eventually(lambda: _reconciled(chart_cluster, "lp-all"), 90, "reconciled and Ready")
        assert identity.problems() == []
    finally:
        identity.stop()
        chart_cluster.kubectl("delete", "namespace", "lp-all", "--wait=false")


# Each drop takes one verb (or a whole resource) out of the chart's rules; the operator, run
# with the rest, must show a permission error (and, where it needs the right, not finish).
DROPS = (
    "asgiservers",
    "asgiservers:patch",
    "asgiservers:watch",
    "asgiservers/status",
    "deployments:get",
    "deployments:create",
    "deployments:watch",
    "services:create",
    "configmaps:patch",
    "poddisruptionbudgets:patch",  # the sample has two replicas, so it gets a budget
    "pods",
    "pods:patch",  # the sample's Pods run (kwok), so their ConfigMap refresh is nudged
    "customresourcedefinitions",
    "namespaces:list",
)


def _drop(docs: list[Any], spec: str) -> list[Any]:
    resource, _, verb = spec.partition(":")
    out = []
    for doc in docs:
        if doc["kind"] in ("ClusterRole", "Role"):
            kept = []
            for original in doc["rules"]:
                rule = dict(original)
                if resource in rule["resources"]:
                    if verb:
                        rule["verbs"] = [v for v in rule["verbs"] if v != verb]
                    else:
                        rule["resources"] = [r for r in rule["resources"] if r != resource]
                if rule["resources"] and rule["verbs"]:
                    kept.append(rule)
            out.append({**doc, "rules": kept})
        else:
            out.append(doc)
    return out


def test_dropping_any_one_rule_breaks_the_operator(chart_cluster, workdir):
    """Per watched namespace (so the operators run side by side without overlapping)."""
    identities: dict[str, Identity] = {}
    try:
        for index, spec in enumerate(DROPS):
            namespace = f"drop-{index}"
            docs = render(release=f"drop{index}", sets=(f"watchNamespaces={{{namespace}}}",))
            _sample(chart_cluster, namespace)
            identity = Identity(chart_cluster, f"drop{index}", workdir, _drop(docs, spec))
            identity.start(f"--namespace={namespace}")
            identities[spec] = identity
        deadline = time.monotonic() + 45
        pending = dict(identities)
        while pending and time.monotonic() < deadline:
            for spec, identity in list(pending.items()):
                if identity.problems():
                    del pending[spec]
            time.sleep(0.5)
        assert list(pending) == [], "no permission error without these rules"
    finally:
        for index, identity in enumerate(identities.values()):
            identity.stop()
            chart_cluster.kubectl("delete", "namespace", f"drop-{index}", "--wait=false")
