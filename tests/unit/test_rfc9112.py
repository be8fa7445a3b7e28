"""The RFC 9112 rules of the edge, one test per rule, on the pure request and response code."""

import pytest

from asgi_sidecar.framing import ChunkedScanner, ProtocolError, parse_response_head
from asgi_sidecar.http1 import RequestHead
from asgi_sidecar.refusing import (
    HeaderTooLargeError,
    RequestRefusedError,
    input_refusal,
    valid_authority,
)

UPSTREAM = "http://127.0.0.1:8000"


def head_of(
    method: bytes,
    url: bytes,
    *headers: tuple[bytes, bytes],
    version: str = "1.1",
    limit: int = 8192,
) -> RequestHead:
    head = RequestHead()
    head.method, head.url = method, url
    for name, value in headers:
        head.add_header(name, value)
    head.validate(version, UPSTREAM)
    head.rewrite(b"10.0.0.1", limit)
    return head


def refused(
    method: bytes,
    url: bytes,
    *headers: tuple[bytes, bytes],
    version: str = "1.1",
    limit: int = 8192,
):
    with pytest.raises(RequestRefusedError) as caught:
        head_of(method, url, *headers, version=version, limit=limit)
    return input_refusal(caught.value)


HOST = (b"Host", b"app")


def test_http11_without_host_is_400():
    assert refused(b"GET", b"/") == (400, "bad_host")


def test_two_hosts_are_400():
    assert refused(b"GET", b"/", HOST, (b"Host", b"other")) == (400, "bad_host")


@pytest.mark.parametrize(
    "value", [b"", b"a b", b"u@h", b"h:x", b":80", b"h/p", b"[::1", b"[]", b"[::1]x", b"h\x00"]
)
def test_invalid_host_value_is_400(value):
    assert refused(b"GET", b"/", (b"Host", value)) == (400, "bad_host")
    assert refused(b"GET", b"/", (b"Host", value), version="1.0") == (400, "bad_host")


@pytest.mark.parametrize(
    "value",
    [b"app", b"app:8000", b"10.0.0.1", b"[::1]:80", b"[v1.x]", b"my_host.example-1.com", b"h:"],
)
def test_valid_host_values(value):
    assert valid_authority(value)
    assert b"Host: " + value + b"\r\n" in head_of(b"GET", b"/", (b"Host", value)).head_bytes


def test_http10_without_host_gets_the_upstreams_authority():
    assert b"\r\nhost: 127.0.0.1:8000\r\n" in head_of(b"GET", b"/", version="1.0").head_bytes


@pytest.mark.parametrize("version", ["2.0", "0.9", "3.1"])
def test_major_versions_other_than_1_are_505(version):
    assert refused(b"GET", b"/", HOST, version=version) == (505, "bad_version")


def test_absolute_form_is_sent_in_origin_form_with_its_authority_as_host():
    raw = head_of(b"GET", b"http://example.com:81?q=1", HOST).head_bytes
    assert raw.startswith(b"GET /?q=1 HTTP/1.1\r\n")
    assert b"host: example.com:81\r\n" in raw
    assert b"Host: app" not in raw


def test_absolute_form_with_userinfo_or_no_authority_is_400():
    assert refused(b"GET", b"http://u@h/", HOST) == (400, "bad_target")
    assert refused(b"GET", b"http:///x", HOST) == (400, "bad_target")


def test_absolute_form_with_a_bad_authority_is_400():
    assert refused(b"GET", b"http://h:8x/", HOST) == (400, "bad_target")
    assert refused(b"GET", b"http://a b/", HOST) == (400, "bad_target")


@pytest.mark.parametrize("url", [b"/a#b", b"/#", b"http://h/a#b"])
def test_a_fragment_in_the_target_is_400(url):
    assert refused(b"GET", url, HOST) == (400, "bad_target")


def test_connect_is_501():
    assert refused(b"CONNECT", b"example.com:443", HOST) == (501, "connect")


def test_asterisk_only_for_options():
    assert head_of(b"OPTIONS", b"*", HOST).head_bytes.startswith(b"OPTIONS * HTTP/1.1\r\n")
    assert refused(b"GET", b"*", HOST) == (400, "bad_target")


def test_authority_form_outside_connect_is_400():
    assert refused(b"GET", b"example.com:80", HOST) == (400, "bad_target")


def test_unknown_or_unsupported_coding_before_chunked_is_501():
    te = (b"Transfer-Encoding", b"gzip, chunked")
    assert refused(b"POST", b"/", HOST, te) == (501, "unsupported_coding")


def test_chunked_twice_is_400():
    twice = (b"Transfer-Encoding", b"chunked")
    assert refused(b"POST", b"/", HOST, twice, twice) == (400, "smuggling")
    listed = (b"Transfer-Encoding", b"chunked, chunked")
    assert refused(b"POST", b"/", HOST, listed) == (400, "smuggling")


