import random

import pytest

from asgi_sidecar.http1 import (
    ChunkedScanner,
    ProtocolError,
    parse_response_head,
    response_has_body,
    simple_response,
)


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
