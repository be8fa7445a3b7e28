"""The chart's admission webhook, as `helm template` renders it: the configuration the
operator's builder makes, the operator's flags, the Service, the two certificate modes and
their RBAC, the PodDisruptionBudget, and the PodMonitor of the injected proxies."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from asgi_operator.admission import webhook_configuration
from asgi_operator.injecting import INJECT_LABEL, PROXY_METRICS_PORT, SERVER_LABEL
from tests.support.processes import ROOT

CHART = ROOT / "charts" / "asgi-operator"
HELM = ROOT / ".cache" / "bin" / "helm"
KUBE_VERSION = "1.33.13"
RELEASE_NS = "asgi-system"
FULLNAME = "asgi-asgi-operator"  # release "asgi"
WEBHOOK = f"{FULLNAME}-webhook"
SECRET = f"{WEBHOOK}-tls"
CERT_DIR = "/etc/asgi-operator/webhook-tls"
WEBHOOK_RULE = (
    "admissionregistration.k8s.io",
    "mutatingwebhookconfigurations",
    ("get", "patch"),
    (FULLNAME,),
)


def helm(*args: str) -> str:
    if not HELM.is_file():
        raise RuntimeError(f"{HELM} missing: run `make helm` (hack/build-helm.sh)")
    result = subprocess.run([str(HELM), *args], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)}:\n{result.stdout}\n{result.stderr}")
    return result.stdout


def render(*values: str, sets: tuple[str, ...] = ()) -> list[Any]:
    args = ["template", "asgi", str(CHART), "-n", RELEASE_NS, "--kube-version", KUBE_VERSION]
    for name in values:
        args += ["-f", str(CHART / "ci" / name)]
    for item in sets:
        args += ["--set", item]
    return [doc for doc in yaml.safe_load_all(helm(*args)) if doc]


def kinds(docs: list[Any], kind: str) -> list[Any]:
    return [d for d in docs if d["kind"] == kind]


def one(docs: list[Any], kind: str, name: str | None = None) -> Any:
    [doc] = [d for d in kinds(docs, kind) if name is None or d["metadata"]["name"] == name]
    return doc


def container(docs: list[Any]) -> Any:
    workload = (kinds(docs, "Deployment") + kinds(docs, "StatefulSet"))[0]
    [operator] = workload["spec"]["template"]["spec"]["containers"]
    return operator


def pod_spec(docs: list[Any]) -> Any:
    workload = (kinds(docs, "Deployment") + kinds(docs, "StatefulSet"))[0]
    return workload["spec"]["template"]["spec"]


def webhook_args(docs: list[Any]) -> list[str]:
    return [a for a in container(docs)["args"] if a.startswith("--webhook-")]


def rules(role: dict[str, Any]) -> list[tuple[str, str, tuple[str, ...], tuple[str, ...]]]:
    return sorted(
        (group, resource, tuple(rule["verbs"]), tuple(rule.get("resourceNames", ())))
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
    )


# -- the configuration --------------------------------------------------------------------


def test_configuration_has_exactly_the_designed_webhook() -> None:
    configuration = one(render(), "MutatingWebhookConfiguration")
    assert configuration["apiVersion"] == "admissionregistration.k8s.io/v1"
    assert configuration["metadata"]["name"] == FULLNAME
    assert "annotations" not in configuration["metadata"]
    [webhook] = configuration["webhooks"]
    assert webhook == {
        "name": "inject.asgi.dev",
        "admissionReviewVersions": ["v1"],
        # No caBundle: the operator patches it in, and Helm never resets what it never set.
        "clientConfig": {
            "service": {
                "namespace": RELEASE_NS,
                "name": WEBHOOK,
                "path": "/mutate-pods",
                "port": 443,
            }
        },
        "rules": [
            {
                "apiGroups": [""],
                "apiVersions": ["v1"],
                "operations": ["CREATE"],
                "resources": ["pods"],
                "scope": "Namespaced",
            }
        ],
        "objectSelector": {"matchExpressions": [{"key": "asgi.dev/inject", "operator": "Exists"}]},
        "namespaceSelector": {
            "matchExpressions": [
                {"key": "kubernetes.io/metadata.name", "operator": "NotIn", "values": [RELEASE_NS]}
            ]
        },
        "failurePolicy": "Fail",
        "sideEffects": "NoneOnDryRun",
        "timeoutSeconds": 5,
        "reinvocationPolicy": "IfNeeded",
        "matchPolicy": "Equivalent",
    }


def _without(mapping: dict[str, Any], key: str) -> dict[str, Any]:
    return {k: v for k, v in mapping.items() if k != key}


@pytest.mark.parametrize(
    ("values", "sets"),
    [
        ("default-values.yaml", ()),
        ("namespaces-values.yaml", ()),
        # the release namespace among the watched ones, out of order
        ("default-values.yaml", (f"watchNamespaces={{team-b,{RELEASE_NS},team-a}}",)),
    ],
)
def test_configuration_is_what_the_operators_builder_makes(
    values: str, sets: tuple[str, ...]
) -> None:
    """The chart and asgi_operator.admission say the same (but for names and the caBundle),
    given the namespaces the chart's own --namespace flags make the operator watch."""
    docs = render(values, sets=sets)
    chart = one(docs, "MutatingWebhookConfiguration")
    watched = [a.split("=", 1)[1] for a in container(docs)["args"] if a.startswith("--namespace=")]
    assert bool(watched) == ("--all-namespaces" not in container(docs)["args"])
    built = webhook_configuration(
        FULLNAME, RELEASE_NS, service=(RELEASE_NS, WEBHOOK), watched=watched
    )
    assert set(chart) == set(built) == {"apiVersion", "kind", "metadata", "webhooks"}
    assert (chart["apiVersion"], chart["kind"]) == (built["apiVersion"], built["kind"])
    [chart_webhook] = chart["webhooks"]
    [built_webhook] = built["webhooks"]
    assert _without(chart_webhook, "clientConfig") == _without(built_webhook, "clientConfig")
    # The Service reference too (the builder leaves out an empty caBundle, as the chart does).
    assert chart_webhook["clientConfig"] == built_webhook["clientConfig"]


