"""RFC 9112 for upstream responses, end to end: a real sidecar in front of scripted bytes.

The upstream is ``rawupstream.RawUpstream``, real sockets answering with exactly
the bytes each test gives, so every broken framing an app could send reaches
the sidecar as it would from a real one.  One test per rule; each also checks
that the sidecar is unharmed afterwards (it serves a new client, no client or
upstream connection is left behind, no request holds a slot), and that an
upstream connection whose framing went wrong never carries another request.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.metrics import samples
from tests.support.processes import Sidecar, sidecar
from tests.support.rawhttp import RawClient, Response, request
from tests.support.rawupstream import RawUpstream, Reply
from tests.support.waiting import wait_for

UPSTREAM_TIMEOUT = "2"  # the one test that waits for it is the stall after a 103
# Far above any wait here: an upstream connection the sidecar closes during a test was
# closed for its framing, never for its idle time.
UPSTREAM_KEEP_ALIVE = "60"
GET = request("GET", "/")
ERRORS = "asgi_upstream_errors_total"
BIG_CHUNK = 64 * 1024


@pytest.fixture(scope="module")
def upstream() -> Iterator[RawUpstream]:
    with RawUpstream() as running:
        yield running


@pytest.fixture(scope="module")
def sc(upstream: RawUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sidecar]:
    tmp = tmp_path_factory.mktemp("rfc9112-responses")
    flags = ("--upstream-timeout", UPSTREAM_TIMEOUT, "--upstream-keep-alive", UPSTREAM_KEEP_ALIVE)
    with sidecar(upstream.port, *flags, tmp_path=tmp) as handle:
        yield handle


class Counts:
    """Counter changes since the test began (the sidecar is shared by the module)."""

    def __init__(self, sc: Sidecar) -> None:
        self.sc = sc
        self.before = samples(sc.metrics())

    def delta(self, name: str, labels: str) -> float:
        key = f"{name}{{{labels}}}"
        return samples(self.sc.metrics()).get(key, 0.0) - self.before.get(key, 0.0)


@pytest.fixture
def counts(sc: Sidecar) -> Counts:
    return Counts(sc)


def unharmed(sc: Sidecar, upstream: RawUpstream) -> None:
    """The sidecar serves a new client and holds no connection or slot for the old ones."""
    assert sc.proc.poll() is None, sc.log()
    with RawClient(sc.port) as c:
        c.send(GET)
        response = c.read_response()
        assert (response.status, response.body) == (200, b"ok")
    assert upstream.unanswered == 0

    def settled() -> bool:
        found = samples(sc.metrics())
        return (
            found['asgi_connections{state="active"}'] == 0
            and found['asgi_connections{state="idle"}'] == 0
            and found['asgi_upstream_connections{state="active"}'] == 0
            and found["asgi_requests_in_flight"] == 0
        )

    wait_for(settled, what="no client connection, upstream request or slot left")


def one_exchange(c: RawClient, upstream: RawUpstream, reply: Reply | bytes) -> tuple[Response, int]:
    """A GET on ``c`` that the upstream answers with ``reply``: the response, and the index
    of the upstream connection the request went on."""
    upstream.script(reply)
    seen = len(upstream.requests)
    c.send(GET)
    response = c.read_response(until_close=False)
    return response, upstream.wait_request(seen).connection


def next_request_avoids(c: RawClient, upstream: RawUpstream, bad: int) -> None:
    """The sidecar closed upstream connection ``bad``, and ``c``'s next request went on another."""
    upstream.wait_peer_closed(bad)
    seen = len(upstream.requests)
    c.send(GET)
    assert c.read_response().body == b"ok"
    assert upstream.wait_request(seen).connection != bad


def assert_502_and_poison_dropped(
    sc: Sidecar, upstream: RawUpstream, counts: Counts, reply: bytes
) -> None:
    with RawClient(sc.port) as c:
        response, bad = one_exchange(c, upstream, reply)
        assert response.status == 502
        assert counts.delta(ERRORS, 'reason="protocol_error"') == 1
        # The 502 was the sidecar's own, well framed: the client connection stays good.
        next_request_avoids(c, upstream, bad)
    unharmed(sc, upstream)


# -- framing: Content-Length and Transfer-Encoding (RFC 9112 6.3) ----------------------------


def test_te_wins_over_cl_and_the_cl_is_removed(sc, upstream, counts):
    # Content-Length 3 would end the body inside the first chunk: a balancer that honoured
    # it would read the rest as the next response (response splitting).
    body = b"a\r\n0123456789\r\n0\r\n\r\n"
    head = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"
    with RawClient(sc.port) as c:
        response, conn = one_exchange(c, upstream, head + body)
        assert response.header("content-length") is None
        assert response.header("transfer-encoding") == "chunked"
        assert response.body == b"0123456789"
        assert c.buffer == b""  # nothing after the last chunk
        # The sender's framing is in doubt: its connection is not reused.
        next_request_avoids(c, upstream, conn)
    assert counts.delta(ERRORS, 'reason="protocol_error"') == 0
    unharmed(sc, upstream)


