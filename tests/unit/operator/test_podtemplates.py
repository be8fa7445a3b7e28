"""spec.podTemplate: strategic merge onto the generated template, owned fields refused."""

from __future__ import annotations

import pytest

from asgi_operator.building import BuildOptions, Owner, build_deployment
from asgi_operator.models import AsgiServerSpec
from asgi_operator.pods import APP_CONTAINER, PROXY_CONTAINER
from asgi_operator.podtemplates import TemplateConflictError

OWNER = Owner(name="api", namespace="shop", uid="1234")
NATIVE = BuildOptions(sidecar_image="sidecar:1")
CLASSIC = BuildOptions(sidecar_image="sidecar:1", native_sidecars=False)


def pod(template: dict | None, options: BuildOptions = NATIVE, **spec: object) -> dict:
    body = {"image": "app:1", "replicas": 2, "podTemplate": template, **spec}
    deployment = build_deployment(OWNER, AsgiServerSpec.model_validate(body), options)
    return deployment["spec"]["template"]


def container(template: dict, name: str) -> dict:
    spec = template["spec"]
    everything = spec["containers"] + spec.get("initContainers", [])
    (found,) = [c for c in everything if c["name"] == name]
    return found


def test_no_template_gives_the_generated_one():
    assert pod(None) == pod({})


def test_env_merges_by_name_and_the_template_wins_over_the_shorthand():
    template = {
        "spec": {
            "containers": [
                {
                    "name": APP_CONTAINER,
                    "env": [
                        {"name": "MODE", "value": "template"},
                        {
                            "name": "DB_PASSWORD",
                            "valueFrom": {"secretKeyRef": {"name": "db", "key": "password"}},
                        },
                    ],
                    "args": ["--workers", "2"],
                }
            ]
        }
    }
    shorthand = [{"name": "MODE", "value": "shorthand"}, {"name": "KEPT", "value": "1"}]
    app = container(pod(template, env=shorthand), APP_CONTAINER)
    assert app["env"] == [
        {"name": "MODE", "value": "template"},
        {"name": "KEPT", "value": "1"},
        {"name": "DB_PASSWORD", "valueFrom": {"secretKeyRef": {"name": "db", "key": "password"}}},
    ]
    assert app["args"] == ["--workers", "2"]
    assert app["image"] == "app:1"  # untouched fields stay


def test_volumes_mounts_and_extra_containers_are_added_beside_the_generated_ones():
    template = {
        "spec": {
            "serviceAccountName": "api",
            "imagePullSecrets": [{"name": "registry"}],
            "volumes": [{"name": "secret", "secret": {"secretName": "db"}}],
            "containers": [
                {
                    "name": APP_CONTAINER,
                    "volumeMounts": [{"name": "secret", "mountPath": "/run/secrets/db"}],
                },
                {"name": "log-shipper", "image": "shipper:1"},
            ],
            "initContainers": [{"name": "migrate", "image": "app:1", "args": ["migrate"]}],
        }
    }
    spec = pod(template)["spec"]
    assert [v["name"] for v in spec["volumes"]] == ["asgi-sidecar-config", "secret"]
    assert [c["name"] for c in spec["containers"]] == [APP_CONTAINER, "log-shipper"]
    assert [c["name"] for c in spec["initContainers"]] == [PROXY_CONTAINER, "migrate"]
    assert spec["serviceAccountName"] == "api"
    assert spec["imagePullSecrets"] == [{"name": "registry"}]
    app = container(pod(template), APP_CONTAINER)
    assert app["volumeMounts"] == [{"name": "secret", "mountPath": "/run/secrets/db"}]


@pytest.mark.parametrize("options", [NATIVE, CLASSIC], ids=["native", "classic"])
def test_the_proxy_takes_resources_env_and_mounts_wherever_it_runs(options):
    addition = {
        "name": PROXY_CONTAINER,
        "resources": {"limits": {"memory": "128Mi"}},
        "env": [{"name": "TZ", "value": "UTC"}],
        "volumeMounts": [{"name": "certs", "mountPath": "/certs"}],
    }
    # The user may list the proxy under containers even where it is a native sidecar.
    template = {"spec": {"containers": [addition]}}
    proxy = container(pod(template, options), PROXY_CONTAINER)
    assert proxy["resources"] == {"requests": {"cpu": "50m", "memory": "64Mi"},
                                  "limits": {"memory": "128Mi"}}  # fmt: skip
    assert proxy["env"] == [{"name": "TZ", "value": "UTC"}]
    assert [m["mountPath"] for m in proxy["volumeMounts"]] == ["/etc/asgi-sidecar", "/certs"]
    spec = pod(template, options)["spec"]
    everywhere = spec["containers"] + spec.get("initContainers", [])
    assert [c["name"] for c in everywhere].count(PROXY_CONTAINER) == 1


