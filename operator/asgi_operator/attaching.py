"""Pure: what the status says about an attached workload (``spec.targetRef``).

The ``Injected`` condition: whether the target opts in, whether every Pod of it runs
the proxy (Pods created before the AsgiServer, or while the webhook refused them, do
not), whether they run with the sysctls the spec now wants (those need new Pods), and
whether the user's Services send traffic through the proxy.  Every message that asks
for a change gives the command that makes it.
"""

from __future__ import annotations

import json
from typing import Any

from asgi_operator.injecting import APP_PORT_NAME, INJECT_LABEL, is_injected
from asgi_operator.models import AsgiServerSpec, TargetRef
from asgi_operator.pods import pod_somaxconn
from asgi_operator.statusing import Verdict

Manifest = dict[str, Any]


def restart_command(ref: TargetRef, namespace: str) -> str:
    return f"kubectl rollout restart {ref.kind.value.lower()}/{ref.name} -n {namespace}"


def template_labels(target: Manifest | None) -> dict[str, str]:
    template = ((target or {}).get("spec") or {}).get("template") or {}
    labels: dict[str, str] = (template.get("metadata") or {}).get("labels") or {}
    return labels


def live_pods(pods: list[Manifest]) -> list[Manifest]:
    return [p for p in pods if not (p.get("metadata") or {}).get("deletionTimestamp")]


def fleet_somaxconn(pods: list[Manifest]) -> int | None:
    """The lowest somaxconn among the injected Pods (None: none sets it)."""
    values = [pod_somaxconn(p) for p in live_pods(pods) if is_injected(p)]
    known = [v for v in values if v is not None]
    return min(known) if known else None


def _app_port_name(target: Manifest | None, spec: AsgiServerSpec) -> str | None:
    """The name the target's pod template gives the app's port (what the proxy takes)."""
    template = ((target or {}).get("spec") or {}).get("template") or {}
    for container in (template.get("spec") or {}).get("containers") or []:
        for port in container.get("ports") or []:
            if port.get("containerPort") == spec.app_port and port.get("name"):
                return str(port["name"])
    return None


def _selects(service: Manifest, labels: dict[str, str]) -> bool:
    selector = (service.get("spec") or {}).get("selector") or {}
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def bypassing_services(
    services: list[Manifest], target: Manifest | None, spec: AsgiServerSpec
) -> list[str]:
    """What to change in each Service that reaches the app's port around the proxy."""
    labels = template_labels(target)
    named = _app_port_name(target, spec)
    problems = []
    for service in services:
        if not _selects(service, labels):
            continue
        name = service["metadata"]["name"]
        for port in (service.get("spec") or {}).get("ports") or []:
            target_port = port.get("targetPort", port.get("port"))
            if target_port in (spec.app_port, APP_PORT_NAME):
                fix = (
                    f"set its targetPort to {named!r}"
                    if named
                    else f"name the app's container port {spec.app_port} (say 'http') and set"
                    " the Service's targetPort to that name"
                )
                problems.append(
                    f"Service {name} port {port.get('port')} targets the app's port"
                    f" {target_port!r} directly, around the proxy: {fix}"
                )
    return problems


def injected_verdict(
    spec: AsgiServerSpec,
    name: str,
    namespace: str,
    target: Manifest | None,
    pods: list[Manifest],
    services: list[Manifest],
    wanted_somaxconn: int | None,
) -> Verdict:
    """The ``Injected`` condition of an AsgiServer with ``spec.targetRef``."""
    ref = spec.target_ref
    assert ref is not None
    what = f"{ref.kind.value} {ref.name}"
    restart = restart_command(ref, namespace)
    if target is None:
        return Verdict("False", "TargetNotFound", f"no {what} in namespace {namespace}")
    if template_labels(target).get(INJECT_LABEL) != name:
        labels = json.dumps({"spec": {"template": {"metadata": {"labels": {INJECT_LABEL: name}}}}})
        return Verdict(
            "False",
            "NotOptedIn",
            f"the pod template of {what} lacks the label {INJECT_LABEL}={name}; add it in its"
            f" manifest (or: kubectl patch {ref.kind.value.lower()} {ref.name} -n {namespace}"
            f" -p '{labels}')",
        )
    running = live_pods(pods)
    without = [p for p in running if not is_injected(p)]
    if without:
        return Verdict(
            "False",
            "PodsWithoutProxy",
            f"{len(without)} of {len(running)} Pods of {what} run without the proxy (created"
            f" before the AsgiServer or the webhook existed, or refused injection); restart them:"
            f" {restart}",
        )
    stale = [
        p
        for p in running
        if wanted_somaxconn is not None and (pod_somaxconn(p) or 0) < wanted_somaxconn
    ]
    if stale:
        return Verdict(
            "False",
            "RestartNeeded",
            f"{len(stale)} Pods run with a lower net.core.somaxconn than the {wanted_somaxconn}"
            f" the backlog now needs, and sysctls change only in new Pods: {restart}",
        )
    problems = bypassing_services(services, target, spec)
    if problems:
        return Verdict("False", "ServiceBypassesProxy", "; ".join(problems))
    if not running:
        return Verdict("Unknown", "NoPods", f"{what} has no Pods yet")
    return Verdict("True", "Injected", f"all {len(running)} Pods of {what} run the proxy")