def test_namespace_selector_excludes_the_release_namespace() -> None:
    args = ["template", "asgi", str(CHART), "-n", "ops", "--kube-version", KUBE_VERSION]
    docs = [d for d in yaml.safe_load_all(helm(*args)) if d]
    [webhook] = one(docs, "MutatingWebhookConfiguration")["webhooks"]
    assert webhook["namespaceSelector"]["matchExpressions"] == [
        {"key": "kubernetes.io/metadata.name", "operator": "NotIn", "values": ["ops"]}
    ]
    assert webhook["clientConfig"]["service"]["namespace"] == "ops"
    assert "--webhook-secret=ops/asgi-asgi-operator-webhook-tls" in webhook_args(docs)


def test_watched_namespaces_scope_the_webhook_to_them() -> None:
    """The operator may read AsgiServers only where it watches: only those Pods are sent."""
    [webhook] = one(render("namespaces-values.yaml"), "MutatingWebhookConfiguration")["webhooks"]
    assert webhook["namespaceSelector"]["matchExpressions"] == [
        {"key": "kubernetes.io/metadata.name", "operator": "In", "values": ["team-a", "team-b"]}
    ]


def test_watching_only_the_release_namespace_with_the_webhook_is_refused() -> None:
    """It would serve no namespace (and `In []` is no valid selector): say so at install."""
    with pytest.raises(AssertionError, match="the webhook would serve no namespace"):
        render(sets=(f"watchNamespaces={{{RELEASE_NS}}}",))
    alone = render(sets=(f"watchNamespaces={{{RELEASE_NS}}}", "webhook.enabled=false"))
    assert kinds(alone, "MutatingWebhookConfiguration") == []


def test_values_set_the_webhooks_knobs() -> None:
    docs = render(
        sets=(
            "webhook.port=10443",
            "webhook.timeoutSeconds=12",
            "webhook.failurePolicy=Ignore",
            "webhook.service.port=8443",
            "webhook.certDays=90",
        )
    )
    [webhook] = one(docs, "MutatingWebhookConfiguration")["webhooks"]
    assert webhook["timeoutSeconds"] == 12
    assert webhook["failurePolicy"] == "Ignore"
    assert webhook["clientConfig"]["service"]["port"] == 8443
    assert one(docs, "Service", WEBHOOK)["spec"]["ports"][0]["port"] == 8443
    assert "--webhook-port=10443" in webhook_args(docs)
    assert "--webhook-cert-days=90" in webhook_args(docs)
    ports = {p["name"]: p["containerPort"] for p in container(docs)["ports"]}
    assert ports["webhook"] == 10443


