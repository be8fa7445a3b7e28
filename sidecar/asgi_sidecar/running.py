"""Run a sidecar process in either mode: metrics port, config reload, signals, graceful drain.

The proxy (``serving.ProxyCore``) and the in-process server
(``embedding.EmbeddedServer``) differ in how they serve; everything around
that lives here once: the admin port and its registry, the config watcher,
SIGTERM/SIGINT, and the drain sequence (unready, ``shutdown_delay``, stop
accepting, at most ``timeout_graceful_shutdown`` for what is in flight).
A second signal cuts the shutdown delay short.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final, Protocol

from asgi_sidecar import __version__, builds
from asgi_sidecar.admin import AdminServer
from asgi_sidecar.metrics import Gauges, SidecarCollector, settings_info
from asgi_sidecar.reloading import ConfigWatcher
from asgi_sidecar.stats import Stats, count
from asgi_sidecar.validated import ValidSettings

log = logging.getLogger("asgi_sidecar")

SIGNALS: Final = (signal.SIGTERM, signal.SIGINT)


class Server(Protocol):
    """One way of serving traffic; the runner does the rest of the process."""

    @property
    def mode(self) -> str:
        """The ``mode`` label of asgi_sidecar_info."""

    settings: ValidSettings
    stats: Stats
    ready: bool

    def open(self) -> None:
        """Bind the public socket (before anything else starts: errors end the process)."""

    def describe(self) -> str:
        """What it serves where, for the start-up line."""

    async def serve(self) -> int:
        """Serve until stopped (or until it stops by itself); the exit code."""

    async def readiness(self) -> tuple[bool, str]: ...
    def gauges(self) -> Gauges: ...

    def apply(self, new: ValidSettings) -> None:
        """Apply reloaded settings (restart-only fields already kept at their old values)."""

    def begin_drain(self, seconds: float) -> None:
        """The Pod's preStop drain (GET /drain), or SIGTERM's ``shutdown_delay``, for
        ``seconds``: unready, connections not kept after their next response."""

    def stop_accepting(self) -> None:
        """Close the listener and idle connections; in-flight requests go on."""

    async def finish(self, timeout: float) -> None:
        """Let in-flight requests end within ``timeout``, then stop ``serve``."""

    def abort(self) -> None:
        """Close everything at once (start-up failed)."""


def live_settings(old: ValidSettings, new: ValidSettings) -> ValidSettings:
    """``new`` with the fields only a restart can change kept at their ``old`` values."""
    ignored = old.restart_only_changes(new)
    if not ignored:
        return new
    log.warning("settings %s change only on restart; keeping the old values", ignored)
    return new.replace({f: getattr(old, f) for f in ignored})


def apply_reloaded(server: Server, new: ValidSettings) -> None:
    old = server.settings
    new = live_settings(old, new)
    server.apply(new)
    log.info("settings applied: %s", old.changes(new))


async def drain(server: Server, hurry: asyncio.Event) -> None:
    """The SIGTERM sequence: unready, wait shutdown_delay, stop accepting, finish in-flight."""
    server.ready = False
    log.info("draining: readiness is now 503")
    delay = server.settings.shutdown_delay
    if delay:
        # As the preStop drain does: while endpoints update, each connection closes after
        # its next response, so its client reconnects (to other Pods, soon) instead of
        # meeting the close of an idle connection when the listener closes.
        server.begin_drain(delay)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(hurry.wait(), delay)
    server.stop_accepting()
    timeout = server.settings.timeout_graceful_shutdown
    log.info("listener closed; waiting up to %ss for in-flight requests", timeout)
    await server.finish(timeout)


async def run(
    server: Server,
    *,
    config_path: Path | None = None,
    environ: Mapping[str, str] | None = None,
    flags: Mapping[str, Any] | None = None,
) -> int:
    loop = asyncio.get_running_loop()
    server.open()
    build = builds.running_build()

    def info() -> dict[str, str]:
        return settings_info(server.settings.dump(), server.mode, __version__, build)

    collector = SidecarCollector(server.stats, server.gauges, info)
    admin = AdminServer(
        collector.scrape, server.readiness, server.begin_drain, lambda: server.settings.drain_token
    )
    settings = server.settings
    try:
        await admin.start(settings.metrics_host, settings.metrics_port)
    except OSError:
        server.abort()
        raise
    tasks: list[asyncio.Task[None]] = []
    if config_path is not None:
        watcher = ConfigWatcher(
            config_path,
            environ or {},
            flags or {},
            lambda new: apply_reloaded(server, new),
            lambda result: count(server.stats.config_reloads, result),
        )
        tasks.append(loop.create_task(watcher.run()))
    hurry = asyncio.Event()
    draining: list[asyncio.Task[None]] = []

    def on_signal() -> None:
        if draining:
            hurry.set()  # a second signal: stop waiting for the shutdown delay
        else:
            draining.append(loop.create_task(drain(server, hurry)))

    for signum in SIGNALS:
        loop.add_signal_handler(signum, on_signal)
    log.info(
        "asgi-sidecar %s (%s) %s; metrics on http://%s:%d/metrics",
        __version__,
        builds.describe(),
        server.describe(),
        settings.metrics_host,
        admin.port,
    )
    try:
        code = await server.serve()
    finally:
        for signum in SIGNALS:
            loop.remove_signal_handler(signum)
        for task in tasks + draining:
            task.cancel()
        await admin.close()
    log.info("stopped")
    return code
