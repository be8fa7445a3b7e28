"""The sidecar's settings: one typed model, the single source of truth.

The operator embeds this model in the AsgiServer CRD and writes it, as JSON or
YAML, into the file the sidecar reads with ``--config``.  Field names are
snake_case in Python and on the command line, camelCase in files and in the CRD;
both spellings are accepted everywhere a file is read.

A serving process never imports this module (nor pydantic): it gets the validated
values as a ``validated.ValidSettings`` from a child process (``validating``).

This module is pure: no I/O, no asyncio.
"""

from __future__ import annotations

from typing import Annotated, get_args
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic.alias_generators import to_camel

from asgi_sidecar.validated import ValidSettings

Seconds = Annotated[float, Field(gt=0, le=86_400)]


def is_nullable(name: str) -> bool:
    """True for settings where null means "no limit"."""
    return type(None) in get_args(SidecarSettings.model_fields[name].annotation)


class SidecarLimits(BaseModel):
    """Keep-alive, concurrency, backlog and timeouts: what an AsgiServer's ``server`` holds.

    The operator embeds exactly this model in the CRD; the addresses (ports,
    upstream) are derived by the operator from the AsgiServer and added in
    ``SidecarSettings``.
    """

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        frozen=True,
        validate_default=True,
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "!has(self.adaptiveMin) || !has(self.adaptiveMax)"
                    " || self.adaptiveMin <= self.adaptiveMax",
                    "message": "adaptiveMin must not exceed adaptiveMax",
                }
            ]
        },
    )

    timeout_keep_alive: Seconds = Field(
        default=75.0,
        description=(
            "Seconds an idle client connection is kept open, including one that never sent a"
            " byte. Keep it above the idle timeout of whatever reuses connections in front of"
            " you (AWS ALB 60 s, mobile clients about 75 s), or clients will reuse a connection"
            " the server is closing and see 502s or 'connection closed' errors."
        ),
    )
    header_timeout: Seconds = Field(
        default=10.0,
        description=(
            "Seconds from a request's first byte until its headers must be complete; slower"
            " clients (slowloris) get 408 and the connection is closed."
        ),
    )
    body_timeout: Seconds = Field(
        default=10.0,
        description=(
            "Seconds from the end of a request's head until its body has arrived, or its"
            " first 16 KiB when it is larger (then the rest streams to the application)."
            " A request is sent to the application, and takes a concurrency slot, only once"
            " that much arrived, so slow uploads (R-U-Dead-Yet) hold no slot; slower clients"
            " get 408 and the connection is closed. Requests with Expect: 100-continue are"
            " sent at once instead. Proxy mode (in serve mode uvicorn reads bodies)."
        ),
    )
    send_timeout: Seconds = Field(
        default=30.0,
        description=(
            "Seconds a client may leave a response unread: while the sidecar's write buffer"
            " for the connection stays full (64 KiB waiting for the client), the deadline"
            " runs; then the connection is closed and its application request aborted, which"
            " frees its slot (slow-read attacks). Lower it where slow readers matter more than"
            " clients below about 2 KB/s. Proxy mode (in serve mode uvicorn writes responses)."
        ),
    )
    limit_concurrency: int | None = Field(
        default=100,
        ge=1,
        le=1_000_000,
        description=(
            "Requests in flight to the application at once (exactly this many). Idle"
            " keep-alive connections never count. Excess requests wait in the queue or get"
            " 503 with Retry-After. null means no limit."
        ),
    )
    adaptive: bool = Field(
        default=False,
        description=(
            "Adapt the concurrency limit to the application's latency every 0.25 s (proxy and"
            " embedded mode): limit_concurrency is the starting value and the limit moves within"
            " adaptive_min..adaptive_max, shrinking when latency rises above 1.25 times the"
            " measured no-load latency and growing only while the limit is reached."
        ),
    )
    adaptive_min: int = Field(
        default=1,
        ge=1,
        le=1_000_000,
        description="Lowest concurrency limit the adaptive limit may set.",
    )
    adaptive_max: int = Field(
        default=1000,
        ge=1,
        le=1_000_000,
        description="Highest concurrency limit the adaptive limit may set.",
    )
    queue_depth: int = Field(
        default=0,
        ge=0,
        le=1_000_000,
        description=(
            "Requests that may wait for a free slot when the concurrency limit is reached;"
            " 0 rejects at once."
        ),
    )
    queue_timeout: Seconds = Field(
        default=1.0,
        description="Seconds a queued request waits for a slot before it gets 503.",
    )
    retry_after: int = Field(
        default=1,
        ge=0,
        le=3600,
        description="Value of the Retry-After header (seconds) sent with every 503.",
    )
    max_connections: int | None = Field(
        default=None,
        ge=1,
        le=10_000_000,
        description=(
            "Cap on open client sockets. At the cap the least recently used idle keep-alive"
            " connection is closed to make room; with none idle the sidecar stops accepting"
            " and the kernel's accept queue holds new connections. null means no cap."
        ),
    )
    backlog: int = Field(
        default=2048,
        ge=1,
        le=1_048_576,
        description=(
            "listen() backlog of the public socket (the accept queue). The kernel silently"
            " clamps it to net.core.somaxconn of the Pod's network namespace; the effective"
            " value is exported as asgi_listen_backlog_effective."
        ),
    )
    upstream_timeout: Seconds = Field(
        default=60.0,
        description=(
            "Seconds to wait for the application's response headers; then 504. Also bounds"
            " connecting to the application."
        ),
    )
    upstream_keep_alive: Seconds = Field(
        default=4.0,
        description=(
            "Seconds a pooled connection to the application may stay idle. Keep it below the"
            " application's own keep-alive (uvicorn: 5 s) so the sidecar, not the app, closes"
            " idle pooled connections."
        ),
    )
    upstream_max_idle: int = Field(
        default=256,
        ge=0,
        le=100_000,
        description="Idle pooled connections to the application kept for reuse.",
    )
    max_header_size: int = Field(
        default=65_536,
        ge=1024,
        le=16 * 1024 * 1024,
        description="Bytes allowed for a request line plus headers; larger requests get 431.",
    )
    timeout_graceful_shutdown: Seconds = Field(
        default=30.0,
        description=(
            "Seconds in-flight requests get to finish after SIGTERM (after shutdown_delay);"
            " then the remaining connections are closed."
        ),
    )
    shutdown_delay: float = Field(
        default=0.0,
        ge=0,
        le=3600,
        description=(
            "Seconds between SIGTERM (readiness turns 503 at once) and closing the listener,"
            " so endpoints and load balancers stop sending new connections first."
        ),
    )

    @model_validator(mode="after")
    def _adaptive_bounds_ordered(self) -> SidecarLimits:
        if self.adaptive_min > self.adaptive_max:
            raise ValueError(
                f"adaptive_min ({self.adaptive_min}) must not exceed"
                f" adaptive_max ({self.adaptive_max})"
            )
        return self


