"""RFC 9112's request rules at the edge, one test per rule, end to end.

A real sidecar process in front of a real uvicorn running the test app behind a
recorder (``tests.support.recording``), so each test sees what the upstream read.
Every request is sent on a raw socket.  A refusal is checked four ways: its
status, a closed connection, one count under its reason in
``asgi_requests_rejected_total``, and nothing of it reaching the upstream.

"Nothing reached the upstream" is checked after a fence: one good request
through the sidecar, answered, then every note the upstream has made is awaited
to its end.  A refused request the sidecar had forwarded anyway would have gone
out before the fence, in the same event-loop callback as the refusal.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.support.processes import ROOT, Sidecar, sidecar, upstream_app
from tests.support.rawhttp import RawClient, request
from tests.support.recording import recorded

MAX_HEADER = 2048
FENCE = b"GET /fence HTTP/1.1\r\nHost: fence.test\r\n\r\n"
POST_CHUNKED = b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"


@pytest.fixture(scope="module")
def up() -> Iterator[int]:
    """A recording upstream of this module's own."""
    with upstream_app(app="tests.support.recording:app") as port:
        yield port


@pytest.fixture(scope="module")
def sc(up, tmp_path_factory) -> Iterator[Sidecar]:
    tmp = tmp_path_factory.mktemp("rfc9112")
    with sidecar(up, "--max-header-size", str(MAX_HEADER), tmp_path=tmp) as handle:
        yield handle


def rejected(sc: Sidecar, reason: str) -> float:
    return sc.metric("asgi_requests_rejected_total", f'reason="{reason}"')


def fenced(sc: Sidecar, up: int) -> list[dict[str, Any]]:
    """The upstream's notes since the last call, but for the fence's own (see the docstring).

    In embedded mode ``up`` is the sidecar's own port: the recorder runs in-process."""
    with RawClient(sc.port, timeout=5) as c:
        c.send(FENCE)
        assert c.read_response().status == 200
    notes = recorded(up, until="ended")
    assert [n["target"] for n in notes][-1:] == ["/fence"], notes
    return notes[:-1]


def refuse(sc: Sidecar, up: int, data: bytes, status: int, reason: str) -> list[dict[str, Any]]:
    """``data`` gets one ``status`` response and a close, and is counted once under
    ``reason``; what the upstream noted meanwhile."""
    before = rejected(sc, reason)
    with RawClient(sc.port, timeout=5) as c:
        c.send(data)
        response = c.read_response()
        assert response.status == status
        assert response.header("connection") == "close"
        assert c.wait_closed() == b""
    assert rejected(sc, reason) == before + 1
    return fenced(sc, up)


def assert_refused(sc: Sidecar, up: int, data: bytes, status: int, reason: str) -> None:
    """Refused, and no complete request of it reached the upstream (a head that went
    upstream before the error was found was aborted there)."""
    notes = refuse(sc, up, data, status, reason)
    assert all(n["aborted"] for n in notes), notes


def assert_never_forwarded(sc: Sidecar, up: int, data: bytes, status: int, reason: str) -> None:
    """Refused, and the upstream did not even see the head."""
    assert refuse(sc, up, data, status, reason) == []


def forwarded(sc: Sidecar, up: int, data: bytes, method: str = "GET") -> dict[str, Any]:
    """Send ``data``; it must be answered by the app. The upstream's note of it."""
    with RawClient(sc.port, timeout=5) as c:
        c.send(data)
        response = c.read_response(method, until_close=False)
        assert response.status == 200, response
    [note] = fenced(sc, up)
    assert note["complete"]
    return note


def fields(note: dict[str, Any]) -> dict[str, str]:
    return dict(note["headers"])


# -- framing (sections 6 and 7) -------------------------------------------------------------


