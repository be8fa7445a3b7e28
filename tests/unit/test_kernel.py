import socket

from asgi_sidecar import kernel

NETSTAT = """TcpExt: SyncookiesSent ListenOverflows ListenDrops
TcpExt: 0 12 15
IpExt: InNoRoutes
IpExt: 3
"""


def test_parse_netstat(tmp_path):
    path = tmp_path / "netstat"
    path.write_text(NETSTAT)
    assert kernel.listen_overflows(path) == (12, 15)
    assert kernel.parse_netstat(NETSTAT)["IpExt"] == {"InNoRoutes": 3}


def test_missing_files_mean_unknown(tmp_path):
    assert kernel.listen_overflows(tmp_path / "absent") is None
    assert kernel.read_somaxconn(tmp_path / "absent") is None


def test_effective_backlog_is_clamped_by_somaxconn():
    assert kernel.effective_backlog(2048, 128) == 128
    assert kernel.effective_backlog(100, 4096) == 100
    assert kernel.effective_backlog(100, None) == 100


def test_listen_queue_reads_the_kernel_figures_of_a_real_socket():
    with socket.socket() as listener, socket.socket() as client:
        listener.bind(("127.0.0.1", 0))
        listener.listen(7)
        assert kernel.listen_queue(listener) == (0, 7)
        client.connect(listener.getsockname())
        assert kernel.listen_queue(listener) == (1, 7)
        listener.listen(3)  # Linux resizes the queue of a listening socket in place
        assert kernel.listen_queue(listener) == (1, 3)
