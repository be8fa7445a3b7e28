"""One reconcile of one AsgiServer: build, apply, observe, report.

Called for every kopf handler (create, update, resume, child and Pod events)
and by the resync and autotune loops, so all paths converge on the same result.
The autotuner's values come in directly (``TunedReport``) and go out in the same
``AsgiServerStatus`` as reconcile's own conditions: one status, one writer.
Invalid input that the schema could not catch becomes a condition, never a
traceback.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from asgi_operator.attaching import fleet_somaxconn, injected_verdict, live_pods
from asgi_operator.building import (
    CONFIG_HASH_ANNOTATION,
    BuildOptions,
    Owner,
    build_children,
    build_config_map,
    config_hash,
    current_somaxconn,
    pods_to_nudge,
    selector,
    somaxconn_for,
    tuned_spec,
)
from asgi_operator.injecting import INJECT_LABEL, is_injected
from asgi_operator.kube import Kube, timestamp
from asgi_operator.models import AsgiServerSpec
from asgi_operator.podtemplates import TemplateConflictError
from asgi_operator.statusing import (
    Observed,
    Tuned,
    build_status,
    invalid_status,
    new_problems,
)
from asgi_operator.statusmodels import AsgiServerStatus

log = logging.getLogger("asgi_operator")

OPTIONAL_KIND = "PodDisruptionBudget"
_ABSENT: dict[str, Any] = {"absent": True}

# What the autotuner says about an AsgiServer (None: it is not tuned).
TunedReport = Callable[[dict[str, Any], AsgiServerSpec], Tuned | None]


@dataclass(frozen=True)
class Outcome:
    status: AsgiServerStatus
    # (reason, message) of a condition that just turned bad: worth an Event.
    warnings: list[tuple[str, str]]
    # Children whose apply changed them on the server, as "Kind name".
    changed: list[str] = field(default_factory=list)
    # With targetRef: the workload's Pods that run without the proxy.
    without_proxy: int | None = None


def _invalid(body: dict[str, Any], previous: AsgiServerStatus, problems: str) -> Outcome:
    """A spec refused before anything was applied: the children stay as they were."""
    generation = int(body["metadata"].get("generation", 0))
    status = invalid_status(problems, previous.conditions, generation, timestamp())
    return Outcome(status, new_problems(previous.conditions, status.conditions))


def _problems(exc: ValidationError) -> str:
    return "; ".join(f"spec.{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())


def _replicas(deployment: dict[str, Any] | None) -> int | None:
    if not deployment:
        return None
    value = deployment.get("spec", {}).get("replicas")
    return int(value) if value is not None else None


def _changed(before: dict[str, Any], after: dict[str, Any]) -> bool:
    """Whether an apply changed the object: a new spec or data."""
    if after.get("kind") in ("Deployment", "PodDisruptionBudget"):  # their status moves
        return bool(before["metadata"].get("generation") != after["metadata"].get("generation"))
    return bool(
        before["metadata"].get("resourceVersion") != after["metadata"].get("resourceVersion")
    )


def reconcile(
    kube: Kube,
    body: dict[str, Any],
    options: BuildOptions,
    tuned: TunedReport | None = None,
    applied: dict[str, dict[str, Any]] | None = None,
    previous: AsgiServerStatus | None = None,
) -> Outcome:
    """One pass; ``applied`` (kept by the caller) remembers the children last applied.

    ``previous`` is the status last written, if the caller knows it (it is newer than
    the body's when the watch lags behind); otherwise the body's.
    """
    meta = body["metadata"]
    name, namespace = meta["name"], meta["namespace"]
    if previous is None:
        previous = AsgiServerStatus.read(body.get("status"))
    try:
        spec = AsgiServerSpec.model_validate(body.get("spec") or {})
        report = tuned(body, spec) if tuned is not None else None
        if report is not None:
            spec = tuned_spec(spec, report.tuning.current)
    except ValidationError as exc:
        return _invalid(body, previous, _problems(exc))
    owner = Owner(name=name, namespace=namespace, uid=meta["uid"])
    if spec.target_ref is not None:
        return _reconcile_attached(kube, body, owner, spec, previous, report, memory_of(applied))
    live = kube.get_deployment(namespace, name)
    options = BuildOptions(
        sidecar_image=options.sidecar_image,
        native_sidecars=options.native_sidecars,
        current_somaxconn=current_somaxconn(live),
        current_replicas=_replicas(live),
    )
    try:
        children = build_children(owner, spec, options)
    except TemplateConflictError as exc:
        return _invalid(body, previous, str(exc))
    deployment: dict[str, Any] | None = None
    changed: list[str] = []
    memory = memory_of(applied)
    _remove_unwanted(kube, owner, children, memory, changed)
    for manifest in children:
        result = kube.apply(manifest)
        what = f"{manifest['kind']} {manifest['metadata']['name']}"
        key = f"{namespace}/{what}"
        before = live if manifest["kind"] == "Deployment" else memory.get(key)
        created = before is _ABSENT  # an optional child that was deleted, back again
        if live is None or created or (before is not None and _changed(before, result)):
            changed.append(what)
        memory[key] = {"kind": result.get("kind"), "metadata": result.get("metadata", {})}
        if manifest["kind"] == "Deployment":
            deployment = result
    pods = kube.list_pods(namespace, selector(owner))
    config = next(c for c in children if c["kind"] == "ConfigMap")
    _nudge(kube, namespace, pods, config_hash(config))
    observed = Observed(
        generation=int(meta.get("generation", 0)),
        deployment=deployment,
        pods=pods,
        namespace_labels=kube.namespace_labels(namespace),
        previous=previous.conditions,
    )
    status = build_status(
        spec, observed, current_somaxconn(deployment), timestamp(), report, selector(owner)
    )
    return Outcome(status, new_problems(observed.previous, status.conditions), changed)


def memory_of(applied: dict[str, dict[str, Any]] | None) -> dict[str, dict[str, Any]]:
    return applied if applied is not None else {}


def _apply_tracked(
    kube: Kube, manifest: dict[str, Any], memory: dict[str, dict[str, Any]], changed: list[str]
) -> dict[str, Any]:
    result = kube.apply(manifest)
    what = f"{manifest['kind']} {manifest['metadata']['name']}"
    key = f"{manifest['metadata']['namespace']}/{what}"
    before = memory.get(key)
    if before is None or _changed(before, result):
        changed.append(what)
    memory[key] = {"kind": result.get("kind"), "metadata": result.get("metadata", {})}
    return result


def _reconcile_attached(
    kube: Kube,
    body: dict[str, Any],
    owner: Owner,
    spec: AsgiServerSpec,
    previous: AsgiServerStatus,
    report: Tuned | None,
    memory: dict[str, dict[str, Any]],
) -> Outcome:
    """An AsgiServer with targetRef: only the sidecar's ConfigMap is the operator's; the
    Pods are the user's workload's, and the webhook injects the proxy into them."""
    ref = spec.target_ref
    assert ref is not None
    namespace = owner.namespace
    changed: list[str] = []
    config = build_config_map(owner, spec)
    _apply_tracked(kube, config, memory, changed)
    target = kube.get_workload(namespace, ref.kind.value, ref.name)
    pods = kube.list_pods(namespace, f"{INJECT_LABEL}={owner.name}")
    injected = [p for p in pods if is_injected(p)]
    _nudge(kube, namespace, injected, config_hash(config))
    somaxconn = fleet_somaxconn(pods)
    observed = Observed(
        generation=int(body["metadata"].get("generation", 0)),
        deployment=target,
        pods=injected,
        namespace_labels=kube.namespace_labels(namespace),
        previous=previous.conditions,
    )
    wanted = somaxconn_for(spec, None)  # what the webhook gives new Pods
    services = kube.list_services(namespace)
    verdict = injected_verdict(spec, owner.name, namespace, target, pods, services, wanted)
    status = build_status(
        spec, observed, somaxconn, timestamp(), report, selector(owner), {"Injected": verdict}
    )
    without = len([p for p in live_pods(pods) if not is_injected(p)])
    return Outcome(status, new_problems(observed.previous, status.conditions), changed, without)


def _nudge(kube: Kube, namespace: str, pods: list[dict[str, Any]], digest: str) -> None:
    """Make the kubelets refresh the sidecar's ConfigMap now, not on their next sync."""
    for name in pods_to_nudge(pods, digest):
        kube.annotate_pod(namespace, name, CONFIG_HASH_ANNOTATION, digest)


def _remove_unwanted(
    kube: Kube,
    owner: Owner,
    children: list[dict[str, Any]],
    memory: dict[str, dict[str, Any]],
    changed: list[str],
) -> None:
    """Delete an optional child (the PodDisruptionBudget) that is no longer built.

    ``memory`` remembers that it is gone, so the DELETE is sent once per operator run.
    """
    what = f"{OPTIONAL_KIND} {owner.name}"
    key = f"{owner.namespace}/{what}"
    if any(c["kind"] == OPTIONAL_KIND for c in children) or memory.get(key) == _ABSENT:
        return
    if kube.delete_disruption_budget(owner.namespace, owner.name):
        changed.append(what + " (deleted)")
    memory[key] = _ABSENT


def status_changed(old: dict[str, Any] | None, new: AsgiServerStatus) -> bool:
    """Whether the stored status says something else than ``new`` (unset fields unsent)."""
    stored = AsgiServerStatus.read(old).model_dump(by_alias=True, exclude_none=True)
    return stored != new.model_dump(by_alias=True, exclude_none=True)
