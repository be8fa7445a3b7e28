"""Start kopf with the operator's registry and settings."""

from __future__ import annotations

import asyncio
import getpass
import os
import socket

import kopf
from kubernetes import client, config

from asgi_operator.config import OperatorSettings
from asgi_operator.handlers import build_registry
from asgi_operator.kube import Kube

# kopf runs up to 16 handler threads plus the resync loop on one ApiClient; urllib3's
# default pool (5 per CPU) drops and re-opens TLS connections under a burst.
CONNECTION_POOL = 32


def load_kube_config() -> client.ApiClient:
    try:
        config.load_incluster_config()  # type: ignore[no-untyped-call]
    except config.ConfigException:
        config.load_kube_config()  # type: ignore[no-untyped-call]
    configuration = client.Configuration.get_default_copy()
    configuration.connection_pool_maxsize = CONNECTION_POOL
    return client.ApiClient(configuration)


def identity() -> str | None:
    """The operator's name for kopf, where kopf's own guess would fail.

    kopf takes ``POD_ID`` (the chart sets it from the Pod's name), else the user name,
    which a uid without a passwd entry (65532 in a slim image) does not have."""
    if os.environ.get("POD_ID"):
        return None
    try:
        getpass.getuser()
    except (KeyError, OSError):
        return f"uid-{os.getuid()}@{socket.gethostname()}/{os.getpid()}"
    return None


def run(settings: OperatorSettings, *, verbose: bool = False) -> int:
    kube = Kube(load_kube_config())
    registry = build_registry(settings, kube)
    kopf.configure(
        verbose=verbose,
        log_format=kopf.LogFormat.JSON if settings.log_format == "json" else kopf.LogFormat.PLAIN,
    )
    asyncio.run(
        kopf.operator(
            registry=registry,
            clusterwide=settings.all_namespaces,
            namespaces=settings.namespaces,
            standalone=settings.peering is None,
            peering_name=settings.peering,
            priority=settings.priority,
            liveness_endpoint=settings.liveness,
            identity=identity(),  # type: ignore[arg-type]  # kopf's Identity is a NewType of str
        )
    )
    return 0
