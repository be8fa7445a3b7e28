"""Generate the AsgiServer CustomResourceDefinition from the pydantic models.

Kubernetes wants a *structural* OpenAPI v3 schema: no ``$ref`` (inlined here),
``nullable: true`` instead of ``anyOf`` with null, ``exclusiveMinimum`` as a
boolean beside ``minimum``, no titles, and a description on every field (so
``kubectl explain`` helps).  In the spec, object fields whose default is built
by a factory get ``default: {}`` so the API server applies the nested defaults;
the status gets no defaults (the operator writes all of it).  The status schema
is ``AsgiServerStatus``'s own: nothing else may be stored there, so kopf keeps its
bookkeeping in annotations (see ``handlers.py``).  Pure: no I/O
(``python -m asgi_operator.crdgen`` prints the YAML; ``make crds`` writes it).
"""

from __future__ import annotations

import sys
from typing import Any

import yaml
from pydantic import BaseModel

from asgi_operator import podschema
from asgi_operator.models import GROUP, KIND, PLURAL, SHORT_NAMES, SINGULAR, VERSION, AsgiServerSpec
from asgi_operator.statusmodels import AsgiServerStatus

JsonSchema = dict[str, Any]

_DROP = {"title", "discriminator"}


def _inline(node: Any, defs: dict[str, JsonSchema]) -> Any:
    if isinstance(node, list):
        return [_inline(item, defs) for item in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        name = node["$ref"].rsplit("/", 1)[-1]
        merged = {**defs[name], **{k: v for k, v in node.items() if k != "$ref"}}
        return _inline(merged, defs)
    return {k: _inline(v, defs) for k, v in node.items() if k not in _DROP and k != "$defs"}


def _structural(node: Any, defaults: bool = True) -> Any:
    """Rewrite JSON Schema 2020-12 idioms into Kubernetes' OpenAPI v3 subset."""
    if isinstance(node, list):
        return [_structural(item, defaults) for item in node]
    if not isinstance(node, dict):
        return node
    node = {k: _structural(v, defaults) for k, v in node.items()}
    if not defaults:
        node.pop("default", None)
    if "default" in node and node["default"] is None:
        del node["default"]  # unset means unset; a null default only adds noise
    any_of = node.get("anyOf")
    if isinstance(any_of, list):
        options = [o for o in any_of if o.get("type") != "null"]
        if sorted(o.get("type") for o in options) == ["integer", "string"]:
            # int | str: Kubernetes' IntOrString (a number, or a percentage).
            rest = {k: v for k, v in node.items() if k != "anyOf"}
            node = {**rest, "x-kubernetes-int-or-string": True}
            if len(options) < len(any_of):
                node["nullable"] = True
        elif len(options) == 1 and len(options) < len(any_of):
            rest = {k: v for k, v in node.items() if k != "anyOf"}
            node = {**options[0], **rest, "nullable": True}
    for key, flag in (("exclusiveMinimum", "exclusiveMinimum"), ("exclusiveMaximum", "")):
        if key in node and not isinstance(node[key], bool):
            bound = node.pop(key)
            if key == "exclusiveMinimum":
                node["minimum"] = bound
                node[flag] = True
            else:
                node["maximum"] = bound
                node["exclusiveMaximum"] = True
    if node.get("type") == "object" and "properties" not in node:
        extra = node.get("additionalProperties")
        if not isinstance(extra, dict) or not extra:
            node.pop("additionalProperties", None)
            node["x-kubernetes-preserve-unknown-fields"] = True
    if node.get("type") == "array" and node.get("items") == {}:
        node["items"] = {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
    items = node.get("items")
    if isinstance(items, dict) and items.get("type") == "object" and "properties" not in items:
        items.pop("additionalProperties", None)
        items["x-kubernetes-preserve-unknown-fields"] = True
    if node.get("type") == "object" and "properties" in node:
        node.pop("additionalProperties", None)
        for prop in node["properties"].values():
            if (
                defaults
                and prop.get("type") == "object"
                and "default" not in prop
                and "properties" in prop
                and not prop.get("nullable")  # optional: unset means absent
            ):
                prop["default"] = {}
    return node


def _schema(model: type[BaseModel], defaults: bool) -> JsonSchema:
    raw = model.model_json_schema(by_alias=True, mode="serialization")
    defs = raw.pop("$defs", {})
    schema: JsonSchema = _structural(_inline(raw, defs), defaults)
    return schema


def spec_schema() -> JsonSchema:
    """The spec's schema, with Kubernetes' own PodTemplateSpec as ``podTemplate``."""
    schema = _schema(AsgiServerSpec, defaults=True)
    field = schema["properties"]["podTemplate"]
    schema["properties"]["podTemplate"] = {
        **podschema.load()["schema"],
        "description": field["description"],
    }
    return schema


def status_schema() -> JsonSchema:
    schema = _schema(AsgiServerStatus, defaults=False)
    schema["description"] = "Observed state, written by the operator."
    return schema


def check_descriptions(schema: JsonSchema, path: str = "spec") -> list[str]:
    """Fields without a description (kubectl explain would show nothing).

    ``spec.podTemplate`` is Kubernetes' schema, with Kubernetes' descriptions: not ours."""
    missing = []
    for name, prop in schema.get("properties", {}).items():
        where = f"{path}.{name}"
        if not prop.get("description"):
            missing.append(where)
        if where != "spec.podTemplate":
            missing += check_descriptions(prop, where)
        if isinstance(prop.get("items"), dict):
            missing += check_descriptions(prop["items"], where + "[]")
    return missing


def _column(name: str, kind: str, path: str) -> dict[str, str]:
    return {"name": name, "type": kind, "jsonPath": path}


def crd() -> dict[str, Any]:
    spec = spec_schema()
    spec["description"] = "Desired state of an ASGI service and its server settings."
    columns = [
        _column("Ready", "string", '.status.conditions[?(@.type=="Ready")].status'),
        _column("Mode", "string", ".spec.mode"),
        _column("Concurrency", "integer", ".status.effective.limitConcurrency"),
        _column("Backlog", "integer", ".status.effective.backlog"),
        _column("KeepAlive", "number", ".status.effective.timeoutKeepAlive"),
        _column("Age", "date", ".metadata.creationTimestamp"),
    ]
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{PLURAL}.{GROUP}"},
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": KIND,
                "listKind": f"{KIND}List",
                "plural": PLURAL,
                "singular": SINGULAR,
                "shortNames": SHORT_NAMES,
                "categories": ["all"],
            },
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {
                        "status": {},
                        # kubectl scale, an HPA and KEDA scale an AsgiServer like a Deployment.
                        "scale": {
                            "specReplicasPath": ".spec.replicas",
                            "statusReplicasPath": ".status.replicas",
                            "labelSelectorPath": ".status.selector",
                        },
                    },
                    "additionalPrinterColumns": columns,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "description": (
                                "An ASGI service (FastAPI, Starlette, Django ASGI) with the"
                                " asgi-sidecar in front: keep-alive, concurrency and backlog"
                                " that agree with its clients and its kernel."
                            ),
                            "required": ["spec"],
                            "properties": {
                                "apiVersion": {"type": "string", "description": "API version."},
                                "kind": {"type": "string", "description": "Kind."},
                                "metadata": {"type": "object"},
                                "spec": spec,
                                "status": status_schema(),
                            },
                        }
                    },
                }
            ],
        },
    }


def render() -> str:
    # A document start of its own: `helm show crds` joins the chart's CRD files without one,
    # and kubectl would read two files as one document.
    header = "---\n# Generated by `make crds` from asgi_operator.models; do not edit.\n"
    return header + yaml.safe_dump(crd(), sort_keys=False, width=100)


if __name__ == "__main__":
    sys.stdout.write(render())
