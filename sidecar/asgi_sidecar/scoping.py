"""A complete request head on ``serve``'s uvicorn protocol becomes a scope and an exchange.

``uvicorn_protocol.GuardedProtocol`` calls ``start`` once the head passed the request
rules: the scope uvicorn began (``on_message_begin``) gets the method, version, path,
raw path and query, and the request runs as an ``answering.Exchange``, at once or after
the response before it (pipelining).  Compiled; no I/O but starting the exchange's task.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

from asgi_sidecar.answering import Exchange
from asgi_sidecar.refusing import split_absolute

if TYPE_CHECKING:
    from asgi_sidecar.guarding import Guard


def start(protocol: Any, guard: Guard[Any, asyncio.Future[None]]) -> None:
    """``protocol``'s request head is complete and passed the rules: fill in its scope and
    start its exchange, or queue it behind the one in progress (pipelining)."""
    parser = protocol.parser
    scope = protocol.scope
    version = parser.get_http_version()
    scope["method"] = parser.get_method().decode("ascii")
    if version != "1.1":
        scope["http_version"] = version
    if parser.should_upgrade() and protocol._should_upgrade():
        return  # the protocol hands the connection to its WebSocket protocol
    url: bytes = protocol.url
    if url == b"*":  # OPTIONS * (the rules let no other method have it)
        raw_path, query = url, b""
    else:
        absolute = split_absolute(url)  # the rules checked it: origin form or absolute form
        target = url if absolute is None else absolute[1]
        raw_path, _, query = target.partition(b"?")
    path = raw_path.decode("ascii")
    if "%" in path:
        path = unquote(path)
    root_path: str = protocol.root_path
    if root_path:
        scope["path"] = root_path + path
        scope["raw_path"] = root_path.encode("ascii") + raw_path
    else:
        scope["path"] = path
        scope["raw_path"] = raw_path
    scope["query_string"] = query
    before = protocol.cycle
    exchange = Exchange(
        scope,
        protocol,
        guard,
        keep_alive=version != "1.0" and bool(parser.should_keep_alive()),
        expect_100_continue=bool(protocol.expect_100_continue),
        until_close=version == "1.0",
    )
    protocol.cycle = exchange
    app = protocol.app
    if before is None or before.response_complete:
        tasks = protocol.tasks
        task = protocol.loop.create_task(exchange.run_asgi(app))
        task.add_done_callback(tasks.discard)
        tasks.add(task)
    else:  # the response before it is still going: this one starts when it ends
        protocol.flow.pause_reading()
        protocol.pipeline.appendleft((exchange, app))
