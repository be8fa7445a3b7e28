"""The response framing rules of ``framing.py``, as pure functions (no sockets).

The same rules are checked end to end in tests/integration/test_rfc9112_responses.py;
here are the cases only a pure test reaches: what exactly is forwarded, and a
chunked body fed one byte at a time, as a slow upstream would send it.
"""

from __future__ import annotations

import pytest

from asgi_sidecar.framing import (
    ChunkedScanner,
    ProtocolError,
    parse_response_head,
    read_response_head,
)


def test_cl_and_te_keeps_te_drops_cl_and_the_connection():
    head = parse_response_head(
        b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\nX-A: 1"
    )
    assert (head.chunked, head.content_length, head.close) == (True, None, True)
    assert head.headers == b"X-A: 1\r\n"


def test_equal_content_lengths_are_forwarded_once():
    head = parse_response_head(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\ncontent-length:  2 ")
    assert head.content_length == 2
    assert head.headers == b"Content-Length: 2\r\n"
    assert not head.close


@pytest.mark.parametrize("value", [b"+1", b"1_0", b"0x1", b"1, 1", b"", b"\xd9\xa1", b"-0"])
def test_content_length_is_digits_only(value):
    with pytest.raises(ProtocolError):
        parse_response_head(b"HTTP/1.1 200 OK\r\nContent-Length: " + value)


@pytest.mark.parametrize(
    "codings",
    [[b"gzip"], [b"gzip, chunked"], [b"chunked", b"chunked"], [b"xchunked"], [b""]],
)
def test_only_a_single_chunked_coding_is_accepted(codings):
    lines = b"".join(b"\r\nTransfer-Encoding: " + c for c in codings)
    with pytest.raises(ProtocolError):
        parse_response_head(b"HTTP/1.1 200 OK" + lines)


def test_http10_response_with_transfer_encoding_is_refused():
    with pytest.raises(ProtocolError):
        parse_response_head(b"HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked")


@pytest.mark.parametrize("status", [b"103 Early Hints", b"204 No Content"])
def test_1xx_and_204_lose_their_framing_headers(status):
    head = parse_response_head(b"HTTP/1.1 " + status + b"\r\nContent-Length: 5\r\nLink: <a>")
    assert (head.content_length, head.chunked, head.headers) == (None, False, b"Link: <a>\r\n")


def test_304_keeps_its_content_length():
    head = parse_response_head(b"HTTP/1.1 304 Not Modified\r\nContent-Length: 5")
    assert head.headers == b"Content-Length: 5\r\n"


def test_headers_named_in_connection_are_dropped_but_never_the_length():
    head = parse_response_head(
        b"HTTP/1.1 200 OK\r\nConnection: X-Hop, content-length\r\nX-Hop: 1\r\n"
        b"Content-Length: 2\r\nX-Kept: 1"
    )
    assert head.headers == b"Content-Length: 2\r\nX-Kept: 1\r\n"


@pytest.mark.parametrize(
    "line", [b"X-A : 1", b"X A: 1", b"X(A): 1", b"\tX-A: 1", b"X-A: \x01", b"X-A: \x7f"]
)
def test_names_are_tokens_and_values_have_no_control_characters(line):
    with pytest.raises(ProtocolError):
        parse_response_head(b"HTTP/1.1 200 OK\r\n" + line)


def test_tab_and_obs_text_in_values_pass():
    head = parse_response_head(b"HTTP/1.1 200 OK\r\nX-A: a\tb \xe9")
    assert head.headers == b"X-A: a\tb \xe9\r\n"


BODY = b"3;name=value\r\nabc\r\n10\r\n0123456789abcdef\r\n0\r\nX-Trailer: 1\r\n\r\n"


def test_a_chunked_body_fed_byte_by_byte_ends_where_it_ends():
    scanner = ChunkedScanner()
    payload = b""
    for i in range(len(BODY)):
        piece = BODY[i : i + 1]
        end, done, spans = scanner.feed(piece)
        assert end == 1
        payload += b"".join(piece[a:b] for a, b in spans)
        assert done == (i == len(BODY) - 1)
    assert payload == b"abc0123456789abcdef"


def test_bytes_after_the_last_chunk_are_not_the_body():
    end, done, _ = ChunkedScanner().feed(BODY + b"HTTP/1.1 200 OK\r\n")
    assert (end, done) == (len(BODY), True)


@pytest.mark.parametrize(
    "body",
    [
        b"3\nabc\r\n0\r\n\r\n",  # bare LF ending the size line
        b"3;a\rb\r\nabc\r\n0\r\n\r\n",  # CR inside an extension
        b"3 \r\nabc\r\n0\r\n\r\n",  # whitespace after the size without an extension
        b"3\r\nabc\r\n0\r\nX-T : 1\r\n\r\n",  # whitespace before a trailer's colon
        b"3\r\nabc\r\n0\r\n \r\n\r\n",  # a blank-looking trailer line
        b"3\r\nabc\r\n0\r\n\n",  # bare LF ending the body
        b"1" * 17 + b"\r\n",  # more than 64 bits of size
        b"1;" + b"x" * 9000 + b"\r\n",  # an endless extension, even within one read
    ],
)
def test_chunk_lines_a_client_could_read_differently_are_refused(body):
    with pytest.raises(ProtocolError):
        ChunkedScanner().feed(body)


def test_a_head_seen_lately_is_read_from_the_memo_and_equals_a_fresh_parse():
    head = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: keep-alive\r\nX-Memo: 1"
    first, again = read_response_head(head), read_response_head(head)
    assert first is again  # one parse, shared: a ResponseHead is never changed
    fresh = parse_response_head(head)
    assert (fresh.status, fresh.headers, fresh.content_length, fresh.close) == (
        first.status, first.headers, first.content_length, first.close,
    )  # fmt: skip
    assert first.headers == b"Content-Length: 5\r\nX-Memo: 1\r\n"


def test_the_memo_refuses_bad_heads_every_time_and_stays_bounded():
    bad = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6"
    for _ in range(2):
        with pytest.raises(ProtocolError):
            read_response_head(bad)
    long = b"HTTP/1.1 200 OK\r\nX-Long: " + b"v" * 4096
    assert read_response_head(long) is not read_response_head(long)  # too long to keep
    heads = [b"HTTP/1.1 200 OK\r\nX-Id: %d" % i for i in range(1000)]
    parsed = [read_response_head(h) for h in heads]
    assert [p.headers for p in parsed] == [h.split(b"\r\n", 1)[1] + b"\r\n" for h in heads]
    assert len(framing_memo()) <= 256


def framing_memo() -> dict[bytes, object]:
    from asgi_sidecar import framing

    return framing._HEADS
