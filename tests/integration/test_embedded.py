"""``asgi-sidecar serve module:app``: the app in-process on uvicorn, with the same guarantees."""

from __future__ import annotations

import json
import signal
import time

import httpx
from websockets.sync.client import connect as ws_connect

from tests.support.metrics import samples
from tests.support.processes import ROOT, sidecar
from tests.support.promtool import check_metrics
from tests.support.rawhttp import Conn
from tests.support.resting import read_on_after_resting
from tests.support.waiting import wait_for

APP = ("tests.support.apps:app", "--app-dir", str(ROOT))


def test_serves_requests_and_exports_metrics(tmp_path):
    with sidecar(0, *APP, tmp_path=tmp_path, command="serve") as sc:
        response = httpx.get(sc.url + "/echo", timeout=5)
        assert response.status_code == 200
        assert response.json() == {"size": 0, "start": ""}
        posted = httpx.post(sc.url + "/echo", content=b"abc", timeout=5)
        assert posted.json() == {"size": 3, "start": "abc"}
        assert sc.metric("asgi_requests_total", 'code="200"') == 2
        assert sc.metric("asgi_request_duration_seconds_count") == 2
        text = sc.metrics()
        assert 'mode="embedded"' in text
        for name in ("asgi_listen_backlog_effective", "asgi_accept_queue_length"):
            assert f"\n{name} " in text
        assert check_metrics(text) == (0, "")
        health = httpx.get(f"http://127.0.0.1:{sc.metrics_port}/healthz", timeout=5)
        ready = httpx.get(f"http://127.0.0.1:{sc.metrics_port}/readyz", timeout=5)
        assert (health.status_code, ready.status_code) == (200, 200)


def test_limit_counts_requests_and_503_keeps_the_connection(tmp_path):
    args = (*APP, "--limit-concurrency", "1")
    with sidecar(0, *args, tmp_path=tmp_path, command="serve") as sc:
        idle = [Conn(sc.port) for _ in range(5)]  # open and silent: they must not count
        assert idle[0].request("/echo").status == 200
        busy = Conn(sc.port)
        busy.send("/slow?s=1.5")
        wait_for(lambda: sc.metric("asgi_requests_in_flight") == 1, what="in flight")
        refused_conn = Conn(sc.port)
        refused = refused_conn.request("/echo")
        assert refused.status == 503
        assert refused.headers["retry-after"] == "1"
        assert 0 < len(refused.body) < 200
        assert busy.read_response().status == 200
        assert refused_conn.request("/echo").status == 200  # the same connection, still open
        for conn in idle:
            assert conn.request("/echo").status == 200
        assert sc.metric("asgi_requests_rejected_total", 'reason="concurrency_limit"') == 1


def test_silent_connection_is_closed_after_keep_alive(tmp_path):
    args = (*APP, "--timeout-keep-alive", "1")
    with sidecar(0, *args, tmp_path=tmp_path, command="serve") as sc:
        silent = Conn(sc.port)
        closed_after = silent.wait_closed(5)
        assert closed_after is not None, "a connection that never sent a byte stayed open"
        assert 0.9 <= closed_after <= 1.6
        used = Conn(sc.port)
        assert used.request("/echo").status == 200
        closed_after = used.wait_closed(5)
        assert closed_after is not None
        assert 0.9 <= closed_after <= 1.6
        wait_for(lambda: sc.metric("asgi_connections_closed_total", 'reason="idle_timeout"') >= 2)


def test_a_fractional_keep_alive_is_honoured_and_never_cuts_a_request(tmp_path):
    """The idle deadline is swept (not uvicorn's whole-second timer): 0.5 s means 0.5 s,
    and a request that takes longer than that keeps its connection."""
    args = (*APP, "--timeout-keep-alive", "0.5")
    with sidecar(0, *args, tmp_path=tmp_path, command="serve") as sc:
        conn = Conn(sc.port)
        assert conn.request("/slow?s=1").status == 200
        assert conn.request("/echo").status == 200  # the same connection, reused at once
        closed_after = conn.wait_closed(5)
        assert closed_after is not None
        assert 0.4 <= closed_after <= 0.9
        assert sc.metric("asgi_connections_closed_total", 'reason="idle_timeout"') == 1


def test_sigterm_exits_zero(tmp_path):
    with sidecar(0, *APP, tmp_path=tmp_path, command="serve") as sc:
        assert httpx.get(sc.url + "/echo", timeout=5).status_code == 200
        sc.proc.send_signal(signal.SIGTERM)
        started = time.monotonic()
        assert sc.proc.wait(10) == 0
        assert time.monotonic() - started < 5
        assert "draining" in sc.log()


