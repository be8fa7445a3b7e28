"""Concurrency limit, wait queue and max_connections of a real sidecar process.

Raw sockets (not an HTTP client library) are used so each test decides exactly
which connection sends what and when, and can see a connection being closed.
"""

from __future__ import annotations

import time

from tests.support.processes import Sidecar, sidecar
from tests.support.rawhttp import Conn
from tests.support.waiting import in_background, wait_for


def slow_requests(sc: Sidecar, count: int, seconds: float) -> list[Conn]:
    """Start ``count`` /slow requests on their own connections and wait until all are in flight."""
    conns = [Conn(sc.port) for _ in range(count)]
    before = sc.metric("asgi_requests_in_flight")
    for conn in conns:
        conn.send(f"/slow?s={seconds}")
    wait_for(
        lambda: sc.metric("asgi_requests_in_flight") >= before + count,
        what=f"{count} requests in flight",
    )
    return conns


def no_connections(sc: Sidecar) -> None:
    """Wait until the sidecar holds no client connection (e.g. its start-up probe is gone)."""
    wait_for(
        lambda: (
            sc.metric("asgi_connections", 'state="idle"') == 0
            and sc.metric("asgi_connections", 'state="active"') == 0
        ),
        what="no open connections",
    )


def test_limit_counts_requests_in_flight_not_idle_connections(upstream_port, tmp_path):
    with sidecar(upstream_port, "--limit-concurrency", "2", tmp_path=tmp_path) as sc:
        idle = [Conn(sc.port) for _ in range(10)]
        for conn in idle[:5]:
            assert conn.request("/echo").status == 200  # idle keep-alive after one request
        # the other five never sent a byte
        wait_for(lambda: sc.metric("asgi_connections", 'state="idle"') == 10, what="10 idle")

        slow = slow_requests(sc, 2, 1.5)
        third = Conn(sc.port)
        third.send("/echo")
        refused = third.read_response()
        # answered while both slots are still held: no waiting for a slot
        assert sc.metric("asgi_requests_in_flight") == 2
        assert refused.status == 503
        assert refused.headers["retry-after"] == "1"
        assert 0 < len(refused.body) < 200
        assert refused.headers["connection"] == "keep-alive"

        for conn in slow:
            response = conn.read_response()
            assert (response.status, response.body) == (200, b"slow done")
        # the connection that got the 503 stayed open and is served now
        assert third.request("/echo").status == 200
        for conn in idle:
            assert conn.request("/echo").status == 200
        assert sc.metric("asgi_requests_rejected_total", 'reason="concurrency_limit"') == 1
        assert sc.metric("asgi_requests_total", 'code="503"') == 1


def test_limit_of_one_admits_one_request(upstream_port, tmp_path):
    with sidecar(upstream_port, "--limit-concurrency", "1", tmp_path=tmp_path) as sc:
        idle = Conn(sc.port)
        assert idle.request("/echo").status == 200
        (busy,) = slow_requests(sc, 1, 1)
        assert Conn(sc.port).request("/echo").status == 503
        assert idle.request("/echo").status == 503
        assert busy.read_response().status == 200
        assert idle.request("/echo").status == 200
        assert sc.metric("asgi_concurrency_limit") == 1


def test_queued_request_waits_for_a_free_slot(upstream_port, tmp_path):
    args = ("--limit-concurrency", "1", "--queue-depth", "2", "--queue-timeout", "0.5")
    with sidecar(upstream_port, *args, tmp_path=tmp_path) as sc:
        first, second = Conn(sc.port), Conn(sc.port)
        first.send("/slow?s=0.25")
        second.send("/slow?s=0.25")  # arrives while the first holds the only slot
        assert first.read_response().status == 200
        assert second.read_response().status == 200
        assert sc.metric("asgi_queue_wait_seconds_count") == 1
        assert sc.metric("asgi_requests_rejected_total", 'reason="queue_timeout"') == 0


