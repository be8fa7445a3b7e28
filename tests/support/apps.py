"""The upstream application the integration tests put behind the sidecar (plain ASGI)."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from pathlib import Path
from typing import Any

STATE: dict[str, Any] = {"cancelled": 0, "active": 0}
# /stream waits here between pieces, one item per /release with the same key.
RELEASES: dict[str, asyncio.Queue[None]] = {}
RELEASE_TIMEOUT = 30.0  # a stream whose test went away ends instead of waiting forever


async def _read_body(receive: Any) -> tuple[int, bytes]:
    size = 0
    sample = b""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise asyncio.CancelledError
        chunk = message.get("body", b"")
        size += len(chunk)
        if len(sample) < 64:
            sample += chunk[: 64 - len(sample)]
        if not message.get("more_body"):
            return size, sample


async def _respond(send: Any, status: int, body: bytes, headers: list[Any] | None = None) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"text/plain"), *(headers or [])],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def app(scope: Any, receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            else:
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] == "websocket":
        await _websocket(receive, send)
        return
    path = scope["path"]
    query = dict(
        part.split("=", 1) for part in scope["query_string"].decode().split("&") if "=" in part
    )
    if path == "/headers":
        headers = {k.decode(): v.decode() for k, v in scope["headers"]}
        await _read_body(receive)
        await _respond(send, 200, json.dumps(headers).encode())
    elif path == "/echo":
        size, sample = await _read_body(receive)
        await _respond(send, 200, json.dumps({"size": size, "start": sample.decode()}).encode())
    elif path == "/slow":
        await _read_body(receive)
        STATE["active"] += 1
        try:
            await asyncio.sleep(float(query.get("s", "1")))
        except asyncio.CancelledError:
            STATE["cancelled"] += 1
            raise
        finally:
            STATE["active"] -= 1
        await _respond(send, 200, b"slow done")
    elif path == "/download":
        # A streamed (chunked) body of n bytes in 64 KiB pieces.
        total = int(query.get("n", "0"))
        await send({"type": "http.response.start", "status": 200, "headers": []})
        piece = b"x" * 65536
        sent = 0
        while sent < total:
            chunk = piece[: min(65536, total - sent)]
            sent += len(chunk)
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b""})
    elif path == "/fixed":
        # A body of n bytes with a Content-Length, sent in 64 KiB pieces.
        total = int(query.get("n", "0"))
        headers = [(b"content-type", b"text/plain"), (b"content-length", str(total).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        for start in range(0, total, 65536):
            chunk = b"f" * min(65536, total - start)
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b""})
    elif path == "/stream":
        # n pieces; each after the first waits for a /release?key= of the same key, so a test
        # sees whether a piece reached it before the app was allowed to write the next one.
        await _read_body(receive)
        queue = RELEASES.setdefault(query.get("key", ""), asyncio.Queue())
        await send({"type": "http.response.start", "status": 200, "headers": []})
        for n in range(int(query.get("n", "3"))):
            if n:
                await asyncio.wait_for(queue.get(), RELEASE_TIMEOUT)
            body = f"piece {n}\n".encode()
            await send({"type": "http.response.body", "body": body, "more_body": True})
        await send({"type": "http.response.body", "body": b""})
    elif path == "/release":
        await _read_body(receive)
        RELEASES.setdefault(query.get("key", ""), asyncio.Queue()).put_nowait(None)
        await _respond(send, 200, b"released")
    elif path == "/cpu":
        # CPU-bound work of a known cost: the app's capacity is 1000 / ms requests/s.
        await _read_body(receive)
        end = time.process_time() + float(query.get("ms", "2")) / 1000
        while time.process_time() < end:
            pass
        await _respond(send, 200, b"cpu done")
    elif path == "/stats":
        await _respond(send, 200, json.dumps(STATE).encode())
    elif path == "/hostname":
        # In a Pod the hostname is the Pod's name: behind a Service, which Pod answered.
        await _read_body(receive)
        await _respond(send, 200, socket.gethostname().encode())
    else:
        await _read_body(receive)
        await _respond(send, 200, b"hello")


async def _websocket(receive: Any, send: Any) -> None:
    message = await receive()
    assert message["type"] == "websocket.connect"
    await send({"type": "websocket.accept"})
    while True:
        message = await receive()
        if message["type"] == "websocket.disconnect":
            return
        await send({"type": "websocket.send", "text": "echo:" + (message.get("text") or "")})


def uvicorn_command(port: int) -> list[str]:
    """A container command running ``app`` on uvicorn from this module's own source, for an
    image that has uvicorn but not the tests (the real node's demo image, tests/node).
    So this module imports nothing but the standard library."""
    run = f"\nimport uvicorn\nuvicorn.run(app, host='0.0.0.0', port={port}, log_level='warning')\n"
    return ["python3", "-c", Path(__file__).read_text() + run]
