"""HTTP/1.1 framing, as pure functions: where an upstream response's head and body end.

Request heads are parsed by httptools (llhttp); response heads from the upstream
are parsed here, because the proxy must know a response's framing (HEAD, 1xx,
204, 304, chunked) to forward bodies without buffering them.  The sidecar is the
public edge: whatever it forwards, every client and balancer behind it must
read the same way, so anything RFC 9112 leaves open to two readings is refused
(``ProtocolError``, a 502) rather than passed on.
"""

from __future__ import annotations

from typing import Final

from asgi_sidecar.memo import Memo

# Headers that describe one hop and are never forwarded (RFC 9110 section 7.6.1).
HOP_BY_HOP: Final = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    }
)
MAX_CHUNK_LINE: Final = 8192
LAST_CHUNK: Final = b"0\r\n\r\n"
# Connection options that name no header to drop (RFC 9110 7.6.1); a Content-Length named
# there is kept too, because the proxy frames the body by it.
_CONNECTION_OPTIONS: Final = frozenset({b"close", b"keep-alive", b"upgrade", b"content-length"})
# Bytes never allowed in a field name (RFC 9110 5.1: a name is a token).
_TCHAR: Final = b"!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
# Control characters, allowed nowhere in a head but HTAB (RFC 9110 5.5, RFC 9112 4): a
# lone CR or LF would end a line for some client behind us (response splitting), a NUL
# ends a string for others.
_CTL: Final = bytes([*range(0x09), *range(0x0A, 0x20), 0x7F])
_OWS: Final = b" \t"
_ZERO: Final = 0x30  # b"0"[0]
_SPACE: Final = 0x20


class ProtocolError(Exception):
    """The upstream sent something that is not HTTP/1.x, or that two readers could read apart."""


class ResponseHead:
    """An upstream response head, parsed: what the proxy needs to frame and forward it."""

    __slots__ = (
        "chunked",
        "close",
        "content_length",
        "headers",
        "kept_end",
        "kept_head",
        "status",
        "status_line",
    )

    def __init__(
        self,
        status: int,
        status_line: bytes,
        headers: bytes,
        content_length: int | None,
        chunked: bool,
        close: bool,
    ) -> None:
        self.status = status
        self.status_line = status_line  # "HTTP/1.1 200 OK", normalised to HTTP/1.1
        self.headers = headers  # the end-to-end header lines, each ending in CRLF
        self.content_length = content_length
        self.chunked = chunked
        self.close = close  # this upstream connection must not carry another request
        # responding.client_head's head for a kept-alive client, and the end it was made with.
        self.kept_end: bytes | None = None
        self.kept_head = b""

    def __repr__(self) -> str:
        return f"ResponseHead({self.status_line!r}, {self.headers!r})"


# Field names already found to be tokens, each with its lower-case form: apps and clients
# send the same few names every time, so each is checked (and lowered) once, not per
# message.  No last hit in front: the names vary within a message.
_FIELD_NAMES: Final[Memo[bytes]] = Memo(1024, 256, front=False)
# Fields the parser acts on; every other line is forwarded as it came.
_FRAMING_FIELDS: Final = HOP_BY_HOP | {b"content-length"}


def _is_token(name: bytes) -> bool:
    return bool(name) and not name.translate(None, _TCHAR)


def lower_name(name: bytes) -> bytes | None:
    """The lower-case form of a field name if it is a token (RFC 9110 5.1), else None."""
    lname = _FIELD_NAMES.get(name)
    if lname is None:
        if not _is_token(name):
            return None
        lname = name.lower()
        _FIELD_NAMES.put(name, lname)
    return lname


def _content_length(value: bytes) -> int:
    """Digits only: int() would also take "+1", "1_0", " 1", and a list "1, 1" is refused."""
    digits = value.strip(_OWS)
    if not digits:
        raise ProtocolError(f"bad content-length {value[:32]!r}")
    length = 0
    for byte in digits:
        digit = byte - _ZERO
        if not 0 <= digit <= 9:
            raise ProtocolError(f"bad content-length {value[:32]!r}")
        length = length * 10 + digit
    return length


# Heads parsed lately, by their bytes: an app answers an endpoint with the same head, byte
# for byte, until its Date changes (once a second), so most heads are parsed once and then
# found here (and, answered back to back, in the memo's front).  A ResponseHead is never
# changed after parsing but for the client head it caches, so one can be shared.
_HEADS: Final[Memo[ResponseHead]] = Memo(256, 2048, front=True)


