"""The public socket both modes listen on, and the figures read from it at scrape time.

The socket is bound here with the configured backlog (not by uvicorn or
``loop.create_server``) so that either mode can tell what the kernel made of
that backlog, resize it live and report its accept queue.
"""

from __future__ import annotations

import logging
import socket
from typing import TYPE_CHECKING, Any

from asgi_sidecar import kernel
from asgi_sidecar.metrics import Gauges

if TYPE_CHECKING:
    from asgi_sidecar.admitting import Admission
    from asgi_sidecar.validated import ValidSettings

log = logging.getLogger("asgi_sidecar")


def open_listener(host: str, port: int, backlog: int) -> socket.socket:
    """Bind the public socket and listen with the configured backlog."""
    infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind(address)
        sock.listen(backlog)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def measure_backlog(listener: socket.socket, requested: int) -> int:
    """The backlog the kernel gave ``listener``; a warning when somaxconn clamped it."""
    queue = kernel.listen_queue(listener)
    somaxconn = kernel.read_somaxconn()
    effective = queue[1] if queue is not None else kernel.effective_backlog(requested, somaxconn)
    if effective < requested:
        log.warning(
            "listen backlog %d was clamped to %d by net.core.somaxconn=%s of this network"
            " namespace; connections beyond %d waiting to be accepted will be dropped."
            " Raise net.core.somaxconn (the AsgiServer's sysctls) to at least %d.",
            requested,
            effective,
            somaxconn,
            effective,
            requested,
        )
    return effective


def read_gauges(
    settings: ValidSettings,
    *,
    listener: socket.socket | None,
    effective_backlog: int,
    connections: int,
    idle: int,
    admission: Admission[Any],
    ready: bool,
    upstream: tuple[int, int] = (0, 0),
) -> Gauges:
    """Live figures for the metrics, with the kernel's view of the listener and namespace."""
    limiter = admission.limiter
    adaptive = admission.adaptive
    listening = listener is not None and listener.fileno() >= 0
    queue = kernel.listen_queue(listener) if listening and listener is not None else None
    overflows = kernel.listen_overflows()
    return Gauges(
        connections_active=connections - idle,
        connections_idle=idle,
        in_flight=limiter.in_flight,
        concurrency_limit=limiter.limit,
        queue_length=limiter.queued,
        queue_depth=settings.queue_depth,
        backlog=settings.backlog,
        backlog_effective=effective_backlog,
        accept_queue=queue[0] if queue else None,
        listen_overflows=overflows[0] if overflows else None,
        listen_drops=overflows[1] if overflows else None,
        somaxconn=kernel.read_somaxconn(),
        keep_alive_timeout=settings.timeout_keep_alive,
        max_connections=settings.max_connections,
        upstream_connections=upstream[0],
        upstream_idle=upstream[1],
        ready=ready,
        adaptive_limit=adaptive.current if adaptive else None,
        adaptive_baseline=adaptive.baseline if adaptive else None,
    )
