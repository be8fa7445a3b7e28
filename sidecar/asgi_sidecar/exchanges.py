"""One request and its response in the proxy, and the interfaces its parts reach each other by.

An ``Exchange`` travels between three parts: the client connection that read it
(``proxying.FrontConnection``), the upstream connection that carries it to the
app (``upstream.UpstreamConnection``) and the core that owns the connections,
the deadlines and the admission engine (``serving.ProxyCore``).  Each part sees
the others only through the small protocols below, so no module imports the
one that calls it back.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from mypy_extensions import trait

from asgi_sidecar.framing import LAST_CHUNK, frame_chunk
from asgi_sidecar.http1 import RequestHead

if TYPE_CHECKING:
    from asgi_sidecar.admitting import Admission
    from asgi_sidecar.framing import ResponseHead
    from asgi_sidecar.livesettings import LiveSettings
    from asgi_sidecar.stats import Stats
    from asgi_sidecar.validated import ValidSettings

# Reasons a client connection stops reading; reading resumes when none is left.
PAUSE_BODY: Final = 1  # body buffered while the request waits for a slot or a connection
PAUSE_UPSTREAM: Final = 2  # the upstream's write buffer is full
PAUSE_PIPELINE: Final = 4  # too many pipelined requests waiting their turn


class Exchange(RequestHead):
    """One request (its head rewritten by ``RequestHead``) and its response.

    Defaults live on the class so creating an exchange per request only stores
    what differs; most requests touch a handful of these attributes.
    """

    body_buffered = 0
    body_done = False
    buffering = False  # its body is read before admission (reading.BODY_ADMIT_BYTES)
    streaming = False  # the head went upstream: body bytes now follow it directly
    admitted = False
    queued_at = -1.0
    rejected = False
    response_started = False
    finished = False
    retried = False
    status = 0
    started_at = 0.0

    def __init__(self, client: ClientEnd) -> None:
        RequestHead.__init__(self)
        self.client = client
        self.body_parts: list[bytes] = []
        # Set here: compiled, a class-level None default of a Protocol type is left unset.
        self.upstream: UpstreamEnd | None = None

    @property
    def retryable(self) -> bool:
        """Safe to send again on a fresh connection if a reused one failed at once."""
        return (
            not self.retried
            and not self.response_started
            and not self.has_body
            and self.method in (b"GET", b"HEAD", b"OPTIONS", b"DELETE", b"PUT")
        )

    def upstream_bytes(self) -> bytes:
        """Head plus any body buffered so far, framed for the upstream."""
        if not self.body_parts and not self.chunked:
            return self.head_bytes  # most requests: no list, no join
        parts = [self.head_bytes]
        for part in self.body_parts:
            parts.append(frame_chunk(part) if self.chunked else part)
        if self.chunked and self.body_done:
            parts.append(LAST_CHUNK)
        self.body_parts = []
        self.body_buffered = 0
        return b"".join(parts)


@trait
class Connection:
    """A client connection as the core handles it (deadlines, eviction, shutdown)."""

    def timed_out_waiting_header(self) -> None:
        raise NotImplementedError

    def timed_out_waiting_body(self) -> None:
        raise NotImplementedError

    def close(self, reason: str) -> None:
        raise NotImplementedError

    def abort(self, reason: str) -> None:
        raise NotImplementedError

    def rest(self, idle_before: float) -> bool:
        """Idle since ``idle_before`` or earlier (``time.monotonic``): give up what an idle
        connection does not need until its next request comes.  False if it went idle
        later, so that nothing was done."""
        raise NotImplementedError


@trait
class ClientEnd(Connection):
    """A client connection as its exchanges' other parts see it."""

    closed: bool
    write_paused: bool

    # the response, from the upstream side
    def response_head(self, ex: Exchange, head: ResponseHead, decode_chunks: bool) -> bytes:
        raise NotImplementedError

    def response_body(self, data: bytes) -> None:
        raise NotImplementedError

    def finish(self, ex: Exchange) -> None:
        raise NotImplementedError

    def upstream_failed(self, ex: Exchange, status: int, reason: str) -> None:
        raise NotImplementedError

    def start_tunnel(self, ex: Exchange, upstream: UpstreamEnd) -> None:
        raise NotImplementedError

    def tunnel_closed(self) -> None:
        raise NotImplementedError

    def write_eof(self) -> bool:
        raise NotImplementedError

    # flow control
    def pause_reading(self, why: int) -> None:
        raise NotImplementedError

    def resume_reading(self, why: int) -> None:
        raise NotImplementedError

    def body_flowing(self) -> None:
        raise NotImplementedError

    # from the admission engine and the queue_timeout sweep
    def admit(self, ex: Exchange) -> None:
        raise NotImplementedError

    def reject(self, ex: Exchange, reason: str) -> None:
        raise NotImplementedError


@trait
class UpstreamEnd:
    """An upstream connection carrying an exchange (or a tunnel), as the client sees it."""

    exchange: Exchange | None
    half_closed: bool  # a tunnel: one side has sent EOF

    def write(self, data: bytes) -> None:
        raise NotImplementedError

    def write_eof(self) -> None:
        raise NotImplementedError

    def pause_reading(self) -> None:
        raise NotImplementedError

    def resume_reading(self) -> None:
        raise NotImplementedError

    def detach_client(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def abort(self) -> None:
        raise NotImplementedError


@trait
class Core:
    """What a client connection needs from the proxy's core, and nothing more."""

    stats: Stats
    admission: Admission[Exchange]
    keep_alive_end: bytes  # the end of a response head on a kept-alive connection
    close_after_response: bool  # draining or shutting down: responses close their connection
    stopping: bool  # the listener closed: a finished response closes its connection

    settings: ValidSettings
    live: LiveSettings  # the fields of ``settings`` read per request, as native attributes

    def opened(self, conn: Connection) -> None:
        raise NotImplementedError

    def reading_head(self, conn: Connection, was_idle: bool) -> None:
        """A request head begins on ``conn`` (``was_idle``: nothing was in progress)."""
        raise NotImplementedError

    def head_pending(self, conn: Connection) -> None:
        """A read ended inside a request head: the header timeout runs from now."""
        raise NotImplementedError

    def head_read(self, conn: Connection) -> None:
        """The head ``head_pending`` reported is complete (or given up)."""
        raise NotImplementedError

    def reading_body(self, conn: Connection) -> None:
        raise NotImplementedError

    def body_read(self, conn: Connection) -> None:
        raise NotImplementedError

    def send_stalled(self, conn: Connection) -> None:
        raise NotImplementedError

    def send_resumed(self, conn: Connection) -> None:
        raise NotImplementedError

    def went_idle(self, conn: Connection) -> None:
        raise NotImplementedError

    def closing(self, conn: Connection) -> None:
        raise NotImplementedError

    def closed(self, conn: Connection, reason: str) -> None:
        raise NotImplementedError

    def forward(self, ex: Exchange) -> None:
        raise NotImplementedError

    def withdraw(self, ex: Exchange) -> bool:
        raise NotImplementedError