@pytest.mark.parametrize(
    "bad",
    [
        "webhook.timeoutSeconds=31",
        "webhook.timeoutSeconds=0",
        "webhook.failurePolicy=Maybe",
        "webhook.podDisruptionBudget.enabled=sometimes",
        "webhook.certManager.issuerRef.kind=ClusterIssuer",  # an issuerRef needs a name
        "webhook.unknown=1",
    ],
)
def test_schema_refuses_bad_webhook_values(bad: str) -> None:
    with pytest.raises(AssertionError, match="schema"):
        render(sets=(bad,))


# -- the operator Pod and the Service -----------------------------------------------------


def test_operator_serves_the_webhook_on_its_named_port_with_self_managed_certificates() -> None:
    docs = render()
    operator = container(docs)
    assert webhook_args(docs) == [
        "--webhook-port=9443",
        f"--webhook-configuration={FULLNAME}",
        f"--webhook-service={RELEASE_NS}/{WEBHOOK}",
        f"--webhook-secret={RELEASE_NS}/{SECRET}",
        "--webhook-cert-days=365",
    ]
    ports = {p["name"]: p["containerPort"] for p in operator["ports"]}
    assert ports == {"healthz": 8081, "metrics": 8082, "webhook": 9443}
    assert operator["readinessProbe"]["httpGet"] == {
        "scheme": "HTTPS",
        "path": "/healthz",
        "port": "webhook",
    }
    assert [v["name"] for v in pod_spec(docs)["volumes"]] == ["tmp"]
    assert [m["name"] for m in operator["volumeMounts"]] == ["tmp"]


def test_webhook_service_targets_the_webhook_port_of_the_operator_pods() -> None:
    docs = render()
    service = one(docs, "Service", WEBHOOK)
    assert service["metadata"]["namespace"] == RELEASE_NS
    assert service["spec"]["ports"] == [
        {"name": "webhook", "port": 443, "targetPort": "webhook", "protocol": "TCP"}
    ]
    workload = one(docs, "Deployment")
    assert service["spec"]["selector"] == workload["spec"]["selector"]["matchLabels"]
    assert "webhook" in {p["name"] for p in container(docs)["ports"]}


# -- certificates: the operator's own, or cert-manager's ----------------------------------


def test_self_managed_certificates_get_their_rbac_and_no_cert_manager_objects() -> None:
    docs = render()
    cluster_role = one(docs, "ClusterRole")
    assert WEBHOOK_RULE in rules(cluster_role)
    role = one(docs, "Role", WEBHOOK)
    assert role["metadata"]["namespace"] == RELEASE_NS
    assert rules(role) == [
        ("", "secrets", ("create",), ()),
        ("", "secrets", ("get", "update"), (SECRET,)),
    ]
    binding = one(docs, "RoleBinding", WEBHOOK)
    assert binding["roleRef"]["name"] == WEBHOOK
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": FULLNAME, "namespace": RELEASE_NS}
    ]
    assert [d for d in docs if d["apiVersion"].startswith("cert-manager.io/")] == []


def test_cert_manager_mounts_its_secret_and_injects_the_ca() -> None:
    docs = render("certmanager-values.yaml")
    operator = container(docs)
    assert webhook_args(docs) == [
        "--webhook-port=9443",
        f"--webhook-configuration={FULLNAME}",
        f"--webhook-service={RELEASE_NS}/{WEBHOOK}",
        f"--webhook-cert-dir={CERT_DIR}",
    ]
    [volume] = [v for v in pod_spec(docs)["volumes"] if v["name"] == "webhook-tls"]
    assert volume["secret"]["secretName"] == SECRET
    [mount] = [m for m in operator["volumeMounts"] if m["name"] == "webhook-tls"]
    assert mount == {"name": "webhook-tls", "mountPath": CERT_DIR, "readOnly": True}
    configuration = one(docs, "MutatingWebhookConfiguration")
    assert configuration["metadata"]["annotations"] == {
        "cert-manager.io/inject-ca-from": f"{RELEASE_NS}/{WEBHOOK}"
    }
    assert "caBundle" not in configuration["webhooks"][0]["clientConfig"]
    # The operator patches neither the configuration nor a Secret: no rights for it.
    assert WEBHOOK_RULE not in rules(one(docs, "ClusterRole"))
    assert not any(r[0] == "admissionregistration.k8s.io" for r in rules(one(docs, "ClusterRole")))
    assert kinds(docs, "Role") == []
    assert kinds(docs, "RoleBinding") == []


