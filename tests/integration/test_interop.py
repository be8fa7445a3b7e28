"""The interop matrix: every exchange through the sidecar, in front of each ASGI server people run.

Columns: uvicorn (httptools and h11 protocols), hypercorn, daphne and granian, each serving
``tests.support.apps:app`` with its own defaults (``tests.support.servers``), with a sidecar
(defaults) in front; and the embedded mode, where the sidecar runs the app itself.  Each
column's server and sidecar start once per module; exchanges that end or reconfigure the
sidecar start one of their own.  Where a result depends on the server, the test sends the
same bytes to the server directly and requires the same answer through the sidecar.
A kept-alive response need not say so (HTTP/1.1 persists by default: the proxy writes
``connection: keep-alive``, the embedded mode's uvicorn writes nothing), so the tests check
that it does not say ``close`` and that the next request on the connection is answered.
"""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from websockets.sync.client import connect as ws_connect

from tests.support.metrics import samples
from tests.support.processes import ROOT, Sidecar, free_port, sidecar, stop, wait_port
from tests.support.rawhttp import Conn, RawClient, Response, request, tcp_connections
from tests.support.servers import SERVERS, RunningServer, running
from tests.support.waiting import in_background, wait_for

EMBEDDED = "embedded"
COLUMNS = [*SERVERS, EMBEDDED]
SERVE_APP = ("tests.support.apps:app", "--app-dir", str(ROOT))
MiB = 1024 * 1024


@dataclass
class Front:
    """What a client talks to in one column: the sidecar, and the server behind it if any."""

    column: str
    sidecar: Sidecar
    server: RunningServer | None  # None: embedded, the sidecar runs the app

    @property
    def port(self) -> int:
        return self.sidecar.port

    @property
    def direct_port(self) -> int:
        """Where the app answers without the sidecar's proxy in between."""
        return self.server.port if self.server is not None else self.sidecar.port

    def fresh(
        self, tmp_path: Path, *args: str, upstream: int | None = None
    ) -> contextlib.AbstractContextManager[Sidecar]:
        """A sidecar of this test's own (``args`` added), in front of the same server, or of
        ``upstream`` (a relay to it)."""
        if upstream is None and self.server is not None:
            upstream = self.server.port
        return _sidecar_for(upstream, tmp_path, *args)


def _sidecar_for(
    upstream: int | None, tmp_path: Path, *args: str
) -> contextlib.AbstractContextManager[Sidecar]:
    """``asgi-sidecar proxy`` in front of ``upstream``; None: ``serve`` running the app."""
    if upstream is None:
        return sidecar(0, *SERVE_APP, *args, tmp_path=tmp_path, command="serve")
    return sidecar(upstream, *args, tmp_path=tmp_path)


@pytest.fixture(scope="module", params=COLUMNS)
def column(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="module")
def front(column: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Front]:
    logs = tmp_path_factory.mktemp(column)
    with contextlib.ExitStack() as stack:
        server = None if column == EMBEDDED else stack.enter_context(running(column, logs))
        sc = stack.enter_context(_sidecar_for(None if server is None else server.port, logs))
        yield Front(column, sc, server)


def _exchange(port: int, data: bytes, method: str = "GET") -> Response:
    with RawClient(port) as c:
        c.send(data)
        return c.read_response(method)


def _json(response: Response) -> dict[str, object]:
    assert response.status == 200, response
    found = json.loads(response.body)
    assert isinstance(found, dict)
    return found


# -- connections ----------------------------------------------------------------------------


def test_keep_alive_reuses_the_client_and_the_upstream_connection(front, tmp_path):
    with front.fresh(tmp_path) as sc:
        with RawClient(sc.port) as c:
            for path in ("/echo", "/fixed?n=1000", "/download?n=1000", "/headers"):
                c.send(request("GET", path))
                response = c.read_response()
                assert response.status == 200
                assert response.header("connection") != "close"
        for _ in range(5):
            assert _exchange(sc.port, request("GET", "/echo")).status == 200
        assert sc.metric("asgi_keepalive_reused_requests_total") == 3
        if front.server is not None:
            # Nine requests on six client connections, one after another: one upstream one.
            idle = sc.metric("asgi_upstream_connections", 'state="idle"')
            active = sc.metric("asgi_upstream_connections", 'state="active"')
            assert (idle, active) == (1, 0)


def test_pipelined_requests_are_answered_in_order(front):
    with RawClient(front.port) as c:
        # The first is the slowest: answers must still come in request order.
        c.send(
            request("GET", "/slow?s=0.2")
            + request("POST", "/echo", body=b"second")
            + request("HEAD", "/fixed?n=10")
            + request("GET", "/headers", [("X-Seq", "fourth")])
            + request("GET", "/fixed?n=5")
        )
        first, second = c.read_response(), c.read_response()
        third, fourth, fifth = c.read_response("HEAD"), c.read_response(), c.read_response()
        assert (first.status, first.body) == (200, b"slow done")
        assert json.loads(second.body) == {"size": 6, "start": "second"}
        assert (third.status, third.body) == (200, b"")
        assert _json(fourth)["x-seq"] == "fourth"
        assert fifth.body == b"fffff"
        assert c.buffer == b""


