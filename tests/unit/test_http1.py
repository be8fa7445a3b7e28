import random

import httptools
import pytest

from asgi_sidecar import http1
from asgi_sidecar.framing import (
    ChunkedScanner,
    ProtocolError,
    parse_response_head,
    response_has_body,
)
from asgi_sidecar.http1 import RequestHead
from asgi_sidecar.refusing import BadTransferEncodingError, HeaderTooLargeError, input_refusal


def test_parse_drops_hop_by_hop_and_reads_framing():
    head = parse_response_head(
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n"
        b"Keep-Alive: timeout=5\r\nX-App: 1"
    )
    assert head.status == 200
    assert head.content_length == 5
    assert head.close
    assert not head.chunked
    assert head.headers == b"Content-Length: 5\r\nX-App: 1\r\n"


def test_http10_response_closes_unless_keep_alive():
    assert parse_response_head(b"HTTP/1.0 200 OK").close
    assert not parse_response_head(b"HTTP/1.0 200 OK\r\nConnection: keep-alive").close
    assert parse_response_head(b"HTTP/1.0 200 OK").status_line == b"HTTP/1.1 200 OK"


def test_chunked_wins_over_content_length():
    head = parse_response_head(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 3"
    )
    assert head.chunked
    assert head.content_length is None


@pytest.mark.parametrize(
    "raw",
    [
        b"HTTP/2 200 OK",
        b"HTTP/1.1 abc OK",
        b"HTTP/1.1 200 OK\r\nNoColon",
        b"HTTP/1.1 200 OK\r\nBad : x",
        b"HTTP/1.1 200 OK\r\nContent-Length: x",
        b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2",
    ],
)
def test_malformed_heads_are_protocol_errors(raw):
    with pytest.raises(ProtocolError):
        parse_response_head(raw)


def test_bodyless_responses():
    assert not response_has_body(204, b"GET")
    assert not response_has_body(304, b"GET")
    assert not response_has_body(200, b"HEAD")
    assert response_has_body(200, b"GET")


BODY = b"5\r\nhello\r\n1a;ext=1\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\nTrailer: x\r\n\r\n"


def test_chunked_scanner_finds_the_end_and_payload_under_any_split():
    rng = random.Random(7)
    for _ in range(200):
        data = BODY + b"NEXT"
        cuts = sorted(rng.sample(range(1, len(data)), 3))
        pieces = [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]
        scanner = ChunkedScanner()
        payload = b""
        consumed = b""
        for piece in pieces:
            end, done, spans = scanner.feed(piece)
            payload += b"".join(piece[a:b] for a, b in spans)
            consumed += piece[:end]
            if done:
                break
        assert scanner.done
        assert payload == b"helloabcdefghijklmnopqrstuvwxyz"
        assert consumed == BODY


def test_chunked_scanner_rejects_garbage():
    with pytest.raises(ProtocolError):
        ChunkedScanner().feed(b"zz\r\n")
    with pytest.raises(ProtocolError):
        ChunkedScanner().feed(b"1" * 9000)


# -- request heads rewritten for the upstream -----------------------------------------------


def rewritten(*headers: tuple[bytes, bytes], peer: bytes = b"10.0.0.9", limit: int = 8192) -> bytes:
    head = RequestHead()
    head.method, head.url = b"GET", b"/x"
    for name, value in headers:
        head.add_header(name, value)
    head.rewrite(peer, limit)
    return head.head_bytes


def test_request_head_drops_hop_by_hop_and_adds_forwarding():
    raw = rewritten(
        (b"Host", b"app"),
        (b"Connection", b"keep-alive, X-Secret"),
        (b"X-Secret", b"1"),
        (b"Keep-Alive", b"timeout=5"),
        (b"TE", b"trailers"),
        (b"X-Forwarded-For", b"1.2.3.4"),
    )
    assert raw == (
        b"GET /x HTTP/1.1\r\nHost: app\r\n"
        b"x-forwarded-for: 1.2.3.4, 10.0.0.9\r\nx-forwarded-proto: http\r\n\r\n"
    )


def test_connection_never_drops_the_framing_or_the_host():
    raw = rewritten(
        (b"Host", b"app"), (b"Content-Length", b"3"), (b"Connection", b"content-length, host")
    )
    assert b"Host: app\r\n" in raw
    assert b"Content-Length: 3\r\n" in raw


def test_request_head_keeps_the_clients_proto_and_rechunks():
    head = RequestHead()
    head.method, head.url = b"POST", b"/"
    head.add_header(b"X-Forwarded-Proto", b"https")
    head.add_header(b"Transfer-Encoding", b"gzip, chunked")
    head.rewrite(b"::1", 8192)
    assert head.has_body
    assert head.chunked
    assert head.head_bytes.endswith(
        b"X-Forwarded-Proto: https\r\nx-forwarded-for: ::1\r\ntransfer-encoding: chunked\r\n\r\n"
    )


def test_upgrade_is_forwarded_only_when_connection_names_it():
    kept = rewritten((b"Connection", b"Upgrade"), (b"Upgrade", b"websocket"))
    assert kept.endswith(b"connection: upgrade\r\nupgrade: websocket\r\n\r\n")
    dropped = rewritten((b"Upgrade", b"websocket"))
    assert b"upgrade" not in dropped.lower()


