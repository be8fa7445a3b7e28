"""kopf handlers: thin wiring from events to ``reconciling.reconcile``."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Any

import kopf
from kubernetes.client.exceptions import ApiException
from prometheus_client import CollectorRegistry, start_http_server

from asgi_operator.autotuning import Autotuner, TuningMetrics
from asgi_operator.building import MANAGED_BY, SELECTOR_LABEL, BuildOptions
from asgi_operator.config import NativeSidecars, OperatorSettings
from asgi_operator.kube import Kube
from asgi_operator.models import GROUP, PLURAL, VERSION
from asgi_operator.reconciling import reconcile, status_changed

log = logging.getLogger("asgi_operator")

CHILD_LABELS = {"app.kubernetes.io/managed-by": MANAGED_BY}
LIST_EVERY_SECONDS = 5.0
COALESCE_SECONDS = 1.0


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
        try:
            kube.post_event(dict(body), reason, message)
        except ApiException as exc:  # an Event is worth a try, never a retry
            log.warning("could not post the %s event: %s", reason, exc.reason)


def build_registry(settings: OperatorSettings, kube: Kube) -> kopf.OperatorRegistry:
    registry = kopf.OperatorRegistry()
    scope = None if settings.all_namespaces else list(settings.namespaces)
    if settings.native_sidecars == NativeSidecars.auto:
        native = kube.server_minor_version() >= 29
    else:
        native = settings.native_sidecars == NativeSidecars.always
    options = BuildOptions(sidecar_image=settings.sidecar_image, native_sidecars=native)
    retries, backoff = settings.retries, settings.backoff_seconds

    @kopf.on.login(registry=registry)
    def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
        # A registry of our own does not get kopf's default login handlers.
        return kopf.login_via_client(**kwargs)

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

    # A periodic resync without kopf.timer: kopf puts a finalizer on objects with timers,
    # which would block `kubectl delete` while the operator is down.
    resync_task: list[asyncio.Task[None]] = []

    async def resync_forever() -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(settings.resync_seconds)
            try:
                bodies = await loop.run_in_executor(None, kube.list_asgiservers, scope)
                for body in bodies:
                    await loop.run_in_executor(None, _resync_one, body)
            except Exception:  # keep resyncing whatever one pass met
                log.exception("resync pass failed")

    def _resync_one(body: dict[str, Any]) -> None:
        try:
            _run(kube, options, body)
        except kopf.TemporaryError as exc:
            log.warning("resync of %s deferred: %s", body["metadata"]["name"], exc)

    metrics_registry = CollectorRegistry()
    tuner = Autotuner(
        kube,
        TuningMetrics(metrics_registry),
        Path(settings.scrape_address_map) if settings.scrape_address_map else None,
    )

    def _tune_one(body: dict[str, Any]) -> None:
        meta = body["metadata"]
        fresh = kube.get_asgiserver(meta["namespace"], meta["name"])
        if fresh is None or fresh["metadata"].get("deletionTimestamp"):
            return
        try:
            patch = tuner.tune(fresh)
        except ApiException as exc:
            log.warning("autotune of %s deferred: %s", meta["name"], exc.reason)
            return
        if patch is None:
            return
        kube.patch_status(meta["namespace"], meta["name"], patch)
        # Apply the tuned values to the children now, not at the next resync.
        fresh = kube.get_asgiserver(meta["namespace"], meta["name"])
        if fresh is not None:
            _resync_one(fresh)

    async def autotune_forever() -> None:
        loop = asyncio.get_running_loop()
        bodies: list[dict[str, Any]] = []
        listed = -LIST_EVERY_SECONDS
        while True:
            await asyncio.sleep(1.0)
            try:
                now = time.monotonic()
                if now - listed >= LIST_EVERY_SECONDS:
                    bodies = await loop.run_in_executor(None, kube.list_asgiservers, scope)
                    listed = now
                for body in bodies:
                    if tuner.due(body, now):
                        await loop.run_in_executor(None, _tune_one, body)
            except Exception:  # keep tuning whatever one round met
                log.exception("autotune round failed")

    @kopf.on.startup(registry=registry)
    async def start_resync(**_: Any) -> None:
        loop = asyncio.get_running_loop()
        resync_task.append(loop.create_task(resync_forever()))
        resync_task.append(loop.create_task(autotune_forever()))
        if settings.metrics_port:
            try:
                start_http_server(settings.metrics_port, registry=metrics_registry)
            except OSError as exc:  # metrics are worth having, not worth refusing to run
                log.error("operator metrics not served on :%d: %s", settings.metrics_port, exc)

    @kopf.on.cleanup(registry=registry)
    async def stop_resync(**_: Any) -> None:
        for task in resync_task:
            task.cancel()

    # Children change often (Pod readiness, Deployment status, our own applies); one
    # reconcile per owner per COALESCE_SECONDS is enough, and the resync loop catches
    # anything skipped.
    last_run: dict[tuple[str, str], float] = {}

    def _owner_event(event: Any, meta: Any, **_: Any) -> None:
        owner = (meta.get("labels") or {}).get(SELECTOR_LABEL)
        if not owner:
            return
        key = (meta["namespace"], owner)
        now = time.monotonic()
        if now - last_run.get(key, -COALESCE_SECONDS) < COALESCE_SECONDS:
            return
        last_run[key] = now
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
