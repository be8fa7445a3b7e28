from asgi_operator.models import AsgiServerSpec
from asgi_operator.statusing import Observed, build_status, conditions, merge_conditions

SPEC = AsgiServerSpec.model_validate({"image": "x", "replicas": 2})


def deployment(ready=2, updated=2, generation=1, observed=1, failure=None):
    status = {
        "replicas": 2,
        "updatedReplicas": updated,
        "readyReplicas": ready,
        "observedGeneration": observed,
    }
    if failure:
        status["conditions"] = [{"type": "ReplicaFailure", "status": "True", "message": failure}]
    return {"metadata": {"generation": generation}, "spec": {"replicas": 2}, "status": status}


def ready_pod():
    return {"status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}}


def test_all_ready():
    verdicts = conditions(SPEC, Observed(1, deployment(), [ready_pod(), ready_pod()]))
    assert verdicts["Ready"].status == "True"
    assert verdicts["Progressing"].status == "False"
    assert verdicts["SysctlsApplied"].reason == "Applied"
    assert verdicts["Degraded"].status == "False"


def test_sysctl_forbidden_says_what_to_change():
    pod = {
        "spec": {"nodeName": "node-1"},
        "status": {
            "phase": "Failed",
            "reason": "SysctlForbidden",
            "message": 'forbidden sysctl: "net.core.somaxconn" not allowlisted',
        },
    }
    verdicts = conditions(SPEC, Observed(1, deployment(ready=0), [pod]))
    sysctls = verdicts["SysctlsApplied"]
    assert (sysctls.status, sysctls.reason) == ("False", "SysctlForbidden")
    assert "node-1" in sysctls.message
    assert "allowedUnsafeSysctls" in sysctls.message
    assert verdicts["Degraded"].status == "True"
    assert verdicts["Ready"].reason == "SysctlForbidden"


def test_pod_security_level_is_reported_before_any_pod_fails():
    observed = Observed(
        1, deployment(ready=0), [], {"pod-security.kubernetes.io/enforce": "baseline"}
    )
    sysctls = conditions(SPEC, observed)["SysctlsApplied"]
    assert sysctls.reason == "PodSecurityRejected"
    assert "pod-security.kubernetes.io/enforce=privileged" in sysctls.message


def test_replica_failure_from_admission_is_reported():
    failure = 'pods "api-1" is forbidden: violates PodSecurity "restricted:latest": sysctls'
    verdicts = conditions(SPEC, Observed(1, deployment(ready=0, failure=failure), []))
    assert verdicts["SysctlsApplied"].reason == "PodSecurityRejected"
    assert verdicts["Degraded"].status == "True"


def test_mode_none_reports_the_clamp():
    spec = AsgiServerSpec.model_validate({"image": "x", "sysctls": {"mode": "none"}})
    sysctls = conditions(spec, Observed(1, deployment(), [ready_pod()]))["SysctlsApplied"]
    assert sysctls.reason == "NotManaged"
    assert "clamped" in sysctls.message


def test_rollout_in_progress():
    verdicts = conditions(SPEC, Observed(2, deployment(updated=1, generation=2, observed=2), []))
    assert verdicts["Progressing"].reason == "RollingOut"
    assert verdicts["Ready"].status == "False"


def test_transition_time_moves_only_on_status_change():
    first = merge_conditions(conditions(SPEC, Observed(1, deployment(), [])), [], 1, "t1")
    again = merge_conditions(conditions(SPEC, Observed(1, deployment(), [])), first, 1, "t2")
    assert all(c.last_transition_time == "t1" for c in again)
    changed = merge_conditions(
        conditions(SPEC, Observed(1, deployment(ready=1), [])), first, 1, "t3"
    )
    ready = next(c for c in changed if c.type == "Ready")
    assert ready.last_transition_time == "t3"


def test_status_carries_effective_settings():
    spec = AsgiServerSpec.model_validate(
        {"image": "x", "clientProfile": "mobile", "server": {"backlog": 1000}}
    )
    status = build_status(spec, Observed(3, deployment(), []), 4096, "now").to_patch()
    assert status["observedGeneration"] == 3
    assert status["effective"] == {
        "backlog": 1000,
        "somaxconn": 4096,
        "backlogEffective": 1000,
        "limitConcurrency": 100,
        "timeoutKeepAlive": 80.0,
    }
    assert "phase" not in status


def test_changes_say_what_moved_in_words():
    from asgi_operator.statusing import changes
    from asgi_operator.statusmodels import AsgiServerStatus

    before = build_status(SPEC, Observed(1, deployment(ready=1)), 4096, "t1")
    after = build_status(
        SPEC, Observed(1, deployment(), [], previous=before.conditions), 4096, "t2"
    )
    said = changes(before, after)
    assert "Ready False (ReplicasNotReady) -> True (AllReplicasReady)" in said
    assert "2/2 Pods ready" in said
    assert changes(after, after) == []
    assert any(line.startswith("Ready True") for line in changes(AsgiServerStatus(), after))
