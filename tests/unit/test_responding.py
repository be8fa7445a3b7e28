from asgi_sidecar import responding
from asgi_sidecar.framing import parse_response_head
from asgi_sidecar.responding import client_head, simple_response


def test_simple_response_has_retry_after_and_keep_alive():
    response = simple_response(
        503, b"busy", keep_alive=True, keep_alive_timeout=75, extra=(("retry-after", "1"),)
    )
    assert response.startswith(b"HTTP/1.1 503 Service Unavailable\r\n")
    assert b"retry-after: 1\r\n" in response
    assert b"keep-alive: timeout=75\r\n" in response
    assert response.endswith(b"\r\n\r\nbusy")
    assert simple_response(400, b"x", keep_alive=False, head_only=True).endswith(b"\r\n\r\n")


# -- upstream response heads rewritten for the client ---------------------------------------

KEEP = responding.keep_alive_end(75)


def forwarded(
    raw: bytes,
    *,
    method: bytes = b"GET",
    upgrade: bytes = b"",
    decode_chunks: bool = False,
    keep_alive_end: bytes | None = KEEP,
) -> tuple[bytes, bool]:
    return client_head(
        parse_response_head(raw),
        method=method,
        upgrade=upgrade,
        keep_alive=True,
        decode_chunks=decode_chunks,
        keep_alive_end=keep_alive_end,
    )


def test_client_head_keeps_alive_with_the_sidecars_timeout():
    head, keep = forwarded(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nKeep-Alive: timeout=5")
    assert keep
    assert head == (
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n"
        b"connection: keep-alive\r\nkeep-alive: timeout=75\r\n\r\n"
    )


def test_client_head_closes_when_the_body_ends_with_the_connection():
    head, keep = forwarded(b"HTTP/1.1 200 OK")
    assert not keep
    assert head.endswith(b"connection: close\r\n\r\n")
    _, keep = forwarded(b"HTTP/1.1 200 OK", method=b"HEAD")
    assert keep
    _, keep = forwarded(b"HTTP/1.1 204 No Content")
    assert keep


def test_client_head_chunked_passes_through_or_is_decoded_for_http10():
    raw = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked"
    head, keep = forwarded(raw)
    assert keep
    assert b"transfer-encoding: chunked\r\n" in head
    head, keep = forwarded(raw, decode_chunks=True)
    assert not keep
    assert b"transfer-encoding" not in head


def test_client_head_while_stopping_closes_every_connection():
    head, keep = forwarded(b"HTTP/1.1 200 OK\r\nContent-Length: 0", keep_alive_end=None)
    assert not keep
    assert head.endswith(b"connection: close\r\n\r\n")


def test_client_head_is_made_once_per_shared_head_and_follows_a_new_keep_alive_end():
    shared = parse_response_head(b"HTTP/1.1 200 OK\r\nContent-Length: 2")

    def head_for(end: bytes | None, keep_alive: bool = True) -> tuple[bytes, bool]:
        return client_head(
            shared, method=b"GET", upgrade=b"", keep_alive=keep_alive,
            decode_chunks=False, keep_alive_end=end,
        )  # fmt: skip

    first, keep = head_for(KEEP)
    assert keep
    assert first == b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n" + KEEP
    assert head_for(KEEP)[0] is first  # the bytes made for the first answer, again
    shorter = responding.keep_alive_end(5)
    assert head_for(shorter) == (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n" + shorter, True)
    # A client that will not keep alive, and a draining sidecar, still get a close.
    assert head_for(shorter, keep_alive=False)[0].endswith(b"connection: close\r\n\r\n")
    assert head_for(None) == (
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nconnection: close\r\n\r\n",
        False,
    )
    assert head_for(KEEP) == (first, True)


def test_client_head_for_interim_and_switching_responses():
    head, keep = forwarded(b"HTTP/1.1 100 Continue")
    assert (head, keep) == (b"HTTP/1.1 100 Continue\r\n\r\n", True)
    head, _ = forwarded(b"HTTP/1.1 101 Switching Protocols", upgrade=b"websocket")
    assert head.endswith(b"connection: upgrade\r\nupgrade: websocket\r\n\r\n")


# -- responses the sidecar makes --------------------------------------------------------------


def test_every_generated_response_is_complete_http():
    gateway_error = responding.gateway_error
    responses = {
        400: responding.refusal(400),
        408: responding.REQUEST_TIMEOUT,
        417: responding.refusal(417),
        431: responding.refusal(431),
        502: gateway_error(502, keep_alive=True, keep_alive_timeout=75, head_only=False),
        503: responding.rejection(1, keep_alive=True, keep_alive_timeout=75, head_only=False),
        504: gateway_error(504, keep_alive=False, keep_alive_timeout=75, head_only=False),
    }
    for status, response in responses.items():
        head, _, body = response.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        assert lines[0].startswith(b"HTTP/1.1 %d " % status)
        assert f"content-length: {len(body)}".encode() in lines
        assert b"content-type: text/plain; charset=utf-8" in lines
    assert b"connection: close" in responses[408]
    assert responses[400].endswith(b"connection: close\r\n\r\n")


def test_rejection_is_the_same_503_in_both_modes():
    proxied = responding.rejection(7, keep_alive=False, keep_alive_timeout=5, head_only=False)
    assert b"retry-after: 7\r\n" in proxied
    assert proxied.endswith(b"\r\n\r\n" + responding.REJECTION_BODY)
    fields = dict(responding.rejection_fields(7))
    assert fields == {
        b"content-type": b"text/plain; charset=utf-8",
        b"content-length": b"%d" % len(responding.REJECTION_BODY),
        b"retry-after": b"7",
    }
    assert responding.rejection(7, keep_alive=True, keep_alive_timeout=5, head_only=True).endswith(
        b"keep-alive: timeout=5\r\n\r\n"
    )


def test_gateway_errors_say_what_failed():
    bad = responding.gateway_error(502, keep_alive=False, keep_alive_timeout=5, head_only=False)
    late = responding.gateway_error(504, keep_alive=False, keep_alive_timeout=5, head_only=False)
    assert bad.endswith(b"Bad Gateway\n")
    assert late.endswith(b"Gateway Timeout\n")
