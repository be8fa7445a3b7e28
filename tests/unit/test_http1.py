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
from asgi_sidecar.http1 import RequestHead, client_head, simple_response
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


def test_simple_response_has_retry_after_and_keep_alive():
    response = simple_response(
        503, b"busy", keep_alive=True, keep_alive_timeout=75, extra=(("retry-after", "1"),)
    )
    assert response.startswith(b"HTTP/1.1 503 Service Unavailable\r\n")
    assert b"retry-after: 1\r\n" in response
    assert b"keep-alive: timeout=75\r\n" in response
    assert response.endswith(b"\r\n\r\nbusy")
    assert simple_response(400, b"x", keep_alive=False, head_only=True).endswith(b"\r\n\r\n")


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


# -- upstream response heads rewritten for the client ---------------------------------------

KEEP = http1.keep_alive_end(75)


def forwarded(
    raw: bytes,
    *,
    method: bytes = b"GET",
    upgrade: bytes = b"",
    decode_chunks: bool = False,
    keep_alive_end: bytes | None = KEEP,
) -> tuple[bytes, bool]:
    return client_head(
        parse_response_head(raw),
        method=method,
        upgrade=upgrade,
        keep_alive=True,
        decode_chunks=decode_chunks,
        keep_alive_end=keep_alive_end,
    )


def test_client_head_keeps_alive_with_the_sidecars_timeout():
    head, keep = forwarded(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nKeep-Alive: timeout=5")
    assert keep
    assert head == (
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n"
        b"connection: keep-alive\r\nkeep-alive: timeout=75\r\n\r\n"
    )


def test_client_head_closes_when_the_body_ends_with_the_connection():
    head, keep = forwarded(b"HTTP/1.1 200 OK")
    assert not keep
    assert head.endswith(b"connection: close\r\n\r\n")
    _, keep = forwarded(b"HTTP/1.1 200 OK", method=b"HEAD")
    assert keep
    _, keep = forwarded(b"HTTP/1.1 204 No Content")
    assert keep


def test_client_head_chunked_passes_through_or_is_decoded_for_http10():
    raw = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked"
    head, keep = forwarded(raw)
    assert keep
    assert b"transfer-encoding: chunked\r\n" in head
    head, keep = forwarded(raw, decode_chunks=True)
    assert not keep
    assert b"transfer-encoding" not in head


def test_client_head_while_stopping_closes_every_connection():
    head, keep = forwarded(b"HTTP/1.1 200 OK\r\nContent-Length: 0", keep_alive_end=None)
    assert not keep
    assert head.endswith(b"connection: close\r\n\r\n")


def test_client_head_is_made_once_per_shared_head_and_follows_a_new_keep_alive_end():
    shared = parse_response_head(b"HTTP/1.1 200 OK\r\nContent-Length: 2")

    def head_for(end: bytes | None, keep_alive: bool = True) -> tuple[bytes, bool]:
        return client_head(
            shared, method=b"GET", upgrade=b"", keep_alive=keep_alive,
            decode_chunks=False, keep_alive_end=end,
        )  # fmt: skip

    first, keep = head_for(KEEP)
    assert keep
    assert first == b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n" + KEEP
    assert head_for(KEEP)[0] is first  # the bytes made for the first answer, again
    shorter = http1.keep_alive_end(5)
    assert head_for(shorter) == (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n" + shorter, True)
    # A client that will not keep alive, and a draining sidecar, still get a close.
    assert head_for(shorter, keep_alive=False)[0].endswith(b"connection: close\r\n\r\n")
    assert head_for(None) == (
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nconnection: close\r\n\r\n",
        False,
    )
    assert head_for(KEEP) == (first, True)


def test_client_head_for_interim_and_switching_responses():
    head, keep = forwarded(b"HTTP/1.1 100 Continue")
    assert (head, keep) == (b"HTTP/1.1 100 Continue\r\n\r\n", True)
    head, _ = forwarded(b"HTTP/1.1 101 Switching Protocols", upgrade=b"websocket")
    assert head.endswith(b"connection: upgrade\r\nupgrade: websocket\r\n\r\n")


# -- responses the sidecar makes --------------------------------------------------------------


def test_every_generated_response_is_complete_http():
    responses = {
        400: http1.refusal(400),
        408: http1.REQUEST_TIMEOUT,
        417: http1.refusal(417),
        431: http1.refusal(431),
        502: http1.gateway_error(502, keep_alive=True, keep_alive_timeout=75, head_only=False),
        503: http1.rejection(1, keep_alive=True, keep_alive_timeout=75, head_only=False),
        504: http1.gateway_error(504, keep_alive=False, keep_alive_timeout=75, head_only=False),
    }
    for status, response in responses.items():
        head, _, body = response.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        assert lines[0].startswith(b"HTTP/1.1 %d " % status)
        assert f"content-length: {len(body)}".encode() in lines
        assert b"content-type: text/plain; charset=utf-8" in lines
    assert b"connection: close" in responses[408]
    assert responses[400].endswith(b"connection: close\r\n\r\n")


def test_rejection_is_the_same_503_in_both_modes():
    proxied = http1.rejection(7, keep_alive=False, keep_alive_timeout=5, head_only=False)
    assert b"retry-after: 7\r\n" in proxied
    assert proxied.endswith(b"\r\n\r\n" + http1.REJECTION_BODY)
    fields = dict(http1.rejection_fields(7))
    assert fields == {b"content-type": b"text/plain; charset=utf-8", b"retry-after": b"7"}
    assert http1.rejection(7, keep_alive=True, keep_alive_timeout=5, head_only=True).endswith(
        b"keep-alive: timeout=5\r\n\r\n"
    )


def test_gateway_errors_say_what_failed():
    bad = http1.gateway_error(502, keep_alive=False, keep_alive_timeout=5, head_only=False)
    late = http1.gateway_error(504, keep_alive=False, keep_alive_timeout=5, head_only=False)
    assert bad.endswith(b"Bad Gateway\n")
    assert late.endswith(b"Gateway Timeout\n")


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
