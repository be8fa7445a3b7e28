"""Pure: what the AsgiServer's status should say, from what the cluster shows.

Every failure the schema cannot catch becomes a condition with a message that
says what to change, never a traceback: a kubelet refusing the sysctls
(``SysctlForbidden``), a namespace whose Pod Security level rejects them, Pods
that do not become ready.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from asgi_operator.models import AsgiServerSpec, SysctlMode

PSA_ENFORCE = "pod-security.kubernetes.io/enforce"


@dataclass(frozen=True)
class Observed:
    generation: int
    deployment: dict[str, Any] | None
    pods: list[dict[str, Any]] = field(default_factory=list)
    namespace_labels: dict[str, str] = field(default_factory=dict)
    previous: list[dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True)
class Verdict:
    status: str
    reason: str
    message: str


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
    verdicts: dict[str, Verdict], previous: list[dict[str, Any]], generation: int, now: str
) -> list[dict[str, Any]]:
    """Conditions in API form; lastTransitionTime moves only when the status changes."""
    before = {c.get("type"): c for c in previous}
    # Conditions this module does not own (Tuned, from the autotuner) are kept as they are.
    result = [c for c in previous if c.get("type") not in verdicts]
    for kind, verdict in verdicts.items():
        old = before.get(kind)
        since = (
            old.get("lastTransitionTime") if old and old.get("status") == verdict.status else None
        )
        result.append(
            {
                "type": kind,
                "status": verdict.status,
                "reason": verdict.reason,
                "message": verdict.message,
                "lastTransitionTime": since or now,
                "observedGeneration": generation,
            }
        )
    return result


def build_status(
    spec: AsgiServerSpec, observed: Observed, somaxconn: int | None, now: str
) -> dict[str, Any]:
    verdicts = conditions(spec, observed)
    _desired, current, _, ready = replica_counts(observed.deployment)
    backlog = spec.server.backlog
    return {
        "observedGeneration": observed.generation,
        "conditions": merge_conditions(verdicts, observed.previous, observed.generation, now),
        "effective": {
            "backlog": backlog,
            "somaxconn": somaxconn,
            "backlogEffective": min(backlog, somaxconn) if somaxconn else None,
            "limitConcurrency": spec.server.limit_concurrency,
            "timeoutKeepAlive": spec.effective_keep_alive(),
        },
        "replicas": current,
        "readyReplicas": ready,
    }