def test_chunked_not_last_is_400():
    te = (b"Transfer-Encoding", b"chunked, gzip")
    assert refused(b"POST", b"/", HOST, te) == (400, "smuggling")


def test_transfer_encoding_in_http10_is_400():
    te = (b"Transfer-Encoding", b"chunked")
    assert refused(b"POST", b"/", HOST, te, version="1.0") == (400, "smuggling")
    both = (b"Content-Length", b"5")
    assert refused(b"POST", b"/", HOST, both, te, version="1.0") == (400, "smuggling")


@pytest.mark.parametrize("name", [b"Content_Length", b"transfer_encoding", b"Transfer_Encoding"])
def test_framing_fields_spelled_with_underscores_are_400(name):
    assert refused(b"POST", b"/", HOST, (name, b"5")) == (400, "smuggling")


def test_other_underscored_fields_pass():
    head = head_of(b"GET", b"/", HOST, (b"X_Custom_Header", b"1"), (b"Content_Type", b"a/b"))
    assert b"X_Custom_Header: 1\r\n" in head.head_bytes


def test_request_line_over_the_limit_is_414_and_a_head_over_it_431():
    long_url = b"/" + b"a" * 100
    assert refused(b"GET", long_url, HOST, limit=64) == (414, "uri_too_long")
    with pytest.raises(HeaderTooLargeError):
        head_of(b"GET", b"/", HOST, (b"X-Big", b"a" * 100), limit=64)


def test_plain_chunked_passes():
    head = head_of(b"POST", b"/", HOST, (b"Transfer-Encoding", b"chunked"))
    assert head.head_bytes.endswith(b"transfer-encoding: chunked\r\n\r\n")


def test_broken_chunk_in_a_request_is_counted_as_bad_chunk():
    assert input_refusal(ValueError("Invalid character in chunk size")) == (400, "bad_chunk")


@pytest.mark.parametrize(
    ("message", "in_body", "expected"),
    [
        # llhttp's messages (httptools raises them as HttpParserError)
        ("Invalid header token", False, (400, "bad_field")),
        ("Invalid header value char", False, (400, "bad_field")),
        ("Unexpected whitespace after header value", False, (400, "bad_field")),
        ("Missing expected CR after header value", False, (400, "bad_field")),
        ("Unexpected space after start line", False, (400, "bad_field")),
        ("Invalid header token", True, (400, "bad_chunk")),  # in the trailer section
        ("Invalid HTTP version", False, (505, "bad_version")),
        ("Expected HTTP/, RTSP/ or ICE/", False, (400, "bad_request")),
        ("Invalid major version", False, (400, "bad_request")),
        ("Invalid char in url path", False, (400, "bad_target")),
        ("Unexpected start char in url", False, (400, "bad_target")),
        ("Invalid character in Content-Length", False, (400, "smuggling")),
        ("Request has invalid `Transfer-Encoding`", False, (400, "smuggling")),
        ("Invalid method encountered", False, (400, "bad_request")),
    ],
)
def test_parser_messages_map_to_a_reason(message, in_body, expected):
    assert input_refusal(ValueError(message), in_body=in_body) == expected


# -- upstream responses -----------------------------------------------------------------------


def test_response_with_cl_and_te_loses_its_content_length():
    head = parse_response_head(
        b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\nX-A: 1"
    )
    assert head.chunked
    assert head.headers == b"X-A: 1\r\n"


@pytest.mark.parametrize(
    "raw",
    [
        b"HTTP/1.1 20 OK",
        b"HTTP/1.1 2000 OK",
        b"HTTP/1.1 +20 OK",
        b"HTTP/1.1 099 Low",
        b"HTTP/1.2 200 OK",
        b"HTTP/1.1 200 OK\r\nX-A: 1\nX-Injected: 1",
        b"HTTP/1.1 200 OK\r\nX-A: 1\rX-B: 2",
        b"HTTP/1.1 200 OK\r\nX-A: \x00",
        b"HTTP/1.1 200 OK\r\n folded",
    ],
)
def test_bad_status_lines_and_fields_are_protocol_errors(raw):
    with pytest.raises(ProtocolError):
        parse_response_head(raw)


@pytest.mark.parametrize("size", [b"+1", b"0x1", b"1_0", b"-1", b""])
def test_chunk_size_is_hex_digits_only(size):
    with pytest.raises(ProtocolError):
        ChunkedScanner().feed(size + b"\r\nx\r\n0\r\n\r\n")


def test_chunk_longer_than_its_size_is_a_protocol_error():
    with pytest.raises(ProtocolError):
        ChunkedScanner().feed(b"1\r\nxy\r\n0\r\n\r\n")


def test_chunk_extension_and_trailers_pass():
    end, done, _ = ChunkedScanner().feed(b"1 ;a=b\r\nx\r\n0\r\nX-T: 1\r\n\r\n")
    assert done
    assert end == len(b"1 ;a=b\r\nx\r\n0\r\nX-T: 1\r\n\r\n")
