import asyncio

import pytest

from asgi_sidecar.proxying import FrontConnection
from asgi_sidecar.serving import ProxyCore
from asgi_sidecar.settings import SidecarSettings


@pytest.fixture
def conn():
    loop = asyncio.new_event_loop()  # never run: the core only reads its clock
    try:
        yield FrontConnection(ProxyCore(SidecarSettings().validated(), loop))
    finally:
        loop.close()


def test_a_connection_rests_only_once_idle_long_enough(conn):
    held = conn.parser = object()  # stands for the parser of a finished request
    conn.idle_since = 10.0
    assert not conn.rest(9.99)  # went idle after the cutoff: kept
    assert conn.parser is held
    assert conn.rest(10.0)
    assert conn.parser is None


def test_a_parser_is_made_only_when_bytes_come(conn):
    assert conn.parser is None  # none until bytes come
    conn.data_received(b"GET / HTTP/1.1\r\nHo")  # a head begins, not complete
    assert conn.parser is not None
    assert conn.in_head
    assert conn.current is None  # not admitted yet: the head is still coming
