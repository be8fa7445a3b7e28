"""The operator's own settings: one typed object, built once from the command line."""

from __future__ import annotations

from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field

from asgi_operator import __version__

DEFAULT_SIDECAR_IMAGE = f"asgi-dev/asgi-sidecar:{__version__}"


class NativeSidecars(StrEnum):
    auto = "auto"  # native sidecars on Kubernetes 1.29 and later
    always = "always"
    never = "never"


class OperatorSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    namespaces: list[str] = Field(default_factory=list, description="Namespaces to watch.")
    all_namespaces: bool = Field(default=False, description="Watch every namespace.")
    sidecar_image: str = Field(default=DEFAULT_SIDECAR_IMAGE, description="Sidecar image.")
    native_sidecars: NativeSidecars = Field(default=NativeSidecars.auto)
    peering: str | None = Field(
        default=None, description="KopfPeering name for a highly available pair; None: standalone."
    )
    priority: int = Field(default=0, description="Peering priority; the highest one runs.")
    liveness: str | None = Field(
        default="http://0.0.0.0:8081/healthz", description="Liveness endpoint URL, or None."
    )
    log_format: str = Field(default="plain", pattern="^(plain|json)$")
    resync_seconds: float = Field(
        default=10.0, gt=0, description="Re-apply children and refresh status this often."
    )
    retries: int = Field(default=10, ge=1, description="Attempts per handler before it rests.")
    metrics_port: int | None = Field(
        default=8082, description="Port of the operator's own /metrics; None: not served."
    )
    scrape_address_map: str | None = Field(
        default=None,
        description="Test-only: JSON file mapping podIP:port to host:port for scraping.",
    )
    backoff_seconds: float = Field(default=5.0, gt=0, description="Delay between attempts.")
