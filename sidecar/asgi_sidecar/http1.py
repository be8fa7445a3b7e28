"""HTTP/1.1 requests as the sidecar forwards them, as pure functions: rewritten heads.

Request heads are parsed by httptools (llhttp, which also refuses
Content-Length with Transfer-Encoding and duplicate Content-Length, the usual
request-smuggling vectors); ``RequestHead`` takes its callbacks, applies the
RFC 9112 rules llhttp leaves to it (``refusing.py`` holds the refusals and the
syntax checks) and rewrites the head for the upstream.  ``responding.py`` writes
what goes back to the client; ``framing.py`` reads the upstream's responses.
"""

from __future__ import annotations

from typing import Any, Final

from asgi_sidecar.framing import HOP_BY_HOP, lower_name
from asgi_sidecar.refusing import (
    REQUEST_LINE_END,
    BadTransferEncodingError,
    HeaderTooLargeError,
    RequestLineTooLongError,
    RequestRefusedError,
    split_absolute,
    valid_authority,
)

# Request headers that RequestHead looks at rather than copying through.
_SPECIAL: Final = HOP_BY_HOP | {
    b"x-forwarded-for",
    b"x-forwarded-proto",
    b"expect",
    b"content-length",
    b"host",
}
# Content-Length and Transfer-Encoding spelled with "_" for "-": CGI-style readers (a WSGI
# environ, asgiref's adapter) fold both spellings into one HTTP_* key, so the field would
# be an ordinary one here and a framing field to the app behind the server.
_FRAMING_ALIASES: Final = (b"content_length", b"transfer_encoding")
# Single bytes looked for as ints: ``b"#" in data`` costs CPython a TypeError raised and
# cleared (a bytes operand is first tried as an integer), ``35 in data`` a memchr.
_UNDERSCORE: Final = ord("_")
_HASH: Final = ord("#")
# Named in Connection, these are still kept: dropping the framing or the Host would
# desync the upstream.
_NEVER_DROPPED: Final = (b"close", b"keep-alive", b"upgrade", b"content-length", b"host")


def upstream_authority(url: str) -> bytes:
    """The authority of the upstream URL, the Host an HTTP/1.0 request without one gets."""
    rest = url.partition("://")[2] or url
    return rest.split("/", 1)[0].encode("ascii")


# -- requests -------------------------------------------------------------------------------


_SP: Final = ord(" ")
_HTAB: Final = ord("\t")


def _without_ows(value: bytes) -> bytes:
    """``value`` without the spaces and tabs around it (RFC 9110 5.5), calling
    ``bytes.strip`` (a generic method call when compiled) only when there are some."""
    if not value:
        return value
    first, last = value[0], value[-1]
    if first not in (_SP, _HTAB) and last not in (_SP, _HTAB):  # mypyc: two comparisons each
        return value
    return value.strip(b" \t")


