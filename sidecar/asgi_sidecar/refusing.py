"""Which requests the edge refuses, and how each refusal is answered and counted.

RFC 9112's request rules as pure functions and exceptions: ``http1.RequestHead``
raises these while it reads a head, and ``input_refusal`` turns whatever stopped
the parser (llhttp's own refusals included) into a status and the ``reason``
counted in ``asgi_requests_rejected_total``.  The README lists every reason;
section numbers are RFC 9112's unless another RFC is named.
"""

from __future__ import annotations

import string
from typing import Final

from asgi_sidecar.memo import Memo

# uri-host (RFC 3986 3.2.2): reg-name is unreserved, pct-encoded and sub-delims; an
# IP-literal in brackets is hex digits, colons and dots (IPvFuture: "v" and the rest).
_SUB_DELIMS: Final = "!$&'()*+,;="
_REG_NAME: Final = (string.ascii_letters + string.digits + "-._~%" + _SUB_DELIMS).encode()
_IP_LITERAL: Final = (string.ascii_letters + string.digits + "-._~:" + _SUB_DELIMS).encode()
# llhttp's messages for the field syntax of RFC 9112 section 5 (and 2.2: whitespace
# between the start line and the first field).
_FIELD_ERRORS: Final = ("header", "Unexpected space after start line")
REQUEST_LINE_END: Final = len(b" HTTP/1.1\r\n") + 1  # what a request line adds to method + target


class HeaderTooLargeError(Exception):
    """The request head is over max_header_size: 431 and close."""


class RequestRefusedError(Exception):
    """A head that breaks an RFC 9112 rule: answered with ``status`` and closed, counted
    under ``reason`` in asgi_requests_rejected_total."""

    # Set in __init__, not as class defaults a subclass overrides: compiled (mypyc) classes
    # keep instance attributes in slots, and a subclass's class attribute would not fill one.
    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


class BadTransferEncodingError(RequestRefusedError):
    """Transfer-Encoding without chunked last, or chunked twice, or in an HTTP/1.0
    request: 400 (RFC 9112 6.1, 6.3)."""

    def __init__(self) -> None:
        super().__init__(400, "smuggling")


class RequestLineTooLongError(RequestRefusedError):
    """A request line over max_header_size: 414 URI Too Long, as nginx answers it."""

    def __init__(self) -> None:
        super().__init__(414, "uri_too_long")


# Authorities already checked, and what was found: nearly every request carries one of a
# few Host values, most often the one the last request had.  Keys up to a DNS name (253)
# and a little more.
_AUTHORITIES: Final[Memo[bool]] = Memo(1024, 255, front=True)


def valid_authority(value: bytes) -> bool:
    """``uri-host [":" port]``, the syntax of Host and of an absolute-form authority."""
    known = _AUTHORITIES.get(value)
    if known is not None:
        return known
    known = _check_authority(value)
    _AUTHORITIES.put(value, known)
    return known


def _check_authority(value: bytes) -> bool:
    """``valid_authority`` without its memo.

    RFC 9112 3.2: a Host field with an invalid value gets 400.  No userinfo (``@`` is
    not allowed), no spaces or controls, and no empty host: an http URI with an empty
    host is invalid and must be rejected (RFC 9110 4.2.1), so Host names one.
    """
    if value[:1] == b"[":
        end = value.find(b"]")
        literal, after = value[1:end], value[end + 1 :]
        if end < 0 or not literal or literal.translate(None, _IP_LITERAL):
            return False
        if after and after[:1] != b":":
            return False
        port = after[1:]
    else:
        host, _, port = value.partition(b":")
        if not host or host.translate(None, _REG_NAME):
            return False
    return not port or port.isdigit()


def split_absolute(url: bytes) -> tuple[bytes, bytes] | None:
    """(authority, origin-form target) of an absolute-form target, None if it is not one."""
    scheme, sep, rest = url.partition(b"://")
    if not sep or scheme.lower() not in (b"http", b"https"):
        return None
    cut = len(rest)
    for mark in (b"/", b"?"):
        found = rest.find(mark)
        if 0 <= found < cut:
            cut = found
    authority, path = rest[:cut], rest[cut:]
    # No userinfo in http(s) URIs (RFC 9110 4.2.4), and an authority that would be a
    # valid Host, since it becomes the Host.
    if not authority or not valid_authority(authority):
        raise RequestRefusedError(400, "bad_target")
    if not path.startswith(b"/"):
        path = b"/" + path
    return authority, path


def input_refusal(error: BaseException, *, in_body: bool = False) -> tuple[int, str]:
    """Status and counted reason for a request the parser refused.

    ``in_body``: the head was complete, so the error is in a chunked body (a chunk
    line, its extensions or the trailer section) and counts as ``bad_chunk``.
    """
    cause = error.__context__  # httptools wraps an exception raised in a callback
    for refused in (error, cause):
        if isinstance(refused, RequestRefusedError):
            return refused.status, refused.reason
    if isinstance(error, HeaderTooLargeError) or isinstance(cause, HeaderTooLargeError):
        return 431, "header_too_large"
    message = str(error)
    if "Content-Length" in message or "Transfer-Encoding" in message:
        return 400, "smuggling"
    if in_body or "chunk" in message:
        return 400, "bad_chunk"
    if message == "Invalid HTTP version":
        # Well-formed digits llhttp does not know (HTTP/9.9, HTTP/3.0, HTTP/1.2): a version
        # this server does not support (section 2.3).  Malformed ones stay 400.
        return 505, "bad_version"
    if " url" in message:
        return 400, "bad_target"  # llhttp's check of the target's characters (section 3.2)
    if any(part in message for part in _FIELD_ERRORS):
        return 400, "bad_field"
    return 400, "bad_request"