class SidecarSettings(SidecarLimits):
    """Everything one sidecar process runs with: the limits plus its addresses."""

    upstream: str = Field(
        default="http://127.0.0.1:8000",
        description=(
            "URL of the application inside the Pod (http://host:port). The sidecar forwards"
            " every request there over pooled keep-alive connections."
        ),
    )
    host: str = Field(default="0.0.0.0", description="Address the public listener binds.")
    port: int = Field(
        default=8080, ge=1, le=65535, description="Public port: clients and Services connect here."
    )
    metrics_host: str = Field(
        default="0.0.0.0", description="Address of the metrics and health listener."
    )
    metrics_port: int = Field(
        default=9090,
        ge=1,
        le=65535,
        description="Port serving /metrics, /healthz and /readyz; never subject to limits.",
    )
    drain_token: str | None = Field(
        default=None,
        min_length=16,
        description=(
            "Required in the X-Drain-Token header of GET /drain on the metrics port (the"
            " app container's preStop hook); null: /drain needs no token."
        ),
    )

    @field_validator("upstream")
    @classmethod
    def _upstream_is_http_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError("must be an http:// URL with a host, like http://127.0.0.1:8000")
        if parts.path not in ("", "/") or parts.query:
            raise ValueError("must not have a path or query; requests keep their own path")
        try:
            parts.port  # noqa: B018 - raises ValueError on a bad port
        except ValueError as exc:
            raise ValueError(f"has an invalid port: {exc}") from None
        return value

    @model_validator(mode="after")
    def _ports_differ(self) -> SidecarSettings:
        if self.port == self.metrics_port:
            raise ValueError("port and metrics_port must differ")
        return self

    def validated(self) -> ValidSettings:
        """These settings as a serving process holds them."""
        return ValidSettings(self.model_dump())
