"""Pure: what the AsgiServer's status should say, from what the cluster shows.

Every failure the schema cannot catch becomes a condition with a message that
says what to change, never a traceback: a kubelet refusing the sysctls
(``SysctlForbidden``), a namespace whose Pod Security level rejects them, Pods
that do not become ready.  Reconciling and autotuning both report here: the
one ``AsgiServerStatus`` built by ``build_status`` holds the verdicts of both,
so neither can overwrite what the other said.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from asgi_operator.models import AsgiServerSpec, SysctlMode
from asgi_operator.statusmodels import (
    AsgiServerStatus,
    Condition,
    ConditionStatus,
    Effective,
    Tuning,
)

PSA_ENFORCE = "pod-security.kubernetes.io/enforce"


@dataclass(frozen=True)
class Observed:
    generation: int
    deployment: dict[str, Any] | None
    pods: list[dict[str, Any]] = field(default_factory=list)
    namespace_labels: dict[str, str] = field(default_factory=dict)
    previous: list[Condition] = field(default_factory=list)


@dataclass(frozen=True)
class Verdict:
    status: str
    reason: str
    message: str


@dataclass(frozen=True)
class Tuned:
    """What autotuning reports for one AsgiServer: its status block and its condition."""

    tuning: Tuning
    verdict: Verdict


def _sysctl_names(spec: AsgiServerSpec) -> str:
    names = ["net.core.somaxconn"]
    if spec.sysctls.tcp_max_syn_backlog is not None:
        names.append("net.ipv4.tcp_max_syn_backlog")
    return ", ".join(names)


def pod_security_problem(spec: AsgiServerSpec, namespace_labels: dict[str, str]) -> str | None:
    """Why the namespace's Pod Security level will reject these Pods, if it will."""
    level = namespace_labels.get(PSA_ENFORCE, "privileged")
    mode = spec.sysctls.mode
    if level == "privileged" or mode == SysctlMode.none:
        return None
    what = (
        f"the unsafe sysctls {_sysctl_names(spec)}"
        if mode == SysctlMode.security_context
        else "a privileged init container"
    )
    return (
        f"the namespace enforces Pod Security level '{level}', which rejects {what}."
        f" Label the namespace {PSA_ENFORCE}=privileged, or set spec.sysctls.mode to none"
        " (the backlog is then clamped to the node default)"
    )


def sysctls_verdict(spec: AsgiServerSpec, observed: Observed) -> Verdict:
    if spec.sysctls.mode == SysctlMode.none:
        return Verdict(
            "False",
            "NotManaged",
            f"spec.sysctls.mode is none: the backlog {spec.server.backlog} is clamped to the"
            " Pods' net.core.somaxconn (4096 by default on current kernels); see the sidecar's"
            " asgi_listen_backlog_effective metric",
        )
    for pod in observed.pods:
        status = pod.get("status", {})
        if status.get("reason") == "SysctlForbidden":
            node = pod.get("spec", {}).get("nodeName", "?")
            detail = status.get("message", "")
            return Verdict(
                "False",
                "SysctlForbidden",
                f"the kubelet on node {node} refused the Pod ({detail}). Allow"
                f" {_sysctl_names(spec)} in that kubelet's allowedUnsafeSysctls"
                " (--allowed-unsafe-sysctls), or set spec.sysctls.mode to initContainer"
                " or none",
            )
    problem = pod_security_problem(spec, observed.namespace_labels)
    if problem is None:
        problem = _replica_failure(observed.deployment, "PodSecurity")
    if problem is not None:
        return Verdict("False", "PodSecurityRejected", problem)
    ready = [p for p in observed.pods if _pod_ready(p)]
    if ready:
        return Verdict("True", "Applied", f"{_sysctl_names(spec)} set in {len(ready)} ready Pods")
    return Verdict("Unknown", "Pending", "no ready Pod yet")


def _pod_ready(pod: dict[str, Any]) -> bool:
    for condition in pod.get("status", {}).get("conditions", []) or []:
        if condition.get("type") == "Ready":
            return bool(condition.get("status") == "True")
    return False


def _replica_failure(deployment: dict[str, Any] | None, needle: str = "") -> str | None:
    if not deployment:
        return None
    for condition in deployment.get("status", {}).get("conditions", []) or []:
        if condition.get("type") == "ReplicaFailure" and condition.get("status") == "True":
            message = str(condition.get("message", ""))
            if needle in message:
                return message
    return None


def replica_counts(deployment: dict[str, Any] | None) -> tuple[int, int, int, int]:
    """(desired, current, updated, ready) replicas of the Deployment."""
    if not deployment:
        return 0, 0, 0, 0
    spec = deployment.get("spec", {})
    status = deployment.get("status", {})
    desired = int(spec.get("replicas", 1) if spec.get("replicas") is not None else 1)
    return (
        desired,
        int(status.get("replicas", 0) or 0),
        int(status.get("updatedReplicas", 0) or 0),
        int(status.get("readyReplicas", 0) or 0),
    )


