"""The operator for real: a subprocess against the local control plane (kwok fakes the node)."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
import yaml

from asgi_operator.pods import PROXY_CONTAINER
from tests.support.kube import Operator, apply, condition, eventually, get, server
from tests.support.processes import ROOT

pytestmark = pytest.mark.timeout(300)

SAMPLES = ROOT / "samples"


def test_sample_becomes_running_pods_with_matching_settings(cluster, operator, namespace):
    apply(cluster, (SAMPLES / "asgiserver.yaml").read_text(), namespace)
    deployment = eventually(lambda: get(cluster, "deployment", "hello", namespace), what="deploy")
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"]["sysctls"] == [{"name": "net.core.somaxconn", "value": "4096"}]
    sidecar = next(c for c in pod["initContainers"] if c["name"] == PROXY_CONTAINER)
    assert sidecar["restartPolicy"] == "Always"  # a native sidecar on 1.33
    assert sidecar["image"] == "sidecar:test"
    assert sidecar["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert deployment["spec"]["replicas"] == 2
    owner = deployment["metadata"]["ownerReferences"][0]
    assert (owner["kind"], owner["name"], owner["controller"]) == ("AsgiServer", "hello", True)

    service = get(cluster, "service", "hello", namespace)
    assert [(p["name"], p["port"]) for p in service["spec"]["ports"]] == [
        ("http", 8080),
        ("metrics", 9090),
    ]
    config = json.loads(
        get(cluster, "configmap", "hello-sidecar", namespace)["data"]["sidecar.json"]
    )
    assert config["timeoutKeepAlive"] == 65.0  # loadBalancer profile
    assert config["limitConcurrency"] == 100
    assert config["backlog"] == 4096
    assert config["upstream"] == "http://127.0.0.1:8000"

    def ready() -> bool:
        body = get(cluster, "asgiserver", "hello", namespace)
        return (
            condition(body, "Ready").get("status") == "True"
            and body["status"]["readyReplicas"] == 2
        )

    eventually(ready, what="Ready condition")
    body = get(cluster, "asgiserver", "hello", namespace)
    assert body["status"]["effective"]["somaxconn"] == 4096
    assert body["status"]["observedGeneration"] == body["metadata"]["generation"]
    assert condition(body, "SysctlsApplied")["status"] == "True"
    assert "finalizers" not in body["metadata"]
    printed = cluster.kubectl("get", "asgi", "hello", "-n", namespace).stdout
    assert printed.split()[:6] == ["NAME", "READY", "MODE", "CONCURRENCY", "BACKLOG", "KEEPALIVE"]
    assert printed.split()[7:12] == ["hello", "True", "sidecar", "100", "4096"]


def test_limits_only_change_goes_live_without_new_pods(cluster, operator, namespace):
    apply(cluster, server("live", replicas=1), namespace)
    first = eventually(lambda: get(cluster, "deployment", "live", namespace), what="deploy")
    apply(cluster, server("live", replicas=1, server={"limitConcurrency": 7}), namespace)

    def config_updated() -> bool:
        data = get(cluster, "configmap", "live-sidecar", namespace)["data"]["sidecar.json"]
        return bool(json.loads(data)["limitConcurrency"] == 7)

    eventually(config_updated, what="ConfigMap limit 7")
    after = get(cluster, "deployment", "live", namespace)
    assert after["metadata"]["generation"] == first["metadata"]["generation"]
    assert after["spec"]["template"] == first["spec"]["template"]


def test_a_config_change_nudges_the_running_pods_to_refresh_it(cluster, operator, namespace):
    from asgi_operator.building import CONFIG_HASH_ANNOTATION, config_hash

    apply(cluster, server("nudge", replicas=2), namespace)

    def pods_with(digest: str) -> list[dict[str, Any]]:
        items = cluster.get_json("pods", "-n", namespace, "-l", "asgi.dev/server=nudge")["items"]
        marked = [
            p for p in items
            if (p["metadata"].get("annotations") or {}).get(CONFIG_HASH_ANNOTATION) == digest
        ]  # fmt: skip
        return marked if len(marked) == 2 else []

    first = config_hash(get(cluster, "configmap", "nudge-sidecar", namespace))
    before = eventually(lambda: pods_with(first), 90, "both running Pods marked")
    apply(cluster, server("nudge", replicas=2, server={"limitConcurrency": 5}), namespace)

    def changed() -> str:
        digest = config_hash(get(cluster, "configmap", "nudge-sidecar", namespace))
        return digest if digest != first else ""

    second = eventually(changed, what="a new ConfigMap")
    after = eventually(lambda: pods_with(second), what="both Pods marked with the new hash")
    # The same Pods, updated in place: a nudge, never a restart.
    assert {p["metadata"]["uid"] for p in after} == {p["metadata"]["uid"] for p in before}


def test_backlog_above_somaxconn_rolls_the_pods(cluster, operator, namespace):
    apply(cluster, server("roll", replicas=1, server={"backlog": 1024}), namespace)
    first = eventually(lambda: get(cluster, "deployment", "roll", namespace), what="deploy")
    # within the running somaxconn (1024): live
    apply(cluster, server("roll", replicas=1, server={"backlog": 512}), namespace)
    eventually(
        lambda: (
            '"backlog": 512'
            in get(cluster, "configmap", "roll-sidecar", namespace)["data"]["sidecar.json"]
        ),
        what="backlog 512 in ConfigMap",
    )
    assert (
        get(cluster, "deployment", "roll", namespace)["spec"]["template"]
        == first["spec"]["template"]
    )
    # above it: new Pods with a larger somaxconn
    apply(cluster, server("roll", replicas=1, server={"backlog": 8192}), namespace)

    def rolled() -> bool:
        pod = get(cluster, "deployment", "roll", namespace)["spec"]["template"]["spec"]
        return bool(pod["securityContext"]["sysctls"][0]["value"] == "8192")

    eventually(rolled, what="somaxconn 8192 in the template")


def test_invalid_asgiservers_are_rejected_with_the_field_named(cluster, namespace):
    expected = {
        "embedded-without-app.yaml": "app (module:attribute) is required",
        "negative-keepalive.yaml": "spec.server.timeoutKeepAlive",
        "autotune-min-above-max.yaml": "min must not exceed max",
        "unknown-mode.yaml": "spec.mode",
        "somaxconn-below-backlog.yaml": "sysctls.somaxconn must be at least server.backlog",
    }
    for name, message in expected.items():
        result = cluster.kubectl(
            "apply", "-n", namespace, "-f", str(SAMPLES / "invalid" / name), check=False
        )
        assert result.returncode != 0, name
        assert message in result.stderr, (name, result.stderr)


def test_hand_edits_are_restored_and_foreign_replicas_kept(cluster, operator, namespace):
    apply(cluster, server("edit"), namespace)  # no replicas: left to others (an HPA)
    eventually(lambda: get(cluster, "configmap", "edit-sidecar", namespace), what="configmap")
    cluster.kubectl(
        "patch", "configmap", "edit-sidecar", "-n", namespace, "--type=merge",
        "-p", json.dumps({"data": {"sidecar.json": "{}"}}),
    )  # fmt: skip
    eventually(
        lambda: (
            get(cluster, "configmap", "edit-sidecar", namespace)["data"]["sidecar.json"] != "{}"
        ),
        what="ConfigMap restored",
    )
    cluster.kubectl(
        "scale", "deployment", "edit", "-n", namespace, "--replicas=3"
    )  # as an HPA would
    time.sleep(3)  # more than a resync: the operator must not take it back
    assert get(cluster, "deployment", "edit", namespace)["spec"]["replicas"] == 3


def test_deleting_collects_the_children(cluster, operator, namespace):
    apply(cluster, server("gone", replicas=1), namespace)
    eventually(lambda: get(cluster, "deployment", "gone", namespace), what="deploy")
    cluster.kubectl("delete", "asgiserver", "gone", "-n", namespace, "--wait=true")

    def collected() -> bool:
        names = cluster.kubectl(
            "get", "deployment,service,configmap", "-n", namespace, "-l",
            "asgi.dev/server=gone", "-o", "name",
        ).stdout  # fmt: skip
        return names.strip() == ""

    eventually(collected, what="children garbage collected")


def test_operator_restart_creates_no_duplicates(cluster, operator, namespace):
    operator.stop()
    try:
        apply(cluster, server("restart", replicas=1), namespace)
        time.sleep(1)
        assert (
            cluster.kubectl("get", "deployment", "-n", namespace, "-o", "name").stdout.strip() == ""
        )
    finally:
        operator.start()
    eventually(lambda: get(cluster, "deployment", "restart", namespace), what="deploy")
    operator.stop()
    operator.start()
    time.sleep(4)
    names = cluster.kubectl("get", "deployment,service,configmap", "-n", namespace, "-o", "name")
    assert sorted(names.stdout.split()) == [
        "configmap/kube-root-ca.crt",
        "configmap/restart-sidecar",
        "deployment.apps/restart",
        "service/restart",
    ]


def test_sysctl_forbidden_pod_sets_the_condition_and_an_event(cluster, operator, namespace):
    apply(
        cluster,
        server("forbidden", replicas=1, podAnnotations={"kwok.x-k8s.io/status": "custom"}),
        namespace,
    )

    def a_pod() -> str:
        items = cluster.get_json("pods", "-n", namespace, "-l", "asgi.dev/server=forbidden")
        return str(items["items"][0]["metadata"]["name"])

    cluster.simulate_pod_failure(eventually(a_pod, what="a pod"), namespace)

    def refused() -> dict[str, Any]:
        body = get(cluster, "asgiserver", "forbidden", namespace)
        cond = condition(body, "SysctlsApplied")
        return cond if cond.get("reason") == "SysctlForbidden" else {}

    cond = eventually(refused, what="SysctlsApplied=False")
    assert cond["status"] == "False"
    assert "allowedUnsafeSysctls" in cond["message"]
    events = eventually(
        lambda: [
            e
            for e in cluster.get_json("events", "-n", namespace)["items"]
            if e["reason"] == "SysctlForbidden"
        ],
        what="a SysctlForbidden event",
    )
    assert events[0]["involvedObject"]["kind"] == "AsgiServer"


def test_pod_security_baseline_namespace_is_reported(cluster, operator, namespace):
    cluster.kubectl("label", "namespace", namespace, "pod-security.kubernetes.io/enforce=baseline")
    apply(cluster, server("psa", replicas=1), namespace)

    def reported() -> dict[str, Any]:
        cond = condition(get(cluster, "asgiserver", "psa", namespace), "SysctlsApplied")
        return cond if cond.get("reason") == "PodSecurityRejected" else {}

    cond = eventually(reported, what="PodSecurityRejected")
    assert "pod-security.kubernetes.io/enforce=privileged" in cond["message"]
    degraded = condition(get(cluster, "asgiserver", "psa", namespace), "Degraded")
    assert degraded["status"] == "True"


def test_peering_pauses_the_lower_priority_operator_until_the_higher_leaves(cluster, tmp_path):
    cluster.kubectl("apply", "-f", str(ROOT / "crds" / "kopf-peering.yaml"))
    cluster.kubectl(
        "wait", "--for=condition=Established", "crd/clusterkopfpeerings.kopf.dev", "--timeout=30s"
    )
    peering = {
        "apiVersion": "kopf.dev/v1",
        "kind": "ClusterKopfPeering",
        "metadata": {"name": "ha"},
    }
    cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump(peering))
    procs = []
    try:
        for priority in (100, 10):
            flags = ["--liveness", "", "--metrics-port", "0", "--peering", "ha"]
            flags += ["--priority", str(priority)]
            log = tmp_path / f"op-{priority}.log"
            procs.append(Operator(cluster.kubeconfig, log, None, flags=flags).start())
            # The high-priority operator is registered before the low one starts, so the
            # low one meets it at once instead of racing it.
            eventually(
                lambda p=priority: any(
                    isinstance(peer, dict) and peer.get("priority") == p
                    for peer in (
                        cluster.get_json("clusterkopfpeering", "ha").get("status") or {}
                    ).values()
                ),
                what=f"the operator with priority {priority} in the peering object",
            )

        # The low-priority operator starts paused, as it meets a higher peer at once; it
        # resumes only when that peer leaves (kopf logs the transition): a failover.
        low_log = tmp_path / "op-10.log"
        time.sleep(3)
        assert "Resuming operations" not in low_log.read_text()
        procs[0].stop()

        def resumed() -> bool:
            return "Resuming operations after the pause" in low_log.read_text()

        try:
            eventually(resumed, what="the low-priority operator resumes after the high one left")
        except AssertionError as exc:
            raise AssertionError(
                f"{exc}\nlow-priority log:\n{low_log.read_text()[-3000:]}"
            ) from None
    finally:
        for proc in procs:
            proc.stop()
