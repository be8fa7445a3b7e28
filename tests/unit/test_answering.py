"""``serve``'s exchange (``answering.Exchange``) on real sockets, against uvicorn's own cycle.

Every script of ASGI messages below is sent once through uvicorn's ``RequestResponseCycle``
and once through an ``Exchange``, each on one end of a real socket pair; the bytes the peer
reads, the error (if any), whether the connection closes and whether the response ended
must be the same.  The differences that are meant (an HTTP/1.0 body without a length,
field names that are not tokens, a Content-Length that is not digits) have tests of their
own, and so do admission, errors of the app and the request body.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import pytest
from uvicorn.protocols.http.flow_control import FlowControl
from uvicorn.protocols.http.httptools_impl import RequestResponseCycle

from asgi_sidecar import responding
from asgi_sidecar.admitting import Admission
from asgi_sidecar.answering import Exchange
from asgi_sidecar.guarding import Guard
from asgi_sidecar.settings import SidecarSettings
from asgi_sidecar.stats import Stats

pytestmark = pytest.mark.asyncio

START = "http.response.start"
BODY = "http.response.body"


def start(status: int = 200, *headers: tuple[bytes, bytes]) -> dict[str, Any]:
    return {"type": START, "status": status, "headers": list(headers)}


def body(data: bytes = b"", more: bool = False) -> dict[str, Any]:
    return {"type": BODY, "body": data, "more_body": more}


LENGTH5 = (b"content-length", b"5")


@dataclass
class Outcome:
    wire: bytes
    error: bool
    closed: bool
    complete: bool
    responses: int  # how often the protocol heard the response end


@dataclass
class Pair:
    """A real transport on one end of a socket pair; ``read`` has what the other end got."""

    transport: asyncio.Transport
    peer: socket.socket
    ended: list[int] = field(default_factory=list)

    async def read(self) -> bytes:
        if not self.transport.is_closing():
            self.transport.close()
        loop = asyncio.get_running_loop()
        data = b""
        while chunk := await asyncio.wait_for(loop.sock_recv(self.peer, 65536), 5):
            data += chunk
        self.peer.close()
        return data


async def pair() -> Pair:
    ours, peer = socket.socketpair()
    peer.setblocking(False)
    loop = asyncio.get_running_loop()
    transport, _ = await loop.connect_accepted_socket(asyncio.Protocol, ours)
    return Pair(transport, peer)


def scope(method: str = "GET", version: str = "1.1") -> dict[str, Any]:
    return {"type": "http", "method": method, "http_version": version, "headers": []}


def a_guard(**settings: object) -> Guard[Any, asyncio.Future[None]]:
    stats = Stats()
    values = SidecarSettings(**{"limit_concurrency": 1, **settings}).validated()
    loop = asyncio.get_running_loop()
    admission: Admission[asyncio.Future[None]] = Admission(
        values, stats, loop.time, lambda w: not w.done() and (w.set_result(None) or True)
    )
    return Guard(values, stats, admission, loop.time)


def exchange(
    p: Pair, s: dict[str, Any], guard: Guard[Any, Any] | None = None, **kw: Any
) -> Exchange:
    protocol = SimpleNamespace(
        transport=p.transport,
        flow=FlowControl(p.transport),
        server_state=SimpleNamespace(default_headers=[(b"server", b"test")]),
        on_response_complete=lambda: p.ended.append(1),
    )
    options = {"keep_alive": True, "expect_100_continue": False, "until_close": False, **kw}
    return Exchange(s, protocol, guard or a_guard(), **options)


def uvicorn_cycle(p: Pair, s: dict[str, Any], *, keep_alive: bool) -> RequestResponseCycle:
    logger = logging.getLogger("test")
    return RequestResponseCycle(
        scope=s,  # type: ignore[arg-type]
        transport=p.transport,
        flow=FlowControl(p.transport),
        logger=logger,
        access_logger=logger,
        access_log=False,
        default_headers=[(b"server", b"test")],
        message_event=asyncio.Event(),
        expect_100_continue=False,
        keep_alive=keep_alive,
        on_response=lambda: p.ended.append(1),
    )


async def through(cycle: Any, p: Pair, messages: list[dict[str, Any]]) -> Outcome:
    error = False
    for message in messages:
        try:
            await cycle.send(message)
        except RuntimeError:
            error = True
            break
    closed = p.transport.is_closing()
    return Outcome(await p.read(), error, closed, cycle.response_complete, len(p.ended))


SCRIPTS = {
    "length": ("GET", True, [start(200, LENGTH5), body(b"hello")]),
    "length in pieces": ("GET", True, [start(200, LENGTH5), body(b"he", True), body(b"llo")]),
    "chunked": ("GET", True, [start(200), body(b"a", True), body(b"", True), body(b"bc")]),
    "chunked, empty end": ("GET", True, [start(201), body(b"abc", True), body()]),
    "chunked by the app": (
        "GET", True, [start(200, (b"Transfer-Encoding", b"chunked")), body(b"xy")],
    ),
    "head": ("HEAD", True, [start(200, LENGTH5), body()]),
    "head without length": ("HEAD", True, [start(200), body()]),
    "204": ("GET", True, [start(204), body()]),
    "304": ("GET", True, [start(304, (b"ETag", b'"x"')), body()]),
    "unknown status": ("GET", True, [start(299, LENGTH5), body(b"hello")]),
    "app says close": (
        "GET", True, [start(200, LENGTH5, (b"Connection", b"keep-alive, Close")), body(b"hello")],
    ),
    "client asked to close": ("GET", False, [start(200, LENGTH5), body(b"hello")]),
    "names lowered, values kept": (
        "GET", True, [start(200, (b"X-Thing", b"A\tB"), LENGTH5), body(b"hello")],
    ),
    "longer than its length": ("GET", True, [start(200, LENGTH5), body(b"hello!")]),
    "shorter than its length": ("GET", True, [start(200, LENGTH5), body(b"hell")]),
    "body first": ("GET", True, [body(b"x")]),
    "two starts": ("GET", True, [start(200), start(200)]),
    "after the end": ("GET", True, [start(200, LENGTH5), body(b"hello"), body(b"x")]),
    "bytes-like fields and body": (
        "GET", True,
        [start(200, (bytearray(b"X-A"), bytearray(b"1")), LENGTH5), body(bytearray(b"hello"))],
    ),
    "a memoryview body": ("GET", True, [start(200), body(memoryview(b"abc"), True), body()]),
    "control in a value": ("GET", True, [start(200, (b"x-a", b"a\nb")), body()]),
    "space in a name": ("GET", True, [start(200, (b"x a", b"b")), body()]),
}  # fmt: skip


@pytest.mark.parametrize("name", list(SCRIPTS))
async def test_the_wire_matches_uvicorns_cycle(name):
    method, keep_alive, messages = SCRIPTS[name]
    theirs_pair, ours_pair = await pair(), await pair()
    theirs = await through(
        uvicorn_cycle(theirs_pair, scope(method), keep_alive=keep_alive), theirs_pair, messages
    )
    ours = await through(
        exchange(ours_pair, scope(method), keep_alive=keep_alive), ours_pair, messages
    )
    assert ours == theirs


async def test_an_http10_body_without_a_length_ends_at_the_close_never_chunked():
    p = await pair()
    ex = exchange(p, scope(version="1.0"), keep_alive=False, until_close=True)
    outcome = await through(ex, p, [start(200), body(b"ab", True), body(b"cd")])
    assert outcome.wire == b"HTTP/1.1 200 OK\r\nserver: test\r\nconnection: close\r\n\r\nabcd"
    assert (outcome.error, outcome.closed, outcome.complete) == (False, True, True)


async def received_now(p: Pair) -> bytes:
    """What the peer has received so far, without waiting for more."""
    await asyncio.sleep(0.05)
    try:
        return p.peer.recv(65536)
    except BlockingIOError:
        return b""


async def test_a_head_with_a_length_goes_out_with_its_body_and_a_streamed_one_at_once():
    fixed, streamed = await pair(), await pair()
    held = exchange(fixed, scope())
    await held.send(start(200, LENGTH5))
    assert await received_now(fixed) == b""  # held for the body: one write for both
    await held.send(body(b"hello"))
    assert (
        await received_now(fixed)
        == b"HTTP/1.1 200 OK\r\nserver: test\r\ncontent-length: 5\r\n\r\nhello"
    )
    at_once = exchange(streamed, scope())
    await at_once.send(start(200))
    assert (await received_now(streamed)).endswith(b"transfer-encoding: chunked\r\n\r\n")
    await fixed.read()
    await streamed.read()


async def test_an_http10_client_gets_no_coding_even_one_the_app_names():
    p = await pair()
    ex = exchange(p, scope(version="1.0"), keep_alive=False, until_close=True)
    te = (b"transfer-encoding", b"chunked")
    outcome = await through(ex, p, [start(200, te), body(b"ab", True), body(b"cd")])
    assert outcome.wire == b"HTTP/1.1 200 OK\r\nserver: test\r\nconnection: close\r\n\r\nabcd"


async def test_a_304_may_keep_its_content_length_and_sends_no_body():
    p = await pair()
    outcome = await through(exchange(p, scope()), p, [start(304, LENGTH5), body()])
    assert outcome.wire == b"HTTP/1.1 304 Not Modified\r\nserver: test\r\ncontent-length: 5\r\n\r\n"
    assert (outcome.error, outcome.closed, outcome.complete) == (False, False, True)


async def test_a_204_with_a_body_is_an_error():
    p = await pair()
    outcome = await through(exchange(p, scope()), p, [start(204), body(b"x")])
    assert outcome.error
    assert not outcome.complete


@pytest.mark.parametrize("name", [b"x/y", b"caf\xc3\xa9", b"a?", b""])
async def test_a_field_name_that_is_not_a_token_is_refused(name):
    p = await pair()
    outcome = await through(exchange(p, scope()), p, [start(200, (name, b"v")), body()])
    assert (outcome.error, outcome.wire) == (True, b"")


@pytest.mark.parametrize("value", [b"+5", b"5_0", b"", b"0x5", b"5, 5"])
async def test_a_content_length_must_be_digits(value):
    p = await pair()
    outcome = await through(exchange(p, scope()), p, [start(200, (b"content-length", value))])
    assert (outcome.error, outcome.wire) == (True, b"")


# -- run_asgi: admission, the app's errors, counting --------------------------------------


def app_of(*messages: dict[str, Any], raises: bool = False) -> Any:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        for message in messages:
            await send(message)
        if raises:
            raise ValueError("the app broke")

    return app


async def test_an_answered_request_is_counted_and_frees_its_slot():
    p, g = await pair(), a_guard()
    await exchange(p, scope(), g).run_asgi(app_of(start(404, LENGTH5), body(b"nope!")))
    assert g.stats.requests == {404: 1}
    assert g.admission.try_acquire()  # the slot came back
    assert (await p.read()).startswith(b"HTTP/1.1 404 Not Found\r\n")


async def test_an_app_failing_before_its_response_gets_a_500_and_a_close(caplog):
    p, g = await pair(), a_guard()
    ex = exchange(p, scope(), g)
    await ex.run_asgi(app_of(raises=True))
    wire = await p.read()
    assert wire.startswith(b"HTTP/1.1 500 Internal Server Error\r\n")
    assert b"connection: close\r\n" in wire
    assert wire.endswith(b"\r\n\r\nInternal Server Error")
    assert g.stats.requests == {500: 1}
    assert "Exception in ASGI application" in caplog.text


async def test_an_app_failing_after_its_response_started_closes_the_connection():
    p, g = await pair(), a_guard()
    ex = exchange(p, scope(), g)
    await ex.run_asgi(app_of(start(200, LENGTH5), body(b"he", True), raises=True))
    assert p.transport.is_closing()
    assert (await p.read()).endswith(b"\r\n\r\nhe")  # no 500 after a head already sent
    assert g.stats.requests == {200: 1}


async def test_an_app_returning_without_a_response_gets_a_500():
    p, g = await pair(), a_guard()
    await exchange(p, scope(), g).run_asgi(app_of())
    assert (await p.read()).startswith(b"HTTP/1.1 500 ")
    assert g.stats.requests == {500: 1}


async def test_at_the_limit_with_no_queue_the_answer_is_503_with_retry_after_kept_alive():
    g = a_guard(queue_depth=0, retry_after=7)
    assert g.admission.try_acquire()  # the one slot is taken
    p = await pair()
    ran: list[bool] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        ran.append(True)

    ex = exchange(p, scope(), g)
    await ex.run_asgi(app)
    assert not p.transport.is_closing()  # the connection stays for the next request
    wire = await p.read()
    assert wire.startswith(b"HTTP/1.1 503 Service Unavailable\r\n")
    assert b"retry-after: 7\r\n" in wire
    assert b"connection: close" not in wire
    assert wire.endswith(b"\r\n\r\n" + responding.REJECTION_BODY)  # framed by its length
    assert (ran, g.stats.requests, g.stats.rejected) == ([], {503: 1}, {"concurrency_limit": 1})


async def test_a_queued_request_runs_when_a_slot_frees_and_times_out_if_none_does():
    g = a_guard(queue_depth=2, queue_timeout=0.2)
    assert g.admission.try_acquire()
    first, second = await pair(), await pair()
    waiting = asyncio.ensure_future(
        exchange(first, scope(), g).run_asgi(app_of(start(200, LENGTH5), body(b"hello")))
    )
    await asyncio.sleep(0.05)
    assert not waiting.done()
    g.admission.release()  # the slot frees: the queued request takes it
    await asyncio.wait_for(waiting, 5)
    assert (await first.read()).startswith(b"HTTP/1.1 200 OK")
    assert g.admission.try_acquire()  # held by nobody else now; keep it
    await exchange(second, scope(), g).run_asgi(app_of(start(200, LENGTH5), body(b"hello")))
    assert (await second.read()).startswith(b"HTTP/1.1 503 ")
    assert g.stats.rejected == {"queue_timeout": 1}


# -- receive ------------------------------------------------------------------------------


async def test_receive_gives_the_body_as_it_comes_after_a_100_continue():
    p = await pair()
    ex = exchange(p, scope("POST"), expect_100_continue=True)
    pending = asyncio.ensure_future(ex.receive())
    await asyncio.sleep(0.01)
    assert not pending.done()  # nothing came yet
    ex.body += b"abc"
    ex.message_event.set()
    assert await asyncio.wait_for(pending, 5) == {
        "type": "http.request", "body": b"abc", "more_body": True,
    }  # fmt: skip
    ex.more_body = False
    ex.body += b"d"
    ex.message_event.set()
    assert await ex.receive() == {"type": "http.request", "body": b"d", "more_body": False}
    ex.disconnected = True
    ex.message_event.set()
    assert await ex.receive() == {"type": "http.disconnect"}
    assert await p.read() == responding.CONTINUE  # once, before the first receive


async def test_every_waiter_is_woken_even_when_another_gave_up():
    p = await pair()
    ex = exchange(p, scope("POST"))
    listener = asyncio.ensure_future(ex.receive())  # an app's disconnect listener
    gave_up = asyncio.ensure_future(ex.receive())  # e.g. a poll that is cancelled at once
    await asyncio.sleep(0.01)
    gave_up.cancel()
    await asyncio.sleep(0.01)
    ex.disconnected = True
    ex.message_event.set()
    assert await asyncio.wait_for(listener, 5) == {"type": "http.disconnect"}
    await p.read()


async def test_the_status_of_a_response_to_a_gone_client_is_the_apps():
    p, g = await pair(), a_guard()
    ex = exchange(p, scope(), g)
    ex.disconnected = True
    await ex.run_asgi(app_of(start(404, LENGTH5), body(b"nope!")))
    assert g.stats.requests == {404: 1}
    assert await p.read() == b""


async def test_a_503_to_a_client_waiting_for_100_continue_closes_the_connection():
    g = a_guard(queue_depth=0)
    assert g.admission.try_acquire()
    p = await pair()
    await exchange(p, scope("POST"), g, expect_100_continue=True).run_asgi(app_of())
    assert p.transport.is_closing()  # its next bytes could be the body or a request
    wire = await p.read()
    assert wire.startswith(b"HTTP/1.1 503 ")
    assert b"connection: close\r\n" in wire


async def test_a_request_cancelled_in_the_queue_gets_a_503_and_a_close():
    g = a_guard(queue_depth=1, queue_timeout=30)
    assert g.admission.try_acquire()
    p = await pair()
    task = asyncio.ensure_future(exchange(p, scope(), g).run_asgi(app_of()))
    await asyncio.sleep(0.01)
    task.cancel()  # as uvicorn's shutdown does past timeout_graceful_shutdown
    with pytest.raises(asyncio.CancelledError):
        await task
    wire = await p.read()
    assert wire.startswith(b"HTTP/1.1 503 ")
    assert b"connection: close\r\n" in wire
    assert (g.stats.requests, g.stats.rejected) == ({503: 1}, {"shutting_down": 1})
    g.admission.release()
    assert g.admission.try_acquire()  # the queue forgot it: the slot is there for the next