@pytest.mark.parametrize(
    "framing",
    [
        pytest.param(b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n", id="cl-then-te"),
        pytest.param(b"Transfer-Encoding: chunked\r\nContent-Length: 5\r\n", id="te-then-cl"),
    ],
)
def test_transfer_encoding_with_content_length_is_400(sc, up, framing):
    data = b"POST /echo HTTP/1.1\r\nHost: t\r\n" + framing + b"\r\n0\r\n\r\n"
    assert_never_forwarded(sc, up, data, 400, "smuggling")


@pytest.mark.parametrize(
    "codings",
    [
        pytest.param(b"Transfer-Encoding: chunked, gzip\r\n", id="chunked-not-last"),
        pytest.param(b"Transfer-Encoding: chunked, chunked\r\n", id="chunked-twice-listed"),
        pytest.param(
            b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n", id="chunked-twice"
        ),
        pytest.param(b"Transfer-Encoding: xchunked\r\n", id="no-chunked"),
    ],
)
def test_chunked_must_be_the_last_coding_and_only_once(sc, up, codings):
    data = b"POST /echo HTTP/1.1\r\nHost: t\r\n" + codings + b"\r\n0\r\n\r\n"
    assert_never_forwarded(sc, up, data, 400, "smuggling")


def test_transfer_encoding_in_http10_is_faulty_framing(sc, up):
    """Section 6.1, even with a well-formed chunked body."""
    data = b"POST /echo HTTP/1.0\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
    assert_never_forwarded(sc, up, data, 400, "smuggling")


@pytest.mark.parametrize("coding", [b"gzip", b"deflate", b"compress", b"x-custom"])
def test_unknown_or_unsupported_coding_is_501(sc, up, coding):
    data = b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: %s, chunked\r\n\r\n" % coding
    assert_never_forwarded(sc, up, data + b"0\r\n\r\n", 501, "unsupported_coding")


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b"0x3\r\nabc\r\n0\r\n\r\n", id="hex-prefix"),
        pytest.param(b"+3\r\nabc\r\n0\r\n\r\n", id="sign"),
        pytest.param(b"zz\r\nabc\r\n0\r\n\r\n", id="not-hex"),
        pytest.param(b"fffffffffffffffff\r\nabc\r\n0\r\n\r\n", id="overflow"),
        pytest.param(b"3\nabc\r\n0\r\n\r\n", id="bare-lf-after-size"),
        pytest.param(b"3\r\nabcd\r\n0\r\n\r\n", id="longer-than-size"),
        pytest.param(b"3;\r\nabc\r\n0\r\n\r\n", id="empty-extension"),
        pytest.param(b"3;a b\r\nabc\r\n0\r\n\r\n", id="space-in-extension"),
        pytest.param(b"3;a\x00\r\nabc\r\n0\r\n\r\n", id="nul-in-extension"),
        pytest.param(b'3;a="b\r\nabc\r\n0\r\n\r\n', id="open-quote-in-extension"),
    ],
)
def test_malformed_chunk_line_is_400_bad_chunk(sc, up, body):
    """The head may or may not have gone upstream first; either way no complete request
    does (a forwarded head is aborted upstream)."""
    assert_refused(sc, up, POST_CHUNKED + body, 400, "bad_chunk")


def test_chunk_extensions_are_read_and_not_forwarded(sc, up):
    body = b'3;a=b\r\nabc\r\n2;name="quoted value";x\r\nde\r\n0\r\n\r\n'
    note = forwarded(sc, up, POST_CHUNKED + body)
    assert note["body"] == "abcde"
    assert fields(note)["transfer-encoding"] == "chunked"


def test_trailer_fields_are_read_and_not_forwarded(sc, up):
    body = b"3\r\nabc\r\n0\r\nX-Checksum: 1\r\nX-Other: two\r\n\r\n"
    note = forwarded(sc, up, POST_CHUNKED + body)
    assert note["body"] == "abc"
    assert not {"x-checksum", "x-other"} & set(fields(note))


@pytest.mark.parametrize(
    "trailer",
    [
        pytest.param(b"X T: 1\r\n", id="space-in-name"),
        pytest.param(b"X-T : 1\r\n", id="space-before-colon"),
        pytest.param(b"X-T: a\x00b\r\n", id="nul-in-value"),
        pytest.param(b"X-T: 1\r\n folded\r\n", id="obs-fold"),
    ],
)
def test_malformed_trailer_is_400_bad_chunk(sc, up, trailer):
    data = POST_CHUNKED + b"3\r\nabc\r\n0\r\n" + trailer + b"\r\n"
    assert_refused(sc, up, data, 400, "bad_chunk")