def read_response_head(head: bytes) -> ResponseHead:
    """``parse_response_head``, for a head seen lately answered from the memo."""
    found = _HEADS.get(head)
    if found is None:
        found = parse_response_head(head)
        _HEADS.put(head, found)
    return found


def parse_response_head(head: bytes) -> ResponseHead:
    """Parse an upstream response head (without the blank line that ends it).

    The rules, each from RFC 9112 unless said otherwise; each broken one is a
    ``ProtocolError``:

    - status line ``HTTP/1.0`` or ``HTTP/1.1``, a space, three digits 100-999 (section 4);
    - no control character but HTAB anywhere, so no bare CR or LF and no NUL (5, 2.2);
    - field names are tokens with no whitespace before the colon, and no obs-fold (5.1, 5.2);
    - ``Content-Length`` is digits; several must agree and are forwarded as one (6.3);
    - the only transfer coding is a single ``chunked``, and never in an HTTP/1.0
      response (6.1): other codings would have to be forwarded as they are, and a
      client that cannot undo them would read a different body;
    - with both ``Transfer-Encoding`` and ``Content-Length``, Transfer-Encoding wins and
      Content-Length is removed (6.3: an intermediary MUST), and the connection is not
      reused, as its sender's framing is in doubt;
    - 1xx and 204 carry no framing headers (RFC 9110 8.6, RFC 9112 6.1);
    - headers named in ``Connection`` are removed with it (RFC 9110 7.6.1).

    It runs once per response, so the usual head costs a few operations per line: the
    field lines are kept as they came and joined once.
    """
    lines = head.split(b"\r\n")
    first = lines[0]
    size = len(first)
    # Read as byte values, not slices: no object is made for a well-formed status line.
    if (
        size < 12
        or not first.startswith(b"HTTP/1.")
        or first[7] not in (_ZERO, _ZERO + 1)
        or first[8] != _SPACE
        or (size > 12 and first[12] != _SPACE)
    ):
        raise ProtocolError(f"bad status line {first[:64]!r}")
    status = 0
    for i in range(9, 12):
        digit = first[i] - _ZERO
        if not 0 <= digit <= 9:
            raise ProtocolError(f"bad status code in {first[:64]!r}")
        status = status * 10 + digit
    if status < 100:  # three digits, 100-999 (RFC 9112 4)
        raise ProtocolError(f"bad status code in {first[:64]!r}")
    count = len(lines)
    if len(head.translate(None, _CTL)) != len(head) - 2 * count + 2:
        raise ProtocolError("control character (bare CR or LF, NUL, ...) in response head")
    http10 = first[7] == _ZERO
    close = http10
    codings: list[bytes] = []
    content_length: int | None = None
    length_at = -1  # where the Content-Length line is in ``kept``
    dropped: set[bytes] = set()  # options named in Connection
    kept: list[bytes] = []
    for i in range(1, count):
        line = lines[i]
        name, sep, value = line.partition(b":")
        if not sep:
            raise ProtocolError(f"bad header line {line[:64]!r}")
        lname = lower_name(name)
        if lname is None:
            raise ProtocolError(f"bad header line {line[:64]!r}")
        if lname not in _FRAMING_FIELDS:
            kept.append(line)
            continue
        if lname == b"content-length":
            length = _content_length(value)
            if content_length is not None:
                if content_length != length:
                    raise ProtocolError("conflicting content-length")
                continue  # the same value again: forward one
            content_length = length
            length_at = len(kept)
            kept.append(line)
            continue
        lvalue = value.strip(_OWS).lower()
        if lname == b"connection":
            if lvalue == b"keep-alive":  # the usual values, without a set of tokens
                if http10:
                    close = False
                continue
            if lvalue == b"close":
                close = True
                continue
            tokens = {t.strip(_OWS) for t in lvalue.split(b",")}
            if b"close" in tokens:
                close = True
            elif http10 and b"keep-alive" in tokens:
                close = False
            dropped |= tokens - _CONNECTION_OPTIONS
        elif lname == b"transfer-encoding":
            codings.extend([t.strip(_OWS) for t in lvalue.split(b",")])
        # other hop-by-hop fields are dropped
    chunked = False
    if codings:
        if codings != [b"chunked"] or http10:
            raise ProtocolError(f"unsupported transfer coding {b', '.join(codings)[:64]!r}")
        chunked = True
        if content_length is not None:
            # Transfer-Encoding wins; the Content-Length goes, or a hop that honours it
            # would read the body differently (RFC 9112 6.3).
            content_length = None
            close = True
            del kept[length_at]
    if status < 200 or status == 204:
        chunked = False
        if content_length is not None:
            content_length = None
            del kept[length_at]
    if dropped:
        kept = [line for line in kept if _line_name(line) not in dropped]
    kept.append(b"")  # the join ends the last line with its CRLF too
    return ResponseHead(
        status,
        first if not http10 else b"HTTP/1.1" + first[8:],
        b"\r\n".join(kept),
        content_length,
        chunked,
        close,
    )


