"""The settings the request path reads, as native attributes of a compiled class.

``ValidSettings`` holds every setting; it is a plain class, not compiled, so reading one
of its fields from compiled code is a generic attribute lookup (a type lookup and a slot
descriptor call), where an attribute of this class costs a few instructions.  The proxy
core, its upstream pool and embedded mode's guard each hold a ``LiveSettings`` made from
the current settings, and make a new one whenever settings are applied, so both always
say the same.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from asgi_sidecar.validated import ValidSettings


class LiveSettings:
    """The fields of ``ValidSettings`` read per request or per connection."""

    def __init__(self, settings: ValidSettings) -> None:
        self.timeout_keep_alive: float = settings.timeout_keep_alive
        self.header_timeout: float = settings.header_timeout
        self.body_timeout: float = settings.body_timeout
        self.send_timeout: float = settings.send_timeout
        self.retry_after: int = settings.retry_after
        self.max_connections: int | None = settings.max_connections
        self.max_header_size: int = settings.max_header_size
        self.upstream: str = settings.upstream
        self.upstream_timeout: float = settings.upstream_timeout
        self.upstream_keep_alive: float = settings.upstream_keep_alive
        self.upstream_max_idle: int = settings.upstream_max_idle