# -- bodies ---------------------------------------------------------------------------------


def test_chunked_and_fixed_length_uploads_arrive_intact(front):
    piece = b"u" * 65536
    chunked = b"".join(b"%x\r\n%s\r\n" % (len(piece), piece) for _ in range(16))
    with RawClient(front.port) as c:
        c.send(
            b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"6;ext=1\r\nhello \r\n5\r\nworld\r\n0\r\nX-Trailer: t\r\n\r\n"
        )
        assert _json(c.read_response()) == {"size": 11, "start": "hello world"}
        c.send(b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n")
        c.send(chunked + b"0\r\n\r\n")
        assert _json(c.read_response()) == {"size": MiB, "start": "u" * 64}
        c.send(request("POST", "/echo", body=b"fixed length body"))
        assert _json(c.read_response()) == {"size": 17, "start": "fixed length body"}
        c.send(request("PUT", "/echo", body=piece * 16))
        assert _json(c.read_response()) == {"size": MiB, "start": "u" * 64}


def test_chunked_and_fixed_length_downloads_arrive_intact(front):
    with RawClient(front.port) as c:
        c.send(request("GET", f"/fixed?n={MiB}"))
        response = c.read_response()
        assert response.header("content-length") == str(MiB)
        assert response.header("transfer-encoding") is None
        assert response.body == b"f" * MiB
        c.send(request("GET", f"/download?n={MiB}"))
        response = c.read_response()
        assert response.status == 200
        assert response.body == b"x" * MiB
        assert response.header("connection") != "close"


def test_a_streamed_response_reaches_the_client_piece_by_piece(front):
    """Each piece arrives before the app is allowed to write the next: nothing is held back."""
    key = uuid.uuid4().hex
    with RawClient(front.port) as c:
        c.send(request("GET", f"/stream?n=3&key={key}"))
        head = c.read_head()
        assert head.status == 200
        assert head.header("transfer-encoding") == "chunked"
        for n in range(3):
            if n:
                released = _exchange(front.port, request("POST", f"/release?key={key}"))
                assert released.status == 200
            assert c.read_chunk() == f"piece {n}\n".encode()
        assert c.read_chunk() == b""
        c.send(request("GET", "/echo"))
        assert c.read_response().status == 200


# -- HTTP/1.1 details -----------------------------------------------------------------------


def test_expect_100_continue(front):
    with RawClient(front.port, timeout=5) as c:
        body = b"sent after 100"
        c.send(
            b"POST /echo HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\n"
            b"Content-Length: %d\r\n\r\n" % len(body)
        )
        interim = c.read_head()  # before any body byte was sent
        assert interim.status == 100
        c.send(body)
        assert _json(c.read_response()) == {"size": len(body), "start": body.decode()}
        # The connection carries on, also with a chunked body after the 100.
        c.send(
            b"POST /echo HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
        )
        assert c.read_head().status == 100
        c.send(b"3\r\nabc\r\n0\r\n\r\n")
        assert _json(c.read_response()) == {"size": 3, "start": "abc"}


@pytest.mark.parametrize("path", ["/echo", "/fixed?n=100000", "/download?n=100000"])
def test_head_has_no_body_and_keeps_the_connection(front, path):
    direct = _exchange(front.direct_port, request("HEAD", path), "HEAD")
    with RawClient(front.port) as c:
        c.send(request("HEAD", path))
        response = c.read_response("HEAD")
        assert response.status == direct.status == 200
        assert response.header("content-length") == direct.header("content-length")
        assert response.header("connection") != "close"
        # Any body byte sent after the HEAD response would corrupt this next response.
        c.send(request("GET", "/echo"))
        assert _json(c.read_response()) == {"size": 0, "start": ""}
        assert c.buffer == b""


@pytest.mark.parametrize("host", [True, False], ids=["host", "no-host"])
@pytest.mark.parametrize("path", ["/headers", "/download?n=200000", "/fixed?n=1000"])
def test_http10_is_answered_and_closed(front, host, path):
    data = f"GET {path} HTTP/1.0\r\n".encode() + (b"Host: t\r\n" if host else b"") + b"\r\n"
    direct = _exchange(front.direct_port, data)
    with RawClient(front.port) as c:
        c.send(data)
        response = c.read_response()  # a body without length ends at the close
        assert response.status == direct.status == 200
        assert response.header("transfer-encoding") is None
        assert c.is_closed()
    if path == "/headers":
        seen = _json(response)
        if host:
            assert seen["host"] == "t"
        elif front.server is not None:
            # An HTTP/1.0 request without Host goes upstream with the upstream's authority.
            assert seen["host"] == f"127.0.0.1:{front.server.port}"
    else:
        assert response.body == direct.body
        assert len(response.body) == int(path.rpartition("=")[2])


def _websocket_echoes(port: int) -> list[str]:
    with ws_connect(f"ws://127.0.0.1:{port}/ws", open_timeout=5) as ws:
        found = []
        for text in ("hello", "x" * 100_000, "last"):
            ws.send(text)
            found.append(str(ws.recv(timeout=5)))
        return found


def test_websocket_upgrade_is_tunnelled(front):
    expected = ["echo:hello", "echo:" + "x" * 100_000, "echo:last"]
    assert _websocket_echoes(front.direct_port) == expected
    assert _websocket_echoes(front.port) == expected
    assert _exchange(front.port, request("GET", "/echo")).status == 200


# -- the upstream's idle close, raced ---------------------------------------------------------

# Each way, seconds: the race window is (keep-alive - 2 x this, keep-alive), and the test acts
# in its middle, so this is also its margin for a busy machine (0.25 s was too little once).
RELAY_DELAY = 0.6
RACERS = 6  # pooled connections raced at once


def _sidecar_ports(relay: int) -> set[str]:
    """The sidecar ends of connections to the relay (also those already closed, TIME_WAIT)."""
    wanted = f":{relay:04X}"
    found = set()
    for local, remote, _ in tcp_connections(relay):
        found.add(remote if local.endswith(wanted) else local)
    return found


def _upstream_open(sc: Sidecar) -> float:
    """Upstream connections the sidecar holds open, idle or not."""
    found = samples(sc.metrics())
    return sum(v for k, v in found.items() if k.startswith("asgi_upstream_connections{"))


def _in_parallel(port: int, path: str) -> list[int]:
    """``RACERS`` GETs at once, each on a client connection of its own; their statuses."""
    statuses: list[int] = []

    def get() -> None:
        statuses.append(_exchange(port, request("GET", path)).status)

    threads = [threading.Thread(target=get) for _ in range(RACERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    return statuses


@contextlib.contextmanager
def _delaying_relay(upstream: int, logs: Path) -> Iterator[int]:
    """``bench.delayrelay`` between sidecar and server: the server's FIN arrives late."""
    port = free_port()
    delay_ms = str(RELAY_DELAY * 1000)
    with (logs / "relay.log").open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "bench.delayrelay", str(port), str(upstream), delay_ms],
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_port(port)
        yield port
    finally:
        stop(proc)


@pytest.mark.parametrize("column", list(SERVERS), indirect=True)
def test_the_servers_own_idle_close_raced_against_reuse_never_gives_502(front, tmp_path):
    """Requests sent on pooled connections just as the server's default idle timer closes them.

    By default the sidecar closes a pooled connection after 4 s, before any of these servers
    would (5 s and more), so the race cannot begin; here the sidecar keeps them for an hour,
    the worst case, and a relay delays every byte and FIN, so a request sent in the last
    2 x RELAY_DELAY seconds before the server's timer fires reaches a connection already
    closed.  Every such GET must be sent again on a fresh connection, never answered 502.
    """
    assert front.server is not None
    keep_alive = front.server.kind.keep_alive
    with (
        _delaying_relay(front.server.port, tmp_path) as relay,
        front.fresh(tmp_path, "--upstream-keep-alive", "3600", upstream=relay) as sc,
    ):
        before = _sidecar_ports(relay)
        # Held for a while each, so that they need RACERS connections.
        assert _in_parallel(sc.port, "/slow?s=0.5") == [200] * RACERS
        assert len(_sidecar_ports(relay) - before) == RACERS
        # The idle gap is what is tested (nothing to wait for): the middle of the window.
        time.sleep(keep_alive - RELAY_DELAY)
        assert _upstream_open(sc) == RACERS  # no FIN has reached the sidecar yet
        assert _in_parallel(sc.port, "/echo") == [200] * RACERS
        reconnected = len(_sidecar_ports(relay) - before) - RACERS
        assert reconnected >= 1, "no request met a connection the server had closed"
        errors = {k: v for k, v in samples(sc.metrics()).items() if "upstream_errors" in k}
        assert not any(errors.values()), errors
        assert sc.metric("asgi_requests_total", 'code="502"') == 0


# -- graceful shutdown ------------------------------------------------------------------------


def test_sigterm_lets_the_request_in_flight_finish(front, tmp_path):
    with front.fresh(tmp_path) as sc:
        busy = Conn(sc.port)
        busy.send("/slow?s=1")
        wait_for(lambda: sc.metric("asgi_requests_in_flight") == 1, what="in flight")
        answer = in_background(busy.read_response)
        sc.proc.send_signal(signal.SIGTERM)
        response = answer()
        assert (response.status, response.body) == (200, b"slow done")
        assert response.header("connection") == "close"
        assert busy.wait_closed(5) is not None
        assert sc.proc.wait(10) == 0