@pytest.mark.parametrize(
    "head",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4",
        b"HTTP/1.1 200 OK\r\nContent-Length: 3, 4",
        b"HTTP/1.1 200 OK\r\nContent-Length: +3",
        b"HTTP/1.1 200 OK\r\nContent-Length: 0x3",
    ],
    ids=["two-values", "list", "plus", "hex"],
)
def test_conflicting_or_malformed_content_length_is_502(sc, upstream, counts, head):
    assert_502_and_poison_dropped(sc, upstream, counts, head + b"\r\n\r\nabcd")


def test_repeated_equal_content_length_is_forwarded_once(sc, upstream, counts):
    reply = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\ncontent-length: 2\r\n\r\nhi"
    with RawClient(sc.port) as c:
        response, _ = one_exchange(c, upstream, reply)
        assert [n for n, _ in response.fields if n.lower() == "content-length"] == [
            "Content-Length"
        ]
        assert response.body == b"hi"
    unharmed(sc, upstream)


@pytest.mark.parametrize(
    "head",
    [
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: xchunked",
        b"HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked",
    ],
    ids=["gzip", "gzip-chunked", "chunked-twice", "xchunked", "http10"],
)
def test_transfer_codings_other_than_one_chunked_are_502(sc, upstream, counts, head):
    assert_502_and_poison_dropped(sc, upstream, counts, head + b"\r\n\r\n0\r\n\r\n")


# -- the status line (RFC 9112 4) ---------------------------------------------------------


@pytest.mark.parametrize(
    "line",
    [b"garbage", b"200 OK", b"HTTP/1.1 20 OK", b"HTTP/1.1 2000 OK", b"HTTP/1.1 099 Low",
     b"HTTP/1.1 +20 OK", b"HTTP/2.0 200 OK", b"HTTP/1.2 200 OK", b"http/1.1 200 OK",
     b"HTTP/1.1  200 OK"],
    ids=["garbage", "no-version", "two-digits", "four-digits", "below-100", "sign", "http2",
         "http12", "lower-case", "two-spaces"],
)  # fmt: skip
def test_invalid_status_line_is_502(sc, upstream, counts, line):
    assert_502_and_poison_dropped(sc, upstream, counts, line + b"\r\ncontent-length: 0\r\n\r\n")


# -- field syntax (RFC 9112 5, RFC 9110 5.5) -------------------------------------------------


@pytest.mark.parametrize(
    "field",
    [b"X-A: a\rb", b"X-A: a\nX-Injected: 1", b"X-A: a\x00b", b"X-A: a\x01b", b"X-A: a\x7f"],
    ids=["cr", "lf", "nul", "soh", "del"],
)
def test_control_characters_in_header_values_are_502(sc, upstream, counts, field):
    reply = b"HTTP/1.1 200 OK\r\n" + field + b"\r\ncontent-length: 0\r\n\r\n"
    assert_502_and_poison_dropped(sc, upstream, counts, reply)


@pytest.mark.parametrize(
    "field",
    [b"X-A : 1", b"X-A\t: 1", b"X A: 1", b"X(A): 1", b": 1", b"no-colon"],
    ids=["space-before-colon", "tab-before-colon", "space-in-name", "non-token", "empty",
         "no-colon"],
)  # fmt: skip
def test_field_name_with_whitespace_or_non_token_is_502(sc, upstream, counts, field):
    reply = b"HTTP/1.1 200 OK\r\n" + field + b"\r\ncontent-length: 0\r\n\r\n"
    assert_502_and_poison_dropped(sc, upstream, counts, reply)


def test_obs_fold_is_502(sc, upstream, counts):
    reply = b"HTTP/1.1 200 OK\r\nX-A: 1\r\n  folded\r\ncontent-length: 0\r\n\r\n"
    assert_502_and_poison_dropped(sc, upstream, counts, reply)


# -- chunked bodies (RFC 9112 7.1) ----------------------------------------------------------


