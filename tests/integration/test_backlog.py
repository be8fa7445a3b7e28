"""The listen backlog: requested vs effective (clamped by somaxconn), live resize, accept queue.

The clamp is tested in a network namespace the test creates with a small
net.core.somaxconn; the upstream and the sidecar run inside it and every request
to them is made from inside it too (tests/support/netns.py).
"""

from __future__ import annotations

import json
import subprocess

from tests.support.netns import netns, ns_metric, upstream_in, wait_ready_in
from tests.support.processes import sidecar
from tests.support.rawhttp import Conn
from tests.support.waiting import wait_for


def listen_backlog_from_ss(port: int) -> int:
    """The accept queue capacity of a listening socket as the kernel reports it (ss Send-Q)."""
    out = subprocess.run(
        ["ss", "-Hltn", f"sport = :{port}"], capture_output=True, text=True, check=True
    ).stdout
    (line,) = out.splitlines()
    return int(line.split()[2])


def test_backlog_is_clamped_to_somaxconn_of_the_namespace(tmp_path):
    with netns(somaxconn=16) as prefix, upstream_in(prefix) as up:
        args = ("--backlog", "100")
        with sidecar(up, *args, tmp_path=tmp_path, prefix=prefix, wait=False) as sc:
            wait_ready_in(prefix, sc)
            assert ns_metric(prefix, sc, "asgi_listen_backlog") == 100
            assert ns_metric(prefix, sc, "asgi_listen_backlog_effective") == 16
            assert ns_metric(prefix, sc, "asgi_net_core_somaxconn") == 16
            log = sc.log()
            assert "WARNING" in log
            assert "listen backlog 100 was clamped to 16" in log
            assert "net.core.somaxconn=16" in log


def test_backlog_below_somaxconn_is_used_as_is_without_warning(tmp_path):
    with (
        netns(somaxconn=16) as prefix,
        upstream_in(prefix) as up,
        sidecar(up, "--backlog", "8", tmp_path=tmp_path, prefix=prefix, wait=False) as sc,
    ):
        wait_ready_in(prefix, sc)
        assert ns_metric(prefix, sc, "asgi_listen_backlog") == 8
        assert ns_metric(prefix, sc, "asgi_listen_backlog_effective") == 8
        assert "clamped" not in sc.log()


def test_live_config_change_resizes_the_accept_queue(upstream_port, tmp_path):
    config = tmp_path / "sidecar.json"
    config.write_text(json.dumps({"backlog": 64}))
    with sidecar(upstream_port, "--config", str(config), tmp_path=tmp_path) as sc:
        assert sc.metric("asgi_listen_backlog_effective") == 64
        assert listen_backlog_from_ss(sc.port) == 64
        conn = Conn(sc.port)
        assert conn.request("/echo").status == 200
        pid = sc.proc.pid

        config.write_text(json.dumps({"backlog": 32}))
        wait_for(lambda: sc.metric("asgi_listen_backlog_effective") == 32, 5, "new backlog")
        assert sc.metric("asgi_listen_backlog") == 32
        assert listen_backlog_from_ss(sc.port) == 32  # the kernel's queue, not just the gauge
        assert sc.proc.poll() is None
        assert sc.proc.pid == pid
        assert conn.request("/echo").status == 200  # the open connection survived
        assert sc.metric("asgi_config_reloads_total", 'result="applied"') == 1


def test_accept_queue_length_counts_connections_not_yet_accepted(upstream_port, tmp_path):
    with sidecar(upstream_port, "--max-connections", "1", tmp_path=tmp_path) as sc:
        wait_for(lambda: sc.metric("asgi_connections", 'state="idle"') == 0, what="probe gone")
        assert sc.metric("asgi_accept_queue_length") == 0
        busy = Conn(sc.port)
        busy.send("/slow?s=1.5")
        wait_for(lambda: sc.metric("asgi_requests_in_flight") == 1, what="busy")
        waiting = [Conn(sc.port) for _ in range(3)]
        wait_for(lambda: sc.metric("asgi_accept_queue_length") == 3, what="3 in the accept queue")
        for conn in waiting:
            conn.send("/echo")
        assert busy.read_response().status == 200
        for conn in waiting:
            assert conn.read_response().status == 200
        assert sc.metric("asgi_accept_queue_length") == 0
