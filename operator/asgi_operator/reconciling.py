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

from asgi_operator.building import (
    SELECTOR_LABEL,
    BuildOptions,
    Owner,
    build_children,
    current_somaxconn,
    tuned_spec,
)
from asgi_operator.kube import Kube, timestamp
from asgi_operator.models import AsgiServerSpec, AsgiServerStatus
from asgi_operator.statusing import (
    Observed,
    Tuned,
    build_status,
    invalid_status,
    new_problems,
)

log = logging.getLogger("asgi_operator")

# What the autotuner says about an AsgiServer (None: it is not tuned).
TunedReport = Callable[[dict[str, Any], AsgiServerSpec], Tuned | None]


@dataclass(frozen=True)
class Outcome:
    status: AsgiServerStatus
    # (reason, message) of a condition that just turned bad: worth an Event.
    warnings: list[tuple[str, str]]
    # Children whose apply changed them on the server, as "Kind name".
    changed: list[str] = field(default_factory=list)


def _invalid(body: dict[str, Any], previous: AsgiServerStatus, exc: ValidationError) -> Outcome:
    generation = int(body["metadata"].get("generation", 0))
    problems = "; ".join(
        f"spec.{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
    )
    status = invalid_status(problems, previous.conditions, generation, timestamp())
    return Outcome(status, [])


def _changed(before: dict[str, Any], after: dict[str, Any]) -> bool:
    """Whether an apply changed the object: a new spec or data."""
    if after.get("kind") == "Deployment":  # its status changes all the time
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
        return _invalid(body, previous, exc)
    owner = Owner(name=name, namespace=namespace, uid=meta["uid"])
    live = kube.get_deployment(namespace, name)
    options = BuildOptions(
        sidecar_image=options.sidecar_image,
        native_sidecars=options.native_sidecars,
        current_somaxconn=current_somaxconn(live),
    )
    deployment: dict[str, Any] | None = None
    changed: list[str] = []
    memory = applied if applied is not None else {}
    for manifest in build_children(owner, spec, options):
        result = kube.apply(manifest)
        what = f"{manifest['kind']} {manifest['metadata']['name']}"
        key = f"{namespace}/{what}"
        before = live if manifest["kind"] == "Deployment" else memory.get(key)
        if live is None or (before is not None and _changed(before, result)):
            changed.append(what)
        memory[key] = {"kind": result.get("kind"), "metadata": result.get("metadata", {})}
        if manifest["kind"] == "Deployment":
            deployment = result
    observed = Observed(
        generation=int(meta.get("generation", 0)),
        deployment=deployment,
        pods=kube.list_pods(namespace, f"{SELECTOR_LABEL}={name}"),
        namespace_labels=kube.namespace_labels(namespace),
        previous=previous.conditions,
    )
    status = build_status(spec, observed, current_somaxconn(deployment), timestamp(), report)
    return Outcome(status, new_problems(observed.previous, status.conditions), changed)


def status_changed(old: dict[str, Any] | None, new: AsgiServerStatus) -> bool:
    """Whether the stored status says something else than ``new`` (unset fields unsent)."""
    stored = AsgiServerStatus.read(old).model_dump(by_alias=True, exclude_none=True)
    return stored != new.model_dump(by_alias=True, exclude_none=True)