@pytest.mark.parametrize(
    "bad",
    [b"zz\r\n", b"11111111111111111\r\nx\r\n", b"+1\r\nx\r\n", b"0x1\r\nx\r\n",
     b"3\r\nabcX\r\n", b"3\nabc\r\n", b"3;a\x00b\r\nabc\r\n", b"0\r\nX-T : 1\r\n\r\n",
     b"0\r\n \r\n\r\n"],
    ids=["non-hex", "overflow", "sign", "0x", "missing-crlf", "bare-lf", "nul-in-ext",
         "bad-trailer", "blank-trailer"],
)  # fmt: skip
def test_invalid_chunk_closes_the_client_connection_after_the_head(sc, upstream, counts, bad):
    # The head went to the client before the body was read: no 502 can follow it, so
    # the connection closes, and nothing after the bad chunk line reaches the client.
    head = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"
    upstream.script(head + b"2\r\nok\r\n" + bad)
    seen = len(upstream.requests)
    with RawClient(sc.port) as c:
        c.send(GET)
        got = c.read_head()
        assert (got.status, got.header("transfer-encoding")) == (200, "chunked")
        rest = c.wait_closed()
    assert b"2\r\nok\r\n".startswith(rest), rest
    assert counts.delta(ERRORS, 'reason="protocol_error"') == 1
    assert counts.delta("asgi_connections_closed_total", 'reason="upstream_error"') == 1
    upstream.wait_peer_closed(upstream.wait_request(seen).connection)
    unharmed(sc, upstream)


