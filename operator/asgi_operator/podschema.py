"""The schema of ``spec.podTemplate``: Kubernetes' own PodTemplateSpec, made structural.

Pure: the OpenAPI v3 document of Kubernetes' core API, as the control plane serves it
(``/openapi/v3/api/v1``), goes in; out come the structural schema a CRD may carry and
the strategic merge keys of its lists (``x-kubernetes-patch-merge-key``), which
``podtemplates.py`` merges by.
Nothing here is written by hand: ``make podschema`` (``hack/podschema.py``) writes
``podtemplate.json`` beside this module, the file ``crdgen``
and the operator read, and a control-plane test checks it against the running API server.

What changes on the way:
- ``$ref`` and ``allOf`` are inlined, and the resource ``Quantity`` and ``IntOrString``
  become ``x-kubernetes-int-or-string`` (a CRD cannot say ``oneOf`` string or number);
- the template's ``metadata`` is only its labels and annotations (a CRD cannot embed
  ObjectMeta, and no other field of it means anything in a template);
- ``ephemeralContainers`` is left out: a Pod cannot be created with them;
- defaults are left out but where a CRD needs one (``_drop_defaults``);
- the patch-strategy extensions are left out of the schema (a CRD may not carry them) and
  kept in the merge-key table instead.
"""

from __future__ import annotations

import functools
import json
from importlib import resources
from typing import Any

JsonSchema = dict[str, Any]

_PREFIX = "#/components/schemas/"
_ROOT = "io.k8s.api.core.v1.PodTemplateSpec"
_INT_OR_STRING = {
    "io.k8s.apimachinery.pkg.api.resource.Quantity",
    "io.k8s.apimachinery.pkg.util.intstr.IntOrString",
}
_LEFT_OUT = {"ephemeralContainers"}
# Keys a CRD schema may carry; everything else in Kubernetes' document is dropped.
_KEPT = {
    "description",
    "type",
    "format",
    "properties",
    "items",
    "additionalProperties",
    "required",
    "enum",
    "default",
    "x-kubernetes-list-type",
    "x-kubernetes-list-map-keys",
    "x-kubernetes-map-type",
}
_FILE = "podtemplate.json"


def _template_metadata() -> JsonSchema:
    def strings(what: str) -> JsonSchema:
        return {
            "type": "object",
            "additionalProperties": {"type": "string"},
            "description": f"{what} added to the Pods, beside the operator's own.",
        }

    return {
        "type": "object",
        "description": "Labels and annotations of the Pods.",
        "properties": {"labels": strings("Labels"), "annotations": strings("Annotations")},
    }


class _Converter:
    def __init__(self, schemas: dict[str, JsonSchema]) -> None:
        self.schemas = schemas
        self.merge_keys: dict[str, str] = {}

    def named(self, name: str, path: str, stack: tuple[str, ...]) -> JsonSchema:
        if name in stack:
            raise ValueError(f"recursive schema at {path}: {name}")
        if name in _INT_OR_STRING:
            return {"x-kubernetes-int-or-string": True}
        return self.node(self.schemas[name], path, (*stack, name))

    def node(self, raw: JsonSchema, path: str, stack: tuple[str, ...]) -> JsonSchema:
        out: JsonSchema = {}
        refs = [raw["$ref"]] if "$ref" in raw else []
        refs += [part["$ref"] for part in raw.get("allOf", []) if "$ref" in part]
        for ref in refs:
            out.update(self.named(ref.removeprefix(_PREFIX), path, stack))
        for key, value in raw.items():
            if key not in _KEPT:
                continue
            if key == "properties":
                out[key] = {
                    name: self.node(prop, f"{path}.{name}", stack)
                    for name, prop in value.items()
                    if name not in _LEFT_OUT
                }
            elif key in ("items", "additionalProperties") and isinstance(value, dict):
                out[key] = self.node(value, f"{path}[]" if key == "items" else path, stack)
            else:
                out[key] = value
        strategy = str(raw.get("x-kubernetes-patch-strategy", ""))
        if "merge" in strategy.split(",") and "x-kubernetes-patch-merge-key" in raw:
            self.merge_keys[path] = str(raw["x-kubernetes-patch-merge-key"])
        if out.get("x-kubernetes-int-or-string"):
            out.pop("type", None)
            out.pop("format", None)
        return out


def _drop_defaults(node: Any, keep: bool = False) -> None:
    """Remove Kubernetes' defaults but those of list-map keys that are not required.

    The defaults are zero values ({} or "") that a CRD would apply and validate (and
    refuse); the Deployment and Pod APIs apply their own.  A CRD needs one on a list-map
    key that may be left out (a port's ``protocol``, ``TCP``).
    """
    if not isinstance(node, dict):
        return
    if not keep:
        node.pop("default", None)
    keys = set(node.get("x-kubernetes-list-map-keys", []))
    items = node.get("items")
    for prop in node.get("properties", {}).values():
        _drop_defaults(prop)
    if isinstance(items, dict):
        required = set(items.get("required", []))
        for name, prop in items.get("properties", {}).items():
            _drop_defaults(prop, keep=name in keys and name not in required)
        items.pop("default", None)
    if isinstance(node.get("additionalProperties"), dict):
        _drop_defaults(node["additionalProperties"])


def convert(openapi: JsonSchema, kubernetes_version: str) -> JsonSchema:
    """The generated ``podtemplate.json``: {kubernetesVersion, schema, mergeKeys}."""
    schemas = openapi["components"]["schemas"]
    converter = _Converter(schemas)
    template = converter.node(schemas[_ROOT], "", (_ROOT,))
    template["properties"]["metadata"] = _template_metadata()
    _drop_defaults(template)
    return {
        "kubernetesVersion": kubernetes_version,
        "schema": template,
        "mergeKeys": {
            path.removeprefix("."): key
            for path, key in sorted(converter.merge_keys.items())
            if not path.startswith(".metadata.")  # ObjectMeta's, replaced above
        },
    }


@functools.cache
def load() -> JsonSchema:
    """The generated file, as shipped with the package (read once; do not modify it)."""
    text = resources.files("asgi_operator").joinpath(_FILE).read_text()
    generated: JsonSchema = json.loads(text)
    return generated


def render(generated: JsonSchema) -> str:
    return json.dumps(generated, indent=1, sort_keys=True) + "\n"
