"""The client side of the proxy: what happens to each request a connection reads.

``reading.RequestReader`` turns bytes into requests; ``FrontConnection`` admits
them through the admission engine, sends them upstream through the core, and
writes their responses (or the sidecar's own 502, 503, 504) back in order.
The connection reaches the rest of the proxy only through ``exchanges.Core``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from asgi_sidecar import responding
from asgi_sidecar.admitting import QUEUED
from asgi_sidecar.exchanges import PAUSE_BODY, PAUSE_PIPELINE, PAUSE_UPSTREAM, ClientEnd, Exchange
from asgi_sidecar.reading import PIPELINE_LIMIT, RequestReader, monotonic
from asgi_sidecar.stats import count

if TYPE_CHECKING:
    from asgi_sidecar.exchanges import UpstreamEnd
    from asgi_sidecar.framing import ResponseHead


class FrontConnection(RequestReader, ClientEnd):
    """asyncio Protocol for one client connection: its requests' admission and responses."""

    __slots__ = ()

    def _new_exchange(self) -> Exchange:
        return Exchange(self)

    # -- asyncio.Protocol -------------------------------------------------------------------

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_lingering()
        client_first = not self.closed  # else close() counted the sidecar's reason
        if client_first:
            self.closed = True
            if not self.close_reason:
                self.close_reason = "client_error" if exc is not None else "client_closed"
        # Only a client that closed first is gone; when the sidecar closed (a refusal,
        # an upstream error, shutdown), that reason was counted already.
        gone = "client_gone" if self.close_reason in ("client_closed", "client_error") else ""
        for ex in (self.current, self.parsing, *(self.pending or ())):
            if ex is not None and not ex.finished:
                self._abandon(ex, gone)
        self.current = self.parsing = self.pending = None
        if self.tunnel is not None:
            self.tunnel.close()
            self.tunnel = None
        if client_first:
            self.core.closed(self, self.close_reason)

    def pause_writing(self) -> None:
        self.write_paused = True
        if not self.closed:
            self.core.send_stalled(self)  # send_timeout runs until the client reads again
        ex = self.current
        if ex is not None and ex.upstream is not None:
            ex.upstream.pause_reading()
        if self.tunnel is not None:
            self.tunnel.pause_reading()

    def resume_writing(self) -> None:
        self.write_paused = False
        self.core.send_resumed(self)
        ex = self.current
        if ex is not None and ex.upstream is not None:
            ex.upstream.resume_reading()
        if self.tunnel is not None:
            self.tunnel.resume_reading()

    # -- admission --------------------------------------------------------------------------

    def _start(self, ex: Exchange) -> None:
        self.current = ex
        if ex.error is not None:
            status, reason = ex.error
            count(self.stats.rejected, reason)
            ex.keep_alive = False
            self._answer(ex, responding.refusal(status))
            return
        if ex.buffering:
            return  # its body is still arriving: it starts once it has (reading.py)
        admission = self.admission
        if admission.try_acquire():
            self.admit(ex)
            return
        outcome = admission.queue(ex)
        if outcome == QUEUED:
            ex.queued_at = monotonic()
            return
        self.reject(ex, outcome)

    def admit(self, ex: Exchange) -> None:
        """The request holds a slot: send it upstream."""
        ex.admitted = True
        now = monotonic()
        self.admission.started(ex.queued_at, now)
        ex.started_at = now
        if ex.expect_continue and not ex.body_done:
            assert self.transport is not None
            self.transport.write(responding.CONTINUE)
        self.core.forward(ex)

    def reject(self, ex: Exchange, reason: str) -> None:
        count(self.stats.rejected, reason)
        ex.rejected = True
        ex.status = 503
        if ex.body_done or ex is not self.parsing:
            self._send_rejection(ex)
        elif ex.expect_continue or not self.feeding:
            # The client waits for 100 and will not send the body, or no read is under
            # way that could complete it: answer now and close.
            ex.keep_alive = False
            self._send_rejection(ex)
        # else: answered when the body ends in this read (keep-alive), or after it (close)

    def _keeps_after_own_answer(self, ex: Exchange) -> bool:
        """Whether the connection stays open after a response the sidecar makes for ``ex``
        (a 503 or a 502/504): its body was read, no drain, and no upgrade was asked for
        (llhttp reads no request after an upgrade request)."""
        return (
            ex.keep_alive and ex.body_done and not self.core.close_after_response and not ex.upgrade
        )

    def _send_rejection(self, ex: Exchange) -> None:
        live = self.core.live
        keep = ex.keep_alive = self._keeps_after_own_answer(ex)
        response = responding.rejection(
            live.retry_after,
            keep_alive=keep,
            keep_alive_timeout=live.timeout_keep_alive,
            head_only=ex.method == b"HEAD",
        )
        self._answer(ex, response)

    def _refuse_current(self, ex: Exchange, status: int, reason: str) -> None:
        if ex.response_started or ex.finished or ex.rejected:
            self.abort(reason)  # the client already has (part of) another answer
            return
        self._abandon(ex, "")  # frees its slot and aborts the upstream request
        ex.status = status
        count(self.stats.requests, status)
        self.current = None
        assert self.transport is not None
        self.transport.write(responding.refusal(status))
        self.close(reason)

    def _answer(self, ex: Exchange, response: bytes) -> None:
        """Send a response the sidecar made itself and finish the exchange."""
        assert self.transport is not None
        self.transport.write(response)
        if ex.status == 0:
            ex.status = int(response[9:12])
        self.finish(ex)

    # -- response path (called by the upstream side) ----------------------------------------

    def response_head(self, ex: Exchange, head: ResponseHead, decode_chunks: bool) -> bytes:
        """The head to send the client for ``head`` (the caller writes it, with body bytes)."""
        status = head.status
        ex.status = status
        ex.response_started = status >= 200 or status == 101
        core = self.core
        data, ex.keep_alive = responding.client_head(
            head,
            method=ex.method,
            upgrade=ex.upgrade,
            keep_alive=ex.keep_alive,
            decode_chunks=decode_chunks,
            keep_alive_end=None if core.close_after_response else core.keep_alive_end,
        )
        return data

    def response_body(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)

    def write_eof(self) -> bool:
        """The app ended its side of a tunnel: end ours; False if the transport cannot."""
        transport = self.transport
        if transport is None or not transport.can_write_eof():
            return False
        transport.write_eof()
        return True

    def start_tunnel(self, ex: Exchange, upstream: UpstreamEnd) -> None:
        """A 101 Switching Protocols arrived: relay raw bytes both ways from now on."""
        self.admission.release()
        ex.finished = True
        count(self.stats.requests, 101)
        self.current = None
        self.tunnel = upstream
        rest, self.upgrade_rest = self.upgrade_rest, b""
        self.upgrading = False
        if rest:
            upstream.write(rest)

    def tunnel_closed(self) -> None:
        self.tunnel = None
        self.close("upstream_closed")

    def upstream_failed(self, ex: Exchange, status: int, reason: str) -> None:
        """The upstream could not give a response: 502/504, or abort if one had started."""
        count(self.stats.upstream_errors, reason)
        if ex.finished or self.closed:
            return
        if ex.response_started:
            # Part of a response went out with framing that will not be honoured: close
            # before finishing, or finishing would start the next pipelined request on a
            # connection whose client is still reading this body.
            ex.status = ex.status or status
            self.abort("upstream_error")
            self.finish(ex)
            return
        ex.status = status
        ex.keep_alive = self._keeps_after_own_answer(ex)
        response = responding.gateway_error(
            status,
            keep_alive=ex.keep_alive,
            keep_alive_timeout=self.core.live.timeout_keep_alive,
            head_only=ex.method == b"HEAD",
        )
        assert self.transport is not None
        self.transport.write(response)
        self.finish(ex)

    def finish(self, ex: Exchange) -> None:
        """The response is complete: free the slot, count it, start the next request."""
        if ex.finished:
            return
        ex.finished = True
        count(self.stats.requests, ex.status)
        now = monotonic()  # one clock read for the duration and the idle time
        if ex.admitted:
            self.admission.finished(now - ex.started_at)
        if ex.upstream is not None and ex.upstream.exchange is ex:
            ex.upstream.detach_client()
        if self.current is ex:
            self.current = None
        if self.paused & PAUSE_UPSTREAM:
            self.resume_reading(PAUSE_UPSTREAM)  # that upstream connection is done with us
        if self.closed:
            return
        # A response whose head went out announcing keep-alive (before a drain began) does
        # not close its connection: the client may be sending the next request on it this
        # instant, and would read a close with no response.  It goes idle, its next
        # response says close, and the drain's end closes it if it stays idle.
        core = self.core
        if not ex.keep_alive or core.stopping:
            self.close("shutdown" if core.close_after_response else "server_closed")
            return
        pending = self.pending
        if pending:
            if self.paused & PAUSE_PIPELINE and len(pending) < PIPELINE_LIMIT:
                self.resume_reading(PAUSE_PIPELINE)
            self._start(pending.pop(0))
        elif self.parsing is None:
            self.idle_since = now
            self.core.went_idle(self)
        if self.paused & PAUSE_BODY and self.parsing is not None and self.parsing.streaming:
            self.resume_reading(PAUSE_BODY)

    def _abandon(self, ex: Exchange, reason: str) -> None:
        """No response will be written for ``ex``: give back its slot, cancel the upstream
        request, and count that under ``reason`` in the upstream errors (if one is given).
        """
        ex.finished = True
        if ex.queued_at >= 0 and not ex.admitted:
            self.admission.cancel(ex)
        if ex.admitted:
            self.admission.release()
        if self.core.withdraw(ex) and reason:
            count(self.stats.upstream_errors, reason)
