"""Bad input gets a clear status, is counted by reason, and breaks nothing else.

Every request here is sent on a raw socket: no client library sends these bytes.
"""

from __future__ import annotations

import select
import threading
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.support.processes import Sidecar, sidecar, upstream_app
from tests.support.rawhttp import RawClient, request, tcp_connections
from tests.support.waiting import eventually

MAX_HEADER = 2048
HEADER_TIMEOUT = 0.5
FLAGS = ("--max-header-size", str(MAX_HEADER), "--header-timeout", str(HEADER_TIMEOUT))
REASONS = (
    "bad_request",
    "bad_field",
    "bad_target",
    "bad_version",
    "smuggling",
    "header_too_large",
    "uri_too_long",
    "header_timeout",
)


@pytest.fixture(scope="module")
def app_port() -> Iterator[int]:
    """An app of this module's own, so any connection to it came from these sidecars."""
    with upstream_app() as port:
        yield port


@pytest.fixture
def sc(app_port, tmp_path) -> Iterator[Sidecar]:
    with sidecar(app_port, *FLAGS, tmp_path=tmp_path) as handle:
        yield handle


def rejected(sc: Sidecar) -> dict[str, float]:
    return {r: sc.metric("asgi_requests_rejected_total", f'reason="{r}"') for r in REASONS}


def assert_refused(sc: Sidecar, data: bytes, status: int, reason: str) -> None:
    """``data`` gets exactly one ``status`` response, the connection is closed, and the
    rejection is counted once under ``reason`` and nowhere else."""
    with RawClient(sc.port, timeout=5) as c:
        c.send(data)
        response = c.read_response()
        assert response.status == status
        assert response.header("connection") == "close"
        assert c.wait_closed() == b""  # nothing after the error response
    expected = dict.fromkeys(REASONS, 0.0)
    expected[reason] = 1.0
    assert rejected(sc) == expected
    assert sc.metric("asgi_requests_total", f'code="{status}"') == 1


def assert_never_forwarded(sc: Sidecar, app_port: int, before: set[tuple[str, str, str]]) -> None:
    """No connection to the app was made since ``before`` (closed ones linger in TIME_WAIT)."""
    sc.metrics()  # a round trip through the sidecar's event loop: any connect has started
    assert sc.metric("asgi_upstream_connections", 'state="idle"') == 0
    assert sc.metric("asgi_upstream_connections", 'state="active"') == 0
    assert tcp_connections(app_port) - before == set()


# -- malformed requests --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "status", "reason"),
    [
        pytest.param(b"GARBAGE\r\n\r\n", 400, "bad_request", id="no-method-or-version"),
        pytest.param(b"GET / HTTP/9.9\r\nHost: t\r\n\r\n", 505, "bad_version", id="bad-version"),
        pytest.param(
            b"GET /a b c HTTP/1.1\r\nHost: t\r\n\r\n", 400, "bad_request", id="spaces-in-target"
        ),
        pytest.param(
            b"GET /\x00 HTTP/1.1\r\nHost: t\r\n\r\n", 400, "bad_target", id="nul-in-target"
        ),
        pytest.param(
            b"GET / HTTP/1.1\r\nHost: t\r\nNo colon here\r\n\r\n",
            400,
            "bad_field",
            id="bad-header-line",
        ),
        pytest.param(
            b"GET / HTTP/1.1\r\nHost: t\r\n Folded: x\r\n\r\n", 400, "bad_field", id="obs-fold"
        ),
    ],
)
def test_malformed_request_gets_its_status_and_close(sc, app_port, data, status, reason):
    before = tcp_connections(app_port)
    assert_refused(sc, data, status, reason)
    assert_never_forwarded(sc, app_port, before)


def test_malformed_request_after_good_ones_is_answered_in_order(sc):
    with RawClient(sc.port) as c:
        c.send(request("GET", "/slow?s=0.2") + request("GET", "/echo") + b"BROKEN\r\n\r\n")
        assert c.read_response().body == b"slow done"
        assert c.read_response().status == 200
        response = c.read_response()
        assert response.status == 400
        assert c.wait_closed() == b""
    assert rejected(sc)["bad_request"] == 1


