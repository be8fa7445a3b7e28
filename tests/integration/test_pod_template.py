"""spec.podTemplate on a real control plane: Kubernetes' schema at admission, the merge in
the Deployment, and a template that changes an owned field refused with the field named."""

from __future__ import annotations

import json
from typing import Any

import pytest

from asgi_operator import podschema
from asgi_operator.pods import APP_CONTAINER, PROXY_CONTAINER
from tests.support.kube import apply, condition, eventually, get, server

pytestmark = pytest.mark.timeout(300)


def test_the_generated_schema_is_what_the_api_server_serves(cluster):
    served = json.loads(cluster.kubectl("get", "--raw", "/openapi/v3/api/v1").stdout)
    version = json.loads(cluster.kubectl("version", "-o", "json").stdout)["serverVersion"]
    generated = podschema.load()
    assert version["gitVersion"] == generated["kubernetesVersion"]
    assert podschema.convert(served, version["gitVersion"]) == generated


def test_kubectl_explain_reaches_into_the_pod_template(cluster):
    explained = cluster.kubectl("explain", "asgi.spec.podTemplate.spec.volumes").stdout
    assert "FIELD: volumes <[]Object>" in explained
    assert "configMap" in explained
    assert "secret" in explained


@pytest.mark.parametrize(
    ("pod_spec", "expected"),
    [
        (
            {"containers": [{"name": "app", "ports": [{"containerPort": "eighty"}]}]},
            "spec.podTemplate.spec.containers[0].ports[0].containerPort",
        ),
        (
            {"containers": [{"name": "app", "imagePullPolicy": 3}]},
            "spec.podTemplate.spec.containers[0].imagePullPolicy",
        ),
        (
            {"volumes": [{"name": "v", "secrett": {}}]},
            'unknown field "spec.podTemplate.spec.volumes[0].secrett"',
        ),
        ({"restartPolicy": ["Always"]}, "spec.podTemplate.spec.restartPolicy"),
    ],
    ids=["port-type", "enum-type", "unknown-field", "scalar-type"],
)
def test_an_invalid_pod_field_is_refused_at_admission_naming_it(
    cluster, namespace, pod_spec, expected
):
    body = server("bad", podTemplate={"spec": pod_spec})
    result = cluster.kubectl(
        "apply", "-n", namespace, "-f", "-", input=json.dumps(body), check=False
    )
    assert result.returncode != 0
    assert expected in result.stderr, result.stderr
    assert cluster.kubectl("get", "asgi", "bad", "-n", namespace, check=False).returncode != 0


def _containers(deployment: dict[str, Any]) -> dict[str, dict[str, Any]]:
    spec = deployment["spec"]["template"]["spec"]
    return {c["name"]: c for c in spec["containers"] + spec.get("initContainers", [])}


TEMPLATE = {
    "metadata": {"labels": {"team": "shop"}},
    "spec": {
        "serviceAccountName": "default",
        "volumes": [{"name": "db", "secret": {"secretName": "db"}}],
        "containers": [
            {
                "name": APP_CONTAINER,
                "args": ["--workers", "2"],
                "env": [{"name": "DB_FILE", "value": "/run/db/password"}],
                "volumeMounts": [{"name": "db", "mountPath": "/run/db"}],
                "readinessProbe": {"httpGet": {"path": "/ready", "port": 8000}},
            },
            {"name": PROXY_CONTAINER, "resources": {"limits": {"memory": "128Mi"}}},
        ],
    },
}


def test_the_template_is_merged_into_the_deployment(cluster, operator, namespace):
    apply(cluster, server("merged", replicas=1, podTemplate=TEMPLATE), namespace)
    deployment = eventually(lambda: get(cluster, "deployment", "merged", namespace), what="deploy")
    template = deployment["spec"]["template"]
    assert template["metadata"]["labels"]["team"] == "shop"
    assert template["metadata"]["labels"]["asgi.dev/server"] == "merged"
    containers = _containers(deployment)
    app, proxy = containers[APP_CONTAINER], containers[PROXY_CONTAINER]
    assert app["args"] == ["--workers", "2"]
    assert app["volumeMounts"] == [{"name": "db", "mountPath": "/run/db"}]
    assert app["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert proxy["resources"]["limits"] == {"memory": "128Mi"}
    assert proxy["resources"]["requests"] == {"cpu": "50m", "memory": "64Mi"}
    assert proxy["restartPolicy"] == "Always"  # still the native sidecar
    volumes = [v["name"] for v in template["spec"]["volumes"]]
    assert volumes == ["asgi-sidecar-config", "db"]


def test_a_conflicting_template_is_refused_with_the_field_and_nothing_changes(
    cluster, operator, namespace
):
    apply(cluster, server("owned", replicas=1), namespace)
    first = eventually(lambda: get(cluster, "deployment", "owned", namespace), what="deploy")
    eventually(
        lambda: condition(get(cluster, "asgiserver", "owned", namespace), "Ready"), what="status"
    )
    conflict = {"spec": {"containers": [{"name": PROXY_CONTAINER, "ports": [
        {"name": "http", "containerPort": 9999}]}]}}  # fmt: skip
    apply(cluster, server("owned", replicas=1, podTemplate=conflict), namespace)

    def refused() -> dict[str, Any]:
        degraded = condition(get(cluster, "asgiserver", "owned", namespace), "Degraded")
        return degraded if degraded.get("reason") == "InvalidSpec" else {}

    degraded = eventually(refused, what="Degraded InvalidSpec")
    assert degraded["status"] == "True"
    assert (
        "spec.podTemplate.spec.initContainers[proxy].ports: set by the operator"
        in (degraded["message"])
    )
    after = get(cluster, "deployment", "owned", namespace)
    assert after["metadata"]["generation"] == first["metadata"]["generation"]
    events = cluster.kubectl(
        "get", "events", "-n", namespace, "--field-selector", "reason=InvalidSpec", "-o", "json"
    ).stdout
    assert "set by the operator" in events