class RequestHead:
    """A request head as httptools reports it, rewritten for the upstream.

    Hop-by-hop headers (and those Connection names) are dropped, X-Forwarded-For
    gets the peer appended and X-Forwarded-Proto is added if absent.  Defaults
    live on the class so that a request only stores what differs.
    """

    method = b""
    url = b""
    head_size = 0
    head_bytes = b""  # the rewritten head, once ``rewrite`` ran
    xff = b""
    proto_seen = False
    upgrade = b""
    expect_continue = False
    chunked = False
    te_last = b""  # the final coding in Transfer-Encoding
    te_all = b""  # every Transfer-Encoding value, joined
    has_body = False
    http10 = False
    keep_alive = True
    error: tuple[int, str] | None = None  # a refusal owed to this request
    hosts = 0  # Host fields seen
    host_bad = False  # a Host field whose value is not uri-host [":" port]
    te_bad = False  # a coding other than a single, final chunked
    alias_seen = False  # a field named like a framing field with "_" (_FRAMING_ALIASES)

    def __init__(self, keep_lines: bool = True) -> None:
        # The head to forward, as the pieces one join makes it of: four per line, the request
        # line's (method and target set by ``rewrite``) and then each field's (name, ": ",
        # value, CRLF).  Pieces, not lines: a list append costs a fraction of a join or a
        # concatenation per line, and the head is joined once.
        self.head: list[bytes] = [b"", b" ", b"", b" HTTP/1.1\r\n"] if keep_lines else []
        self.keep_lines = keep_lines  # False: check the rules only, build no head
        # The Connection tokens, once a Connection field came (most requests have none:
        # no list is made for them).
        self.conn_tokens: list[bytes] | None = None

    def add_header(self, name: bytes, value: bytes) -> None:
        self.head_size += len(name) + len(value) + 4
        lname = lower_name(name) or name.lower()  # llhttp checked that it is a token
        if lname in _SPECIAL:
            if not self._special(lname, value):
                return  # hop-by-hop, or folded into what the head adds itself
        elif _UNDERSCORE in lname and lname.replace(b"-", b"_") in _FRAMING_ALIASES:
            self.alias_seen = True
        if self.keep_lines:
            head = self.head
            head.append(name)
            head.append(b": ")
            head.append(value)
            head.append(b"\r\n")

    def _special(self, lname: bytes, value: bytes) -> bool:
        """Note a field the rules look at; True if it is forwarded as it came."""
        if lname == b"content-length":
            self.has_body = value.strip() not in (b"0", b"")
            return True
        if lname == b"host":
            self.hosts += 1
            if not valid_authority(_without_ows(value)):
                self.host_bad = True
            return True
        if lname == b"transfer-encoding":
            # Only chunked is understood, once (RFC 9112 6.1); which refusal is owed
            # (400 or 501) is decided once the whole field is known, in ``validate``.
            if self.chunked or value.strip().lower() != b"chunked":
                self.te_bad = True
            self.te_all = self.te_all + b"," + value if self.te_all else value
            self.te_last = value.rsplit(b",", 1)[-1].strip().lower()
            self.chunked = self.has_body = True
        elif lname == b"connection":
            tokens = [t.strip().lower() for t in value.split(b",")]
            if self.conn_tokens is None:
                self.conn_tokens = tokens
            else:
                self.conn_tokens.extend(tokens)
        elif lname == b"upgrade":
            self.upgrade = value
        elif lname == b"x-forwarded-for":
            self.xff = value if not self.xff else self.xff + b", " + value
        elif lname == b"x-forwarded-proto":
            self.proto_seen = True
            return True
        elif lname == b"expect":
            if value.strip().lower() == b"100-continue":
                self.expect_continue = True
            else:
                self.error = (417, "bad_request")
        return False  # other hop-by-hop headers are dropped

    def validate(self, version: str, upstream: str) -> None:
        """Apply the RFC 9112 rules for a complete head; raise ``RequestRefusedError``.

        ``version`` is httptools' ("1.1"); an HTTP/1.0 request without Host gets the
        authority of the ``upstream`` URL, which h11-based servers would otherwise refuse.
        """
        if version[:2] != "1.":
            raise RequestRefusedError(505, "bad_version")  # section 2.3: major version 1 only
        if self.alias_seen:
            raise RequestRefusedError(400, "smuggling")
        if self.te_all and version == "1.0":
            # Section 6.1: treated as faulty framing, even with a Content-Length: the
            # sender may not have meant chunked, and what follows would be misread.
            raise BadTransferEncodingError
        if self.te_bad:
            codings = [c.strip().lower() for c in self.te_all.split(b",")]
            if codings[-1] != b"chunked" or codings.count(b"chunked") > 1:
                raise BadTransferEncodingError  # section 6.3: length undeterminable
            raise RequestRefusedError(501, "unsupported_coding")  # section 6.1
        url = self.url
        if _HASH in url:
            # Section 3.2: no fragment in a request target.  Upstreams disagree on what
            # follows "#" (uvicorn's httptools protocol drops it, its h11 protocol and
            # hypercorn keep it in the path), so it is refused rather than passed on.
            raise RequestRefusedError(400, "bad_target")
        if url[:1] != b"/":
            self._check_target(url)
        if self.hosts > 1 or self.host_bad or (self.hosts == 0 and version != "1.0"):
            raise RequestRefusedError(400, "bad_host")  # section 3.2
        if self.hosts == 0 and self.keep_lines:
            self.head += (b"host", b": ", upstream_authority(upstream), b"\r\n")

    def _check_target(self, url: bytes) -> None:
        """Targets other than origin form (section 3.2)."""
        if self.method == b"CONNECT":
            raise RequestRefusedError(501, "connect")  # the sidecar tunnels nothing
        if url == b"*":
            if self.method != b"OPTIONS":
                raise RequestRefusedError(400, "bad_target")
            return
        split = split_absolute(url)
        if split is None:
            raise RequestRefusedError(400, "bad_target")
        # Absolute form: the authority replaces Host (section 3.2.2), sent in origin form.
        authority, self.url = split
        self._drop_fields({b"host"})
        self.head += (b"host", b": ", authority, b"\r\n")
        self.hosts = 1

    def _drop_fields(self, lnames: set[bytes]) -> None:
        """Drop the fields of ``head`` with these lower-case names."""
        head = self.head
        kept = head[:4]
        for i in range(4, len(head), 4):
            if head[i].lower() not in lnames:
                kept += head[i : i + 4]
        self.head = kept

    def rewrite(self, peer_ip: bytes, max_header_size: int) -> None:
        """Build ``head_bytes`` once the head is complete (method and url set)."""
        if self.head_size + len(self.url) > max_header_size:
            if len(self.method) + len(self.url) + REQUEST_LINE_END > max_header_size:
                raise RequestLineTooLongError
            raise HeaderTooLargeError
        if self.chunked and self.te_last != b"chunked":
            raise BadTransferEncodingError  # llhttp refuses it too, but only after this call
        conn_tokens = self.conn_tokens
        if conn_tokens:
            # Headers named in Connection are hop-by-hop too (RFC 9110 7.6.1).
            listed = {t for t in conn_tokens if t not in _NEVER_DROPPED}
            if listed:
                self._drop_fields(listed)
        head = self.head
        head[0] = self.method
        head[2] = self.url
        head.append(b"x-forwarded-for: ")
        xff = self.xff
        if xff:
            head.append(xff)
            head.append(b", ")
        head.append(peer_ip)
        head.append(b"\r\n" if self.proto_seen else b"\r\nx-forwarded-proto: http\r\n")
        if self.chunked:
            head.append(b"transfer-encoding: chunked\r\n")
        if self.upgrade and conn_tokens and b"upgrade" in conn_tokens:
            head.append(b"connection: upgrade\r\nupgrade: ")
            head.append(self.upgrade)
            head.append(b"\r\n")
        else:
            self.upgrade = b""
        head.append(b"\r\n")
        self.head_bytes = b"".join(head)
        self.head = []


