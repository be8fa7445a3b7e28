"""uvicorn's httptools protocol held to the request rules of the proxy's edge (embedded mode).

uvicorn's own protocol leaves most of RFC 9112's request rules to the app: an
HTTP/1.1 request without ``Host``, an ``HTTP/2.0`` request line, ``gzip, chunked``
or a fragment in the target reach it, and what llhttp refuses gets a plain 400
that nobody counts.  ``StrictHttpToolsProtocol`` checks every head with the
proxy's rules (``http1.check_request``) before uvicorn builds its scope, and
answers every refusal as the proxy does (``refusing.input_refusal``: 400, 501 or
505, closing the connection); ``refused`` is the hook that counts it.
"""

from __future__ import annotations

import httptools
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from asgi_sidecar import http1
from asgi_sidecar.refusing import input_refusal


class StrictHttpToolsProtocol(HttpToolsProtocol):
    def refused(self, status: int, reason: str) -> None:
        """A request was refused with ``status``; subclasses count it under ``reason``."""

    def on_headers_complete(self) -> None:
        # Raises RequestRefusedError, which the parser hands to data_received.
        parser = self.parser
        http1.check_request(parser.get_method(), self.url, parser.get_http_version(), self.headers)
        HttpToolsProtocol.on_headers_complete(self)

    def data_received(self, data: bytes) -> None:
        # uvicorn's, but with the proxy's statuses and reasons for what the parser refused.
        if self.timeout_keep_alive_task is not None:  # never armed under GuardedProtocol
            self._unset_keepalive_if_required()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
        except httptools.HttpParserError as exc:
            cycle = self.cycle
            # A cycle for this very scope exists once its head was complete.
            in_body = cycle is not None and cycle.scope is self.scope
            status, reason = input_refusal(exc, in_body=in_body)
            self.refused(status, reason)
            if not (in_body and cycle.response_started):
                self.transport.write(http1.refusal(status))
            self.transport.close()  # a response had started: closing is all that is left
