"""kopf handlers: thin wiring from events to ``reconciling.reconcile``."""

from __future__ import annotations

import logging
from typing import Any

import kopf
from kubernetes.client.exceptions import ApiException

from asgi_operator.building import MANAGED_BY, SELECTOR_LABEL, BuildOptions
from asgi_operator.config import NativeSidecars, OperatorSettings
from asgi_operator.kube import Kube
from asgi_operator.models import GROUP, PLURAL, VERSION
from asgi_operator.reconciling import reconcile, status_changed

log = logging.getLogger("asgi_operator")

CHILD_LABELS = {"app.kubernetes.io/managed-by": MANAGED_BY}


def _run(kube: Kube, options: BuildOptions, body: Any) -> None:
    try:
        outcome = reconcile(kube, dict(body), options)
        if status_changed(body.get("status"), outcome.status):
            kube.patch_status(
                body["metadata"]["namespace"], body["metadata"]["name"], outcome.status
            )
    except ApiException as exc:
        if exc.status == 404:
            return  # deleted meanwhile: garbage collection takes the children
        if exc.status in (409, 429) or exc.status >= 500:
            message = f"API server answered {exc.status}: {exc.reason}"
            raise kopf.TemporaryError(message, delay=2) from exc
        raise
    for reason, message in outcome.warnings:
        kopf.warn(dict(body), reason=reason, message=message)


def build_registry(settings: OperatorSettings, kube: Kube) -> kopf.OperatorRegistry:
    registry = kopf.OperatorRegistry()
    if settings.native_sidecars == NativeSidecars.auto:
        native = kube.server_minor_version() >= 29
    else:
        native = settings.native_sidecars == NativeSidecars.always
    options = BuildOptions(sidecar_image=settings.sidecar_image, native_sidecars=native)
    retries, backoff = settings.retries, settings.backoff_seconds

    @kopf.on.startup(registry=registry)
    def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
        settings.posting.level = logging.WARNING
        settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="asgi.dev")
        settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix="asgi.dev")
        settings.watching.server_timeout = 300
        settings.watching.client_timeout = 330
        settings.execution.max_workers = 16

    @kopf.on.resume(GROUP, VERSION, PLURAL, registry=registry, retries=retries, backoff=backoff)
    @kopf.on.create(GROUP, VERSION, PLURAL, registry=registry, retries=retries, backoff=backoff)
    @kopf.on.update(GROUP, VERSION, PLURAL, registry=registry, retries=retries, backoff=backoff)
    def on_change(body: kopf.Body, **_: Any) -> None:
        _run(kube, options, body)

    @kopf.timer(GROUP, VERSION, PLURAL, interval=settings.resync_seconds, registry=registry)
    def resync(body: kopf.Body, **_: Any) -> None:
        _run(kube, options, body)

    def _owner_event(event: Any, meta: Any, **_: Any) -> None:
        owner = (meta.get("labels") or {}).get(SELECTOR_LABEL)
        if not owner:
            return
        body = kube.get_asgiserver(meta["namespace"], owner)
        if body is None or body["metadata"].get("deletionTimestamp"):
            return
        _run(kube, options, body)

    for group_version, plural in (
        ("apps/v1", "deployments"),
        ("v1", "services"),
        ("v1", "configmaps"),
        ("v1", "pods"),
    ):
        kopf.on.event(group_version, plural, labels=CHILD_LABELS, registry=registry)(_owner_event)

    return registry
