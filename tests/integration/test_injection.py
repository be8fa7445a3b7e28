"""The admission webhook on a real control plane: Pods of a plain Deployment get the proxy.

The operator serves the webhook over TLS with certificates it made itself, and registers
it with the API server (``--webhook-manage-configuration``, as without the chart); the
Deployments, Services and Pods are ordinary manifests with nothing of this project in
them but the opt-in label.  kwok runs the Pods.
"""

from __future__ import annotations

import base64
import datetime
import json
import socket
import ssl
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from asgi_operator.admission import webhook_configuration
from asgi_operator.certificates import (
    Bundle,
    from_secret_data,
    serial,
    sign_serving,
    to_secret_data,
)
from asgi_operator.injecting import APP_PORT_NAME, INJECT_LABEL, INJECTED_ANNOTATION
from asgi_operator.pods import PROXY_CONTAINER
from hack.supervisor import free_port
from tests.support.kube import QUICK, apply, condition, eventually, get, running_operator

pytestmark = pytest.mark.timeout(300)


class Hook:
    """The operator with its webhook, and where to find it."""

    def __init__(
        self, namespace: str, configuration: str, port: int, metrics: int, operator: Any
    ) -> None:
        self.namespace, self.configuration, self.port = namespace, configuration, port
        self.metrics_port, self.operator = metrics, operator
        self.secret = "asgi-webhook-tls"

    def metric(self, metric: str, **labels: str) -> float | None:
        """A sample of the operator's /metrics, None if it is not there."""
        text = httpx.get(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5).text
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == metric and all(sample.labels.get(k) == v
                                               for k, v in labels.items()):  # fmt: skip
                    return float(sample.value)
        return None


@pytest.fixture(scope="module")
def hook(cluster, tmp_path_factory) -> Iterator[Hook]:
    suffix = uuid.uuid4().hex[:6]
    namespace, configuration, port = f"asgi-ops-{suffix}", f"asgi-inject-{suffix}", free_port()
    metrics = free_port()
    cluster.kubectl("create", "namespace", namespace)
    flags = [
        *QUICK, "--metrics-port", str(metrics),
        "--webhook-port", str(port), "--webhook-host", "127.0.0.1",
        "--webhook-url", f"https://127.0.0.1:{port}/mutate-pods",
        "--webhook-manage-configuration", "--webhook-configuration", configuration,
        "--webhook-secret", f"{namespace}/asgi-webhook-tls", "--webhook-cert-check-seconds", "1",
    ]  # fmt: skip
    log = tmp_path_factory.mktemp("operator") / "operator.log"
    try:
        with running_operator(cluster.kubeconfig, log, flags=flags) as op:
            running = Hook(namespace, configuration, port, metrics, op)
            eventually(lambda: _registered(cluster, configuration), 60, "webhook registered")
            yield running
    finally:
        cluster.kubectl("delete", "mutatingwebhookconfiguration", configuration, check=False)
        cluster.kubectl("delete", "namespace", namespace, "--wait=false", check=False)


def _registered(cluster, name: str) -> bool:
    found = cluster.kubectl("get", "mutatingwebhookconfiguration", name, "-o", "json", check=False)
    if found.returncode != 0:
        return False
    return bool(json.loads(found.stdout)["webhooks"][0]["clientConfig"].get("caBundle"))


def plain_app(name: str, inject: str | None, target_port: Any = "http") -> str:
    """A Deployment and Service as a team writes them; only the opt-in label is ours."""
    labels = {"app": name, **({INJECT_LABEL: inject} if inject else {})}
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "containers": [
                        {
                            "name": "web",
                            "image": "registry.example/shop:1",
                            "ports": [{"name": "http", "containerPort": 8000}],
                            "readinessProbe": {"httpGet": {"path": "/health", "port": "http"}},
                        }
                    ]
                },
            },
        },
    }
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name},
        "spec": {"selector": {"app": name}, "ports": [{"port": 80, "targetPort": target_port}]},
    }
    return yaml.safe_dump_all([deployment, service])


