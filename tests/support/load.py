"""Bounded closed-loop load for the autotuning tests: enough traffic for the tuner to decide."""

from __future__ import annotations

import threading
import time

import httpx


def load(url: str, clients: int, seconds: float) -> threading.Thread:
    """``clients`` threads, each sending requests for ``seconds``; the returned thread ends
    when they all have (join it to wait for the load to finish)."""

    def one() -> None:
        deadline = time.monotonic() + seconds
        with httpx.Client(timeout=10) as client:
            while time.monotonic() < deadline:
                try:
                    client.get(url)
                except httpx.HTTPError:
                    time.sleep(0.01)

    threads = [threading.Thread(target=one, daemon=True) for _ in range(clients)]
    for thread in threads:
        thread.start()
    runner = threading.Thread(target=lambda: [t.join() for t in threads], daemon=True)
    runner.start()
    return runner
