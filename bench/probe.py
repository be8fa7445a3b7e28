"""A low-rate latency probe: its own keep-alive connection, latency recorded per status.

wrk's percentiles mix fast 503s with admitted requests; the probe runs beside
wrk during an overload and reports what an admitted (2xx) request waited.
"""

from __future__ import annotations

import http.client
import threading
import time
from dataclasses import dataclass, field


def percentile(values: list[float], pct: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(pct / 100 * len(ordered)) - 1))
    return ordered[index]


@dataclass
class ProbeResult:
    ok_ms: list[float] = field(default_factory=list)  # latencies of 2xx answers
    rejected: int = 0  # non-2xx answers
    errors: int = 0  # connection failures and timeouts

    @property
    def sent(self) -> int:
        return len(self.ok_ms) + self.rejected + self.errors

    def p(self, pct: float) -> float | None:
        return percentile(self.ok_ms, pct)


class Probe:
    """Sends GET ``path`` every ``1/rate`` seconds from a thread until stopped."""

    def __init__(self, port: int, path: str = "/", rate: float = 50.0, timeout: float = 10.0):
        self.port = port
        self.path = path
        self.interval = 1.0 / rate
        self.timeout = timeout
        self.result = ProbeResult()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="probe", daemon=True)

    def __enter__(self) -> Probe:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(self.timeout + 5)

    def _run(self) -> None:
        conn: http.client.HTTPConnection | None = None
        next_at = time.monotonic()
        while not self._stop.is_set():
            if conn is None:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=self.timeout)
            started = time.monotonic()
            try:
                conn.request("GET", self.path)
                response = conn.getresponse()
                response.read()
                elapsed = (time.monotonic() - started) * 1000
                if 200 <= response.status < 300:
                    self.result.ok_ms.append(elapsed)
                else:
                    self.result.rejected += 1
                if response.will_close:
                    conn.close()
                    conn = None
            except (OSError, http.client.HTTPException):
                self.result.errors += 1
                if conn is not None:
                    conn.close()
                conn = None
            next_at = max(next_at + self.interval, time.monotonic())
            self._stop.wait(max(0.0, next_at - time.monotonic()))
        if conn is not None:
            conn.close()
