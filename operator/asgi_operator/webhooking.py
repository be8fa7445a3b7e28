"""The admission webhook's edge: HTTPS on aiohttp, certificates kept fresh, Events posted.

It runs in the operator's event loop (every operator replica serves it, the standby ones
of a peering too: it keeps no state but the certificate).  For each Pod CREATE it reads
the AsgiServer from the API server, so a Pod is injected with the spec as it is at that
moment, and ``admission.answer`` decides.  Reading fails: the Pod is refused, and its
ReplicaSet or StatefulSet tries again (``failurePolicy: Fail`` means the same when the
webhook cannot be reached).
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from aiohttp import web
from kubernetes.client.exceptions import ApiException
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from asgi_operator.admission import (
    WEBHOOK_PATH,
    Answer,
    Notice,
    answer,
    refused,
    requested_server,
    webhook_configuration,
)
from asgi_operator.certkeeping import CertFiles, CertKeeper
from asgi_operator.config import WebhookSettings
from asgi_operator.kube import Kube

log = logging.getLogger("asgi_operator")

# One Event per workload and reason in this long: a ReplicaSet of 50 Pods is one line.
EVENT_EVERY_SECONDS = 60.0
_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class AdmissionMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.reviews = Counter(
            "asgi_operator_admission_reviews",
            "Pod admissions the webhook answered, by result: injected, unchanged (admitted"
            " without the proxy, with an Event), refused (the AsgiServer could not be read),"
            " ignored (no asgi.dev/inject label).",
            ["result"],
            registry=registry,
        )
        self.seconds = Histogram(
            "asgi_operator_admission_duration_seconds",
            "Time the webhook took to answer an admission review (what it adds to a Pod's"
            " creation), from the request read to the answer written.",
            buckets=_BUCKETS,
            registry=registry,
        )


class AttachMetrics:
    """What the dashboard and the alerts need of attached workloads."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.without_proxy = Gauge(
            "asgi_operator_pods_without_proxy",
            "Pods of an attached workload (spec.targetRef) that run without the proxy: created"
            " before the AsgiServer or the webhook existed, or refused injection; a rollout restart"
            " of the workload gives them the proxy.",
            ["namespace", "name"],
            registry=registry,
        )


def _hosts(settings: WebhookSettings) -> tuple[list[str], list[str]]:
    """(DNS names, IP addresses) the serving certificate must cover."""
    names: list[str] = []
    ips: list[str] = []
    if settings.service is not None:
        namespace, name = settings.service
        names += [f"{name}.{namespace}.svc", f"{name}.{namespace}.svc.cluster.local"]
    if settings.url:
        host = urlparse(settings.url).hostname or ""
        (ips if host.replace(".", "").isdigit() or ":" in host else names).append(host)
    return names, ips


def _involved(review: dict[str, Any]) -> dict[str, Any] | None:
    """What an Event about a Pod being created is about: its controller (the Pod has no
    name yet when it comes from generateName)."""
    request = review.get("request") or {}
    meta = (request.get("object") or {}).get("metadata") or {}
    namespace = request.get("namespace") or meta.get("namespace")
    for ref in meta.get("ownerReferences") or []:
        if ref.get("controller"):
            return {
                "apiVersion": ref.get("apiVersion"),
                "kind": ref.get("kind"),
                "metadata": {"name": ref["name"], "namespace": namespace, "uid": ref.get("uid")},
            }
    if meta.get("name"):
        return {"apiVersion": "v1", "kind": "Pod", "metadata": {**meta, "namespace": namespace}}
    return None


