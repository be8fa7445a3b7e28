"""The proxy injected into a user's Pod: pure, from a Pod as an ordinary manifest makes it."""

from __future__ import annotations

import base64
import copy
import json
from typing import Any

import pytest

from asgi_operator.admission import answer, requested_server, webhook_configuration
from asgi_operator.injecting import (
    APP_PORT_NAME,
    INJECT_LABEL,
    INJECTED_ANNOTATION,
    InjectionError,
    inject,
    json_patch,
)
from asgi_operator.models import AsgiServerSpec
from asgi_operator.pods import CONFIG_VOLUME, PROXY_CONTAINER, PodOptions

TARGET = {"targetRef": {"kind": "Deployment", "name": "shop"}}
OPTIONS = PodOptions(sidecar_image="sidecar:1", native_sidecars=True, somaxconn=4096)


def spec(**fields: Any) -> AsgiServerSpec:
    return AsgiServerSpec.model_validate({**TARGET, **fields})


def user_pod(**app: Any) -> dict[str, Any]:
    """A Pod as a plain Deployment of a FastAPI app would make it."""
    container = {
        "name": "web",
        "image": "shop:1",
        "ports": [{"name": "http", "containerPort": 8000, "protocol": "TCP"}],
        "readinessProbe": {"httpGet": {"path": "/health", "port": "http"}},
        "livenessProbe": {"tcpSocket": {"port": 8000}},
        **app,
    }
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"generateName": "shop-7d9-", "labels": {"app": "shop", INJECT_LABEL: "api"}},
        "spec": {"containers": [container, {"name": "log-shipper", "image": "fluent:1"}]},
    }


def containers(pod: dict[str, Any]) -> dict[str, dict[str, Any]]:
    spec_ = pod["spec"]
    return {c["name"]: c for c in [*spec_.get("initContainers", []), *spec_["containers"]]}


def test_the_proxy_takes_the_apps_port_name_and_the_app_keeps_its_probes_working() -> None:
    result = inject(user_pod(), spec(), "api", "api-sidecar", OPTIONS)
    by_name = containers(result.pod)
    proxy, web = by_name[PROXY_CONTAINER], by_name["web"]
    assert result.app_container == "web"
    assert result.port_name == "http"
    assert {"name": "http", "containerPort": 8080, "protocol": "TCP"} in proxy["ports"]
    assert web["ports"] == [{"name": APP_PORT_NAME, "containerPort": 8000, "protocol": "TCP"}]
    assert web["readinessProbe"]["httpGet"]["port"] == APP_PORT_NAME
    assert web["livenessProbe"]["tcpSocket"]["port"] == 8000  # by number: unchanged
    # the proxy's own probes are on its metrics port, under a name no app uses
    assert proxy["readinessProbe"]["httpGet"]["port"] == "asgi-metrics"
    assert proxy["restartPolicy"] == "Always"
    assert proxy in result.pod["spec"]["initContainers"]
    assert by_name["log-shipper"] == user_pod()["spec"]["containers"][1]


def test_volume_sysctls_labels_and_drain_hook_are_added() -> None:
    pod = inject(user_pod(), spec(), "api", "api-sidecar", OPTIONS).pod
    assert {"name": CONFIG_VOLUME, "configMap": {"name": "api-sidecar"}} in pod["spec"]["volumes"]
    assert pod["spec"]["securityContext"]["sysctls"] == [
        {"name": "net.core.somaxconn", "value": "4096"}
    ]
    assert pod["metadata"]["labels"]["asgi.dev/server"] == "api"
    assert pod["metadata"]["labels"]["app"] == "shop"
    assert pod["metadata"]["annotations"][INJECTED_ANNOTATION] == "api"
    web = containers(pod)["web"]
    assert web["lifecycle"]["preStop"]["httpGet"]["port"] == 9090