def conditions(spec: AsgiServerSpec, observed: Observed) -> dict[str, Verdict]:
    sysctls = sysctls_verdict(spec, observed)
    deployment = observed.deployment
    desired, current, updated, ready = replica_counts(deployment)
    rolled = bool(deployment) and int(
        (deployment or {}).get("status", {}).get("observedGeneration", 0) or 0
    ) >= int((deployment or {}).get("metadata", {}).get("generation", 0) or 0)
    if deployment is None:
        progressing = Verdict("True", "Creating", "the Deployment is being created")
    elif not rolled or updated < desired or current > desired:
        progressing = Verdict(
            "True", "RollingOut", f"{updated} of {desired} Pods run the current template"
        )
    else:
        progressing = Verdict("False", "Complete", "every Pod runs the current template")
    failure = _replica_failure(deployment)
    if sysctls.status == "False" and sysctls.reason in ("SysctlForbidden", "PodSecurityRejected"):
        degraded = Verdict("True", sysctls.reason, sysctls.message)
    elif failure is not None:
        degraded = Verdict("True", "ReplicaFailure", failure)
    else:
        degraded = Verdict("False", "AsExpected", "no failure observed")
    if desired == 0:
        ready_verdict = Verdict("True", "ScaledToZero", "no Pods requested")
    elif ready >= desired and updated >= desired:
        ready_verdict = Verdict("True", "AllReplicasReady", f"{ready}/{desired} Pods ready")
    elif degraded.status == "True":
        ready_verdict = Verdict("False", degraded.reason, degraded.message)
    else:
        ready_verdict = Verdict("False", "ReplicasNotReady", f"{ready}/{desired} Pods ready")
    return {
        "Ready": ready_verdict,
        "Progressing": progressing,
        "SysctlsApplied": sysctls,
        "Degraded": degraded,
    }


def merge_conditions(
    verdicts: dict[str, Verdict], previous: list[Condition], generation: int, now: str
) -> list[Condition]:
    """The conditions of these verdicts; lastTransitionTime moves only when a status changes.

    Only the given verdicts are returned: a condition nobody reports any more (Tuned,
    once autotuning is disabled) is dropped.
    """
    before = {c.type: c for c in previous}
    result = []
    for kind, verdict in verdicts.items():
        old = before.get(kind)
        status = ConditionStatus(verdict.status)
        since = old.last_transition_time if old and old.status == status else None
        result.append(
            Condition(
                type=kind,
                status=status,
                reason=verdict.reason,
                message=verdict.message[:1000],
                last_transition_time=since or now,
                observed_generation=generation,
            )
        )
    return result


def build_status(
    spec: AsgiServerSpec,
    observed: Observed,
    somaxconn: int | None,
    now: str,
    tuned: Tuned | None = None,
    selector: str | None = None,
    extra: dict[str, Verdict] | None = None,
) -> AsgiServerStatus:
    verdicts = {**conditions(spec, observed), **(extra or {})}
    if tuned is not None:
        verdicts["Tuned"] = tuned.verdict
    _desired, current, _, ready = replica_counts(observed.deployment)
    backlog = spec.server.backlog
    return AsgiServerStatus(
        observed_generation=observed.generation,
        conditions=merge_conditions(verdicts, observed.previous, observed.generation, now),
        effective=Effective(
            backlog=backlog,
            somaxconn=somaxconn,
            backlog_effective=min(backlog, somaxconn) if somaxconn else None,
            limit_concurrency=spec.server.limit_concurrency,
            timeout_keep_alive=spec.effective_keep_alive(),
        ),
        replicas=current,
        ready_replicas=ready,
        selector=selector,
        tuning=None if tuned is None else tuned.tuning,
    )


def invalid_status(
    problems: str, previous: list[Condition], generation: int, now: str
) -> AsgiServerStatus:
    """The status of a spec the schema let through but the models refuse."""
    verdict = Verdict("True", "InvalidSpec", problems)
    return AsgiServerStatus(
        observed_generation=generation,
        conditions=merge_conditions({"Degraded": verdict}, previous, generation, now),
    )


def new_problems(previous: list[Condition], current: list[Condition]) -> list[tuple[str, str]]:
    """(reason, message) of the conditions that just turned bad: each is worth an Event."""
    before = {(c.type, c.status, c.reason) for c in previous}
    bad = {"SysctlsApplied": ConditionStatus.false, "Degraded": ConditionStatus.true}
    return [
        (c.reason, c.message)
        for c in current
        if bad.get(c.type) == c.status
        and c.reason != "NotManaged"
        and (c.type, c.status, c.reason) not in before
    ]


def changes(before: AsgiServerStatus, after: AsgiServerStatus) -> list[str]:
    """What a new status says that the stored one did not, in words (for the log)."""
    said = []
    old = {c.type: c for c in before.conditions}
    for condition in after.conditions:
        was = old.get(condition.type)
        if was is None or (was.status, was.reason) != (condition.status, condition.reason):
            since = "" if was is None else f"{was.status.value} ({was.reason}) -> "
            said.append(f"{condition.type} {since}{condition.status.value} ({condition.reason})")
    if before.effective != after.effective and after.effective is not None:
        now = after.effective.model_dump(by_alias=True, exclude_none=True)
        if before.effective is None:
            said.append("effective " + ", ".join(f"{k} {v}" for k, v in now.items()))
        else:
            old_effective = before.effective.model_dump(by_alias=True)
            said += [
                f"effective {k} {old_effective[k]} -> {v}"
                for k, v in now.items()
                if old_effective[k] != v
            ]
    if (before.replicas, before.ready_replicas) != (after.replicas, after.ready_replicas):
        said.append(f"{after.ready_replicas}/{after.replicas} Pods ready")
    return said
