"""asgi-sidecar: an HTTP/1.1 front server that enforces keep-alive, concurrency and backlog."""

__version__ = "0.1.0"