# -- bodies cut short ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "reply",
    [
        Reply(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabc", then="close"),
        Reply(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nab", then="close"),
        Reply(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabc", then="reset"),
        Reply(b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\nabc", then="reset"),
    ],
    ids=["fixed-close", "chunked-close", "fixed-reset", "until-close-reset"],
)
def test_truncated_body_closes_the_client_connection(sc, upstream, counts, reply):
    upstream.script(reply)
    with RawClient(sc.port) as c:
        c.send(GET)
        got = c.read_head()
        assert got.status == 200
        rest = c.wait_closed()
    # A fixed length is never completed by the sidecar: the client sees the close early.
    assert len(rest) < 10
    assert b"0\r\n\r\n" not in rest
    assert counts.delta(ERRORS, 'reason="truncated"') == 1
    unharmed(sc, upstream)  # and a NEW connection's request works


# -- informational responses (RFC 9110 15.2) -------------------------------------------------


EARLY = b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\ncontent-length: 7\r\n\r\n"
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
FINAL = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nhi"


def test_1xx_pass_through_to_http11_clients(sc, upstream, counts):
    upstream.script(EARLY + CONTINUE + FINAL)
    with RawClient(sc.port) as c:
        c.send(GET)
        early = c.read_head()
        assert (early.status, early.header("link")) == (103, "</s.css>; rel=preload")
        assert early.header("content-length") is None  # never on a 1xx (RFC 9110 8.6)
        assert c.read_head().status == 100
        final = c.read_response()
        assert (final.status, final.body) == (200, b"hi")
        # A 1xx is part of a good response: the connections stay and are reused.
        seen = len(upstream.requests)
        c.send(GET)
        assert c.read_response().body == b"ok"
        first, second = upstream.wait_requests(seen + 1)[seen - 1 : seen + 1]
        assert first.connection == second.connection
    unharmed(sc, upstream)


def test_1xx_is_not_forwarded_to_http10_clients(sc, upstream, counts):
    upstream.script(EARLY + FINAL)
    with RawClient(sc.port) as c:
        c.send(b"GET / HTTP/1.0\r\nHost: t\r\n\r\n")
        assert c.wait_closed().startswith(b"HTTP/1.1 200 OK\r\n")
    unharmed(sc, upstream)


def test_stall_after_a_1xx_still_gets_504_at_the_upstream_timeout(sc, upstream, counts):
    upstream.script(Reply(EARLY, then="stall"))
    seen = len(upstream.requests)
    with RawClient(sc.port) as c:
        c.send(GET)
        assert c.read_head().status == 103
        assert c.read_response().status == 504
    assert counts.delta(ERRORS, 'reason="timeout"') == 1
    upstream.wait_peer_closed(upstream.wait_request(seen).connection)
    unharmed(sc, upstream)


def test_101_to_a_request_without_upgrade_is_502(sc, upstream, counts):
    reply = b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\n\r\n"
    assert_502_and_poison_dropped(sc, upstream, counts, reply)


# -- responses without a body (RFC 9112 6.3) ------------------------------------------------


def test_head_response_keeps_its_content_length_and_has_no_body(sc, upstream, counts):
    upstream.script(b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\n")
    seen = len(upstream.requests)
    with RawClient(sc.port) as c:
        c.send(request("HEAD", "/"))
        response = c.read_response("HEAD")
        assert response.header("content-length") == "1000"
        c.send(GET)  # the same client connection: no body was owed
        assert c.read_response().body == b"ok"
        first, second = upstream.wait_requests(seen + 2)[seen : seen + 2]
        assert first.connection == second.connection  # well framed: reused
    unharmed(sc, upstream)


def test_body_after_a_head_response_never_reaches_a_client(sc, upstream, counts):
    # The app sent a body HEAD does not have: those bytes must not become the next
    # response on that upstream connection.
    upstream.script(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nHTTP/")
    seen = len(upstream.requests)
    with RawClient(sc.port) as c:
        c.send(request("HEAD", "/"))
        c.read_response("HEAD")
        c.send(GET)
        assert c.read_response().body == b"ok"
        first, second = upstream.wait_requests(seen + 2)[seen : seen + 2]
    upstream.wait_peer_closed(first.connection)
    assert second.connection != first.connection
    unharmed(sc, upstream)


def test_app_closing_a_pooled_connection_takes_it_out_of_the_pool(sc, upstream, counts):
    # A complete response, then the app closes: the sidecar had pooled the connection, and
    # must drop it at once (the idle gauge, like the pool, never counts a closed one).
    with RawClient(sc.port) as c:
        _, conn = one_exchange(c, upstream, Reply(b"HTTP/1.1 204 No Content\r\n\r\n", "close"))
        next_request_avoids(c, upstream, conn)
    unharmed(sc, upstream)


@pytest.mark.parametrize(
    ("reply", "length"),
    [
        (b"HTTP/1.1 204 No Content\r\n\r\n", None),
        (b"HTTP/1.1 204 No Content\r\ncontent-length: 5\r\n\r\n", None),
        (b"HTTP/1.1 304 Not Modified\r\ncontent-length: 1234\r\n\r\n", "1234"),
    ],
    ids=["204", "204-with-length", "304-with-length"],
)
def test_204_and_304_have_no_body(sc, upstream, counts, reply, length):
    upstream.script(reply)
    with RawClient(sc.port) as c:
        c.send(GET)
        response = c.read_response(until_close=False)
        assert response.header("content-length") == length  # never on a 204 (RFC 9110 8.6)
        assert response.header("transfer-encoding") is None
        c.send(GET)  # the same connection: no body bytes were left in between
        assert c.read_response().body == b"ok"
    unharmed(sc, upstream)


# -- HTTP/1.0 clients ----------------------------------------------------------------------


def test_http10_client_gets_a_dechunked_body_ended_by_close(sc, upstream, counts):
    upstream.script(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n")
    with RawClient(sc.port) as c:
        c.send(b"GET / HTTP/1.0\r\n\r\n")
        response = c.read_response()  # no length: the body ends at the close
        assert response.header("transfer-encoding") is None
        assert response.header("connection") == "close"
        assert response.body == b"abc"
    unharmed(sc, upstream)


# -- other clients -----------------------------------------------------------------------


def test_bad_upstream_responses_leave_other_clients_unharmed(sc, upstream, counts):
    with RawClient(sc.port) as bystander:
        bystander.send(GET)
        assert bystander.read_response().body == b"ok"
        upstream.script(
            b"garbage\r\n\r\n", b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n"
        )
        with RawClient(sc.port) as victim:
            victim.send(GET)
            assert victim.read_response().status == 502
        with RawClient(sc.port) as victim:
            victim.send(GET)
            assert victim.read_head().status == 200
            victim.wait_closed()
        bystander.send(GET)  # the kept-alive connection from before still works
        assert bystander.read_response().body == b"ok"
    unharmed(sc, upstream)


# -- the abandon path ----------------------------------------------------------------------


def test_client_gone_is_counted_once(sc, upstream, counts):
    upstream.script(Reply(b"", then="stall"))
    seen = len(upstream.requests)
    with RawClient(sc.port) as c:
        c.send(GET)
        sent = upstream.wait_request(seen)
    upstream.wait_peer_closed(sent.connection)  # the sidecar aborted the upstream request
    wait_for(lambda: counts.delta(ERRORS, 'reason="client_gone"') == 1)
    unharmed(sc, upstream)
    assert counts.delta(ERRORS, 'reason="client_gone"') == 1


def test_bad_request_body_after_its_head_went_upstream_is_400_not_client_gone(sc, upstream, counts):
    seen = len(upstream.requests)
    with RawClient(sc.port) as c:
        # Enough body that the sidecar sends the request on before all of it has arrived
        # (it holds the first 16 KiB of a body before admitting the request).
        chunk = b"%x\r\n%b\r\n" % (BIG_CHUNK, b"x" * BIG_CHUNK)
        c.send(request("POST", "/", [("Transfer-Encoding", "chunked")]) + chunk)
        sent = upstream.wait_request(seen)
        c.send(b"zz\r\n")
        assert c.read_response().status == 400
        assert c.is_closed()
    upstream.wait_peer_closed(sent.connection)
    assert not sent.complete
    assert counts.delta("asgi_requests_rejected_total", 'reason="bad_chunk"') == 1
    assert counts.delta("asgi_requests_total", 'code="400"') == 1
    unharmed(sc, upstream)
    assert counts.delta(ERRORS, 'reason="client_gone"') == 0