def test_a_connection_rested_while_idle_reads_its_next_requests_whole(tmp_path):
    # As in the proxy (test_keepalive.py): idle past tracking.REST_AFTER, a connection gives
    # up uvicorn's parser, and a new one reads a split head and then pipelined requests.
    with sidecar(0, *APP, "--timeout-keep-alive", "10", tmp_path=tmp_path, command="serve") as sc:
        read_on_after_resting(sc.port)
        assert sc.metric("asgi_keepalive_reused_requests_total") == 4
        assert sc.metric("asgi_requests_total", 'code="200"') == 5


SMUGGLED = b"GET /headers HTTP/1.1\r\nHost: x\r\nX-Smuggled: 1\r\n\r\n"


def test_a_body_still_coming_after_an_early_answer_is_never_read_as_requests(tmp_path):
    # /fixed answers without reading the body; the connection goes idle when the response
    # ends, though the body is still coming.  Past REST_AFTER, the rest of the body must
    # still be the body (discarded), not the start of requests for a new parser.
    with sidecar(0, *APP, "--timeout-keep-alive", "10", tmp_path=tmp_path, command="serve") as sc:
        conn = Conn(sc.port)
        length = 10 + len(SMUGGLED)
        conn.sock.sendall(
            b"POST /fixed?n=5 HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % length
        )
        conn.sock.sendall(b"a" * 10)
        early = conn.read_response()
        assert (early.status, early.body) == (200, b"fffff")
        time.sleep(1.2)
        conn.sock.sendall(SMUGGLED)  # the body's last bytes
        conn.sock.sendall(b"GET /headers HTTP/1.1\r\nHost: x\r\nX-Genuine: 1\r\n\r\n")
        answered = json.loads(conn.read_response().body)
        assert answered["x-genuine"] == "1"
        assert "x-smuggled" not in answered
        assert sc.metric("asgi_requests_total", 'code="200"') == 2


def _answered_with_the_next_head_half_read(port: int, slow: float) -> Conn:
    """A request taking ``slow`` s, the next one's head begun before its response ends:
    the connection once that response has been read."""
    conn = Conn(port)
    conn.send(f"/slow?s={slow}")
    conn.sock.sendall(b"GET /echo HTTP/1.1\r\nHo")
    assert conn.read_response().status == 200
    return conn


def test_a_head_already_coming_when_a_response_ends_keeps_its_header_deadline(tmp_path):
    # The next request's first bytes arrive while the first response is still being made.
    # When that response ends, the connection is not idle: its half-read head is under the
    # header timeout (10 s), not the keep-alive (0.5 s).
    args = (*APP, "--timeout-keep-alive", "0.5", "--header-timeout", "10")
    with sidecar(0, *args, tmp_path=tmp_path, command="serve") as sc:
        conn = _answered_with_the_next_head_half_read(sc.port, slow=0.3)
        time.sleep(1.2)  # past the keep-alive
        conn.sock.sendall(b"st: x\r\n\r\n")
        assert conn.read_response().status == 200
        assert sc.metric("asgi_connections_closed_total", 'reason="idle_timeout"') == 0


def test_a_head_already_coming_when_a_response_ends_still_times_out_at_its_deadline(tmp_path):
    # The other way round: a header timeout (0.5 s) shorter than the keep-alive (10 s) still
    # answers 408 to a pipelined head that stops half way, once the first response has ended.
    args = (*APP, "--timeout-keep-alive", "10", "--header-timeout", "0.5")
    with sidecar(0, *args, tmp_path=tmp_path, command="serve") as sc:
        conn = _answered_with_the_next_head_half_read(sc.port, slow=0.2)
        assert conn.read_response().status == 408
        assert conn.wait_closed(5) is not None
        assert sc.metric("asgi_requests_rejected_total", 'reason="header_timeout"') == 1


def test_a_websocket_counts_as_a_connection_until_it_closes(tmp_path):
    # uvicorn hands an upgraded connection to its WebSocket protocol, and the transport
    # then tells that protocol, not serve's, when it closes.  The connection counts against
    # max_connections while it is open, and no longer once it has closed.
    def closed() -> float:
        found = samples(sc.metrics())
        return sum(v for k, v in found.items() if k.startswith("asgi_connections_closed_total"))

    with sidecar(0, *APP, "--max-connections", "2", tmp_path=tmp_path, command="serve") as sc:
        before = closed()  # the harness's own probe of the port, if any
        for n in range(1, 4):
            with ws_connect(f"ws://127.0.0.1:{sc.port}/ws", open_timeout=5) as ws:
                ws.send("hi")
                assert ws.recv(timeout=5) == "echo:hi"
                assert sc.metric("asgi_connections", 'state="active"') == 1
            wait_for(lambda n=n: closed() == before + n, what=f"{n} closed connections counted")
            assert sc.metric("asgi_connections", 'state="active"') == 0
        assert Conn(sc.port).request("/echo").status == 200
