"""One reconcile of one AsgiServer: build, apply, observe, report.

Called by every kopf handler (create, update, resume, the resync timer, child
and Pod events), so all paths converge on the same result.  Invalid input that
the schema could not catch becomes a condition, never a traceback.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
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
from asgi_operator.models import AsgiServerSpec
from asgi_operator.statusing import Observed, build_status

log = logging.getLogger("asgi_operator")


@dataclass(frozen=True)
class Outcome:
    status: dict[str, Any]
    # (reason, message) of a condition that just turned bad: worth an Event.
    warnings: list[tuple[str, str]]


def _invalid(body: dict[str, Any], exc: ValidationError) -> Outcome:
    generation = int(body["metadata"].get("generation", 0))
    problems = "; ".join(
        f"spec.{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
    )
    condition = {
        "type": "Degraded",
        "status": "True",
        "reason": "InvalidSpec",
        "message": problems,
        "lastTransitionTime": timestamp(),
        "observedGeneration": generation,
    }
    return Outcome({"observedGeneration": generation, "conditions": [condition]}, [])


def reconcile(kube: Kube, body: dict[str, Any], options: BuildOptions) -> Outcome:
    meta = body["metadata"]
    name, namespace = meta["name"], meta["namespace"]
    try:
        spec = AsgiServerSpec.model_validate(body.get("spec") or {})
        tuning = (body.get("status") or {}).get("tuning") or {}
        if spec.autotune.enabled:
            spec = tuned_spec(spec, tuning.get("current"))
    except ValidationError as exc:
        return _invalid(body, exc)
    owner = Owner(name=name, namespace=namespace, uid=meta["uid"])
    live = kube.get_deployment(namespace, name)
    options = BuildOptions(
        sidecar_image=options.sidecar_image,
        native_sidecars=options.native_sidecars,
        current_somaxconn=current_somaxconn(live),
    )
    deployment: dict[str, Any] | None = None
    for manifest in build_children(owner, spec, options):
        applied = kube.apply(manifest)
        if manifest["kind"] == "Deployment":
            deployment = applied
    observed = Observed(
        generation=int(meta.get("generation", 0)),
        deployment=deployment,
        pods=kube.list_pods(namespace, f"{SELECTOR_LABEL}={name}"),
        namespace_labels=kube.namespace_labels(namespace),
        previous=list((body.get("status") or {}).get("conditions") or []),
    )
    status = build_status(spec, observed, current_somaxconn(deployment), timestamp())
    return Outcome(status, _new_problems(observed.previous, status["conditions"]))


def _new_problems(
    previous: list[dict[str, Any]], current: list[dict[str, Any]]
) -> list[tuple[str, str]]:
    before = {(c.get("type"), c.get("status"), c.get("reason")) for c in previous}
    return [
        (c["reason"], c["message"])
        for c in current
        if c["type"] in ("SysctlsApplied", "Degraded")
        and c["status"] == ("False" if c["type"] == "SysctlsApplied" else "True")
        and c["reason"] != "NotManaged"
        and (c["type"], c["status"], c["reason"]) not in before
    ]


def status_changed(old: dict[str, Any] | None, new: dict[str, Any]) -> bool:
    old = old or {}
    return any(old.get(key) != value for key, value in new.items())
