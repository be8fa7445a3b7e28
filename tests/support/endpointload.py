"""Load that follows a Service's ready endpoints, as an ingress controller or a load
balancer does: every request goes to one of the addresses the EndpointSlices list as
ready right now, over keep-alive connections that are dropped when their endpoint
leaves the list.  Bounded in time and in requests.  Given one fixed address (a
ClusterIP), it is a client of the Service, as an application in the cluster is.

A kept-alive connection the server has closed meanwhile (its FIN has arrived) is not
reused but replaced, as urllib3 and httpcore do; ``closed_idle`` counts them.

Every response is classified: 2xx, a designed 503 (one that carries ``Retry-After``,
from the sidecar's concurrency limit), or a failure (any other status, a reset, a
timeout) with its endpoint and reason.
"""

from __future__ import annotations

import http.client
import itertools
import select
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class LoadResult:
    ok: int = 0
    designed_503: int = 0
    failures: list[str] = field(default_factory=list)
    by_endpoint: Counter[str] = field(default_factory=Counter)
    # successful responses by ``served_by`` (which Pod answered, say), when given
    by_server: Counter[str] = field(default_factory=Counter)
    closed_idle: int = 0

    @property
    def total(self) -> int:
        return self.ok + self.designed_503 + len(self.failures)


class EndpointLoad:
    def __init__(
        self,
        endpoints: Callable[[], list[str]],
        port: int,
        path: str = "/",
        clients: int = 4,
        seconds: float = 120.0,
        max_requests: int = 200_000,
        poll: float = 0.5,
        served_by: Callable[[bytes], str] | None = None,
    ) -> None:
        """``endpoints`` returns the ready addresses; it is polled every ``poll`` s.
        ``served_by`` names the server of a successful response from its body."""
        self.endpoints, self.port, self.path = endpoints, port, path
        self.served_by = served_by
        self.clients, self.seconds, self.max_requests, self.poll = (
            clients, seconds, max_requests, poll
        )  # fmt: skip
        self.result = LoadResult()
        self._ready: list[str] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def __enter__(self) -> EndpointLoad:
        self._ready = self.endpoints()
        if not self._ready:
            raise RuntimeError("no ready endpoint to send load to")
        self._threads = [threading.Thread(target=self._watch, daemon=True)] + [
            threading.Thread(target=self._client, args=(i,), daemon=True)
            for i in range(self.clients)
        ]
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=30)

    def _watch(self) -> None:
        deadline = time.monotonic() + self.seconds
        while not self._stop.wait(self.poll) and time.monotonic() < deadline:
            try:
                ready = self.endpoints()
            except Exception:  # the API server was busy: keep the last list
                continue
            with self._lock:
                self._ready = ready

    def _record(self, endpoint: str, outcome: str | None, ok: bool, body: bytes = b"") -> bool:
        with self._lock:
            if ok:
                self.result.ok += 1
                if self.served_by is not None:
                    self.result.by_server[self.served_by(body)] += 1
            elif outcome is None:
                self.result.designed_503 += 1
            else:
                self.result.failures.append(f"{endpoint}: {outcome}")
            self.result.by_endpoint[endpoint] += 1
            return self.result.total < self.max_requests

    def _client(self, index: int) -> None:
        deadline = time.monotonic() + self.seconds
        conns: dict[str, http.client.HTTPConnection] = {}
        counter = itertools.count(index)
        try:
            while not self._stop.is_set() and time.monotonic() < deadline:
                with self._lock:
                    ready = list(self._ready)
                for gone in set(conns) - set(ready):
                    conns.pop(gone).close()
                if not ready:
                    time.sleep(0.05)
                    continue
                endpoint = ready[next(counter) % len(ready)]
                conn = conns.get(endpoint)
                if conn is not None and _closed_by_server(conn):
                    conns.pop(endpoint).close()
                    conn = None
                    with self._lock:
                        self.result.closed_idle += 1
                if conn is None:
                    conn = conns[endpoint] = http.client.HTTPConnection(
                        endpoint, self.port, timeout=10
                    )
                try:
                    conn.request("GET", self.path)
                    response = conn.getresponse()
                    body = response.read()
                except (OSError, http.client.HTTPException) as exc:
                    conns.pop(endpoint).close()
                    more = self._record(endpoint, f"{type(exc).__name__}: {exc}", False)
                else:
                    if response.will_close:
                        conns.pop(endpoint).close()
                    status = response.status
                    if 200 <= status < 300:
                        more = self._record(endpoint, None, True, body)
                    elif status == 503 and response.getheader("Retry-After"):
                        more = self._record(endpoint, None, False)
                    else:
                        more = self._record(endpoint, f"HTTP {status}", False)
                if not more:
                    return
        finally:
            for conn in conns.values():
                conn.close()


def _closed_by_server(conn: http.client.HTTPConnection) -> bool:
    """An idle kept-alive connection is readable only when the server closed it (or broke
    the protocol): it is not worth sending on."""
    if conn.sock is None:
        return False
    readable, _, _ = select.select([conn.sock], [], [], 0)
    return bool(readable)