def test_bad_chunk_after_the_head_went_upstream_aborts_it_and_gets_400(sc, up):
    # The sidecar may read some of a body before the request goes upstream (a slow body
    # then holds a connection, not the app): 64 KiB is past that, and within the bound
    # of what it holds.
    first = b"%x\r\n%s\r\n" % (64 * 1024, b"a" * 64 * 1024)
    before = rejected(sc, "bad_chunk")
    with RawClient(sc.port, timeout=5) as c:
        c.send(POST_CHUNKED + first)
        [started] = recorded(up, until="started")  # the upstream has the head
        assert started["target"] == "/echo"
        assert not started["complete"]
        c.send(b"zz\r\n")
        response = c.read_response()
        assert response.status == 400
        assert response.header("connection") == "close"
        assert c.wait_closed() == b""
    [note] = recorded(up, until="ended")
    assert note["aborted"]
    assert not note["complete"]
    assert rejected(sc, "bad_chunk") == before + 1
    assert sc.metric("asgi_requests_total", 'code="400"') >= 1


# -- field syntax (section 5) ---------------------------------------------------------------


@pytest.mark.parametrize(
    "line",
    [
        pytest.param(b"X-A : 1\r\n", id="space-before-colon"),
        pytest.param(b"X-A\t: 1\r\n", id="tab-before-colon"),
        pytest.param(b"X-A: 1\r\n folded\r\n", id="obs-fold"),
        pytest.param(b"X-A: 1\r\n\tfolded\r\n", id="obs-fold-tab"),
        pytest.param(b": 1\r\n", id="empty-name"),
        pytest.param(b"X(A): 1\r\n", id="separator-in-name"),
        pytest.param(b"X\x00A: 1\r\n", id="nul-in-name"),
        pytest.param(b"X\x01A: 1\r\n", id="ctl-in-name"),
        pytest.param(b"X-A: a\x00b\r\n", id="nul-in-value"),
        pytest.param(b"X-A: a\rb\r\n", id="cr-in-value"),
        pytest.param(b"X-A: a\nX-B: b\r\n", id="bare-lf-in-value"),
        pytest.param(b"X-A: a\x01b\r\n", id="ctl-in-value"),
        pytest.param(b"X-A: a\x7fb\r\n", id="del-in-value"),
        pytest.param(b"X-A: 1\n", id="bare-lf-line-end"),
    ],
)
def test_malformed_field_line_is_400_bad_field(sc, up, line):
    data = b"GET /echo HTTP/1.1\r\nHost: t\r\n" + line + b"\r\n"
    assert_never_forwarded(sc, up, data, 400, "bad_field")


def test_whitespace_before_the_first_field_is_400_bad_field(sc, up):
    """Section 2.2: a field line starting with whitespace right after the start line."""
    data = b"GET /echo HTTP/1.1\r\n Host: t\r\n\r\n"
    assert_never_forwarded(sc, up, data, 400, "bad_field")


def test_tab_and_obs_text_in_values_are_forwarded_as_sent(sc, up):
    data = b"GET /echo HTTP/1.1\r\nHost: t\r\nX-A: a\tb\xffc\x80\r\n\r\n"
    assert fields(forwarded(sc, up, data))["x-a"] == "a\tb\xffc\x80"


# -- Host (section 3.2) ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "hosts",
    [
        pytest.param(b"", id="missing"),
        pytest.param(b"Host: a\r\nHost: b\r\n", id="two"),
        pytest.param(b"Host: a\r\nHost: a\r\n", id="two-equal"),
        pytest.param(b"Host: \r\n", id="empty"),
        pytest.param(b"Host: a b\r\n", id="space"),
        pytest.param(b"Host: user@h\r\n", id="userinfo"),
        pytest.param(b"Host: h:port\r\n", id="port-not-digits"),
        pytest.param(b"Host: :80\r\n", id="no-host"),
        pytest.param(b"Host: h/p\r\n", id="path"),
        pytest.param(b"Host: [::1\r\n", id="open-bracket"),
    ],
)
def test_http11_host_must_be_one_valid_field(sc, up, hosts):
    assert_never_forwarded(sc, up, b"GET /echo HTTP/1.1\r\n" + hosts + b"\r\n", 400, "bad_host")


@pytest.mark.parametrize("host", ["example.com", "example.com:8080", "10.0.0.1:80", "[::1]:80"])
def test_valid_hosts_are_forwarded_unchanged(sc, up, host):
    note = forwarded(sc, up, request("GET", "/echo", host=host))
    assert fields(note)["host"] == host


def test_http10_without_host_is_forwarded_with_the_upstreams_authority(sc, up):
    with RawClient(sc.port, timeout=5) as c:
        c.send(b"GET /echo HTTP/1.0\r\n\r\n")
        assert c.read_response().status == 200
        assert c.wait_closed() == b""
    [note] = fenced(sc, up)
    assert fields(note)["host"] == f"127.0.0.1:{up}"
    assert note["version"] == "1.1"  # sent upstream as HTTP/1.1, which needs a Host


