"""Graceful shutdown on SIGTERM and live reload of the --config file, on real processes."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time

import httpx
import pytest

from tests.support.processes import ROOT, Sidecar, free_port, sidecar
from tests.support.rawhttp import Conn
from tests.support.waiting import in_background, wait_for


def readyz(sc: Sidecar) -> int:
    return httpx.get(f"http://127.0.0.1:{sc.metrics_port}/readyz", timeout=5).status_code


def refuses_connections(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except ConnectionRefusedError:
        return True
    return False


def test_readiness_says_when_the_app_takes_no_connection(tmp_path):
    nothing = free_port()  # no app listens here
    with sidecar(nothing, tmp_path=tmp_path) as sc:
        ready = httpx.get(f"http://127.0.0.1:{sc.metrics_port}/readyz", timeout=5)
        assert ready.status_code == 503
        assert f"upstream 127.0.0.1:{nothing} not reachable" in ready.text


# -- graceful shutdown ----------------------------------------------------------------------


def test_sigterm_unready_then_closes_listener_and_finishes_in_flight(upstream_port, tmp_path):
    with sidecar(upstream_port, "--shutdown-delay", "2", tmp_path=tmp_path) as sc:
        assert readyz(sc) == 200
        idle = Conn(sc.port)
        assert idle.request("/echo").status == 200
        busy = Conn(sc.port)
        busy.send("/slow?s=3")
        wait_for(lambda: sc.metric("asgi_requests_in_flight") == 1, what="in flight")
        busy_response = in_background(busy.read_response)

        sc.proc.send_signal(signal.SIGTERM)
        sent = time.monotonic()
        wait_for(lambda: readyz(sc) == 503, 0.5, "readiness 503 at once")
        # Still inside the shutdown delay: new connections are accepted and served, each
        # response closing its connection (as in the preStop drain); an idle one stays.
        late = Conn(sc.port)
        late_response = late.request("/echo")
        assert (late_response.status, late_response.headers["connection"]) == (200, "close")
        assert late.wait_closed(1) is not None
        assert idle.is_open()
        assert time.monotonic() - sent < 1.9, "the checks above must run within the delay"

        # After the delay: the listener closes and idle connections are closed.
        wait_for(lambda: refuses_connections(sc.port), 2, "listener closed")
        assert time.monotonic() - sent >= 1.95
        assert idle.wait_closed(2) is not None

        # The in-flight request finishes, told to close its connection.
        response = busy_response()
        assert (response.status, response.body) == (200, b"slow done")
        assert response.headers["connection"] == "close"
        assert busy.wait_closed(2) is not None
        assert sc.proc.wait(5) == 0
        log = sc.log()
        assert "draining" in log
        assert "stopped" in log


TOKEN = "0123456789abcdef0123"


def drain(sc: Sidecar, seconds: float, token: str | None = TOKEN) -> httpx.Response:
    headers = {"X-Drain-Token": token} if token is not None else {}
    url = f"http://127.0.0.1:{sc.metrics_port}/drain?seconds={seconds}"
    return httpx.get(url, headers=headers, timeout=10)


def test_prestop_drain_closes_each_connection_after_its_response(upstream_port, tmp_path):
    with sidecar(upstream_port, "--drain-token", TOKEN, tmp_path=tmp_path) as sc:
        reused, unused = Conn(sc.port), Conn(sc.port)
        assert reused.request("/echo").status == 200
        assert unused.request("/echo").status == 200
        busy = Conn(sc.port)
        busy.send("/slow?s=1")
        wait_for(lambda: sc.metric("asgi_requests_in_flight") == 1, what="in flight")
        assert drain(sc, 1, token=None).status_code == 403  # the token is required
        assert drain(sc, 1, token="wrong-token-wrong-token").status_code == 403
        assert readyz(sc) == 200  # refused drains changed nothing

        started = time.monotonic()
        answer = in_background(lambda: drain(sc, 2))
        wait_for(lambda: readyz(sc) == 503, what="readiness 503 once draining")
        # A kept-alive connection gets one more response, which closes it: its client
        # reconnects (to other Pods) without racing a close of an idle connection.
        response = reused.request("/echo")
        assert (response.status, response.headers["connection"]) == (200, "close")
        assert reused.wait_closed(2) is not None
        # The request in flight is answered, and its connection closes after it.
        slow = busy.read_response()
        assert (slow.status, slow.headers["connection"]) == (200, "close")
        assert busy.wait_closed(2) is not None
        # New connections are still served (endpoints lag), one response each.
        late = Conn(sc.port)
        late_response = late.request("/echo")
        assert (late_response.status, late_response.headers["connection"]) == (200, "close")
        assert late.wait_closed(2) is not None
        # A connection left idle all along is closed when the drain ends.
        assert unused.is_open()
        assert unused.wait_closed(5) is not None
        assert time.monotonic() - started >= 1.9
        result = answer()
        assert (result.status_code, result.text) == (200, "drained\n")
        assert sc.proc.poll() is None  # still running: SIGTERM comes after the hook
        assert "draining for 2 s" in sc.log()


def test_a_response_that_announced_keep_alive_before_the_drain_keeps_its_connection(
    upstream_port, tmp_path
):
    """The head went out saying keep-alive, then the drain began, then the body ended: the
    client may be sending its next request that instant, so closing the connection would
    leave that request unanswered.  The next response says close instead."""
    with sidecar(upstream_port, "--drain-token", TOKEN, tmp_path=tmp_path) as sc:
        conn = Conn(sc.port)
        conn.send("/stream?n=2&key=drain")
        head = conn.client.read_head()
        assert (head.status, head.header("connection")) == (200, "keep-alive")
        assert conn.client.read_chunk() == b"piece 0\n"
        answer = in_background(lambda: drain(sc, 2))
        wait_for(lambda: readyz(sc) == 503, what="readiness 503 once draining")
        assert Conn(sc.port).request("/release?key=drain").status == 200
        assert conn.client.read_chunk() == b"piece 1\n"
        assert conn.client.read_chunk() == b""
        assert conn.is_open()
        response = conn.request("/echo")
        assert (response.status, response.headers["connection"]) == (200, "close")
        assert conn.wait_closed(2) is not None
        assert answer().status_code == 200


@pytest.mark.parametrize("query", ["seconds=abc", "seconds=-1", "seconds=301"])
def test_prestop_drain_refuses_a_bad_duration_and_changes_nothing(upstream_port, tmp_path, query):
    with sidecar(upstream_port, tmp_path=tmp_path) as sc:
        url = f"http://127.0.0.1:{sc.metrics_port}/drain?{query}"
        assert httpx.get(url, timeout=5).status_code == 400
        assert readyz(sc) == 200


def test_graceful_shutdown_timeout_bounds_the_exit(upstream_port, tmp_path):
    with sidecar(upstream_port, "--timeout-graceful-shutdown", "0.5", tmp_path=tmp_path) as sc:
        busy = Conn(sc.port)
        busy.send("/slow?s=5")
        wait_for(lambda: sc.metric("asgi_requests_in_flight") == 1, what="in flight")
        sc.proc.send_signal(signal.SIGTERM)
        sent = time.monotonic()
        assert sc.proc.wait(5) == 0
        took = time.monotonic() - sent
        assert 0.45 <= took <= 0.5 + 1.0
        assert busy.wait_closed(2) is not None  # cut off, not answered
        assert b"slow done" not in busy.buf
        assert "graceful shutdown timed out" in sc.log()


# -- live reload ----------------------------------------------------------------------------


def test_reload_applies_new_limits_without_dropping_connections(upstream_port, tmp_path):
    config = tmp_path / "sidecar.yaml"
    config.write_text("limitConcurrency: 1\n")
    with sidecar(upstream_port, "--config", str(config), tmp_path=tmp_path) as sc:
        a, b = Conn(sc.port), Conn(sc.port)
        assert a.request("/echo").status == 200
        b.send("/slow?s=1")
        wait_for(lambda: sc.metric("asgi_requests_in_flight") == 1, what="in flight")
        assert a.request("/echo").status == 503  # limit 1
        assert b.read_response().status == 200

        config.write_text("limitConcurrency: 2\n")
        wait_for(lambda: sc.metric("asgi_concurrency_limit") == 2, 5, "limit 2 applied")
        assert sc.metric("asgi_config_reloads_total", 'result="applied"') == 1
        # The same sockets carry on, now with two slots.
        a.send("/slow?s=1")
        b.send("/slow?s=1")
        wait_for(lambda: sc.metric("asgi_requests_in_flight") == 2, what="2 in flight")
        assert Conn(sc.port).request("/echo").status == 503
        assert a.read_response().status == 200
        assert b.read_response().status == 200
        assert a.request("/echo").status == 200
        assert sc.metric("asgi_connections_closed_total", 'reason="evicted"') == 0
        assert "settings applied: limit_concurrency 1 -> 2" in sc.log()


def test_reload_of_keep_alive_applies_from_the_next_idle_period(upstream_port, tmp_path):
    config = tmp_path / "sidecar.yaml"
    config.write_text("timeoutKeepAlive: 30\n")
    with sidecar(upstream_port, "--config", str(config), tmp_path=tmp_path) as sc:
        conn = Conn(sc.port)
        assert conn.request("/echo").headers["keep-alive"] == "timeout=30"
        config.write_text("timeoutKeepAlive: 1\n")
        wait_for(lambda: sc.metric("asgi_keepalive_timeout_seconds") == 1, 5, "reload")
        # The idle period under way keeps the timeout it started with...
        assert conn.wait_closed(1.5) is None
        # ...and the next one uses the new timeout.
        response = conn.request("/echo")
        assert response.headers["keep-alive"] == "timeout=1"
        closed_after = conn.wait_closed(5)
        assert closed_after is not None
        assert 0.9 <= closed_after <= 1.6


def test_invalid_reload_is_refused_and_the_old_settings_stay(upstream_port, tmp_path):
    config = tmp_path / "sidecar.yaml"
    config.write_text("limitConcurrency: 3\n")
    bad_files = [
        ("limitConcurrency: [3\n", "not valid YAML"),
        ("limitConcurency: 5\n", "unknown setting 'limitConcurency'"),
        ("limitConcurrency: -1\n", "limit_concurrency: Input should be greater than or equal to 1"),
    ]
    with sidecar(upstream_port, "--config", str(config), tmp_path=tmp_path) as sc:
        conn = Conn(sc.port)
        assert conn.request("/echo").status == 200
        for count, (text, message) in enumerate(bad_files, start=1):
            config.write_text(text)
            wait_for(
                lambda n=count: sc.metric("asgi_config_reloads_total", 'result="invalid"') == n,
                5,
                f"refusal of {text!r}",
            )
            assert message in sc.log()
            assert sc.metric("asgi_concurrency_limit") == 3
            assert conn.request("/echo").status == 200
        assert sc.log().count("config reload refused, keeping the running settings") == 3
        assert sc.metric("asgi_config_reloads_total", 'result="applied"') == 0

        config.write_text("limitConcurrency: 4\n")
        wait_for(lambda: sc.metric("asgi_concurrency_limit") == 4, 5, "valid file applied")
        assert sc.metric("asgi_config_reloads_total", 'result="applied"') == 1
        assert sc.proc.poll() is None


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("limitConcurrency: -5\n", "limit_concurrency"),
        ("limitConcurrency: 5\nbacklogg: 10\n", "backlogg"),
        ("timeoutKeepAlive: [1\n", "not valid YAML"),
    ],
)
def test_broken_config_at_start_exits_2_naming_the_field(upstream_port, tmp_path, text, named):
    config = tmp_path / "sidecar.yaml"
    config.write_text(text)
    cmd = [sys.executable, "-m", "asgi_sidecar", "proxy", "--config", str(config)]
    cmd += ["--upstream", f"http://127.0.0.1:{upstream_port}", "--host", "127.0.0.1"]
    cmd += ["--port", str(free_port()), "--metrics-port", str(free_port())]
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=30, check=False)
    assert result.returncode == 2
    assert named in result.stderr
    assert "config file" in result.stderr


def test_flags_override_environment_override_file(upstream_port, tmp_path):
    config = tmp_path / "sidecar.yaml"
    config.write_text("limitConcurrency: 5\nqueueDepth: 3\n")
    env = {"ASGI_SIDECAR_LIMIT_CONCURRENCY": "7", "ASGI_SIDECAR_QUEUE_DEPTH": "4"}
    with (
        sidecar(upstream_port, "--config", str(config), tmp_path=tmp_path, env=env) as from_env,
        sidecar(
            upstream_port,
            "--config",
            str(config),
            "--limit-concurrency",
            "9",
            tmp_path=tmp_path,
            env=env,
        ) as from_flag,
    ):
        assert from_env.metric("asgi_concurrency_limit") == 7
        assert from_env.metric("asgi_queue_depth") == 4
        assert from_flag.metric("asgi_concurrency_limit") == 9
        assert from_flag.metric("asgi_queue_depth") == 4

        # A reload re-applies the environment and the flags on top of the new file.
        config.write_text("limitConcurrency: 6\nqueueDepth: 3\nretryAfter: 7\n")
        for sc in (from_env, from_flag):
            wait_for(
                lambda sc=sc: sc.metric("asgi_config_reloads_total", 'result="applied"') == 1,
                5,
                "reload",
            )
        assert from_env.metric("asgi_concurrency_limit") == 7
        assert from_flag.metric("asgi_concurrency_limit") == 9
        assert 'retry_after="7"' in from_flag.metrics()  # the file still counts where unset


def test_environment_variable_limit_is_enforced(upstream_port, tmp_path):
    env = {"ASGI_SIDECAR_LIMIT_CONCURRENCY": "1"}
    with sidecar(upstream_port, tmp_path=tmp_path, env=env) as sc:
        busy = Conn(sc.port)
        busy.send("/slow?s=1")
        wait_for(lambda: sc.metric("asgi_requests_in_flight") == 1, what="in flight")
        refused = Conn(sc.port).request("/echo")
        assert refused.status == 503
        assert refused.headers["retry-after"] == "1"
        assert busy.read_response().status == 200
        assert sc.metric("asgi_concurrency_limit") == 1