class Webhook:
    """The webhook server; ``start`` and ``stop`` from the operator's startup and cleanup."""

    def __init__(
        self,
        kube: Kube,
        settings: WebhookSettings,
        sidecar_image: str,
        native_sidecars: bool,
        registry: CollectorRegistry,
        workdir: Path,
        watched: Sequence[str] = (),
    ) -> None:
        self.kube = kube
        self.settings = settings
        self.sidecar_image = sidecar_image
        self.native_sidecars = native_sidecars
        self.watched = list(watched)
        self.metrics = AdmissionMetrics(registry)
        self.certs: CertFiles | CertKeeper
        if settings.cert_dir:
            self.certs = CertFiles(Path(settings.cert_dir))
        else:
            assert settings.secret is not None
            names, ips = _hosts(settings)
            self.certs = CertKeeper(
                kube.api_client,
                settings.secret[0],
                settings.secret[1],
                settings.configuration,
                names,
                ips,
                workdir,
                cert_days=settings.cert_days,
            )
        self.ssl = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ssl.minimum_version = ssl.TLSVersion.TLSv1_2
        self.runner: web.AppRunner | None = None
        self.task: asyncio.Task[None] | None = None
        self._events: dict[tuple[str, str, str], float] = {}

    # Certificates.

    def _refresh(self) -> bool:
        """Certificates checked (renewed, caBundle patched); True when the files changed."""
        certs = self.certs
        changed = certs.sync() if isinstance(certs, CertKeeper) else certs.changed()
        if self.settings.manage_configuration:
            self.kube.apply(self.configuration())
        return changed

    def configuration(self) -> dict[str, Any]:
        if isinstance(self.certs, CertKeeper):
            ca = self.certs.ca_bundle
        else:  # cert-manager's Secret has the CA beside the certificate
            ca_file = Path(self.settings.cert_dir or ".") / "ca.crt"
            ca = ca_file.read_bytes() if ca_file.exists() else b""
        return webhook_configuration(
            self.settings.configuration,
            self.settings.own_namespace(),
            service=self.settings.service,
            url=self.settings.url,
            ca_bundle=ca,
            timeout_seconds=self.settings.timeout_seconds,
            watched=self.watched,
        )

    def _load(self) -> None:
        self.ssl.load_cert_chain(str(self.certs.cert_file), str(self.certs.key_file))

    async def _keep_certificates(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.settings.cert_check_seconds)
            try:
                if await loop.run_in_executor(None, self._refresh):
                    self._load()  # new handshakes get the new certificate
                    log.info("webhook serves a new certificate")
            except Exception:  # the current certificate serves on; try again next time
                log.exception("webhook certificate check failed")

    # Serving.

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, self._refresh)
        self._load()
        app = web.Application(client_max_size=4 * 1024 * 1024)
        app.router.add_post(WEBHOOK_PATH, self.mutate)
        app.router.add_get("/healthz", self.healthz)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(
            self.runner, self.settings.host, self.settings.port, ssl_context=self.ssl
        )
        await site.start()
        self.task = loop.create_task(self._keep_certificates())
        log.info("admission webhook on https://%s:%d%s", self.settings.host,
                 self.settings.port, WEBHOOK_PATH)  # fmt: skip

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
        if self.runner is not None:
            await self.runner.cleanup()

    async def healthz(self, _: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def mutate(self, request: web.Request) -> web.Response:
        started = time.perf_counter()
        try:
            review = await request.json()
            if not isinstance(review, dict) or not isinstance(review.get("request"), dict):
                raise ValueError("not an AdmissionReview")
        except ValueError as exc:
            return web.json_response({"error": f"bad AdmissionReview: {exc}"}, status=400)
        result, body = await self._answer(review)
        self.metrics.reviews.labels(result).inc()
        self.metrics.seconds.observe(time.perf_counter() - started)
        return web.json_response(body)

    async def _answer(self, review: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        asked = requested_server(review)
        if asked is None:
            return "ignored", answer(review, None, "", False).review
        loop = asyncio.get_running_loop()
        try:
            server = await loop.run_in_executor(None, self.kube.get_asgiserver, *asked)
        except ApiException as exc:
            message = f"asgi-operator could not read AsgiServer {asked[0]}/{asked[1]}: {exc.reason}"
            log.warning("%s; Pod refused, its controller retries", message)
            return "refused", refused(review, message)
        result = answer(review, server, self.sidecar_image, self.native_sidecars)
        if result.notice is not None:
            self._notify(review, result)
        return ("injected" if result.injected else "unchanged"), result.review

    def _notify(self, review: dict[str, Any], result: Answer) -> None:
        notice: Notice | None = result.notice
        involved = _involved(review)
        if notice is None or involved is None or (review.get("request") or {}).get("dryRun"):
            return
        meta = involved["metadata"]
        key = (str(meta["namespace"]), str(meta["name"]), notice.reason)
        now = time.monotonic()
        if now - self._events.get(key, -EVENT_EVERY_SECONDS) < EVENT_EVERY_SECONDS:
            return
        self._events[key] = now
        log.warning("%s/%s: %s", meta["namespace"], meta["name"], notice.message)
        loop = asyncio.get_running_loop()
        loop.run_in_executor(None, self._post, involved, notice)

    def _post(self, involved: dict[str, Any], notice: Notice) -> None:
        try:
            self.kube.post_event(involved, notice.reason, notice.message)
        except ApiException as exc:  # an Event is worth a try, never a retry
            log.warning("could not post the %s event: %s", notice.reason, exc.reason)
