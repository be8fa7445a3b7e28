from pathlib import Path

import yaml

from asgi_operator.crdgen import check_descriptions, crd, render, spec_schema

ROOT = Path(__file__).resolve().parents[3]
CRD_FILE = ROOT / "crds" / "asgiservers.asgi.dev.yaml"


def test_checked_in_crd_matches_the_models():
    assert CRD_FILE.read_text() == render(), "run `make crds` and commit the result"


def walk(node, path="spec"):
    if isinstance(node, dict):
        yield path, node
        for key, value in node.items():
            yield from walk(value, f"{path}.{key}")
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from walk(value, f"{path}[{index}]")


def test_schema_is_structural():
    for path, node in walk(spec_schema()):
        assert "$ref" not in node, path
        assert "anyOf" not in node, path
        assert "title" not in node, path
        for key in ("exclusiveMinimum", "exclusiveMaximum"):
            assert node.get(key) is None or isinstance(node[key], bool), path
        if node.get("type") == "object" and "properties" in node:
            assert "additionalProperties" not in node, path


def test_every_field_is_described():
    assert check_descriptions(spec_schema()) == []


def test_server_settings_come_from_the_sidecar_model():
    server = spec_schema()["properties"]["server"]["properties"]
    assert server["timeoutKeepAlive"]["default"] == 75.0
    assert server["limitConcurrency"]["nullable"] is True
    assert "upstream" not in server  # the operator derives the addresses
    assert "port" not in server


def test_crd_shape():
    document = crd()
    version = document["spec"]["versions"][0]
    assert document["metadata"]["name"] == "asgiservers.asgi.dev"
    assert document["spec"]["names"]["shortNames"] == ["asgi"]
    assert version["subresources"] == {
        "status": {},
        "scale": {
            "specReplicasPath": ".spec.replicas",
            "statusReplicasPath": ".status.replicas",
            "labelSelectorPath": ".status.selector",
        },
    }
    columns = [c["name"] for c in version["additionalPrinterColumns"]]
    assert columns == ["Ready", "Mode", "Concurrency", "Backlog", "KeepAlive", "Age"]
    status = version["schema"]["openAPIV3Schema"]["properties"]["status"]
    assert "phase" not in yaml.safe_dump(status)
    rules = [
        v["rule"]
        for v in version["schema"]["openAPIV3Schema"]["properties"]["spec"][
            "x-kubernetes-validations"
        ]
    ]
    assert any("embedded" in rule for rule in rules)


def test_every_top_level_spec_field_is_documented_in_the_readme():
    readme = (ROOT / "README.md").read_text()
    for name in spec_schema()["properties"]:
        assert f"`{name}" in readme, name


def status_of(document):
    return document["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["status"]


def test_status_schema_comes_from_the_status_model_and_keeps_nothing_unknown():
    status = status_of(crd())
    assert check_descriptions(status, "status") == []
    assert "x-kubernetes-preserve-unknown-fields" not in yaml.safe_dump(status)
    assert set(status["properties"]) == {
        "observedGeneration", "conditions", "effective", "replicas", "readyReplicas", "selector",
        "tuning",
    }  # fmt: skip
    for path, node in walk(status, "status"):
        assert "default" not in node, path  # the operator writes all of it


def test_conditions_are_a_list_map_keyed_by_type():
    conditions = status_of(crd())["properties"]["conditions"]
    assert conditions["x-kubernetes-list-type"] == "map"
    assert conditions["x-kubernetes-list-map-keys"] == ["type"]
    assert "type" in conditions["items"]["required"]


def test_tuned_values_are_spelled_as_the_sidecar_spells_them():
    from asgi_sidecar.settings import SidecarSettings

    current = status_of(crd())["properties"]["tuning"]["properties"]["current"]["properties"]
    aliases = {f.alias for f in SidecarSettings.model_fields.values()}
    assert set(current) <= aliases
    assert {"limitConcurrency", "timeoutKeepAlive", "backlog"} <= set(current)


def test_pod_template_is_kubernetes_own_schema_made_structural():
    template = spec_schema()["properties"]["podTemplate"]
    pod = template["properties"]["spec"]["properties"]
    containers = pod["containers"]
    assert containers["x-kubernetes-list-map-keys"] == ["name"]
    assert "image" in containers["items"]["properties"]
    assert "ephemeralContainers" not in pod  # a Pod cannot be created with them
    text = yaml.safe_dump(template)
    for left_out in ("$ref", "allOf", "oneOf", "x-kubernetes-patch", "int-or-string\n"):
        assert left_out not in text
    resources = containers["items"]["properties"]["resources"]["properties"]
    assert resources["limits"]["additionalProperties"] == {"x-kubernetes-int-or-string": True}
    assert set(template["properties"]["metadata"]["properties"]) == {"labels", "annotations"}


def test_generated_merge_keys_are_kubernetes_strategic_merge_keys():
    from asgi_operator import podschema

    keys = podschema.load()["mergeKeys"]
    assert keys["spec.containers"] == "name"
    assert keys["spec.initContainers[].env"] == "name"
    assert keys["spec.containers[].ports"] == "containerPort"
    assert keys["spec.containers[].volumeMounts"] == "mountPath"
    assert keys["spec.volumes"] == "name"
    assert not any(path.startswith("metadata") for path in keys)