# -- versions (section 2.3) -----------------------------------------------------------------


@pytest.mark.parametrize(
    "line",
    [
        pytest.param(b"GET / HTTP/2.0", id="2.0"),
        pytest.param(b"GET / HTTP/3.0", id="3.0"),
        pytest.param(b"GET / HTTP/9.9", id="9.9"),
        pytest.param(b"GET / HTTP/0.9", id="0.9"),
        pytest.param(b"GET /", id="0.9-simple-request"),
        # RFC 9110 6.2 says a higher minor version SHOULD be read as 1.1; llhttp knows
        # only 0.9, 1.0, 1.1 and 2.0, so HTTP/1.2 is refused like an unknown major one.
        pytest.param(b"GET / HTTP/1.2", id="1.2"),
    ],
)
def test_versions_other_than_1_0_and_1_1_are_505(sc, up, line):
    assert_never_forwarded(sc, up, line + b"\r\nHost: t\r\n\r\n", 505, "bad_version")


@pytest.mark.parametrize("version", [b"http/1.1", b"HTTP/1", b"HTTP/1.1.1", b"HTTP/x.1"])
def test_malformed_version_is_400(sc, up, version):
    data = b"GET / " + version + b"\r\nHost: t\r\n\r\n"
    assert_never_forwarded(sc, up, data, 400, "bad_request")


# -- request targets (section 3.2) ----------------------------------------------------------


def test_origin_form_is_forwarded_as_sent(sc, up):
    note = forwarded(sc, up, request("GET", "/echo/a%20b/%2F?q=1&r=%ff"))
    assert note["target"] == "/echo/a%20b/%2F?q=1&r=%ff"


@pytest.mark.parametrize(
    ("target", "origin", "host"),
    [
        ("http://example.com:81/echo?q=1", "/echo?q=1", "example.com:81"),
        ("http://example.com", "/", "example.com"),
        ("HTTPS://Example.com?q", "/?q", "Example.com"),
    ],
)
def test_absolute_form_goes_upstream_in_origin_form_with_its_authority_as_host(
    sc, up, target, origin, host
):
    note = forwarded(sc, up, request("GET", target, host="ignored.test"))
    assert note["target"] == origin
    assert [v for n, v in note["headers"] if n == "host"] == [host]


def test_connect_is_501(sc, up):
    data = b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n"
    assert_never_forwarded(sc, up, data, 501, "connect")


def test_asterisk_form_only_for_options(sc, up):
    note = forwarded(sc, up, b"OPTIONS * HTTP/1.1\r\nHost: t\r\n\r\n", "OPTIONS")
    assert (note["method"], note["target"]) == ("OPTIONS", "*")
    assert_never_forwarded(sc, up, b"GET * HTTP/1.1\r\nHost: t\r\n\r\n", 400, "bad_target")


@pytest.mark.parametrize(
    "target",
    [
        pytest.param(b"example.com:80", id="authority-form-without-connect"),
        pytest.param(b"http://user@example.com/", id="userinfo"),
        pytest.param(b"http:///echo", id="empty-authority"),
        pytest.param(b"http://example.com:8x/", id="bad-port"),
        pytest.param(b"ftp://example.com/", id="other-scheme"),
        pytest.param(b"/echo#fragment", id="fragment"),
        pytest.param(b"echo", id="relative"),
        pytest.param(b"/echo\x00", id="nul"),
        pytest.param(b"/echo\x7f", id="del"),
        pytest.param("/путь".encode(), id="raw-utf-8"),
    ],
)
def test_other_targets_are_400_bad_target(sc, up, target):
    data = b"GET " + target + b" HTTP/1.1\r\nHost: t\r\n\r\n"
    assert_never_forwarded(sc, up, data, 400, "bad_target")


# -- limits ---------------------------------------------------------------------------------


def _sent_whole() -> list[bytes]:
    return [request("GET", "/echo?q=" + "a" * (2 * MAX_HEADER))]