def test_the_users_own_pre_stop_hook_and_sysctls_are_kept() -> None:
    pod = user_pod(lifecycle={"preStop": {"exec": {"command": ["sleep", "5"]}}})
    pod["spec"]["securityContext"] = {"sysctls": [{"name": "net.ipv4.ip_local_port_range",
                                                   "value": "1024 65000"}]}  # fmt: skip
    result = inject(pod, spec(), "api", "api-sidecar", OPTIONS).pod
    assert containers(result)["web"]["lifecycle"] == {
        "preStop": {"exec": {"command": ["sleep", "5"]}}
    }
    names = [s["name"] for s in result["spec"]["securityContext"]["sysctls"]]
    assert names == ["net.ipv4.ip_local_port_range", "net.core.somaxconn"]


def test_injecting_an_injected_pod_changes_nothing() -> None:
    once = inject(user_pod(), spec(), "api", "api-sidecar", OPTIONS)
    twice = inject(copy.deepcopy(once.pod), spec(), "api", "api-sidecar", OPTIONS)
    assert twice.pod == once.pod
    assert twice.port_name == "http"
    assert json_patch(once.pod, twice.pod) == []


@pytest.mark.parametrize("native", [True, False])
def test_init_container_mode_puts_the_sysctls_container_before_the_proxy(native: bool) -> None:
    options = PodOptions(sidecar_image="sidecar:1", native_sidecars=native, somaxconn=8192)
    pod = inject(user_pod(), spec(sysctls={"mode": "initContainer"}), "api", "cm", options).pod
    inits = [c["name"] for c in pod["spec"].get("initContainers", [])]
    assert inits == (["sysctls", PROXY_CONTAINER] if native else ["sysctls"])
    if not native:
        assert pod["spec"]["containers"][-1]["name"] == PROXY_CONTAINER
    assert "securityContext" not in pod["spec"]


def test_an_unnamed_app_port_leaves_the_proxy_a_name_of_its_own() -> None:
    pod = user_pod(ports=[{"containerPort": 8000}])
    pod["spec"]["containers"][0]["readinessProbe"] = {"httpGet": {"path": "/", "port": 8000}}
    result = inject(pod, spec(), "api", "cm", OPTIONS)
    assert result.port_name == "asgi-http"
    assert containers(result.pod)["web"]["ports"] == [{"containerPort": 8000}]


def test_the_app_is_the_container_declaring_the_app_port() -> None:
    pod = user_pod(ports=[{"name": "web", "containerPort": 3000}])
    pod["spec"]["containers"][1]["ports"] = [{"name": "api", "containerPort": 3000}]
    result = inject(pod, spec(appPort=3000), "api", "cm", OPTIONS)
    assert result.app_container == "web"  # the first that declares it
    assert result.port_name == "web"


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        (lambda p: p["spec"]["containers"].append({"name": "proxy", "image": "x"}), "named proxy"),
        (lambda p: p["spec"]["containers"][1].update(ports=[{"containerPort": 8080}]), "8080"),
        (lambda p: p["spec"]["containers"][1].update(ports=[{"containerPort": 9090}]), "9090"),
        (lambda p: p["spec"].update(volumes=[{"name": CONFIG_VOLUME, "emptyDir": {}}]), "volume"),
        (lambda p: p["spec"].update(hostNetwork=True), "hostNetwork"),
        (lambda p: p["spec"].update(containers=[]), "no containers"),
    ],
)
def test_a_pod_that_cannot_take_the_proxy_is_refused_with_the_reason(change, needle) -> None:
    pod = user_pod()
    change(pod)
    with pytest.raises(InjectionError, match=needle):
        inject(pod, spec(), "api", "cm", OPTIONS)


def review(pod: dict[str, Any], namespace: str = "shop") -> dict[str, Any]:
    return {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {"uid": "u-1", "operation": "CREATE", "namespace": namespace, "object": pod},
    }


def server(**spec_: Any) -> dict[str, Any]:
    return {"metadata": {"name": "api", "namespace": "shop", "uid": "abc"},
            "spec": {**TARGET, **spec_}}  # fmt: skip


