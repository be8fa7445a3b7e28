"""Build the one SidecarSettings object from defaults, a config file, the environment and flags.

Precedence, lowest first: defaults, the ``--config`` file, ``ASGI_SIDECAR_*``
environment variables, command-line flags.  A live reload of the file re-applies
the same environment and flags on top, so an explicit flag always wins.

This is the only module that looks at environment variables (they are passed in
as a mapping, so the functions stay pure apart from reading the file).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from asgi_sidecar.settings import SidecarSettings, is_nullable
from asgi_sidecar.validated import ENV_PREFIX, ConfigError

_NULL_WORDS = frozenset({"", "none", "null"})


def _field_names() -> dict[str, str]:
    """Map every accepted spelling (snake_case and camelCase) to the field name."""
    names: dict[str, str] = {}
    for name, field in SidecarSettings.model_fields.items():
        names[name] = name
        if field.alias:
            names[field.alias] = name
    return names


def describe_validation_error(exc: ValidationError, source: str) -> str:
    lines = []
    for error in exc.errors():
        where = ".".join(str(part) for part in error["loc"]) or "(settings)"
        lines.append(f"{source}: {where}: {error['msg']}")
    return "\n".join(lines)


def parse_config_text(text: str, source: str) -> dict[str, Any]:
    """Parse a YAML or JSON settings document into field-name keyed values."""
    data = _parse_document(text, source)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping of settings, got {type(data).__name__}")
    names = _field_names()
    result: dict[str, Any] = {}
    for key, value in data.items():
        name = names.get(str(key))
        if name is None:
            known = ", ".join(sorted(SidecarSettings.model_fields))
            raise ConfigError(f"{source}: unknown setting {key!r}; known settings: {known}")
        result[name] = value
    return result


def _parse_document(text: str, source: str) -> Any:
    """JSON (what the operator writes) with ``json``; anything else as YAML.

    PyYAML is imported only for a document that is not JSON: a process that never reads
    YAML never holds it (about 1.3 MB).  JSON is read by its own rules, so ``1e3`` is a
    number, as JSON says, where YAML 1.1 would read a string.
    """
    text = text.removeprefix("\ufeff")  # a byte order mark, as some editors write
    if not text.strip():
        return {}
    try:
        return json.loads(text)
    except ValueError:  # not JSON (or an int longer than Python reads): try YAML
        pass
    except RecursionError:
        raise ConfigError(f"{source}: nested too deeply") from None
    import yaml

    try:
        return yaml.safe_load(text)
    # PyYAML's constructors raise ValueError and RecursionError bare, not as YAMLError.
    except (yaml.YAMLError, ValueError, RecursionError) as exc:
        raise ConfigError(f"{source}: not valid YAML or JSON: {exc}") from None


def read_config_file(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"config file {path}: cannot read: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"config file {path}: not UTF-8 text") from None
    return parse_config_text(text, f"config file {path}")


def values_from_environment(environ: Mapping[str, str]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for name in SidecarSettings.model_fields:
        raw = environ.get(ENV_PREFIX + name.upper())
        if raw is None:
            continue
        if is_nullable(name) and raw.strip().lower() in _NULL_WORDS:
            result[name] = None
        else:
            result[name] = raw.strip()
    return result


def build_settings(
    *,
    file_values: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
    flags: Mapping[str, Any] | None = None,
    file_source: str = "config file",
) -> SidecarSettings:
    """Merge the layers and validate once; ConfigError says which field is wrong."""
    layers: list[tuple[str, Mapping[str, Any]]] = [
        (file_source, file_values or {}),
        ("environment", values_from_environment(environ or {})),
        ("command line", flags or {}),
    ]
    merged: dict[str, Any] = {}
    origin: dict[str, str] = {}
    for source, values in layers:
        for name, value in values.items():
            merged[name] = value
            origin[name] = source
    try:
        return SidecarSettings.model_validate(merged)
    except ValidationError as exc:
        lines = []
        for error in exc.errors():
            loc = [str(part) for part in error["loc"]]
            field = loc[0] if loc else ""
            source = origin.get(field, "settings")
            where = ".".join(loc) or "(settings)"
            lines.append(f"{source}: {where}: {error['msg']}")
        raise ConfigError("\n".join(lines)) from None


def load_settings(
    config_path: Path | None, environ: Mapping[str, str], flags: Mapping[str, Any]
) -> SidecarSettings:
    if config_path is None:
        return build_settings(environ=environ, flags=flags)
    return build_settings(
        file_values=read_config_file(config_path),
        environ=environ,
        flags=flags,
        file_source=f"config file {config_path}",
    )


def dump_settings(settings: SidecarSettings) -> str:
    """The settings as the JSON document the operator writes (camelCase keys)."""
    return json.dumps(settings.model_dump(by_alias=True), indent=2, sort_keys=True) + "\n"
