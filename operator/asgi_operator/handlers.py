"""The operator's wiring: kopf events in, ``reconciling.reconcile`` and the autotuner out.

``AsgiOperator`` holds what the handlers share: the build options, the tuner,
one in-memory store of AsgiServers fed by kopf's watch (a kopf index), and what
each AsgiServer's children looked like when last applied.  The resync and
autotune loops read the store instead of listing, and a child event finds its
owner there instead of asking the API server.  Every reconcile writes the one
status, with the tuner's values handed over in memory.
"""

from __future__ import annotations

import asyncio
import logging
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kopf
from kubernetes.client.exceptions import ApiException
from prometheus_client import CollectorRegistry, start_http_server

from asgi_operator.autotuning import Autotuner, TuningMetrics
from asgi_operator.building import MANAGED_BY, SELECTOR_LABEL, BuildOptions
from asgi_operator.config import NativeSidecars, OperatorSettings
from asgi_operator.injecting import INJECT_LABEL
from asgi_operator.kube import Kube
from asgi_operator.models import GROUP, PLURAL, VERSION
from asgi_operator.reconciling import reconcile, status_changed
from asgi_operator.statusing import changes
from asgi_operator.statusmodels import AsgiServerStatus
from asgi_operator.webhooking import AttachMetrics, Webhook

log = logging.getLogger("asgi_operator")

CHILD_LABELS = {"app.kubernetes.io/managed-by": MANAGED_BY}
NATIVE_SINCE = 29
NAMED_SIDECAR_PORTS_SINCE = 32
COALESCE_SECONDS = 1.0
TUNE_TICK_SECONDS = 1.0
# Handler ids; the ones that run for every watch event log their successes at debug level.
STORE = "asgiservers"
RECONCILE = "reconcile"
ON_CHILD = "reconcile-owner-of-child"
PER_EVENT = (STORE, ON_CHILD, f"{ON_CHILD}-server", f"{ON_CHILD}-inject")

Key = tuple[str, str]


def native_sidecars(settings: OperatorSettings, kube: Kube, since: int) -> bool:
    if settings.native_sidecars == NativeSidecars.auto:
        return kube.server_minor_version() >= since
    return settings.native_sidecars == NativeSidecars.always


def build_options(settings: OperatorSettings, kube: Kube) -> BuildOptions:
    native = native_sidecars(settings, kube, NATIVE_SINCE)
    return BuildOptions(sidecar_image=settings.sidecar_image, native_sidecars=native)


def build_webhook(settings: OperatorSettings, kube: Kube, registry: CollectorRegistry) -> Webhook:
    assert settings.webhook is not None
    # The injected proxy takes over the app's named port; EndpointSlices resolve the named
    # ports of native sidecars from Kubernetes 1.32 on (kubernetes#128850).
    native = native_sidecars(settings, kube, NAMED_SIDECAR_PORTS_SINCE)
    workdir = Path(tempfile.mkdtemp(prefix="asgi-operator-webhook-"))
    watched = [] if settings.all_namespaces else settings.namespaces
    return Webhook(
        kube, settings.webhook, settings.sidecar_image, native, registry, workdir, watched
    )


def _namespace_terminating(exc: ApiException) -> bool:
    # A namespace being deleted refuses new objects with 403; its AsgiServers go with it.
    return exc.status == 403 and "NamespaceTerminating" in str(exc.body or "")


class QuietSuccesses(logging.Filter):
    """kopf logs "Handler 'x' succeeded." at info level for every event it handles.

    For the handlers that run on every child and AsgiServer event that is a wall of
    identical lines; they go to debug level (shown with --verbose).  What changed
    is logged by ``AsgiOperator.sync`` instead.
    """

    def __init__(self, handler_ids: tuple[str, ...]) -> None:
        super().__init__()
        self.lines = tuple(f"Handler '{i}' succeeded." for i in handler_ids)

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno == logging.INFO and str(record.msg).endswith(self.lines):
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
            return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)
        return True


