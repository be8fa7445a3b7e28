"""``spec.podTemplate`` merged onto the generated pod template; the operator's fields kept.

Pure.  The merge is Kubernetes' strategic merge, as ``kubectl patch`` does it on a Pod:
- maps merge key by key, all the way down; a scalar or a list without a merge key is
  replaced by the user's; ``null`` removes a key;
- lists with a merge key (``containers`` and ``initContainers`` by ``name``, ``env`` by
  ``name``, ``ports`` by ``containerPort``, ``volumeMounts`` by ``mountPath``, ``volumes``,
  ``imagePullSecrets``, ``topologySpreadConstraints``...; the table is generated from
  Kubernetes' schema, ``podschema.py``) merge item by item: an item whose key matches is
  merged into the generated one, a new item is appended;
- ``securityContext.sysctls`` merges by ``name`` too (it has no merge key upstream), so a
  Pod can have other sysctls beside the ones the operator sets.
The user's container ``proxy`` is merged into the sidecar wherever the operator put it
(an init container when native sidecars are on).

What the operator owns (``owned_paths``) must come out as generated; a user value that
differs is a conflict, reported with the field's path and never silently overridden.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

Json = dict[str, Any]
# A step into a template: a map key, or (merge key, value) picking an item of a list.
Step = str | tuple[str, Any]
Path = tuple[Step, ...]

_EXTRA_KEYS = {"spec.securityContext.sysctls": "name"}
_CONTAINER_LISTS = ("containers", "initContainers")


class TemplateConflictError(ValueError):
    """The user's template sets fields the operator owns to other values."""

    def __init__(self, fields: list[str]) -> None:
        super().__init__("; ".join(fields))
        self.fields = fields


def _schema_path(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def _item_path(path: str) -> str:
    return path + "[]"


def _index(items: list[Any], key: str, value: Any) -> int | None:
    """The position of the item whose ``key`` is ``value``, None if there is none."""
    for i, item in enumerate(items):
        if isinstance(item, dict) and item.get(key) == value:
            return i
    return None


def _merge(base: Any, patch: Any, path: str, keys: dict[str, str]) -> Any:
    if isinstance(base, dict) and isinstance(patch, dict):
        out = dict(base)
        for name, value in patch.items():
            where = _schema_path(path, name)
            if value is None:
                out.pop(name, None)
            elif name in out:
                out[name] = _merge(out[name], value, where, keys)
            else:
                out[name] = copy.deepcopy(value)
        return out
    key = keys.get(path)
    if key is not None and isinstance(base, list) and isinstance(patch, list):
        merged = list(base)
        for item in patch:
            found = _index(merged, key, item.get(key)) if isinstance(item, dict) else None
            if found is None:
                merged.append(copy.deepcopy(item))
            else:
                merged[found] = _merge(merged[found], item, _item_path(path), keys)
        return merged
    return copy.deepcopy(patch)


def _relocate_containers(generated: Json, user_spec: Json) -> Json:
    """The user's containers, each under the list where the operator put that name."""
    placed = {
        c.get("name"): where for where in _CONTAINER_LISTS for c in generated.get(where) or []
    }
    spec = {k: v for k, v in user_spec.items() if k not in _CONTAINER_LISTS}
    for where in _CONTAINER_LISTS:
        for container in user_spec.get(where) or []:
            name = container.get("name") if isinstance(container, dict) else None
            spec.setdefault(placed.get(name, where), []).append(container)
    return spec


def merge(generated: Json, user: Json | None, merge_keys: dict[str, str]) -> Json:
    """The generated pod template with the user's merged onto it (nothing checked)."""
    if not user:
        return generated
    keys = {**merge_keys, **_EXTRA_KEYS}
    patch = dict(user)
    if isinstance(patch.get("spec"), dict):
        patch["spec"] = _relocate_containers(generated.get("spec", {}), patch["spec"])
    merged: Json = _merge(generated, patch, "", keys)
    return merged


def get(template: Any, path: Path) -> Any:
    """The value at ``path``, None where any step is missing."""
    node = template
    for step in path:
        if isinstance(step, tuple):
            key, value = step
            if not isinstance(node, list):
                return None
            node = next((i for i in node if isinstance(i, dict) and i.get(key) == value), None)
        elif isinstance(node, dict):
            node = node.get(step)
        else:
            return None
        if node is None:
            return None
    return node


def spelled(path: Path) -> str:
    """``spec.podTemplate.spec.containers[proxy].ports``, as a user would find it."""
    text = "spec.podTemplate"
    for step in path:
        text += f"[{step[1]}]" if isinstance(step, tuple) else f".{step}"
    return text


def conflicts(generated: Json, merged: Json, owned: list[Path]) -> list[str]:
    """The owned fields the merge changed, spelled for the user."""
    return [spelled(path) for path in owned if get(merged, path) != get(generated, path)]


def merge_owned(
    generated: Json, user: Json | None, merge_keys: dict[str, str], owned: list[Path]
) -> Json:
    """``merge``, refused with ``TemplateConflictError`` if an owned field would change."""
    merged = merge(generated, user, merge_keys)
    found = conflicts(generated, merged, owned)
    if found:
        raise TemplateConflictError([f"{field}: set by the operator" for field in found])
    return merged


def container_path(template: Json, name: str) -> Path | None:
    """Where the container ``name`` is in a template: (spec, list, (name, ...))."""
    spec = template.get("spec", {})
    for where in _CONTAINER_LISTS:
        if any(c.get("name") == name for c in spec.get(where) or []):
            return ("spec", where, ("name", name))
    return None


def each_item(template: Json, path: Path, key: str) -> Iterator[Path]:
    """The path of every item of the keyed list at ``path``."""
    for item in get(template, path) or []:
        if isinstance(item, dict) and key in item:
            yield (*path, (key, item[key]))
