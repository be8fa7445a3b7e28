"""The metrics port of a real sidecar: a valid exposition, every metric, probes never refused."""

from __future__ import annotations

import errno
import json
import signal
import subprocess
import sys
import time

import httpx

from tests.support.metrics import samples
from tests.support.netns import netns, ns_get, ns_metric, upstream_in, wait_ready_in
from tests.support.processes import ROOT, Sidecar, sidecar
from tests.support.promtool import check_metrics
from tests.support.rawhttp import Conn
from tests.support.waiting import wait_for

# Every sample name the issue promises, with a label set where it has one.
EXPECTED_SAMPLES = [
    'asgi_connections{state="active"}',
    'asgi_connections{state="idle"}',
    "asgi_connections_opened_total",
    'asgi_connections_closed_total{reason="client_closed"}',
    "asgi_requests_in_flight",
    'asgi_requests_total{code="200"}',
    'asgi_requests_total{code="503"}',
    'asgi_request_duration_seconds_bucket{le="+Inf"}',
    "asgi_request_duration_seconds_sum",
    "asgi_request_duration_seconds_count",
    'asgi_requests_rejected_total{reason="concurrency_limit"}',
    "asgi_keepalive_reused_requests_total",
    'asgi_idle_gap_seconds_bucket{le="+Inf"}',
    "asgi_idle_gap_seconds_count",
    "asgi_concurrency_limit",
    "asgi_queue_length",
    "asgi_listen_backlog",
    "asgi_listen_backlog_effective",
    "asgi_accept_queue_length",
    "asgi_listen_overflows_total",
]


def make_traffic(sc: Sidecar) -> None:
    """200s, a 503, keep-alive reuse after a pause and a closed connection."""
    reused = Conn(sc.port)
    assert reused.request("/echo").status == 200
    busy = Conn(sc.port)
    busy.send("/slow?s=0.5")
    wait_for(lambda: sc.metric("asgi_requests_in_flight") == 1, what="in flight")
    assert reused.request("/echo").status == 503
    assert busy.read_response().status == 200
    time.sleep(0.1)
    assert reused.request("/echo").status == 200
    busy.close()
    wait_for(lambda: sc.metric("asgi_connections_closed_total", 'reason="client_closed"') >= 1)


def test_scrape_passes_promtool_and_has_every_metric(upstream_port, tmp_path):
    with sidecar(upstream_port, "--limit-concurrency", "1", tmp_path=tmp_path) as sc:
        make_traffic(sc)
        response = httpx.get(f"http://127.0.0.1:{sc.metrics_port}/metrics", timeout=5)
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/plain; version=")
        text = response.text
        code, output = check_metrics(text)
        assert code == 0, output
        assert output == "", "promtool reported problems"

        found = samples(text)
        missing = [name for name in EXPECTED_SAMPLES if name not in found]
        assert not missing
        assert "# TYPE asgi_request_duration_seconds histogram" in text
        assert "# TYPE asgi_idle_gap_seconds histogram" in text
        assert "# TYPE asgi_listen_overflows_total counter" in text
        assert found['asgi_requests_total{code="200"}'] == 3
        assert found['asgi_requests_total{code="503"}'] == 1
        assert found["asgi_request_duration_seconds_count"] == 3  # 503s are never admitted
        assert found["asgi_keepalive_reused_requests_total"] == 2
        assert found["asgi_concurrency_limit"] == 1
        assert found["asgi_requests_in_flight"] == 0

        (info,) = [key for key in found if key.startswith("asgi_sidecar_info{")]
        assert found[info] == 1
        assert 'mode="proxy"' in info
        assert 'limit_concurrency="1"' in info
        assert 'version="' in info


def test_probes_are_never_rejected_while_traffic_port_is_saturated(upstream_port, tmp_path):
    with sidecar(upstream_port, "--limit-concurrency", "1", tmp_path=tmp_path) as sc:
        busy = Conn(sc.port)
        busy.send("/slow?s=1.5")
        wait_for(lambda: sc.metric("asgi_requests_in_flight") == 1, what="saturated")
        assert Conn(sc.port).request("/echo").status == 503
        with httpx.Client(base_url=f"http://127.0.0.1:{sc.metrics_port}", timeout=5) as admin:
            for _ in range(5):
                health = admin.get("/healthz")
                ready = admin.get("/readyz")
                assert (health.status_code, health.text) == (200, "ok\n")
                assert (ready.status_code, ready.text) == (200, "ok\n")
                assert admin.get("/metrics").status_code == 200
        assert sc.metric("asgi_requests_in_flight") == 1  # still saturated
        assert busy.read_response().status == 200
        assert sc.metric("asgi_requests_total", 'code="503"') == 1


# Run inside the namespace while the sidecar is stopped: connect more clients than
# the accept queue holds, without blocking, and give the SYNs time to be dropped.
OVERFLOW_CLIENTS = """
import errno, json, socket, sys, time
port, count = int(sys.argv[1]), int(sys.argv[2])
socks, results = [], []
for _ in range(count):
    s = socket.socket()
    s.setblocking(False)
    results.append(s.connect_ex(("127.0.0.1", port)))
    socks.append(s)
time.sleep(1.5)
print(json.dumps(results))
"""


def test_listen_overflows_rise_when_the_accept_queue_overflows(tmp_path):
    with (
        netns(somaxconn=4) as prefix,
        upstream_in(prefix) as up,
        sidecar(up, tmp_path=tmp_path, prefix=prefix, wait=False) as sc,
    ):
        wait_ready_in(prefix, sc)
        assert ns_metric(prefix, sc, "asgi_listen_backlog_effective") == 4
        before = ns_metric(prefix, sc, "asgi_listen_overflows_total")
        sc.proc.send_signal(signal.SIGSTOP)
        try:
            clients = subprocess.run(
                [*prefix, sys.executable, "-c", OVERFLOW_CLIENTS, str(sc.port), "20"],
                cwd=ROOT,
                capture_output=True,
                text=True,
                timeout=20,
                check=True,
            )
        finally:
            sc.proc.send_signal(signal.SIGCONT)
        assert set(json.loads(clients.stdout)) <= {0, errno.EINPROGRESS}
        after = ns_metric(prefix, sc, "asgi_listen_overflows_total")
        # 20 connections for a queue of 4 (+1): at least the excess SYNs were dropped
        assert after - before >= 20 - 5
        assert ns_get(prefix, sc.port, "/echo")[0] == 200  # serves again afterwards
