"""The Injected condition of an attached workload: pure, from manifests as the API shows them."""

from __future__ import annotations

from typing import Any

from asgi_operator.attaching import bypassing_services, fleet_somaxconn, injected_verdict
from asgi_operator.injecting import INJECT_LABEL, INJECTED_ANNOTATION
from asgi_operator.models import AsgiServerSpec

SPEC = AsgiServerSpec.model_validate({"targetRef": {"kind": "Deployment", "name": "shop"}})


def deployment(labels: dict[str, str] | None = None, port_name: str | None = "http") -> Any:
    port: dict[str, Any] = {"containerPort": 8000}
    if port_name:
        port["name"] = port_name
    return {
        "metadata": {"name": "shop"},
        "spec": {
            "template": {
                "metadata": {"labels": labels if labels is not None else
                             {"app": "shop", INJECT_LABEL: "api"}},
                "spec": {"containers": [{"name": "web", "ports": [port]}]},
            }
        },
    }  # fmt: skip


def pod(injected: bool = True, somaxconn: int | None = 4096) -> dict[str, Any]:
    annotations = {INJECTED_ANNOTATION: "api"} if injected else {}
    spec: dict[str, Any] = {"containers": []}
    if somaxconn is not None:
        spec["securityContext"] = {
            "sysctls": [{"name": "net.core.somaxconn", "value": str(somaxconn)}]
        }
    return {"metadata": {"annotations": annotations}, "spec": spec}


def service(target_port: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": "shop"},
        "spec": {"selector": {"app": "shop"}, "ports": [{"port": 80, "targetPort": target_port}]},
    }


def verdict(target: Any = None, pods: Any = (), services: Any = (), wanted: int | None = 4096):
    return injected_verdict(
        SPEC, "api", "shop", deployment() if target is None else target,
        list(pods), list(services), wanted,
    )  # fmt: skip


def test_every_pod_with_the_proxy_and_a_named_service_port_is_injected() -> None:
    result = verdict(pods=[pod(), pod()], services=[service("http")])
    assert (result.status, result.reason) == ("True", "Injected")
    assert "all 2 Pods" in result.message


def test_a_missing_target_and_a_target_without_the_label_say_what_to_do() -> None:
    missing = injected_verdict(SPEC, "api", "shop", None, [], [], None)
    assert (missing.status, missing.reason) == ("False", "TargetNotFound")
    result = verdict(target=deployment(labels={"app": "shop"}))
    assert result.reason == "NotOptedIn"
    assert "kubectl patch deployment shop -n shop" in result.message
    assert '"asgi.dev/inject": "api"' in result.message


def test_pods_without_the_proxy_are_counted_with_the_restart_command() -> None:
    result = verdict(pods=[pod(), pod(injected=False), pod(injected=False)])
    assert (result.status, result.reason) == ("False", "PodsWithoutProxy")
    assert result.message.startswith("2 of 3 Pods of Deployment shop run without the proxy")
    assert "kubectl rollout restart deployment/shop -n shop" in result.message


def test_a_backlog_beyond_the_pods_somaxconn_needs_new_pods() -> None:
    result = verdict(pods=[pod(somaxconn=4096), pod(somaxconn=8192)], wanted=8192)
    assert (result.status, result.reason) == ("False", "RestartNeeded")
    assert result.message.startswith("1 Pods run with a lower net.core.somaxconn than the 8192")
    assert fleet_somaxconn([pod(somaxconn=4096), pod(somaxconn=8192), pod(False, 1)]) == 4096


def test_a_service_that_targets_the_app_port_by_number_is_named_with_the_fix() -> None:
    result = verdict(pods=[pod()], services=[service(8000)])
    assert (result.status, result.reason) == ("False", "ServiceBypassesProxy")
    assert "Service shop port 80 targets the app's port 8000" in result.message
    assert "set its targetPort to 'http'" in result.message
    unnamed = bypassing_services([service(8000)], deployment(port_name=None), SPEC)
    assert "name the app's container port 8000" in unnamed[0]


def test_services_of_other_pods_and_other_ports_are_not_ours() -> None:
    other = service(8000)
    other["spec"]["selector"] = {"app": "cart"}
    assert bypassing_services([other, service(9000), service("http")], deployment(), SPEC) == []


def test_no_pods_yet_is_unknown() -> None:
    assert verdict().reason == "NoPods"
    assert verdict().status == "Unknown"