# -- headers too large ---------------------------------------------------------------------


def test_headers_over_the_limit_get_431(sc, app_port):
    headers = [(f"X-Filler-{i}", "v" * 100) for i in range(40)]  # about 4 KB, complete
    before = tcp_connections(app_port)
    assert_refused(sc, request("GET", "/echo", headers), 431, "header_too_large")
    assert_never_forwarded(sc, app_port, before)


def test_endless_header_line_gets_431_without_waiting_for_its_end(sc):
    with RawClient(sc.port, timeout=5) as c:
        c.send(b"GET /echo HTTP/1.1\r\nHost: t\r\nX-Endless: ")
        for _ in range(4):  # 4 KB and never a newline
            c.send(b"a" * 1024)
        response = c.read_response()
        assert response.status == 431
        assert c.wait_closed() == b""
    assert rejected(sc)["header_too_large"] == 1


def test_long_request_line_gets_414(sc):
    assert_refused(sc, request("GET", "/echo?q=" + "a" * 4096), 414, "uri_too_long")


def test_headers_just_under_the_limit_pass(sc):
    headers = [(f"X-Filler-{i}", "v" * 100) for i in range(12)]  # about 1.4 KB
    with RawClient(sc.port) as c:
        c.send(request("GET", "/echo", headers))
        assert c.read_response().status == 200
    assert rejected(sc)["header_too_large"] == 0


# -- request smuggling ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(
            b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\n\r\n",
            id="cl-then-te",
        ),
        pytest.param(
            b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n"
            b"Content-Length: 5\r\n\r\n0\r\n\r\n",
            id="te-then-cl",
        ),
        pytest.param(
            b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n"
            b"hello!",
            id="two-content-lengths",
        ),
        pytest.param(
            b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 5, 6\r\n\r\nhello!",
            id="content-length-list",
        ),
        pytest.param(
            b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked, identity\r\n\r\n"
            b"0\r\n\r\n",
            id="chunked-not-last",
        ),
        pytest.param(
            b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n",
            id="unknown-coding",
        ),
    ],
)
def test_ambiguous_framing_gets_400_close_and_is_never_forwarded(sc, app_port, data):
    before = tcp_connections(app_port)
    assert_refused(sc, data, 400, "smuggling")
    assert_never_forwarded(sc, app_port, before)


# -- slow clients --------------------------------------------------------------------------


def test_header_timeout_gets_408_and_close(sc):
    with RawClient(sc.port, timeout=5) as c:
        c.send(b"GET /echo HTTP/1.1\r\nHost: t\r\n")  # never finished
        started = time.monotonic()
        response = c.read_response()
        waited = time.monotonic() - started
        assert response.status == 408
        assert response.header("connection") == "close"
        assert c.wait_closed() == b""
    assert HEADER_TIMEOUT - 0.05 <= waited < HEADER_TIMEOUT + 1.5
    assert rejected(sc) == {**dict.fromkeys(REASONS, 0.0), "header_timeout": 1}


def test_header_timeout_on_a_kept_alive_connection(sc):
    """The deadline runs from the request's first byte, also for a second request."""
    with RawClient(sc.port, timeout=5) as c:
        c.send(request("GET", "/echo"))
        assert c.read_response().status == 200
        time.sleep(HEADER_TIMEOUT + 0.2)  # idle, not slow: no 408 for that
        c.send(request("GET", "/echo"))
        assert c.read_response().status == 200
        c.send(b"GET /echo HTTP/1.1\r\n")
        assert c.read_response().status == 408
        assert c.wait_closed() == b""
    assert rejected(sc)["header_timeout"] == 1


def test_slow_but_steady_headers_still_time_out(sc):
    """Trickling a byte at a time does not push the deadline back (slowloris)."""
    with RawClient(sc.port, timeout=5) as c:
        c.send(b"GET /echo HTTP/1.1\r\nX-Slow: ")
        started = time.monotonic()
        for _ in range(30):  # a byte every 0.1 s until the sidecar answers, at most 3 s
            readable, _, _ = select.select([c.sock], [], [], 0.1)
            if readable:
                break
            c.send(b"a")
        response = c.read_response()
        waited = time.monotonic() - started
        assert response.status == 408
        assert c.wait_closed() == b""
    assert HEADER_TIMEOUT - 0.05 <= waited < HEADER_TIMEOUT + 1.5
    assert rejected(sc)["header_timeout"] == 1


