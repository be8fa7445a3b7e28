"""Builders against golden files: `UPDATE_GOLDEN=1 pytest` rewrites them after a review."""

import os
from pathlib import Path

import pytest

from asgi_operator.building import (
    BuildOptions,
    Owner,
    build_children,
    canonical,
    current_somaxconn,
    somaxconn_for,
)
from asgi_operator.models import AsgiServerSpec
from asgi_sidecar.configuring import parse_config_text
from asgi_sidecar.settings import SidecarSettings

GOLDEN = Path(__file__).resolve().parents[1] / "golden"
OWNER = Owner(name="api", namespace="shop", uid="1234-5678")
OPTIONS = BuildOptions(sidecar_image="asgi-dev/asgi-sidecar:test")

CASES = {
    "sidecar-default": {"image": "shop/api:1"},
    "mobile-init-container": {
        "image": "shop/api:1",
        "replicas": 3,
        "clientProfile": "mobile",
        "server": {"limitConcurrency": 50, "backlog": 8192, "queueDepth": 100},
        "sysctls": {"mode": "initContainer", "tcpMaxSynBacklog": 8192},
        "env": [{"name": "A", "value": "1"}],
        "resources": {"limits": {"memory": "512Mi"}},
        "podAnnotations": {"team": "shop"},
        "nodeSelector": {"pool": "web"},
        "tolerations": [{"key": "web", "operator": "Exists"}],
    },
    "embedded-no-sysctls": {
        "image": "shop/api:1",
        "mode": "embedded",
        "app": "shop.main:app",
        "sysctls": {"mode": "none"},
    },
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_children_match_golden_files(case):
    spec = AsgiServerSpec.model_validate(CASES[case])
    text = "".join(canonical(m) for m in build_children(OWNER, spec, OPTIONS))
    path = GOLDEN / f"{case}.json"
    if os.environ.get("UPDATE_GOLDEN"):
        path.write_text(text)
    assert text == path.read_text()


def test_old_kubernetes_gets_an_ordinary_sidecar_container():
    spec = AsgiServerSpec(image="x")
    deployment = build_children(OWNER, spec, BuildOptions("s", native_sidecars=False))[2]
    pod = deployment["spec"]["template"]["spec"]
    assert [c["name"] for c in pod["containers"]] == ["proxy", "app"]
    assert "initContainers" not in pod


def test_config_map_holds_valid_sidecar_settings_with_the_profile_keep_alive():
    spec = AsgiServerSpec.model_validate({"image": "x", "clientProfile": "loadBalancer"})
    config_map = build_children(OWNER, spec, OPTIONS)[0]
    values = parse_config_text(config_map["data"]["sidecar.json"], "cm")
    settings = SidecarSettings(**values)
    assert settings.timeout_keep_alive == 65.0  # above a 60 s balancer idle timeout
    assert settings.upstream == "http://127.0.0.1:8000"


def test_limits_only_change_leaves_the_pod_template_alone():
    before = AsgiServerSpec.model_validate({"image": "x"})
    after = AsgiServerSpec.model_validate(
        {"image": "x", "server": {"limitConcurrency": 7, "timeoutKeepAlive": 90}}
    )
    old = build_children(OWNER, before, OPTIONS)
    new = build_children(OWNER, after, OPTIONS)
    assert old[2] == new[2]  # Deployment unchanged: no rollout
    assert old[0] != new[0]  # ConfigMap changed: applied live


def test_backlog_within_the_running_somaxconn_applies_live():
    spec = AsgiServerSpec.model_validate({"image": "x", "server": {"backlog": 1024}})
    assert somaxconn_for(spec, current=4096) == 4096
    assert somaxconn_for(spec, current=512) == 1024  # needs new Pods
    assert somaxconn_for(spec, current=None) == 1024
    explicit = AsgiServerSpec.model_validate({"image": "x", "sysctls": {"somaxconn": 9000}})
    assert somaxconn_for(explicit, current=4096) == 9000


def test_current_somaxconn_reads_both_modes():
    for case in ("sidecar-default", "mobile-init-container"):
        spec = AsgiServerSpec.model_validate(CASES[case])
        deployment = build_children(OWNER, spec, OPTIONS)[2]
        assert current_somaxconn(deployment) == spec.effective_somaxconn()
    assert current_somaxconn(None) is None


def test_replicas_are_left_to_others_when_unset():
    deployment = build_children(OWNER, AsgiServerSpec(image="x"), OPTIONS)[2]
    assert "replicas" not in deployment["spec"]


def test_termination_grace_covers_drain_and_graceful_shutdown():
    spec = AsgiServerSpec.model_validate(
        {"image": "x", "server": {"timeoutGracefulShutdown": 20, "shutdownDelay": 4}}
    )
    pod = build_children(OWNER, spec, OPTIONS)[2]["spec"]["template"]["spec"]
    sidecar = pod["initContainers"][0]
    assert sidecar["lifecycle"]["preStop"]["sleep"]["seconds"] == 4
    assert pod["terminationGracePeriodSeconds"] >= 4 + 20
    assert sidecar["securityContext"]["runAsNonRoot"] is True
    assert sidecar["securityContext"]["readOnlyRootFilesystem"] is True
    assert sidecar["securityContext"]["capabilities"] == {"drop": ["ALL"]}


def budget(spec: dict, current_replicas: int | None = None) -> dict | None:
    from asgi_operator.building import build_disruption_budget

    options = BuildOptions(sidecar_image="s:1", current_replicas=current_replicas)
    built = build_disruption_budget(OWNER, AsgiServerSpec.model_validate(spec), options)
    return None if built is None else built["spec"]


@pytest.mark.parametrize(
    ("spec", "current", "expected"),
    [
        ({"replicas": 1}, None, None),  # one Pod: a budget would only block drains
        ({"replicas": 3}, None, {"maxUnavailable": 1}),
        ({}, None, None),  # unset and no Deployment yet
        ({}, 4, {"maxUnavailable": 1}),  # an autoscaler runs four
        ({"replicas": 3, "disruptionBudget": {"enabled": False}}, None, None),
        ({"replicas": 1, "disruptionBudget": {"enabled": True}}, None, {"maxUnavailable": 1}),
        (
            {"replicas": 4, "disruptionBudget": {"minAvailable": "50%"}},
            None,
            {"minAvailable": "50%"},
        ),
        ({"replicas": 4, "disruptionBudget": {"maxUnavailable": 2}}, None, {"maxUnavailable": 2}),
    ],
)
def test_disruption_budget_defaults_to_one_pod_at_a_time_with_more_than_one(
    spec, current, expected
):
    built = budget({"image": "a:1", **spec}, current)
    if expected is None:
        assert built is None
    else:
        assert built == {**expected, "selector": {"matchLabels": {"asgi.dev/server": "api"}}}


@pytest.mark.parametrize("bad", [{"minAvailable": "150%"}, {"maxUnavailable": "one"}])
def test_disruption_budget_refuses_what_is_neither_a_count_nor_a_percentage(bad):
    from pydantic import ValidationError

    with pytest.raises(ValidationError):
        AsgiServerSpec.model_validate({"image": "a:1", "disruptionBudget": bad})


def test_only_running_pods_with_another_config_hash_are_nudged():
    from asgi_operator.building import CONFIG_HASH_ANNOTATION, pods_to_nudge

    def pod(name: str, phase: str, digest: str | None = None, deleting: bool = False) -> dict:
        meta: dict = {"name": name, "annotations": {CONFIG_HASH_ANNOTATION: digest}}
        if deleting:
            meta["deletionTimestamp"] = "2026-12-01T00:00:00Z"
        return {"metadata": meta, "status": {"phase": phase}}

    pods = [
        pod("stale", "Running", "old"),
        pod("unmarked", "Running"),
        pod("current", "Running", "new"),
        pod("pending", "Pending", "old"),
        pod("going", "Running", "old", deleting=True),
    ]
    assert pods_to_nudge(pods, "new") == ["stale", "unmarked"]
