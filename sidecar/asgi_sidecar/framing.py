"""HTTP/1.1 framing, as pure functions: where an upstream response's head and body end.

Request heads are parsed by httptools (llhttp); response heads from the upstream
are parsed here, because the proxy must know a response's framing (HEAD, 1xx,
204, 304, chunked) to forward bodies without buffering them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

# Headers that describe one hop and are never forwarded (RFC 9110 section 7.6.1).
HOP_BY_HOP = frozenset(
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


class ProtocolError(Exception):
    """The upstream sent something that is not HTTP/1.x."""


@dataclass(slots=True)
class ResponseHead:
    status: int
    status_line: bytes  # "HTTP/1.1 200 OK", normalised to HTTP/1.1
    headers: bytes  # the end-to-end header lines, each ending in CRLF
    content_length: int | None
    chunked: bool
    close: bool  # the upstream will close this connection after the response
    upgrade: bool


def parse_response_head(head: bytes) -> ResponseHead:
    """Parse an upstream response head (without the blank line that ends it)."""
    lines = head.split(b"\r\n")
    first = lines[0]
    if (
        len(first) < 12
        or not first.startswith(b"HTTP/1.")
        or first[7:8] not in (b"0", b"1")
        or first[8:9] != b" "
        or first[12:13] not in (b"", b" ")
    ):
        raise ProtocolError(f"bad status line {first[:64]!r}")
    code = first[9:12]
    if not code.isdigit() or code[:1] == b"0":  # three digits, 100-999 (RFC 9112 4)
        raise ProtocolError(f"bad status code in {first[:64]!r}")
    # A lone CR or LF, or a NUL, would end a line for some client behind us: splitting.
    crlf = head.count(b"\r\n")
    if head.count(b"\r") != crlf or head.count(b"\n") != crlf or b"\x00" in head:
        raise ProtocolError("bare CR, LF or NUL in response head")
    status = int(code)
    http10 = first[7:8] == b"0"
    close = http10
    chunked = False
    upgrade = False
    content_length: int | None = None
    kept: list[bytes] = []
    length_line = -1  # where Content-Length sits in ``kept``
    for line in lines[1:]:
        name, sep, value = line.partition(b":")
        if not sep or not name or name != name.strip():
            raise ProtocolError(f"bad header line {line[:64]!r}")
        lname = name.lower()
        if lname in HOP_BY_HOP:
            lvalue = value.strip().lower()
            if lname == b"connection":
                tokens = {t.strip() for t in lvalue.split(b",")}
                if b"close" in tokens:
                    close = True
                elif http10 and b"keep-alive" in tokens:
                    close = False
                if b"upgrade" in tokens:
                    upgrade = True
            elif lname == b"transfer-encoding":
                chunked = lvalue.endswith(b"chunked")
                if not chunked:
                    close = True  # body delimited by close
            continue
        if lname == b"content-length":
            try:
                length = int(value)
            except ValueError:
                raise ProtocolError(f"bad content-length {value[:32]!r}") from None
            if length < 0 or (content_length is not None and content_length != length):
                raise ProtocolError("bad or conflicting content-length")
            content_length = length
            length_line = len(kept)
        kept.append(line + b"\r\n")
    if chunked:
        # Transfer-Encoding wins; the Content-Length goes, or a hop that honours it would
        # read the body differently (RFC 9112 6.3: an intermediary MUST remove it).
        content_length = None
        if length_line >= 0:
            kept = [k for k in kept if k[:15].lower() != b"content-length:"]
    return ResponseHead(
        status=status,
        status_line=b"HTTP/1.1" + first[8:],
        headers=b"".join(kept),
        content_length=content_length,
        chunked=chunked,
        close=close,
        upgrade=upgrade,
    )


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
                        raise ProtocolError("chunk header line too long")
                    pos = end
                    break
                line = self._line + data[pos:newline]
                self._line = b""
                pos = newline + 1
                if state == _SIZE:
                    size_text = line.split(b";", 1)[0].rstrip(b" \t\r")
                    # hex digits only: int() would also take "+1", "0x1", "1_0", " 1"
                    if not size_text or size_text.strip(_HEX) or len(size_text) > 16:
                        raise ProtocolError(f"bad chunk size {size_text[:32]!r}")
                    size = int(size_text, 16)
                    if size == 0:
                        self._state = _TRAILER
                    else:
                        self._state = _DATA
                        self._remaining = size
                elif not line.strip():
                    self._state = _DONE
                    return pos, True, spans
        return pos, self._state == _DONE, spans