def attach(name: str, target: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "asgi.dev/v1alpha1",
        "kind": "AsgiServer",
        "metadata": {"name": name},
        "spec": {"targetRef": {"kind": "Deployment", "name": target}, **spec},
    }


def pods(cluster, namespace: str, selector: str) -> list[dict[str, Any]]:
    found = cluster.get_json("pods", "-n", namespace, "-l", selector)
    return [p for p in found["items"] if not p["metadata"].get("deletionTimestamp")]


def containers(pod: dict[str, Any]) -> dict[str, dict[str, Any]]:
    spec = pod["spec"]
    return {c["name"]: c for c in [*spec.get("initContainers", []), *spec["containers"]]}


def injected(pod: dict[str, Any]) -> bool:
    return INJECTED_ANNOTATION in (pod["metadata"].get("annotations") or {})


def test_pods_of_a_plain_deployment_get_the_proxy_and_the_deployment_is_untouched(
    cluster, hook, namespace
):
    apply(cluster, attach("api", "shop"), namespace)
    apply(cluster, plain_app("shop", inject="api"), namespace)
    found = eventually(lambda: [p for p in pods(cluster, namespace, "app=shop")
                                if injected(p)][:2] or None, 60, "injected Pods")  # fmt: skip
    pod = found[0]
    by_name = containers(pod)
    proxy, web = by_name[PROXY_CONTAINER], by_name["web"]
    assert proxy["restartPolicy"] == "Always"  # a native sidecar on this 1.33 control plane
    assert {"name": "http", "containerPort": 8080, "protocol": "TCP"} in proxy["ports"]
    assert web["ports"][0]["name"] == APP_PORT_NAME
    assert web["readinessProbe"]["httpGet"]["port"] == APP_PORT_NAME
    assert pod["metadata"]["labels"]["asgi.dev/server"] == "api"
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    assert volumes["asgi-sidecar-config"]["configMap"]["name"] == "api-sidecar"
    # the Pod may come first; the kubelet waits for the ConfigMap the reconcile applies
    config = eventually(lambda: get(cluster, "configmap", "api-sidecar", namespace), 30, "cm")
    assert '"upstream": "http://127.0.0.1:8000"' in config["data"]["sidecar.json"]
    deployment = get(cluster, "deployment", "shop", namespace)
    assert deployment["metadata"]["generation"] == 1
    managers = {m["manager"] for m in deployment["metadata"].get("managedFields", [])}
    assert "asgi-operator" not in managers
    template = deployment["spec"]["template"]["spec"]["containers"]
    assert [c["name"] for c in template] == ["web"]

    def injected_condition() -> dict[str, Any] | None:
        body = get(cluster, "asgiserver", "api", namespace)
        found = condition(body, "Injected")
        return body if found.get("status") == "True" else None

    body = eventually(injected_condition, 60, "Injected True")
    assert "all 2 Pods of Deployment shop run the proxy" in condition(body, "Injected")["message"]
    assert body["status"]["replicas"] == 2


def test_a_pod_without_the_label_is_not_touched(cluster, hook, namespace):
    apply(cluster, attach("api", "shop"), namespace)
    apply(cluster, plain_app("plain", inject=None), namespace)
    found = eventually(lambda: pods(cluster, namespace, "app=plain") or None, 60, "Pods")
    for pod in found:
        assert list(containers(pod)) == ["web"]
        assert not injected(pod)
        assert pod["spec"]["containers"][0]["ports"][0]["name"] == "http"


def test_an_injected_pod_created_again_is_the_same(cluster, hook, namespace):
    apply(cluster, attach("api", "shop"), namespace)
    apply(cluster, plain_app("shop", inject="api"), namespace)
    (first,) = eventually(lambda: [p for p in pods(cluster, namespace, "app=shop")
                                   if injected(p)][:1] or None, 60, "an injected Pod")  # fmt: skip
    again = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": "again",
            # without the Deployment's labels, or its ReplicaSet would adopt it and scale down
            "labels": {
                k: v
                for k, v in first["metadata"]["labels"].items()
                if k not in ("app", "pod-template-hash")
            },
            "annotations": first["metadata"]["annotations"],
        },
        "spec": {k: v for k, v in first["spec"].items() if k != "nodeName"},
    }
    apply(cluster, again, namespace)
    second = get(cluster, "pod", "again", namespace)
    for key in ("containers", "initContainers", "volumes", "securityContext"):
        assert second["spec"].get(key) == first["spec"].get(key), key


