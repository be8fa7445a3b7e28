"""The adaptive concurrency limit (``--adaptive``) of a real sidecar in front of real uvicorn.

The app's /slow sleeps, so its latency does not grow with concurrency: with a few
closed-loop clients the limit is binding, latency stays at the baseline, and the
limit grows until it is no longer reached -- always inside the bounds.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from tests.support.processes import Sidecar, sidecar
from tests.support.rawhttp import Conn
from tests.support.waiting import wait_for

CLIENTS = 8
SLEEP = 0.05


@contextmanager
def load(sc: Sidecar, clients: int = CLIENTS) -> Iterator[dict[int, int]]:
    """``clients`` closed-loop clients on /slow until the block ends; yields status counts."""
    stop = threading.Event()
    counts: dict[int, int] = {}
    lock = threading.Lock()

    def client() -> None:
        conn = Conn(sc.port)
        try:
            while not stop.is_set():
                status = conn.request(f"/slow?s={SLEEP}").status
                with lock:
                    counts[status] = counts.get(status, 0) + 1
                if status == 503:
                    time.sleep(0.01)  # Retry-After, shortened
        finally:
            conn.close()

    threads = [threading.Thread(target=client, daemon=True) for _ in range(clients)]
    for thread in threads:
        thread.start()
    try:
        yield counts
    finally:
        stop.set()
        for thread in threads:
            thread.join(10)


def watch(sc: Sidecar, seconds: float) -> list[float]:
    """The adaptive limit sampled every 0.1 s for ``seconds``."""
    values = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        values.append(sc.metric("asgi_adaptive_limit"))
        time.sleep(0.1)
    return values


def test_adaptive_limit_moves_within_its_bounds(upstream_port, tmp_path):
    args = ("--adaptive", "--adaptive-min", "2", "--adaptive-max", "50", "--limit-concurrency", "4")
    with sidecar(upstream_port, *args, tmp_path=tmp_path) as sc:
        assert sc.metric("asgi_adaptive_limit") == 4  # the starting value
        with load(sc) as counts:
            values = watch(sc, 4)
        assert all(2 <= v <= 50 for v in values), values
        assert max(values) > 4, values  # binding with flat latency: it grew
        # it grows only while the limit is reached: 8 clients never need much more than 8
        assert values[-1] <= 2 * CLIENTS, values
        assert sc.metric("asgi_concurrency_limit") == sc.metric("asgi_adaptive_limit")
        baseline = sc.metric("asgi_adaptive_baseline_seconds")
        assert 0.9 * SLEEP <= baseline < 3 * SLEEP  # buckets are 4.4 % wide
        assert counts.get(200, 0) > 100
        assert sc.metric("asgi_requests_in_flight") == 0


def test_adaptive_bounds_from_the_config_file_apply_live(upstream_port, tmp_path):
    config = tmp_path / "sidecar.yaml"
    config.write_text("adaptive: true\nadaptiveMin: 2\nadaptiveMax: 50\nlimitConcurrency: 4\n")
    with sidecar(upstream_port, "--config", str(config), tmp_path=tmp_path) as sc, load(sc):
        wait_for(lambda: sc.metric("asgi_adaptive_limit") > 5, 10, "the limit to grow")

        config.write_text("adaptive: true\nadaptiveMin: 2\nadaptiveMax: 3\nlimitConcurrency: 4\n")
        wait_for(lambda: sc.metric("asgi_adaptive_limit") == 3, 5, "the new maximum")
        assert all(v <= 3 for v in watch(sc, 1))

        config.write_text("adaptive: true\nadaptiveMin: 20\nadaptiveMax: 30\n")
        wait_for(lambda: sc.metric("asgi_adaptive_limit") == 20, 5, "the new minimum")
        assert all(20 <= v <= 30 for v in watch(sc, 1))
        assert sc.metric("asgi_concurrency_limit") >= 20

        config.write_text("adaptive: false\nlimitConcurrency: 7\n")
        wait_for(lambda: sc.metric("asgi_concurrency_limit") == 7, 5, "the fixed limit")
        assert "asgi_adaptive_limit" not in sc.metrics()
        assert sc.metric("asgi_config_reloads_total", 'result="applied"') == 3


def test_adaptive_limit_in_embedded_mode(tmp_path):
    args = ("tests.support.apps:app", "--adaptive", "--adaptive-max", "50")
    with sidecar(0, *args, "--limit-concurrency", "4", tmp_path=tmp_path, command="serve") as sc:
        with load(sc):
            values = watch(sc, 3)
        assert all(1 <= v <= 50 for v in values), values
        assert max(values) > 4, values
        assert sc.metric("asgi_adaptive_baseline_seconds") >= 0.9 * SLEEP