def test_queue_times_out_and_refuses_beyond_its_depth(upstream_port, tmp_path):
    args = ("--limit-concurrency", "1", "--queue-depth", "2", "--queue-timeout", "0.5")
    with sidecar(upstream_port, *args, tmp_path=tmp_path) as sc:
        (busy,) = slow_requests(sc, 1, 2)
        queued = [Conn(sc.port), Conn(sc.port)]
        started = time.monotonic()
        for conn in queued:
            conn.send("/echo")
        wait_for(lambda: sc.metric("asgi_queue_length") == 2, what="2 queued")

        overflow = Conn(sc.port)
        overflow.send("/echo")
        refused = overflow.read_response()
        assert refused.status == 503
        assert refused.headers["retry-after"] == "1"
        assert sc.metric("asgi_requests_rejected_total", 'reason="queue_full"') == 1
        assert sc.metric("asgi_queue_length") == 2  # refused at once, not queued

        for conn in queued:
            response = conn.read_response()
            assert response.status == 503
            assert "retry-after" in response.headers
        waited = time.monotonic() - started
        assert 0.45 <= waited < 1.5  # the 0.5 s queue timeout, swept every 0.1 s
        assert busy.read_response().status == 200
        assert sc.metric("asgi_requests_rejected_total", 'reason="queue_timeout"') == 2
        assert sc.metric("asgi_queue_length") == 0
        # every connection that got a 503 is still usable
        for conn in (*queued, overflow):
            assert conn.request("/echo").status == 200


def test_max_connections_evicts_least_recently_used_idle(upstream_port, tmp_path):
    with sidecar(upstream_port, "--max-connections", "3", tmp_path=tmp_path) as sc:
        no_connections(sc)
        c1, c2, c3 = Conn(sc.port), Conn(sc.port), Conn(sc.port)
        for conn in (c1, c2, c3, c1):  # c1 used again: c2 is now the least recently used
            assert conn.request("/echo").status == 200
        c4 = Conn(sc.port)
        assert c4.request("/echo").status == 200
        assert c2.wait_closed(5) is not None
        assert c1.is_open()
        assert c3.is_open()
        assert c1.request("/echo").status == 200
        assert sc.metric("asgi_connections_closed_total", 'reason="evicted"') == 1


def test_max_connections_with_none_idle_leaves_new_ones_in_accept_queue(upstream_port, tmp_path):
    with sidecar(upstream_port, "--max-connections", "2", tmp_path=tmp_path) as sc:
        no_connections(sc)
        opened = sc.metric("asgi_connections_opened_total")  # the start-up probe
        busy = slow_requests(sc, 2, 1.5)
        waiting = Conn(sc.port)  # the kernel completes the handshake; nobody accepts it
        join = in_background(lambda: waiting.request("/echo"))
        wait_for(lambda: sc.metric("asgi_accept_queue_length") >= 1, what="a queued connection")
        assert sc.metric("asgi_connections_opened_total") == opened + 2
        for conn in busy:
            assert conn.read_response().status == 200
        assert join().status == 200  # accepted once a slot freed (an idle one was evicted)
        assert sc.metric("asgi_accept_queue_length") == 0
        assert sc.metric("asgi_connections_closed_total", 'reason="evicted"') == 1


def test_a_connection_that_got_a_503_turns_idle_and_times_out(upstream_port, tmp_path):
    args = ("--limit-concurrency", "1", "--timeout-keep-alive", "1")
    with sidecar(upstream_port, *args, tmp_path=tmp_path) as sc:
        slow = slow_requests(sc, 1, 3)
        refused = Conn(sc.port)
        assert refused.request("/echo").status == 503
        # idle now, like any connection after a response: counted so, and timed out
        wait_for(lambda: sc.metric("asgi_connections", 'state="idle"') == 1, what="1 idle")
        closed_after = refused.wait_closed(timeout=3)
        assert closed_after is not None
        assert closed_after < 2
        assert sc.metric("asgi_connections_closed_total", 'reason="idle_timeout"') == 1
        assert slow[0].read_response().status == 200