def request_version(parser: Any, keep_alive: bool, head: RequestHead) -> str:
    """The HTTP version of the complete head ``head`` in httptools' ``parser`` ("1.1").

    llhttp takes HTTP/0.9, 1.0, 1.1 and 2.0 only, and of those keeps a connection alive
    without a Connection field for 1.1 alone; so a kept-alive request with no Connection
    field is HTTP/1.1, and httptools' ``get_http_version`` (which formats a new str,
    about 2,000 instructions) is asked only otherwise.  ``keep_alive`` is the parser's
    ``should_keep_alive()``.  tests/unit/test_http1.py checks the premise against the
    httptools installed.
    """
    if keep_alive and head.conn_tokens is None:
        return "1.1"
    return str(parser.get_http_version())


def check_request(parser: Any, url: bytes, fields: list[tuple[bytes, bytes]]) -> None:
    """The edge's request rules for a head another server reads (embedded mode, on uvicorn).

    ``parser`` is httptools' with the head complete (its ``url`` and ``fields`` as the
    server collected them).  The same rules as ``RequestHead.validate``, with no head
    built for an upstream; raises ``RequestRefusedError`` (or a subclass) for a head the
    proxy would refuse.
    """
    head = RequestHead(keep_lines=False)
    head.method, head.url = parser.get_method(), url
    for name, value in fields:
        head.add_header(name, value)
    head.validate(request_version(parser, parser.should_keep_alive(), head), "")
