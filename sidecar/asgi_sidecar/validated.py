"""Settings that passed validation, as plain attributes: what a running sidecar holds.

``settings.SidecarSettings`` (pydantic) is the one model of every setting: its names,
types, defaults, bounds and help.  A serving process never imports it: pydantic and the
model's validators take about 10 MB of memory in every Pod (README, Memory), more than
the proxy's own code.  Flags, environment and file are validated in a short-lived child
process (``validating``), and the serving process gets the result as a ``ValidSettings``.
Its attributes mirror the model's fields one for one, with the same types;
tests/unit/test_validated.py fails when the two differ.

Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final
from urllib.parse import urlsplit

# The environment variables of the settings: ASGI_SIDECAR_<FIELD NAME IN UPPER CASE>.
ENV_PREFIX: Final = "ASGI_SIDECAR_"
# Settings that only a restart can change (the sockets are bound at start).
RESTART_ONLY_FIELDS: Final = frozenset({"upstream", "host", "port", "metrics_host", "metrics_port"})


class ConfigError(ValueError):
    """Settings that cannot be used, with a message naming the field and the source."""


class ValidSettings:
    """``SidecarSettings`` after validation, by field name (``model_dump()``)."""

    __slots__ = (
        "adaptive",
        "adaptive_max",
        "adaptive_min",
        "backlog",
        "body_timeout",
        "drain_token",
        "header_timeout",
        "host",
        "limit_concurrency",
        "max_connections",
        "max_header_size",
        "metrics_host",
        "metrics_port",
        "port",
        "queue_depth",
        "queue_timeout",
        "retry_after",
        "send_timeout",
        "shutdown_delay",
        "timeout_graceful_shutdown",
        "timeout_keep_alive",
        "upstream",
        "upstream_keep_alive",
        "upstream_max_idle",
        "upstream_timeout",
    )  # fmt: skip

    timeout_keep_alive: float
    header_timeout: float
    body_timeout: float
    send_timeout: float
    limit_concurrency: int | None
    adaptive: bool
    adaptive_min: int
    adaptive_max: int
    queue_depth: int
    queue_timeout: float
    retry_after: int
    max_connections: int | None
    backlog: int
    upstream_timeout: float
    upstream_keep_alive: float
    upstream_max_idle: int
    max_header_size: int
    timeout_graceful_shutdown: float
    shutdown_delay: float
    upstream: str
    host: str
    port: int
    metrics_host: str
    metrics_port: int
    drain_token: str | None

    def __init__(self, values: Mapping[str, Any]) -> None:
        """``values``: every field, as the model dumps it (validated, not checked again)."""
        missing = [name for name in self.__slots__ if name not in values]
        unknown = sorted(set(values) - set(self.__slots__))
        if missing or unknown:
            raise ValueError(f"not a settings dump: missing {missing}, unknown {unknown}")
        for name in self.__slots__:
            setattr(self, name, values[name])

    def dump(self) -> dict[str, Any]:
        """By field name (what ``SidecarSettings.model_dump`` gives, in name order)."""
        return {name: getattr(self, name) for name in self.__slots__}

    def replace(self, changes: Mapping[str, Any]) -> ValidSettings:
        return ValidSettings({**self.dump(), **changes})

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ValidSettings) and self.dump() == other.dump()

    __hash__ = None  # type: ignore[assignment]  # mutable in principle: not a dict key

    def __repr__(self) -> str:
        return f"ValidSettings({self.dump()!r})"

    @property
    def upstream_address(self) -> tuple[str, int]:
        parts = urlsplit(self.upstream)
        assert parts.hostname is not None  # checked by the model's validator
        return parts.hostname, parts.port or 80

    def restart_only_changes(self, new: ValidSettings) -> list[str]:
        """Names of fields that differ in ``new`` but can only change with a restart."""
        return sorted(f for f in RESTART_ONLY_FIELDS if getattr(self, f) != getattr(new, f))

    def changes(self, new: ValidSettings) -> str:
        """``name old -> new`` for every field that differs, for the log."""
        diffs = (
            f"{name} {getattr(self, name)!r} -> {getattr(new, name)!r}"
            for name in self.__slots__
            if getattr(self, name) != getattr(new, name)
        )
        return ", ".join(diffs) or "no change"