def _endless_line() -> list[bytes]:
    # Never a newline; only the last piece crosses the limit, so nothing arrives after
    # the sidecar closed (which would reset the connection before the 414 is read).
    return [b"GET /echo?q="] + [b"a" * 512] * (MAX_HEADER // 512)


def _long_field() -> list[bytes]:
    return [request("GET", "/echo", [("X-Long", "v" * (2 * MAX_HEADER))])]


@pytest.mark.parametrize(
    ("pieces", "status", "reason"),
    [
        pytest.param(_sent_whole(), 414, "uri_too_long", id="request-line-whole"),
        pytest.param(_endless_line(), 414, "uri_too_long", id="request-line-endless"),
        pytest.param(_long_field(), 431, "header_too_large", id="field"),
    ],
)
def test_over_long_heads_are_refused_and_the_sidecar_serves_on(sc, up, pieces, status, reason):
    before = rejected(sc, reason)
    with RawClient(sc.port, timeout=5) as c:
        for piece in pieces:
            c.send(piece)
        response = c.read_response()
        assert response.status == status
        assert c.wait_closed() == b""
    assert rejected(sc, reason) == before + 1
    assert fenced(sc, up) == []  # the fence was served: the sidecar serves the next client
    assert sc.proc.poll() is None
    assert "Traceback" not in sc.log()


# -- embedded mode: uvicorn's parser, held to the same rules ----------------------------------


@pytest.fixture(scope="module")
def embedded(tmp_path_factory) -> Iterator[Sidecar]:
    """``asgi-sidecar serve`` running the recording app in-process (its notes included)."""
    app = ("tests.support.recording:app", "--app-dir", str(ROOT))
    tmp = tmp_path_factory.mktemp("rfc9112-embedded")
    with sidecar(0, *app, tmp_path=tmp, command="serve") as handle:
        yield handle


@pytest.mark.parametrize(
    ("data", "status", "reason"),
    [
        pytest.param(b"GET /echo HTTP/1.1\r\n\r\n", 400, "bad_host", id="no-host"),
        pytest.param(
            b"GET /echo HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400, "bad_host", id="hosts"
        ),
        pytest.param(b"GET /echo HTTP/2.0\r\nHost: t\r\n\r\n", 505, "bad_version", id="2.0"),
        pytest.param(
            b"GET /echo HTTP/1.1\r\nHost: t\r\nX-A : 1\r\n\r\n", 400, "bad_field", id="ws"
        ),
        pytest.param(b"GET /echo#f HTTP/1.1\r\nHost: t\r\n\r\n", 400, "bad_target", id="fragment"),
        pytest.param(b"GET * HTTP/1.1\r\nHost: t\r\n\r\n", 400, "bad_target", id="asterisk"),
        pytest.param(
            b"CONNECT h:443 HTTP/1.1\r\nHost: h:443\r\n\r\n", 501, "connect", id="connect"
        ),
        pytest.param(
            POST_CHUNKED.replace(b"chunked", b"gzip, chunked") + b"0\r\n\r\n",
            501,
            "unsupported_coding",
            id="gzip-chunked",
        ),
        pytest.param(
            b"POST /echo HTTP/1.0\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            400,
            "smuggling",
            id="te-in-http10",
        ),
        pytest.param(POST_CHUNKED + b"0x3\r\nabc\r\n0\r\n\r\n", 400, "bad_chunk", id="bad-chunk"),
    ],
)
def test_embedded_mode_applies_the_same_rules(embedded, data, status, reason):
    notes = refuse(embedded, embedded.port, data, status, reason)
    assert all(n["aborted"] for n in notes), notes


@pytest.mark.parametrize(
    ("data", "method", "target"),
    [
        pytest.param(b"OPTIONS * HTTP/1.1\r\nHost: t\r\n\r\n", "OPTIONS", "*", id="asterisk"),
        pytest.param(
            b"GET http://t/echo?x=1 HTTP/1.1\r\nHost: t\r\n\r\n", "GET", "/echo?x=1", id="absolute"
        ),
        pytest.param(b"GET http://t HTTP/1.1\r\nHost: t\r\n\r\n", "GET", "/", id="authority-only"),
        pytest.param(b"GET /a%20b?q HTTP/1.1\r\nHost: t\r\n\r\n", "GET", "/a%20b?q", id="origin"),
    ],
)
def test_embedded_mode_gives_the_app_every_target_form_the_rules_allow(
    embedded, data, method, target
):
    recorded(embedded.port)  # forget earlier notes
    with RawClient(embedded.port) as c:
        c.send(data)
        assert c.read_response().status == 200
    notes = recorded(embedded.port)
    assert [(n["method"], n["target"]) for n in notes] == [(method, target)]
    assert "Traceback" not in embedded.log()
