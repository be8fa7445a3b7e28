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


class WebhookSettings(BaseModel):
    """The admission webhook that injects the proxy into attached workloads' Pods."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    port: int = Field(ge=1, le=65535, description="HTTPS port of the webhook.")
    host: str = Field(default="0.0.0.0", description="Address the webhook listens on.")
    configuration: str = Field(
        default="asgi-operator", description="The MutatingWebhookConfiguration kept up to date."
    )
    service: tuple[str, str] | None = Field(
        default=None, description="(namespace, name) of the Service in front of the webhook."
    )
    url: str | None = Field(
        default=None, description="Where the API server reaches the webhook from outside."
    )
    manage_configuration: bool = Field(
        default=False, description="Apply the whole configuration, not only its caBundle."
    )
    cert_dir: str | None = Field(
        default=None, description="tls.crt and tls.key from here (cert-manager); else self-managed."
    )
    secret: tuple[str, str] | None = Field(
        default=None, description="(namespace, name) of the Secret of self-managed certificates."
    )
    cert_days: int = Field(default=365, ge=1, description="Validity of the serving certificate.")
    cert_check_seconds: float = Field(
        default=3600.0, gt=0, description="How often the certificates are checked."
    )
    timeout_seconds: int = Field(default=5, ge=1, le=30, description="The API server's timeout.")

    def own_namespace(self) -> str:
        """The operator's namespace, whose Pods never go to the webhook."""
        for where in (self.secret, self.service):
            if where is not None:
                return where[0]
        return "default"


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
    webhook: WebhookSettings | None = Field(default=None, description="None: no webhook.")