def test_cert_manager_without_an_issuer_gets_the_self_signed_ca_chain() -> None:
    docs = render("certmanager-values.yaml")
    self_signed = one(docs, "Issuer", f"{WEBHOOK}-selfsigned")
    assert self_signed["spec"] == {"selfSigned": {}}
    ca = one(docs, "Certificate", f"{WEBHOOK}-ca")
    assert ca["spec"]["isCA"] is True
    assert ca["spec"]["issuerRef"] == {
        "name": f"{WEBHOOK}-selfsigned",
        "kind": "Issuer",
        "group": "cert-manager.io",
    }
    ca_issuer = one(docs, "Issuer", f"{WEBHOOK}-ca")
    assert ca_issuer["spec"] == {"ca": {"secretName": ca["spec"]["secretName"]}}
    serving = one(docs, "Certificate", WEBHOOK)
    assert serving["metadata"]["namespace"] == RELEASE_NS
    assert serving["spec"]["secretName"] == SECRET
    assert serving["spec"]["dnsNames"] == [
        f"{WEBHOOK}.{RELEASE_NS}.svc",
        f"{WEBHOOK}.{RELEASE_NS}.svc.cluster.local",
    ]
    assert serving["spec"]["issuerRef"] == {
        "name": f"{WEBHOOK}-ca",
        "kind": "Issuer",
        "group": "cert-manager.io",
    }
    for doc in (self_signed, ca, ca_issuer, serving):
        assert doc["apiVersion"] == "cert-manager.io/v1"


def test_cert_manager_with_an_issuer_uses_it_alone() -> None:
    docs = render(
        "certmanager-values.yaml",
        sets=("webhook.certManager.issuerRef.name=corp-ca",
              "webhook.certManager.issuerRef.kind=ClusterIssuer"),
    )  # fmt: skip
    assert kinds(docs, "Issuer") == []
    [serving] = kinds(docs, "Certificate")
    assert serving["metadata"]["name"] == WEBHOOK
    assert serving["spec"]["issuerRef"] == {
        "name": "corp-ca",
        "kind": "ClusterIssuer",
        "group": "cert-manager.io",
    }


# -- everything off, and the disruption budget --------------------------------------------


def test_webhook_disabled_removes_all_of_it() -> None:
    docs = render("ha-values.yaml", sets=("webhook.enabled=false",))
    assert kinds(docs, "MutatingWebhookConfiguration") == []
    assert kinds(docs, "PodDisruptionBudget") == []
    assert kinds(docs, "Role") == []
    assert kinds(docs, "RoleBinding") == []
    assert [s["metadata"]["name"] for s in kinds(docs, "Service")] == [FULLNAME]
    assert webhook_args(docs) == []
    operator = container(docs)
    assert "webhook" not in {p["name"] for p in operator["ports"]}
    assert "readinessProbe" not in operator
    cluster_role = one(docs, "ClusterRole")
    assert not any(r[0] == "admissionregistration.k8s.io" for r in rules(cluster_role))
    # Also when cert-manager is asked for: the switch above it wins.
    off = render("certmanager-values.yaml", sets=("webhook.enabled=false",))
    assert [d for d in off if d["apiVersion"].startswith("cert-manager.io/")] == []
    assert [v["name"] for v in pod_spec(off)["volumes"]] == ["tmp"]


def test_disruption_budget_comes_with_more_than_one_pod() -> None:
    ha = render("ha-values.yaml")
    budget = one(ha, "PodDisruptionBudget")
    assert budget["apiVersion"] == "policy/v1"
    assert budget["metadata"] == budget["metadata"] | {"name": FULLNAME, "namespace": RELEASE_NS}
    assert budget["spec"]["minAvailable"] == 1
    assert budget["spec"]["selector"] == one(ha, "StatefulSet")["spec"]["selector"]
    assert kinds(render(), "PodDisruptionBudget") == []  # one Pod: it would block every drain


