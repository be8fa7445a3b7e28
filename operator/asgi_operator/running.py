"""Start kopf with the operator's registry and settings."""

from __future__ import annotations

import asyncio

import kopf
from kubernetes import client, config

from asgi_operator.config import OperatorSettings
from asgi_operator.handlers import build_registry
from asgi_operator.kube import Kube


def load_kube_config() -> client.ApiClient:
    try:
        config.load_incluster_config()  # type: ignore[no-untyped-call]
    except config.ConfigException:
        config.load_kube_config()  # type: ignore[no-untyped-call]
    return client.ApiClient()


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
        )
    )
    return 0