def _line_name(line: bytes) -> bytes:
    return line.partition(b":")[0].lower()


def response_has_body(status: int, request_method: bytes) -> bool:
    return not (request_method == b"HEAD" or status in (204, 304) or 100 <= status < 200)


def frame_chunk(data: bytes) -> bytes:
    return b"%x\r\n%b\r\n" % (len(data), data)


# -- chunked bodies -------------------------------------------------------------------------

_SIZE: Final = 0
_DATA: Final = 1
_DATA_END: Final = 2
_TRAILER: Final = 3
_DONE: Final = 4
_HEX: Final = b"0123456789abcdefABCDEF"


def _chunk_line(line: bytes) -> bytes:
    """A chunk-size or trailer line without its CRLF, if it is one a client reads alike.

    The body is forwarded byte for byte to HTTP/1.1 clients, so a line that some
    parsers end early (a bare LF, a CR or another control character inside an
    extension) must stop here (RFC 9112 7.1).
    """
    if len(line) > MAX_CHUNK_LINE:
        raise ProtocolError("chunk line too long")
    if line[-1:] != b"\r":
        raise ProtocolError("chunk line not ended by CRLF")
    line = line[:-1]
    if len(line.translate(None, _CTL)) != len(line):
        raise ProtocolError("control character in a chunk line")
    return line


class ChunkedScanner:
    """Find where a chunked body ends while passing its bytes through untouched.

    ``feed`` returns how far into ``data`` the body goes, whether it ended there,
    and (when decoding) the spans of ``data`` that are chunk payload, so a body
    can be forwarded raw to HTTP/1.1 clients or de-chunked for HTTP/1.0 ones.
    """

    __slots__ = ("_line", "_remaining", "_state")

    def __init__(self) -> None:
        self._state = _SIZE
        self._remaining = 0
        self._line = b""

    @property
    def done(self) -> bool:
        return self._state == _DONE

    def feed(self, data: bytes, pos: int = 0) -> tuple[int, bool, list[tuple[int, int]]]:
        spans: list[tuple[int, int]] = []
        end = len(data)
        while pos < end:
            state = self._state
            if state == _DATA:
                take = min(self._remaining, end - pos)
                spans.append((pos, pos + take))
                pos += take
                self._remaining -= take
                if self._remaining == 0:
                    self._state = _DATA_END
                    self._remaining = 2
            elif state == _DATA_END:
                take = min(self._remaining, end - pos)
                expected = b"\r\n"[2 - self._remaining : 2 - self._remaining + take]
                if data[pos : pos + take] != expected:
                    raise ProtocolError("chunk data longer than its size")
                pos += take
                self._remaining -= take
                if self._remaining == 0:
                    self._state = _SIZE
            elif state == _DONE:
                break
            else:
                newline = data.find(b"\n", pos)
                if newline < 0:
                    self._line += data[pos:]
                    if len(self._line) > MAX_CHUNK_LINE:
                        raise ProtocolError("chunk line too long")
                    pos = end
                    break
                line = self._line + data[pos:newline]
                self._line = b""
                pos = newline + 1
                line = _chunk_line(line)
                if state == _SIZE:
                    size_text, semi, _ = line.partition(b";")
                    if semi:
                        size_text = size_text.rstrip(_OWS)  # BWS before an extension
                    # hex digits only: int() would also take "+1", "0x1", "1_0", " 1"
                    if not size_text or size_text.strip(_HEX) or len(size_text) > 16:
                        raise ProtocolError(f"bad chunk size {size_text[:32]!r}")
                    size = int(size_text, 16)
                    if size == 0:
                        self._state = _TRAILER
                    else:
                        self._state = _DATA
                        self._remaining = size
                elif not line:
                    self._state = _DONE
                    return pos, True, spans
                else:
                    name, sep, _ = line.partition(b":")
                    if not sep or not _is_token(name):
                        raise ProtocolError(f"bad trailer line {line[:64]!r}")
        return pos, self._state == _DONE, spans