def test_a_pod_for_a_missing_asgiserver_is_admitted_unchanged_and_counted(cluster, hook, namespace):
    apply(cluster, plain_app("shop", inject="ghost"), namespace)
    found = eventually(lambda: pods(cluster, namespace, "app=shop")[:2] or None, 60, "Pods")
    assert not any(injected(p) for p in found)

    def event() -> dict[str, Any] | None:
        events = cluster.get_json("events", "-n", namespace)["items"]
        return next((e for e in events if e["reason"] == "AsgiServerNotFound"), None)

    seen = eventually(event, 30, "an AsgiServerNotFound Event")
    assert seen["involvedObject"]["kind"] == "ReplicaSet"
    assert "no AsgiServer ghost in namespace" in seen["message"]

    apply(cluster, attach("ghost", "shop"), namespace)

    def without() -> dict[str, Any] | None:
        found = condition(get(cluster, "asgiserver", "ghost", namespace), "Injected")
        return found if found.get("reason") == "PodsWithoutProxy" else None

    said = eventually(without, 60, "Injected PodsWithoutProxy")
    assert said["message"].startswith("2 of 2 Pods of Deployment shop run without the proxy")
    assert f"kubectl rollout restart deployment/shop -n {namespace}" in said["message"]
    without = "asgi_operator_pods_without_proxy"
    eventually(lambda: hook.metric(without, namespace=namespace, name="ghost") == 2, 30, without)
    assert (hook.metric("asgi_operator_admission_reviews_total", result="unchanged") or 0) >= 2
    cluster.kubectl("rollout", "restart", "deployment/shop", "-n", namespace)

    def all_injected() -> bool:
        running = pods(cluster, namespace, "app=shop")
        return len(running) == 2 and all(injected(p) for p in running)

    eventually(all_injected, 90, "the restarted Pods injected")

    def attached() -> bool:
        body = get(cluster, "asgiserver", "ghost", namespace)
        return condition(body, "Injected").get("status") == "True"

    eventually(attached, 60, "Injected True")
    eventually(lambda: hook.metric(without, namespace=namespace, name="ghost") == 0, 30, without)
    assert (hook.metric("asgi_operator_admission_reviews_total", result="injected") or 0) >= 2


def test_a_service_targeting_the_app_port_by_number_is_reported(cluster, hook, namespace):
    apply(cluster, attach("api", "shop"), namespace)
    apply(cluster, plain_app("shop", inject="api", target_port=8000), namespace)

    def bypass() -> dict[str, Any] | None:
        found = condition(get(cluster, "asgiserver", "api", namespace), "Injected")
        return found if found.get("reason") == "ServiceBypassesProxy" else None

    said = eventually(bypass, 60, "Injected ServiceBypassesProxy")
    assert "Service shop port 80 targets the app's port 8000" in said["message"]
    assert "set its targetPort to 'http'" in said["message"]


def test_only_opted_in_pods_wait_for_a_webhook_that_is_down(cluster, hook, namespace):
    """The configuration the operator registers, pointed at a port nobody serves."""
    name = f"asgi-down-{uuid.uuid4().hex[:6]}"
    down = webhook_configuration(name, hook.namespace, url="https://127.0.0.1:1/mutate-pods")
    down["webhooks"][0]["name"] = "down.asgi.dev"
    down["webhooks"][0]["timeoutSeconds"] = 2
    cluster.kubectl("apply", "-f", "-", input=json.dumps(down))
    try:
        labelled = _pod("labelled", {INJECT_LABEL: "api"})
        refused = cluster.kubectl("apply", "-n", namespace, "-f", "-",
                                  input=json.dumps(labelled), check=False)  # fmt: skip
        assert refused.returncode != 0
        assert "down.asgi.dev" in refused.stderr
        assert "failed calling webhook" in refused.stderr
        apply(cluster, _pod("unlabelled", {}), namespace)
        # the operator's own namespace is outside the webhooks' scope, labelled or not
        apply(cluster, _pod("own", {INJECT_LABEL: "api"}), hook.namespace)
        assert list(containers(get(cluster, "pod", "own", hook.namespace))) == ["web"]
    finally:
        cluster.kubectl("delete", "mutatingwebhookconfiguration", name, check=False)
        cluster.kubectl("delete", "pod", "own", "-n", hook.namespace, "--wait=false", check=False)