def test_expect_and_content_length_set_what_the_proxy_needs():
    head = RequestHead()
    head.add_header(b"Expect", b"100-continue")
    head.add_header(b"Content-Length", b"0")
    assert head.expect_continue
    assert not head.has_body
    assert head.error is None
    odd = RequestHead()
    odd.add_header(b"Expect", b"something-else")
    assert odd.error == (417, "bad_request")


def test_oversized_or_badly_encoded_heads_are_refused():
    with pytest.raises(HeaderTooLargeError):
        rewritten((b"X-Big", b"a" * 100), limit=64)
    head = RequestHead()
    head.add_header(b"Transfer-Encoding", b"chunked, gzip")
    with pytest.raises(BadTransferEncodingError):
        head.rewrite(b"1.1.1.1", 8192)


def test_parser_errors_map_to_status_and_reason():
    assert input_refusal(HeaderTooLargeError()) == (431, "header_too_large")
    wrapped = ValueError("callback failed")  # what httptools raises for a callback's error
    wrapped.__context__ = BadTransferEncodingError()
    assert input_refusal(wrapped) == (400, "smuggling")
    assert input_refusal(ValueError("Content-Length can't be present")) == (400, "smuggling")
    assert input_refusal(ValueError("Invalid method")) == (400, "bad_request")


class _Checked:
    """httptools' parser fed a raw head, checked as embedded mode checks it: in
    on_headers_complete, with the url and fields as uvicorn collects them."""

    def __init__(self, raw: bytes) -> None:
        self.url = b""
        self.fields: list[tuple[bytes, bytes]] = []
        self.refused: http1.RequestRefusedError | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.parser.feed_data(raw)

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.fields.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        try:
            http1.check_request(self.parser, self.url, self.fields)
        except http1.RequestRefusedError as exc:
            self.refused = exc


@pytest.mark.parametrize(
    ("head", "status"),
    [
        (b"GET / HTTP/1.1\r\n", 400),  # HTTP/1.1 without Host
        (b"GET / HTTP/1.1\r\nConnection: close\r\n", 400),  # the same, not kept alive
        (b"GET /a#frag HTTP/1.1\r\nHost: x\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: x\r\nHost: y\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: x\r\ncontent_length: 5\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n", 501),
        (b"GET / HTTP/2.0\r\nHost: x\r\n", 505),
        (b"GET / HTTP/2.0\r\nHost: x\r\nConnection: keep-alive\r\n", 505),
        (b"GET / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n", 400),  # 1.0 framing
    ],
)
def test_check_request_applies_the_proxys_rules(head, status):
    """Embedded mode's check refuses what the proxy refuses, with the same status."""
    checked = _Checked(head + b"\r\n")
    assert checked.refused is not None
    assert checked.refused.status == status


@pytest.mark.parametrize(
    "head",
    [
        b"GET /path?q=1 HTTP/1.1\r\nHost: example.com:8080\r\nx-custom_name: 1\r\n",
        b"OPTIONS * HTTP/1.1\r\nHost: example.com\r\n",
        b"GET / HTTP/1.0\r\n",  # HTTP/1.0 may omit Host
        b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n",  # kept alive, still 1.0
    ],
)
def test_check_request_passes_a_valid_head(head):
    assert _Checked(head + b"\r\n").refused is None


def test_llhttp_keeps_only_http_1_1_alive_without_a_connection_field():
    """The premise of ``request_version``: of every version llhttp takes, a request with
    no Connection field is kept alive for HTTP/1.1 alone."""
    taken: dict[str, bool] = {}
    for major in range(10):
        for minor in range(10):
            try:
                checked = _Checked(f"GET / HTTP/{major}.{minor}\r\nHost: x\r\n\r\n".encode())
            except httptools.HttpParserError:
                continue  # a version llhttp refuses
            taken[checked.parser.get_http_version()] = checked.parser.should_keep_alive()
    assert taken == {"0.9": False, "1.0": False, "1.1": True, "2.0": False}


def test_request_version_asks_the_parser_unless_the_answer_is_known():
    for raw, version in [
        (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", "1.1"),
        (b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", "1.1"),
        (b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", "1.0"),
        (b"GET / HTTP/1.0\r\n\r\n", "1.0"),
    ]:
        checked = _Checked(raw)
        head = http1.RequestHead()
        for name, value in checked.fields:
            head.add_header(name, value)
        parser = checked.parser
        assert http1.request_version(parser, parser.should_keep_alive(), head) == version


@pytest.mark.parametrize(
    ("value", "bad"),
    [(b"example.com", False), (b" example.com\t", False), (b"\texample.com ", False),
     (b"exa mple.com", True), (b"", True), (b" ", True)],
)  # fmt: skip
def test_a_host_value_is_judged_without_the_whitespace_around_it(value, bad):
    head = http1.RequestHead()
    head.add_header(b"Host", value)
    assert (head.hosts, head.host_bad) == (1, bad)