def test_labels_annotations_and_other_sysctls_are_added():
    template = {
        "metadata": {"labels": {"team": "shop"}, "annotations": {"owner": "shop@example.com"}},
        "spec": {"securityContext": {"fsGroup": 1000,
                                     "sysctls": [{"name": "net.ipv4.tcp_keepalive_time",
                                                  "value": "60"}]}},
    }  # fmt: skip
    generated = pod(template)
    assert generated["metadata"]["labels"]["team"] == "shop"
    assert generated["metadata"]["labels"]["asgi.dev/server"] == "api"
    assert generated["metadata"]["annotations"]["owner"] == "shop@example.com"
    security = generated["spec"]["securityContext"]
    assert security["fsGroup"] == 1000
    assert [s["name"] for s in security["sysctls"]] == [
        "net.core.somaxconn",
        "net.ipv4.tcp_keepalive_time",
    ]


def test_null_removes_a_generated_field():
    template = {"spec": {"containers": [{"name": APP_CONTAINER, "lifecycle": None}]}}
    assert "lifecycle" not in container(pod(template), APP_CONTAINER)


@pytest.mark.parametrize(
    ("template", "field"),
    [
        (
            {
                "spec": {
                    "containers": [
                        {
                            "name": PROXY_CONTAINER,
                            "ports": [{"containerPort": 9999, "name": "http"}],
                        }
                    ]
                }
            },
            "spec.podTemplate.spec.initContainers[proxy].ports",
        ),
        (
            {"spec": {"initContainers": [{"name": PROXY_CONTAINER, "image": "mine:1"}]}},
            "spec.podTemplate.spec.initContainers[proxy].image",
        ),
        (
            {"spec": {"initContainers": [{"name": PROXY_CONTAINER, "readinessProbe": None}]}},
            "spec.podTemplate.spec.initContainers[proxy].readinessProbe",
        ),
        (
            {"metadata": {"labels": {"asgi.dev/server": "other"}}},
            "spec.podTemplate.metadata.labels.asgi.dev/server",
        ),
        (
            {
                "spec": {
                    "securityContext": {"sysctls": [{"name": "net.core.somaxconn", "value": "128"}]}
                }
            },
            "spec.podTemplate.spec.securityContext.sysctls[net.core.somaxconn]",
        ),
        (
            {"spec": {"volumes": [{"name": "asgi-sidecar-config", "emptyDir": {}}]}},
            "spec.podTemplate.spec.volumes[asgi-sidecar-config]",
        ),
        (
            {"spec": {"containers": [{"name": APP_CONTAINER, "image": "other:2"}]}},
            "spec.podTemplate.spec.containers[app].image",
        ),
        (
            {
                "spec": {
                    "containers": [
                        {"name": APP_CONTAINER, "ports": [{"containerPort": 8000, "name": "web"}]}
                    ]
                }
            },
            "spec.podTemplate.spec.containers[app].ports[8000]",
        ),
    ],
    ids=[
        "proxy-port",
        "proxy-image",
        "proxy-probe",
        "selector-label",
        "somaxconn",
        "config-volume",
        "app-image",
        "app-port",
    ],
)
def test_a_template_that_changes_an_owned_field_is_refused_naming_it(template, field):
    with pytest.raises(TemplateConflictError) as refused:
        pod(template)
    assert refused.value.fields == [f"{field}: set by the operator"]


def test_owned_values_repeated_unchanged_are_not_a_conflict():
    generated = pod(None)
    proxy = container(generated, PROXY_CONTAINER)
    template = {
        "metadata": {"labels": {"asgi.dev/server": "api"}},
        "spec": {"initContainers": [{"name": PROXY_CONTAINER, "image": proxy["image"],
                                     "ports": proxy["ports"]}]},
    }  # fmt: skip
    assert pod(template) == generated


def test_embedded_mode_owns_the_app_containers_server_fields():
    template = {"spec": {"containers": [{"name": APP_CONTAINER, "command": ["uvicorn"]}]}}
    with pytest.raises(TemplateConflictError) as refused:
        pod(template, mode="embedded", app="main:app")
    assert refused.value.fields == [
        "spec.podTemplate.spec.containers[app].command: set by the operator"
    ]