def _pod(name: str, labels: dict[str, str]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": labels},
        "spec": {"containers": [{"name": "web", "image": "registry.example/shop:1"}]},
    }


def served_serial(port: int, ca_bundle: bytes) -> int:
    """The serial of the certificate the webhook serves, verified against ``ca_bundle``."""
    context = ssl.create_default_context(cadata=ca_bundle.decode())
    context.check_hostname = False
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        context.wrap_socket(raw) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return serial(ssl.DER_cert_to_PEM_cert(der).encode())


def ca_bundle(cluster, configuration: str) -> bytes:
    found = cluster.get_json("mutatingwebhookconfiguration", configuration)
    return base64.b64decode(found["webhooks"][0]["clientConfig"]["caBundle"])


def secret_bundle(cluster, hook: Hook) -> Bundle:
    data = cluster.get_json("secret", hook.secret, "-n", hook.namespace)["data"]
    bundle = from_secret_data(data)
    assert bundle is not None
    return bundle


def test_a_certificate_near_expiry_is_renewed_and_admission_goes_on(cluster, hook, namespace):
    bundle = secret_bundle(cluster, hook)
    now = datetime.datetime.now(datetime.UTC)
    # the same CA, a leaf with a day left of 365: well inside the renewal window
    cert, key = sign_serving(bundle.ca_cert, bundle.ca_key, [], ["127.0.0.1"],
                             now - datetime.timedelta(days=364), 365)  # fmt: skip
    short = Bundle(bundle.ca_cert, bundle.ca_key, cert, key)
    patch = {"data": to_secret_data(short)}
    cluster.kubectl("patch", "secret", hook.secret, "-n", hook.namespace, "--type=merge",
                    "-p", json.dumps(patch))  # fmt: skip
    renewed = eventually(
        lambda: (b := secret_bundle(cluster, hook)).cert != cert and b, 30, "a renewed Secret"
    )
    assert renewed.ca_cert == bundle.ca_cert  # the CA stays: the caBundle did not change
    eventually(lambda: served_serial(hook.port, ca_bundle(cluster, hook.configuration))
               == serial(renewed.cert), 30, "the new certificate served")  # fmt: skip
    apply(cluster, attach("api", "shop"), namespace)
    apply(cluster, _pod("after", {INJECT_LABEL: "api"}), namespace)
    assert injected(get(cluster, "pod", "after", namespace))


def test_a_lost_secret_gives_a_new_ca_that_the_api_server_trusts(cluster, hook, namespace):
    old = secret_bundle(cluster, hook)
    cluster.kubectl("delete", "secret", hook.secret, "-n", hook.namespace)
    fresh = eventually(
        lambda: (b := _maybe_bundle(cluster, hook)) is not None and b.ca_cert != old.ca_cert and b,
        30,
        "a new Secret",
    )
    eventually(lambda: fresh.ca_cert in ca_bundle(cluster, hook.configuration), 30, "new CA")
    eventually(lambda: served_serial(hook.port, fresh.ca_cert) == serial(fresh.cert), 30,
               "the new certificate served")  # fmt: skip
    apply(cluster, attach("api", "shop"), namespace)
    apply(cluster, _pod("after", {INJECT_LABEL: "api"}), namespace)
    assert injected(get(cluster, "pod", "after", namespace))


def _maybe_bundle(cluster, hook: Hook) -> Bundle | None:
    found = cluster.kubectl("get", "secret", hook.secret, "-n", hook.namespace, "-o", "json",
                            check=False)  # fmt: skip
    if found.returncode != 0:
        return None
    return from_secret_data(json.loads(found.stdout).get("data"))