def apply_patch(pod: dict[str, Any], response: dict[str, Any]) -> dict[str, Any]:
    """The JSON patch applied as the API server does it (only add/replace of members)."""
    out = copy.deepcopy(pod)
    for op in json.loads(base64.b64decode(response["patch"])):
        *parents, last = op["path"].strip("/").split("/")
        node = out
        for part in parents:
            node = node[part]
        assert op["op"] in ("add", "replace")
        node[last] = op["value"]
    return out


def test_an_answer_injects_with_the_tuned_values_and_the_uid() -> None:
    body = server()
    body["status"] = {"tuning": {"current": {"backlog": 8192}}}
    result = answer(review(user_pod()), body, "sidecar:1", True)
    response = result.review["response"]
    assert result.injected
    assert result.notice is None
    assert response["uid"] == "u-1"
    assert response["allowed"] is True
    assert response["patchType"] == "JSONPatch"
    pod = apply_patch(user_pod(), response)
    assert pod["spec"]["securityContext"]["sysctls"][0]["value"] == "8192"
    assert containers(pod)[PROXY_CONTAINER]["image"] == "sidecar:1"


def test_a_missing_asgiserver_admits_the_pod_unchanged_with_a_warning_and_a_notice() -> None:
    result = answer(review(user_pod()), None, "sidecar:1", True)
    response = result.review["response"]
    assert response["allowed"] is True
    assert "patch" not in response
    assert "no AsgiServer api in namespace shop" in response["warnings"][0]
    assert result.notice is not None
    assert result.notice.reason == "AsgiServerNotFound"


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ({"metadata": {"name": "api", "uid": "x"}, "spec": {"image": "app:1"}}, "NotAttachable"),
        ({"metadata": {"name": "api", "uid": "x"}, "spec": {**TARGET, "port": 0}}, "InvalidSpec"),
    ],
)
def test_an_asgiserver_that_cannot_attach_admits_the_pod_unchanged(body, reason) -> None:
    result = answer(review(user_pod()), body, "sidecar:1", True)
    assert result.review["response"]["allowed"] is True
    assert "patch" not in result.review["response"]
    assert result.notice is not None
    assert result.notice.reason == reason


def test_pods_without_the_label_are_not_asked_about() -> None:
    pod = user_pod()
    del pod["metadata"]["labels"][INJECT_LABEL]
    assert requested_server(review(pod)) is None
    response = answer(review(pod), None, "s", True).review["response"]
    assert response == {"uid": "u-1", "allowed": True}


def test_the_configuration_sends_only_opted_in_pods_outside_the_operators_namespace() -> None:
    config = webhook_configuration("asgi", "ops", service=("ops", "asgi-webhook"), ca_bundle=b"CA")
    (hook,) = config["webhooks"]
    assert hook["objectSelector"] == {
        "matchExpressions": [{"key": INJECT_LABEL, "operator": "Exists"}]
    }
    assert hook["namespaceSelector"]["matchExpressions"][0]["values"] == ["ops"]
    assert hook["failurePolicy"] == "Fail"
    assert hook["timeoutSeconds"] == 5
    assert hook["rules"][0]["operations"] == ["CREATE"]
    assert base64.b64decode(hook["clientConfig"]["caBundle"]) == b"CA"
    assert hook["clientConfig"]["service"]["path"] == "/mutate-pods"
    with pytest.raises(ValueError, match="service or a url"):
        webhook_configuration("asgi", "ops")


def test_an_operator_watching_some_namespaces_is_sent_only_their_pods() -> None:
    config = webhook_configuration("asgi", "ops", url="https://127.0.0.1:1/x",
                                   watched=["team-b", "ops", "team-a"])  # fmt: skip
    scope = config["webhooks"][0]["namespaceSelector"]["matchExpressions"]
    assert scope == [
        {"key": "kubernetes.io/metadata.name", "operator": "In", "values": ["team-a", "team-b"]}
    ]


def test_a_webhook_with_nothing_to_serve_is_refused() -> None:
    with pytest.raises(ValueError, match="serve no namespace"):
        webhook_configuration("asgi", "ops", url="https://127.0.0.1:1/x", watched=["ops"])
