"""asgi-sidecar: an HTTP/1.1 front server that enforces keep-alive, concurrency and backlog."""

from pathlib import Path as _Path

from asgi_sidecar import builds as _builds

__version__ = "0.1.0"

if _builds.pure_requested():
    _builds.prefer_sources(_Path(__file__).resolve().parent)