# -- nothing else breaks -------------------------------------------------------------------

BAD_INPUTS = {
    "bad_request": b"GARBAGE\r\n\r\n",
    "smuggling": (
        b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
    ),
    "header_too_large": request("GET", "/", [(f"X-{i}", "v" * 100) for i in range(40)]),
}


def test_burst_of_bad_clients_leaves_good_clients_and_the_process_unharmed(app_port, tmp_path):
    per_kind = 50
    with sidecar(app_port, *FLAGS, tmp_path=tmp_path) as sc:
        statuses: list[int] = []
        errors: list[BaseException] = []

        def bad_clients() -> None:
            try:
                for i in range(per_kind):
                    for data in BAD_INPUTS.values():
                        with RawClient(sc.port, timeout=5) as c:
                            c.send(data)
                            if i % 2:  # half read the answer, half hang up at once
                                statuses.append(c.read_response().status)
                    # and some that connect and leave without a byte, or mid-head
                    with RawClient(sc.port, timeout=5):
                        pass
                    with RawClient(sc.port, timeout=5) as c:
                        c.send(b"GET /echo HTTP/1.1\r\nHo")
            except BaseException as exc:  # reported below, in the test's thread
                errors.append(exc)

        bad = threading.Thread(target=bad_clients)
        good = 0
        deadline = time.monotonic() + 30
        with httpx.Client(timeout=5) as client:
            bad.start()
            while bad.is_alive() and time.monotonic() < deadline and good < 5000:
                response = client.get(sc.url + "/echo")
                assert response.status_code == 200
                assert response.json() == {"size": 0, "start": ""}
                good += 1
            bad.join(30)
            assert not bad.is_alive()
            assert not errors, errors
            assert good > 0
            # Still fine afterwards, on the same kept-alive connection.
            assert client.get(sc.url + "/echo").status_code == 200
        assert sorted(set(statuses)) == [400, 431]
        assert len(statuses) == per_kind // 2 * len(BAD_INPUTS)

        assert sc.proc.poll() is None  # still running
        counts = rejected(sc)
        for reason in BAD_INPUTS:
            assert counts[reason] == per_kind, (reason, counts)
        # No connection leaked: every bad one and the good one are gone.
        # (A connection left mid-head ends at its header timeout, or at once on EOF.)
        assert eventually(
            lambda: (
                sc.metric("asgi_connections", 'state="active"') == 0
                and sc.metric("asgi_connections", 'state="idle"') == 0
            ),
            HEADER_TIMEOUT + 3,
        ), sc.metrics()
        assert sc.metric("asgi_requests_in_flight") == 0
        assert sc.metric("asgi_upstream_connections", 'state="active"') == 0
        assert "Traceback" not in sc.log()


def test_a_refused_upload_still_sending_gets_its_response_not_a_reset(sc):
    """A lingering close: the sidecar shuts its side after the 400 and reads and drops the
    rest of the body, instead of closing with unread data (the kernel would answer the
    client's next bytes with a reset, and the client would never see the response)."""
    import socket

    body = b"x" * (4 * 1024 * 1024)
    head = f"POST /echo HTTP/1.1\r\nContent-Length: {len(body)}\r\n\r\n".encode()  # no Host
    with socket.create_connection(("127.0.0.1", sc.port), timeout=10) as sock:
        sock.sendall(head)
        readable, _, _ = select.select([sock], [], [], 5)  # the 400 has been sent
        assert readable
        sock.sendall(body)  # a client that sends its whole upload before reading
        data = b""
        while b"\r\n\r\n" not in data:
            part = sock.recv(65536)
            assert part, "closed before a response"
            data += part
        assert data.startswith(b"HTTP/1.1 400 ")