class AsgiOperator:
    """Reconciles AsgiServers and tunes them; ``registry()`` wires it into kopf."""

    def __init__(
        self, settings: OperatorSettings, kube: Kube, options: BuildOptions | None = None
    ) -> None:
        self.settings = settings
        self.kube = kube
        self.options = options or build_options(settings, kube)
        self.metrics = CollectorRegistry()
        address_map = settings.scrape_address_map
        self.tuner = Autotuner(
            kube, TuningMetrics(self.metrics), Path(address_map) if address_map else None
        )
        self.store: kopf.Index[Key, dict[str, Any]] | None = None
        self.applied: dict[str, dict[str, Any]] = {}
        self.written: dict[str, AsgiServerStatus] = {}  # by uid: the status last written
        self.last_child_run: dict[Key, float] = {}
        self.tasks: list[asyncio.Task[None]] = []
        self.quiet = QuietSuccesses(PER_EVENT)
        self.webhook = build_webhook(settings, kube, self.metrics) if settings.webhook else None
        self.attach_metrics = AttachMetrics(self.metrics)
        self.attached: set[Key] = set()
        self._locks: dict[Key, threading.Lock] = {}
        self._locks_guard = threading.Lock()

    # The one pass every path takes.

    def sync(self, body: dict[str, Any]) -> None:
        """Reconcile one AsgiServer and write its status; kopf errors for kopf to retry."""
        meta = body["metadata"]
        key = (meta["namespace"], meta["name"])
        try:
            with self._lock(key):
                # The one writer of the status knows what it wrote last, even while the watch
                # still shows an older status: transition times and the log start from there.
                written = self.written.get(meta["uid"])
                outcome = reconcile(
                    self.kube, body, self.options, self.tuner.report, self.applied, written
                )
                said = [f"applied {what}" for what in outcome.changed]
                said += changes(
                    written or AsgiServerStatus.read(body.get("status")), outcome.status
                )
                if status_changed(body.get("status"), outcome.status):
                    self.kube.patch_status(*key, outcome.status.to_patch())
                self.written[meta["uid"]] = outcome.status
        except ApiException as exc:
            if exc.status == 404 or _namespace_terminating(exc):
                return  # deleted meanwhile: garbage collection takes the children
            if exc.status in (409, 429) or exc.status >= 500:
                message = f"API server answered {exc.status}: {exc.reason}"
                raise kopf.TemporaryError(message, delay=2) from exc
            raise
        if outcome.without_proxy is not None:
            self.attach_metrics.without_proxy.labels(*key).set(outcome.without_proxy)
            self.attached.add(key)
        elif key in self.attached:  # no longer attached
            self.attach_metrics.without_proxy.remove(*key)
            self.attached.discard(key)
        if said:
            log.info("AsgiServer %s/%s: %s", *key, "; ".join(said))
        for reason, message in outcome.warnings:
            try:
                self.kube.post_event(body, reason, message)
            except ApiException as exc:  # an Event is worth a try, never a retry
                log.warning("could not post the %s event: %s", reason, exc.reason)

    def _lock(self, key: Key) -> threading.Lock:
        # kopf's handler threads and the two loops may reach one AsgiServer at once.
        with self._locks_guard:
            return self._locks.setdefault(key, threading.Lock())

    def stored(self, namespace: str, name: str) -> dict[str, Any] | None:
        """The AsgiServer as the watch last showed it (None: unknown or being deleted)."""
        if self.store is None or (namespace, name) not in self.store:
            return None
        body = next(iter(self.store[namespace, name]), None)
        if body is None or body["metadata"].get("deletionTimestamp"):
            return None
        return body

    def bodies(self) -> Iterator[dict[str, Any]]:
        for namespace, name in list(self.store or ()):
            body = self.stored(namespace, name)
            if body is not None:
                yield body

    def _sync_quietly(self, body: dict[str, Any], why: str) -> None:
        try:
            self.sync(body)
        except kopf.TemporaryError as exc:
            log.warning("%s of %s deferred: %s", why, body["metadata"]["name"], exc)

    # kopf handlers.

    def index(self, name: str, namespace: str | None, body: kopf.Body, **_: Any) -> Any:
        return {(namespace or "", name): dict(body)}

    def on_change(self, body: kopf.Body, **_: Any) -> None:
        self.sync(dict(body))

    def on_child_event(self, meta: kopf.Meta, **_: Any) -> None:
        # Children change often (Pod readiness, Deployment status, our own applies); one
        # reconcile per owner per COALESCE_SECONDS is enough, and the resync loop catches
        # anything skipped.
        labels = meta.get("labels") or {}
        owner = labels.get(SELECTOR_LABEL) or labels.get(INJECT_LABEL)
        namespace = meta.get("namespace")
        if not owner or not namespace:
            return
        key = (namespace, owner)
        now = time.monotonic()
        if now - self.last_child_run.get(key, -COALESCE_SECONDS) < COALESCE_SECONDS:
            return
        self.last_child_run[key] = now
        body = self.stored(namespace, owner)
        if body is not None:
            self.sync(body)

    def configure(self, settings: kopf.OperatorSettings, **_: Any) -> None:
        settings.posting.level = logging.WARNING
        # kopf's bookkeeping goes to annotations: the status holds only AsgiServerStatus,
        # whose schema has no room for kopf's fields.
        settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
        settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix=GROUP)
        settings.watching.server_timeout = 300
        settings.watching.client_timeout = 330
        settings.execution.max_workers = 16
        logging.getLogger("kopf.objects").addFilter(self.quiet)

    async def start(self, **kwargs: Any) -> None:
        self.store = kwargs[STORE]
        # First, so that a webhook that cannot start (kopf retries the startup) leaves no
        # loops behind to be started twice.
        if self.webhook is not None:
            await self.webhook.start()
        loop = asyncio.get_running_loop()
        self.tasks.append(loop.create_task(self.resync_forever()))
        self.tasks.append(loop.create_task(self.autotune_forever()))
        if self.settings.metrics_port:
            try:
                start_http_server(self.settings.metrics_port, registry=self.metrics)
            except OSError as exc:  # metrics are worth having, not worth refusing to run
                log.error("operator metrics not served on :%d: %s", self.settings.metrics_port, exc)

    async def stop(self, **_: Any) -> None:
        for task in self.tasks:
            task.cancel()
        if self.webhook is not None:
            await self.webhook.stop()
        logging.getLogger("kopf.objects").removeFilter(self.quiet)

    # The loops (not kopf timers: kopf puts a finalizer on objects with timers, which
    # would block `kubectl delete` while the operator is down).

    async def resync_forever(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.settings.resync_seconds)
            try:
                for body in list(self.bodies()):
                    await loop.run_in_executor(None, self._sync_quietly, body, "resync")
            except Exception:  # keep resyncing whatever one pass met
                log.exception("resync pass failed")

    async def autotune_forever(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(TUNE_TICK_SECONDS)
            try:
                now = time.monotonic()
                bodies = list(self.bodies())
                live = {b["metadata"]["uid"] for b in bodies}
                for uid in set(self.tuner.states) - live:
                    self.tuner.forget(uid)
                for uid in set(self.written) - live:
                    del self.written[uid]
                keys = {(b["metadata"]["namespace"], b["metadata"]["name"]) for b in bodies}
                for key in self.attached - keys:
                    self.attach_metrics.without_proxy.remove(*key)
                    self.attached.discard(key)
                for body in bodies:
                    if self.tuner.due(body, now):
                        await loop.run_in_executor(None, self._tune_one, body)
            except Exception:  # keep tuning whatever one round met
                log.exception("autotune round failed")

    def _tune_one(self, body: dict[str, Any]) -> None:
        try:
            self.tuner.tune(body)
        except ApiException as exc:
            log.warning("autotune of %s deferred: %s", body["metadata"]["name"], exc.reason)
            return
        # The tuned values and the Tuned condition go out with the next reconcile: now.
        meta = body["metadata"]
        self._sync_quietly(self.stored(meta["namespace"], meta["name"]) or body, "autotune")

    def registry(self) -> kopf.OperatorRegistry:
        registry = kopf.OperatorRegistry()
        # A registry of our own does not get kopf's default login handlers.
        kopf.on.login(registry=registry)(kopf.login_via_client)
        kopf.on.startup(registry=registry, id="configure")(self.configure)
        kopf.on.startup(registry=registry, id="start-loops")(self.start)
        kopf.on.cleanup(registry=registry, id="stop-loops")(self.stop)
        kopf.index(GROUP, VERSION, PLURAL, registry=registry, id=STORE)(self.index)
        retries, backoff = self.settings.retries, self.settings.backoff_seconds
        for cause in (kopf.on.resume, kopf.on.create, kopf.on.update):
            cause(
                GROUP, VERSION, PLURAL, registry=registry, id=RECONCILE,
                retries=retries, backoff=backoff,
            )(self.on_change)  # fmt: skip
        for group_version, plural in (
            ("apps/v1", "deployments"),
            ("v1", "services"),
            ("v1", "configmaps"),
        ):
            kopf.on.event(
                group_version, plural, labels=CHILD_LABELS, registry=registry, id=ON_CHILD
            )(self.on_child_event)
        # Pods: the generated ones and the injected ones carry the selector label; those of
        # an attached workload that went without the proxy only the opt-in label.
        for label in (SELECTOR_LABEL, INJECT_LABEL):
            kopf.on.event(
                "v1", "pods", labels={label: kopf.PRESENT}, registry=registry,
                id=f"{ON_CHILD}-{label.split('/')[1]}",
            )(self.on_child_event)  # fmt: skip
        return registry


def build_registry(settings: OperatorSettings, kube: Kube) -> kopf.OperatorRegistry:
    return AsgiOperator(settings, kube).registry()