@pytest.mark.parametrize(
    ("values", "sets", "expected"),
    [
        ("default-values.yaml", ("webhook.podDisruptionBudget.enabled=true",), 1),
        ("ha-values.yaml", ("webhook.podDisruptionBudget.enabled=false",), 0),
        ("ha-values.yaml", ("webhook.podDisruptionBudget.minAvailable=50%",), 1),
    ],
)
def test_disruption_budget_can_be_forced(values: str, sets: tuple[str, ...], expected: int) -> None:
    budgets = kinds(render(values, sets=sets), "PodDisruptionBudget")
    assert len(budgets) == expected
    if "minAvailable=50%" in sets[0]:
        assert budgets[0]["spec"]["minAvailable"] == "50%"


# -- monitoring of injected Pods ----------------------------------------------------------


def _prometheus_label(kubernetes_label: str) -> str:
    """How Prometheus' Kubernetes discovery spells a Pod label (invalid characters to _)."""
    return "__meta_kubernetes_pod_label_" + re.sub(r"[^a-zA-Z0-9_]", "_", kubernetes_label)


def test_pod_monitor_scrapes_the_injected_proxies_as_the_service_monitor_labels_them() -> None:
    docs = render("monitoring-values.yaml")
    monitor = one(docs, "PodMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["name"] == f"{FULLNAME}-injected"
    assert monitor["metadata"]["namespace"] == RELEASE_NS
    assert monitor["metadata"]["labels"]["release"] == "prometheus"
    # Injected Pods only: the operator's own carry SERVER_LABEL too, and their Services'
    # ServiceMonitor scrapes them already.
    assert monitor["spec"]["selector"] == {
        "matchExpressions": [
            {"key": SERVER_LABEL, "operator": "Exists"},
            {"key": INJECT_LABEL, "operator": "Exists"},
        ]
    }
    assert monitor["spec"]["namespaceSelector"] == {"any": True}
    [endpoint] = monitor["spec"]["podMetricsEndpoints"]
    assert endpoint["port"] == PROXY_METRICS_PORT
    assert endpoint["path"] == "/metrics"
    assert endpoint["interval"] == "30s"
    assert endpoint["relabelings"] == [
        {
            "sourceLabels": [_prometheus_label(SERVER_LABEL)],
            "targetLabel": "service",
            "action": "replace",
        }
    ]
    assert kinds(render(), "PodMonitor") == []  # off by default


def test_the_dashboard_and_the_alerts_read_the_asgiserver_from_the_service_label() -> None:
    """What the PodMonitor's relabeling is for."""
    dashboard = json.loads((ROOT / "dashboards" / "asgi-server.json").read_text())
    [variable] = [v for v in dashboard["templating"]["list"] if v["name"] == "asgiserver"]
    assert variable["definition"].replace(" ", "").endswith(",service)")
    alerts = yaml.safe_load((ROOT / "alerts" / "asgi-server.rules.yaml").read_text())
    sidecar_rules = [r for g in alerts["groups"] for r in g["rules"]
                     if "asgi_operator_" not in r["expr"]]  # fmt: skip
    assert sidecar_rules
    for rule in sidecar_rules:
        assert re.search(r"by \([^)]*\bservice\b", rule["expr"]), rule["alert"]


def test_pod_monitor_follows_the_watched_namespaces() -> None:
    docs = render("namespaces-values.yaml", sets=("monitoring.podMonitor.enabled=true",))
    monitor = one(docs, "PodMonitor")
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": ["team-a", "team-b"]}


def test_pod_monitor_needs_the_webhook() -> None:
    with pytest.raises(AssertionError, match=r"podMonitor\.enabled needs webhook\.enabled"):
        render(sets=("monitoring.podMonitor.enabled=true", "webhook.enabled=false"))
    with pytest.raises(AssertionError, match="schema"):
        render(sets=("monitoring.podMonitor.interval=soon",))


# -- names, RBAC in watched namespaces, lint ----------------------------------------------


def test_long_release_names_keep_webhook_names_within_63() -> None:
    release = "a-very-long-release-name-that-goes-on-and-on-for-a-wh"  # helm's limit, 53
    args = ["template", release, str(CHART), "-n", RELEASE_NS, "--kube-version", KUBE_VERSION,
            "-f", str(CHART / "ci" / "certmanager-values.yaml"),
            "-f", str(CHART / "ci" / "ha-values.yaml")]  # fmt: skip
    docs = [d for d in yaml.safe_load_all(helm(*args)) if d]
    for doc in docs:
        assert len(doc["metadata"]["name"]) <= 63, doc["metadata"]["name"]
        assert not doc["metadata"]["name"].endswith("-")
    service = [s for s in kinds(docs, "Service") if s["metadata"]["name"].endswith("-webhook")]
    [serving] = [c for c in kinds(docs, "Certificate") if not c["spec"].get("isCA")]
    assert serving["spec"]["dnsNames"][0] == f"{service[0]['metadata']['name']}.{RELEASE_NS}.svc"
    [webhook] = one(docs, "MutatingWebhookConfiguration")["webhooks"]
    assert webhook["clientConfig"]["service"]["name"] == service[0]["metadata"]["name"]


def test_namespaced_rules_let_the_operator_read_attached_workloads() -> None:
    cluster_wide = one(render(), "ClusterRole")
    for role in (cluster_wide, *kinds(render("namespaces-values.yaml"), "Role")):
        if role["metadata"]["name"] != FULLNAME:
            continue  # the webhook's own Role (Secrets)
        granted = rules(role)
        assert ("apps", "statefulsets", ("get",), ()) in granted
        assert ("apps", "deployments", ("get", "list", "watch", "create", "patch"), ()) in granted
        assert ("asgi.dev", "asgiservers", ("get", "list", "watch", "patch"), ()) in granted
        assert any(r[:2] == ("", "services") and "list" in r[2] for r in granted)
        assert ("", "events", ("create",), ()) in granted


def test_watched_namespaces_keep_the_webhooks_role_apart() -> None:
    """The webhook's Role has a name of its own: the release namespace may be a watched one."""
    docs = render(sets=(f"watchNamespaces={{{RELEASE_NS},team-a}}",))
    names = sorted((r["metadata"]["namespace"], r["metadata"]["name"]) for r in kinds(docs, "Role"))
    assert names == [(RELEASE_NS, FULLNAME), (RELEASE_NS, WEBHOOK), ("team-a", FULLNAME)]
    # The cluster-scoped webhook rule stays in the ClusterRole when namespaces are watched.
    assert WEBHOOK_RULE in rules(one(docs, "ClusterRole"))


@pytest.mark.parametrize("values", ["certmanager-values.yaml", "ha-values.yaml"])
def test_lint_strict(values: str) -> None:
    out = helm("lint", "--strict", str(CHART), "-f", str(CHART / "ci" / values))
    assert "0 chart(s) failed" in out


def test_notes_tell_how_to_opt_a_workload_in(tmp_path: Path) -> None:
    """`helm template` leaves NOTES.txt out, and `helm install --dry-run` needs a cluster, so
    a copy of the chart renders it into a ConfigMap of its own."""
    chart = tmp_path / "asgi-operator"
    shutil.copytree(CHART, chart)
    (chart / "templates" / "notes-probe.yaml").write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: notes}\n"
        'data: {notes: {{ include "asgi-operator/templates/NOTES.txt" . | toJson }}}\n'
    )

    def notes(*sets: str) -> str:
        args = ["template", "asgi", str(chart), "-n", RELEASE_NS, "--kube-version", KUBE_VERSION,
                "--show-only", "templates/notes-probe.yaml"]  # fmt: skip
        for item in sets:
            args += ["--set", item]
        return str(yaml.safe_load(helm(*args))["data"]["notes"])

    text = notes()
    assert "asgi.dev/inject=<AsgiServer name>" in text
    assert "spec.targetRef" in text
    assert f"Pods in {RELEASE_NS} are never sent to the webhook" in text
    watched = notes(f"watchNamespaces={{team-b,{RELEASE_NS},team-a}}")
    assert "only Pods in team-a, team-b are sent to the webhook" in watched
    assert "asgi.dev/inject" not in notes("webhook.enabled=false")
