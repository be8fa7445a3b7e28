"""Run the proxy process: sockets, metrics port, config reload, signals, graceful shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from asgi_sidecar import __version__
from asgi_sidecar.admin import AdminServer
from asgi_sidecar.metrics import SidecarCollector, make_registry, settings_info
from asgi_sidecar.reloading import ConfigWatcher
from asgi_sidecar.serving import ProxyCore
from asgi_sidecar.settings import SidecarSettings

log = logging.getLogger("asgi_sidecar")

UPSTREAM_PROBE_TIMEOUT = 1.0


async def probe_upstream(host: str, port: int) -> tuple[bool, str]:
    try:
        _, writer = await asyncio.wait_for(
            asyncio.open_connection(host, port), UPSTREAM_PROBE_TIMEOUT
        )
    except (OSError, TimeoutError) as exc:
        return False, f"upstream {host}:{port} not reachable: {exc or 'timeout'}"
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True, "ok"


async def drain(core: ProxyCore) -> None:
    """The SIGTERM sequence: unready, wait shutdown_delay, close listener, finish in-flight."""
    settings = core.settings
    core.begin_drain()
    log.info("draining: readiness is now 503")
    if settings.shutdown_delay:
        await asyncio.sleep(settings.shutdown_delay)
    core.close_listener()
    log.info(
        "listener closed; waiting up to %ss for in-flight requests",
        settings.timeout_graceful_shutdown,
    )
    try:
        await asyncio.wait_for(core.all_closed.wait(), settings.timeout_graceful_shutdown)
    except TimeoutError:
        log.warning(
            "graceful shutdown timed out with %d connections open; closing them",
            len(core.connections),
        )
    core.abort_all()


async def run_proxy(
    settings: SidecarSettings,
    *,
    config_path: Path | None = None,
    environ: Mapping[str, str] | None = None,
    flags: Mapping[str, Any] | None = None,
) -> int:
    loop = asyncio.get_running_loop()
    core = ProxyCore(settings, loop)
    core.start()

    def info() -> dict[str, str]:
        return settings_info(core.settings.model_dump(), "proxy", __version__)

    registry = make_registry(SidecarCollector(core.stats, core.gauges, info))

    async def readiness() -> tuple[bool, str]:
        if not core.ready:
            return False, "draining"
        return await probe_upstream(*core.settings.upstream_address)

    admin = AdminServer(registry, readiness)
    try:
        await admin.start(settings.metrics_host, settings.metrics_port)
    except OSError:
        core.abort_all()
        raise
    tasks: list[asyncio.Task[None]] = []
    if config_path is not None:
        watcher = ConfigWatcher(
            config_path,
            environ or {},
            flags or {},
            core.apply,
            lambda result: core.stats.config_reloads.update([result]),
        )
        tasks.append(loop.create_task(watcher.run()))
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    log.info(
        "asgi-sidecar %s proxying http://%s:%d -> %s; metrics on http://%s:%d/metrics",
        __version__,
        settings.host,
        core.bound_port,
        settings.upstream,
        settings.metrics_host,
        admin.port,
    )
    await stop.wait()
    await drain(core)
    for task in tasks:
        task.cancel()
    await admin.close()
    log.info("stopped")
    return 0
