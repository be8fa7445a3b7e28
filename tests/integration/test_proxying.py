"""HTTP/1.1 proxying through a real sidecar process in front of a real uvicorn app.

Raw sockets where the exact bytes matter (100-continue, HEAD, pipelining,
hop-by-hop headers, HTTP/1.0), httpx and websockets for the rest.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator

import httpx
import pytest
from websockets.sync.client import connect as ws_connect

from tests.support.processes import free_port, sidecar, upstream_app
from tests.support.rawhttp import Conn, RawClient, established, proc_status_kib, request
from tests.support.waiting import eventually

MiB = 1024 * 1024
# 1 GiB each way: measured at about 1.5 s per GiB on the 2-core test machine.
BIG = 1024 * MiB
PIECE = 256 * 1024
MAX_RSS_GROWTH_KIB = 40 * 1024


def _pieces(total: int) -> Iterator[bytes]:
    piece = b"u" * PIECE
    for _ in range(total // PIECE):
        yield piece


def _drain(response: httpx.Response) -> int:
    size = 0
    for data in response.iter_raw():
        assert data.count(b"x") == len(data)
        size += len(data)
    return size


# -- streaming bodies ----------------------------------------------------------------------


def test_gigabyte_each_way_streams_with_bounded_memory(upstream_port, tmp_path):
    with sidecar(upstream_port, tmp_path=tmp_path) as sc, httpx.Client(timeout=60) as client:
        pid = sc.proc.pid
        # Warm up every path first, so lazily allocated buffers count in the baseline.
        assert client.post(sc.url + "/echo", content=_pieces(4 * PIECE)).json()["size"] == MiB
        with client.stream("GET", sc.url + f"/download?n={MiB}") as response:
            assert _drain(response) == MiB
        baseline = proc_status_kib(pid, "VmRSS")

        # Chunked upload (a generator without a length).
        response = client.post(sc.url + "/echo", content=_pieces(BIG))
        assert response.status_code == 200
        assert response.json() == {"size": BIG, "start": "u" * 64}
        assert response.request.headers["transfer-encoding"] == "chunked"

        # Fixed-length upload, also streamed from a generator.
        response = client.post(
            sc.url + "/echo", content=_pieces(BIG), headers={"content-length": str(BIG)}
        )
        assert response.status_code == 200
        assert response.json() == {"size": BIG, "start": "u" * 64}

        # Chunked download, read in a streaming loop.
        with client.stream("GET", sc.url + f"/download?n={BIG}") as response:
            assert response.status_code == 200
            assert response.headers["transfer-encoding"] == "chunked"
            assert _drain(response) == BIG

        # VmHWM is the peak RSS: no moment of the transfers may have buffered much.
        peak = proc_status_kib(pid, "VmHWM")
        assert peak - baseline < MAX_RSS_GROWTH_KIB, (baseline, peak)
        assert proc_status_kib(pid, "VmRSS") - baseline < MAX_RSS_GROWTH_KIB


def test_download_to_a_stalled_reader_is_not_buffered(upstream_port, tmp_path):
    """The app writes faster than the client reads: the sidecar must push back, not buffer."""
    total = 512 * MiB
    with sidecar(upstream_port, tmp_path=tmp_path) as sc:
        pid = sc.proc.pid
        with RawClient(sc.port) as c:
            c.send(request("GET", f"/download?n={MiB}"))
            assert len(c.read_response().body) == MiB
            baseline = proc_status_kib(pid, "VmRSS")
            c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
            c.send(request("GET", f"/download?n={total}"))
            head = c.read_head()
            assert head.status == 200
            # Read nothing for a second: unbuffered, the app would have sent hundreds of MB.
            time.sleep(1.0)
            stalled = proc_status_kib(pid, "VmRSS")
            assert stalled - baseline < MAX_RSS_GROWTH_KIB, (baseline, stalled)
            # Then read it all, still streaming (chunk framing is counted, not stored).
            received = len(c.buffer)
            c.buffer = b""
            while True:
                data = c.sock.recv(1 << 20)
                assert data, "connection closed before the end of the body"
                received += len(data)
                if received >= total and data.endswith(b"0\r\n\r\n"):
                    break
            assert received > total
        assert proc_status_kib(pid, "VmHWM") - baseline < MAX_RSS_GROWTH_KIB


def test_chunked_and_fixed_length_uploads_arrive_intact(upstream_port, tmp_path):
    with sidecar(upstream_port, tmp_path=tmp_path) as sc, RawClient(sc.port) as c:
        c.send(
            b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"6;ext=1\r\nhello \r\n5\r\nworld\r\n0\r\nX-Trailer: t\r\n\r\n"
        )
        response = c.read_response()
        assert response.status == 200
        assert json.loads(response.body) == {"size": 11, "start": "hello world"}
        c.send(request("POST", "/echo", body=b"fixed length body"))
        response = c.read_response()
        assert json.loads(response.body) == {"size": 17, "start": "fixed length body"}


def test_http10_client_gets_a_dechunked_body_delimited_by_close(upstream_port, tmp_path):
    with sidecar(upstream_port, tmp_path=tmp_path) as sc, RawClient(sc.port) as c:
        c.send(b"GET /download?n=200000 HTTP/1.0\r\nHost: t\r\n\r\n")
        response = c.read_response()
        assert response.status == 200
        assert response.header("transfer-encoding") is None
        assert response.header("connection") == "close"
        assert response.body == b"x" * 200000  # read until the sidecar closed


# -- HTTP/1.1 details ----------------------------------------------------------------------


def test_expect_100_continue(upstream_port, tmp_path):
    with sidecar(upstream_port, tmp_path=tmp_path) as sc, RawClient(sc.port, timeout=5) as c:
        body = b"sent after 100"
        c.send(
            b"POST /echo HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\n"
            b"Content-Length: %d\r\n\r\n" % len(body)
        )
        interim = c.read_head()  # before any body byte was sent
        assert (interim.status, interim.reason) == (100, "Continue")
        c.send(body)
        response = c.read_response()
        assert response.status == 200
        assert json.loads(response.body) == {"size": len(body), "start": body.decode()}
        # The app sees no Expect (the sidecar answered it), and the connection is reusable.
        c.send(
            b"POST /headers HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\n"
            b"Content-Length: 3\r\n\r\n"
        )
        assert c.read_head().status == 100
        c.send(b"abc")
        response = c.read_response()
        assert response.status == 200
        assert "expect" not in json.loads(response.body)


def test_head_has_no_body_and_keeps_the_connection(upstream_port, tmp_path):
    with sidecar(upstream_port, tmp_path=tmp_path) as sc, RawClient(sc.port) as c:
        for path in ("/echo", "/download?n=100000"):
            c.send(request("HEAD", path))
            response = c.read_response("HEAD")
            assert response.status == 200
            assert response.header("connection") == "keep-alive"
            # Any body byte sent after the HEAD response would corrupt this next response.
            c.send(request("GET", "/echo"))
            response = c.read_response()
            assert response.status == 200
            assert json.loads(response.body) == {"size": 0, "start": ""}
        assert c.buffer == b""
        assert not c.is_closed(0.2)


def test_pipelined_requests_are_answered_in_order(upstream_port, tmp_path):
    with sidecar(upstream_port, tmp_path=tmp_path) as sc, RawClient(sc.port) as c:
        # The first is the slowest: answers must still come in request order.
        c.send(
            request("GET", "/slow?s=0.3")
            + request("POST", "/echo", body=b"second")
            + request("GET", "/headers", [("X-Seq", "third")])
        )
        first, second, third = c.read_response(), c.read_response(), c.read_response()
        assert (first.status, first.body) == (200, b"slow done")
        assert json.loads(second.body) == {"size": 6, "start": "second"}
        assert json.loads(third.body)["x-seq"] == "third"
        assert c.buffer == b""
        assert sc.metric("asgi_requests_total", 'code="200"') == 3


def test_hop_by_hop_headers_are_removed_and_forwarding_headers_added(upstream_port, tmp_path):
    with sidecar(upstream_port, tmp_path=tmp_path) as sc, RawClient(sc.port) as c:
        c.send(
            request(
                "GET",
                "/headers",
                [
                    ("Connection", "keep-alive, Foo"),
                    ("Foo", "x"),
                    ("Keep-Alive", "5"),
                    ("TE", "trailers"),
                    ("Proxy-Connection", "x"),
                    ("Trailer", "X-Checksum"),
                    ("X-Forwarded-For", "1.2.3.4"),
                    ("X-Custom", "kept"),
                ],
                host="example.test:8443",
            )
        )
        response = c.read_response()
        assert response.status == 200
        seen = json.loads(response.body)
        for name in ("connection", "foo", "keep-alive", "te", "proxy-connection", "trailer"):
            assert name not in seen, name
        assert seen["host"] == "example.test:8443"
        assert seen["x-forwarded-for"] == "1.2.3.4, 127.0.0.1"
        assert seen["x-forwarded-proto"] == "http"
        assert seen["x-custom"] == "kept"


def test_connection_cannot_strip_the_framing_or_host(upstream_port, tmp_path):
    """Content-Length named in Connection stays: without it the app would misread the body."""
    with sidecar(upstream_port, tmp_path=tmp_path) as sc, RawClient(sc.port) as c:
        c.send(
            request("POST", "/echo", [("Connection", "Content-Length, Host")], body=b"abcdef")
            + request("GET", "/headers", [("X-Seq", "2")], host="second.test")
        )
        first, second = c.read_response(), c.read_response()
        assert json.loads(first.body) == {"size": 6, "start": "abcdef"}
        seen = json.loads(second.body)
        assert (seen["x-seq"], seen["host"]) == ("2", "second.test")


def test_forwarded_proto_is_kept_and_forwarded_for_lists_are_joined(upstream_port, tmp_path):
    with sidecar(upstream_port, tmp_path=tmp_path) as sc, RawClient(sc.port) as c:
        c.send(
            request(
                "GET",
                "/headers",
                [
                    ("X-Forwarded-Proto", "https"),
                    ("X-Forwarded-For", "1.2.3.4"),
                    ("X-Forwarded-For", "5.6.7.8"),
                ],
            )
        )
        seen = json.loads(c.read_response().body)
        assert seen["x-forwarded-proto"] == "https"
        assert seen["x-forwarded-for"] == "1.2.3.4, 5.6.7.8, 127.0.0.1"
        assert seen["host"] == "test.local"
        # Without any: the client's own address, and http.
        c.send(request("GET", "/headers"))
        seen = json.loads(c.read_response().body)
        assert seen["x-forwarded-for"] == "127.0.0.1"
        assert seen["x-forwarded-proto"] == "http"


def test_responses_on_kept_alive_connections_say_so(upstream_port, tmp_path):
    with (
        sidecar(upstream_port, "--timeout-keep-alive", "7", tmp_path=tmp_path) as sc,
        RawClient(sc.port) as c,
    ):
        for path in ("/echo", "/download?n=1000", "/headers"):
            c.send(request("GET", path))
            response = c.read_response()
            assert response.status == 200
            assert response.header("connection") == "keep-alive"
            assert response.header("keep-alive") == "timeout=7"
        # A client asking to close gets "connection: close", and the socket is closed.
        c.send(request("GET", "/echo", [("Connection", "close")]))
        response = c.read_response()
        assert response.header("connection") == "close"
        assert response.header("keep-alive") is None
        assert c.is_closed()
        assert sc.metric("asgi_keepalive_reused_requests_total") == 3


# -- the upstream side ---------------------------------------------------------------------


def _upstream_open(sc) -> tuple[float, float]:
    return (
        sc.metric("asgi_upstream_connections", 'state="idle"'),
        sc.metric("asgi_upstream_connections", 'state="active"'),
    )


def test_upstream_connections_are_pooled_and_reused(upstream_port, tmp_path):
    with sidecar(upstream_port, tmp_path=tmp_path) as sc:
        opened = sc.metric("asgi_connections_opened_total")  # the fixture's readiness probe
        # Ten sequential requests, each on its own client connection: one upstream connection.
        for _ in range(10):
            assert httpx.get(sc.url + "/echo").status_code == 200
        assert _upstream_open(sc) == (1, 0)
        assert sc.metric("asgi_connections_opened_total") - opened == 10

        # Three at once need three; afterwards sequential requests reuse them, no new ones.
        results: list[int] = []

        def slow() -> None:
            results.append(httpx.get(sc.url + "/slow?s=0.3", timeout=10).status_code)

        threads = [threading.Thread(target=slow) for _ in range(3)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(10)
        assert results == [200, 200, 200]
        assert _upstream_open(sc) == (3, 0)
        with httpx.Client() as client:
            for _ in range(10):
                assert client.get(sc.url + "/echo").status_code == 200
        assert _upstream_open(sc) == (3, 0)


def test_refused_upstream_gives_502_fast(tmp_path):
    with (
        sidecar(free_port(), "--upstream-timeout", "30", tmp_path=tmp_path) as sc,
        httpx.Client(timeout=10) as client,
    ):
        opened = sc.metric("asgi_connections_opened_total")
        started = time.monotonic()
        response = client.get(sc.url + "/echo")
        elapsed = time.monotonic() - started
        assert response.status_code == 502
        assert response.text == "Bad Gateway\n"
        assert elapsed < 2.0  # refused at once, not the 30 s upstream timeout
        # The client connection survives a 502.
        assert response.headers["connection"] == "keep-alive"
        assert client.get(sc.url + "/echo").status_code == 502
        assert sc.metric("asgi_upstream_errors_total", 'reason="connect_failed"') == 2
        assert sc.metric("asgi_connections_opened_total") - opened == 1


def test_an_upgrade_answered_by_the_sidecar_closes_its_connection(tmp_path):
    # A 502 (or 503) instead of 101: llhttp reads nothing after an upgrade request, so the
    # connection closes rather than hang the client's next request.
    with sidecar(free_port(), tmp_path=tmp_path) as sc:
        conn = Conn(sc.port)
        conn.sock.sendall(
            b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n"
        )
        refused = conn.read_response()
        assert refused.status == 502
        assert refused.headers["connection"] == "close"
        assert conn.wait_closed(5) is not None


def test_slow_upstream_gives_504_at_the_upstream_timeout(upstream_port, tmp_path):
    with (
        sidecar(upstream_port, "--upstream-timeout", "0.5", tmp_path=tmp_path) as sc,
        httpx.Client(timeout=10) as client,
    ):
        opened = sc.metric("asgi_connections_opened_total")
        started = time.monotonic()
        response = client.get(sc.url + "/slow?s=5")
        elapsed = time.monotonic() - started
        assert response.status_code == 504
        assert response.text == "Gateway Timeout\n"
        assert 0.45 <= elapsed < 3.0
        assert sc.metric("asgi_upstream_errors_total", 'reason="timeout"') == 1
        assert sc.metric("asgi_requests_in_flight") == 0
        # The timed-out upstream connection is not reused; the client's connection is.
        assert _upstream_open(sc) == (0, 0)
        response = client.get(sc.url + "/echo")
        assert response.status_code == 200
        assert sc.metric("asgi_connections_opened_total") - opened == 1


def test_client_gone_cancels_the_upstream_request(tmp_path):
    # A dedicated app: every connection to its port comes from this test's sidecar.
    # The app's /stats "cancelled" counter cannot show this: uvicorn never cancels a handler
    # when its client disconnects (it only reports http.disconnect to receive()), so the
    # evidence is the upstream connection itself being torn down.
    with upstream_app() as app_port, sidecar(app_port, tmp_path=tmp_path) as sc:
        with RawClient(sc.port) as c:
            c.send(request("GET", "/slow?s=3"))
            assert eventually(lambda: sc.metric("asgi_requests_in_flight") == 1, 2.0)
            time.sleep(0.3)
            assert established(app_port) == 2  # both ends of the sidecar's upstream connection
        # The client left: the sidecar drops the upstream connection at once, well before
        # the app would have answered (3 s), so the app sees the disconnect.
        started = time.monotonic()
        assert eventually(lambda: established(app_port) == 0, 2.0)
        assert time.monotonic() - started < 2.0
        assert sc.metric("asgi_upstream_errors_total", 'reason="client_gone"') == 1
        assert sc.metric("asgi_requests_in_flight") == 0
        assert _upstream_open(sc) == (0, 0)
        # The app itself is unharmed.
        assert httpx.get(sc.url + "/echo").status_code == 200


# -- upgrades ------------------------------------------------------------------------------


def test_websocket_upgrades_are_tunnelled(upstream_port, tmp_path):
    with sidecar(upstream_port, tmp_path=tmp_path) as sc:
        with ws_connect(f"ws://127.0.0.1:{sc.port}/ws", open_timeout=5) as ws:
            for text in ("hello", "x" * 100_000, "last"):
                ws.send(text)
                assert ws.recv(timeout=5) == "echo:" + text
        assert sc.metric("asgi_requests_total", 'code="101"') == 1
        assert sc.metric("asgi_requests_in_flight") == 0
        assert eventually(lambda: sc.metric("asgi_connections", 'state="active"') == 0, 3.0)
        # Plain HTTP still works on new connections.
        assert httpx.get(sc.url + "/echo").status_code == 200


@pytest.mark.parametrize("method", ["GET", "POST"])
def test_requests_after_an_upstream_error_still_work(method, upstream_port, tmp_path):
    """A 504 must not leave a half-read upstream response to poison a pooled connection."""
    with (
        sidecar(upstream_port, "--upstream-timeout", "0.5", tmp_path=tmp_path) as sc,
        RawClient(sc.port) as c,
    ):
        c.send(request(method, "/slow?s=1", body=b"abc" if method == "POST" else b""))
        assert c.read_response().status == 504
        for _ in range(3):
            c.send(request(method, "/echo", body=b"abc" if method == "POST" else b""))
            response = c.read_response()
            assert response.status == 200
            expected = 3 if method == "POST" else 0
            assert json.loads(response.body)["size"] == expected
