"""Keep-alive idle timer and header timeout of a real sidecar process."""

from __future__ import annotations

import time

from tests.support.processes import sidecar
from tests.support.rawhttp import Conn
from tests.support.resting import read_on_after_resting
from tests.support.waiting import wait_for

# The timer is swept every 0.1 s; allow that plus scheduling noise.
MARGIN = 0.6


def test_connection_that_never_sends_a_byte_is_closed_after_keep_alive(upstream_port, tmp_path):
    with sidecar(upstream_port, "--timeout-keep-alive", "1", tmp_path=tmp_path) as sc:
        silent = Conn(sc.port)
        closed_after = silent.wait_closed(5)
        assert closed_after is not None, "a silent connection was never closed"
        assert 0.9 <= closed_after <= 1 + MARGIN
        assert silent.buf == b""  # closed without a response: nothing was asked
        wait_for(lambda: sc.metric("asgi_connections_closed_total", 'reason="idle_timeout"') >= 1)


def test_connection_is_closed_after_keep_alive_following_a_request(upstream_port, tmp_path):
    with sidecar(upstream_port, "--timeout-keep-alive", "1", tmp_path=tmp_path) as sc:
        conn = Conn(sc.port)
        response = conn.request("/echo")
        assert response.status == 200
        assert response.headers["connection"] == "keep-alive"
        assert response.headers["keep-alive"] == "timeout=1"
        closed_after = conn.wait_closed(5)
        assert closed_after is not None
        assert 0.9 <= closed_after <= 1 + MARGIN


def test_reuse_after_a_pause_counts_reused_requests_and_idle_gap(upstream_port, tmp_path):
    with sidecar(upstream_port, "--timeout-keep-alive", "2", tmp_path=tmp_path) as sc:
        conn = Conn(sc.port)
        assert conn.request("/echo").status == 200
        assert sc.metric("asgi_keepalive_reused_requests_total") == 0
        time.sleep(0.5)
        assert conn.request("/echo").status == 200  # same socket, within the timeout
        time.sleep(0.3)
        assert conn.request("/echo").status == 200
        assert sc.metric("asgi_keepalive_reused_requests_total") == 2
        assert sc.metric("asgi_idle_gap_seconds_count") == 2
        gap = sc.metric("asgi_idle_gap_seconds_sum")
        assert 0.8 <= gap < 1.5
        assert sc.metric("asgi_idle_gap_seconds_bucket", 'le="+Inf"') == 2
        assert sc.metric("asgi_connections_closed_total", 'reason="idle_timeout"') == 0


def test_header_timeout_is_separate_from_keep_alive(upstream_port, tmp_path):
    args = ("--timeout-keep-alive", "1", "--header-timeout", "2")
    with sidecar(upstream_port, *args, tmp_path=tmp_path) as sc:
        # A head that starts in time but takes longer than the keep-alive timeout to
        # complete is governed by the header timeout: it is served.
        trickle = Conn(sc.port)
        trickle.sock.sendall(b"GET /echo HTTP/1.1\r\n")
        time.sleep(1.5)
        trickle.sock.sendall(b"host: test\r\n\r\n")
        assert trickle.read_response().status == 200

        # A head that never completes gets 408 at the header timeout, then is closed.
        slowloris = Conn(sc.port)
        slowloris.sock.sendall(b"GET /echo HTTP/1.1\r\nhost: t")
        started = time.monotonic()
        response = slowloris.read_response()
        waited = time.monotonic() - started
        assert response.status == 408
        assert response.headers["connection"] == "close"
        assert 1.9 <= waited <= 2 + MARGIN
        assert slowloris.wait_closed(5) is not None
        assert sc.metric("asgi_requests_rejected_total", 'reason="header_timeout"') == 1
        assert sc.metric("asgi_connections_closed_total", 'reason="header_timeout"') == 1


def test_a_connection_rested_while_idle_reads_its_next_requests_whole(upstream_port, tmp_path):
    # Idle past tracking.REST_AFTER (0.5 s), a connection gives up its parser; what comes
    # next is read by a new one: a head split across reads, then two pipelined requests.
    with sidecar(upstream_port, "--timeout-keep-alive", "10", tmp_path=tmp_path) as sc:
        read_on_after_resting(sc.port)
        assert sc.metric("asgi_keepalive_reused_requests_total") == 4
        assert sc.metric("asgi_requests_total", 'code="400"') == 0
