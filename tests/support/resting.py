"""What a connection must still read after resting (tracking.REST_AFTER), in both modes."""

from __future__ import annotations

import json
import time

from tests.support.rawhttp import Conn

# Longer than REST_AFTER (0.5 s) and a sweep (0.1 s), with room for a slow machine.
PAST_REST = 1.2


def read_on_after_resting(port: int) -> None:
    """On one connection to the test app: a request; past a rest, a head split across
    reads; past another, two pipelined requests; then one more at once.  Each answered in
    full and in order (five requests, four of them on a reused connection)."""
    conn = Conn(port)
    assert conn.request("/echo").status == 200
    time.sleep(PAST_REST)
    conn.sock.sendall(b"GET /headers HTTP/1.1\r\nHost: x\r\nX-Spl")
    time.sleep(0.2)
    conn.sock.sendall(b"it: 1\r\n\r\n")
    split = conn.read_response()
    assert split.status == 200
    assert json.loads(split.body)["x-split"] == "1"
    time.sleep(PAST_REST)
    conn.sock.sendall(
        b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nfirst"
        b"GET /headers HTTP/1.1\r\nHost: x\r\nX-Second: 2\r\n\r\n"
    )
    first, second = conn.read_response(), conn.read_response()
    assert json.loads(first.body) == {"size": 5, "start": "first"}
    assert json.loads(second.body)["x-second"] == "2"
    assert conn.request("/echo").status == 200  # at once: the parser made just now
