"""Slow clients (slowhttptest) are closed at the sidecar's timeouts while others are served.

A small version of ``make bench-slow``: a few hundred slowloris, slow-body and slow-read
connections against a sidecar with 1 s timeouts and a concurrency limit below the number
of attackers, while a probe sends plain GETs.  What is checked is correctness, never speed:
every probe request gets 200, every attacker is closed under its timeout's reason (and
only there), the sidecar's memory stays bounded, and nothing is left open afterwards.
"""

from __future__ import annotations

import csv
import shutil
import subprocess
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.processes import Sidecar, sidecar, upstream_app
from tests.support.rawhttp import proc_status_kib
from tests.support.waiting import eventually

SLOWHTTPTEST = shutil.which("slowhttptest")
LIMIT = 50  # concurrency slots: fewer than the slowloris and slow-body attackers
TIMEOUT = "1"  # header, body and send timeouts, seconds
FLAGS = (
    "--limit-concurrency", str(LIMIT), "--header-timeout", TIMEOUT, "--body-timeout", TIMEOUT,
    "--send-timeout", TIMEOUT, "--timeout-keep-alive", "30",
)  # fmt: skip
MEMORY_BOUND_KIB = 100 * 1024


@pytest.fixture(scope="module")
def sc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sidecar]:
    if SLOWHTTPTEST is None:
        pytest.fail(
            "slowhttptest is not installed: `make system-deps` installs the Debian package"
            " slowhttptest (or: apt-get install slowhttptest)"
        )
    tmp = tmp_path_factory.mktemp("slow")
    with upstream_app() as app_port, sidecar(app_port, *FLAGS, tmp_path=tmp) as handle:
        yield handle


class Probe:
    """Plain GETs on one keep-alive connection, every 50 ms, from a thread, at most 2,000."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.statuses: Counter[int | str] = Counter()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Probe:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)
        assert not self._thread.is_alive()

    def _run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=5) as client:
            for _ in range(2000):
                try:
                    self.statuses[client.get("/").status_code] += 1
                except httpx.HTTPError as exc:
                    self.statuses[type(exc).__name__] += 1
                if self._stop.wait(0.05):
                    return


def attack(
    sc: Sidecar, tmp_path: Path, *flags: str, connections: int, path: str = "/", seconds: int = 20
) -> int:
    """Run slowhttptest to its end (once none of its connections is left open, or after
    ``seconds``) with the probe beside it; returns how many attacker connections it opened."""
    prefix = tmp_path / "attack"
    cmd = [SLOWHTTPTEST or "slowhttptest", *flags, "-c", str(connections)]
    cmd += ["-r", str(connections), "-l", str(seconds), "-p", "2", "-g", "-o", str(prefix)]
    cmd += ["-u", f"{sc.url}{path}"]
    with Probe(sc.url) as probe:
        out = subprocess.run(cmd, capture_output=True, timeout=60, check=False)
    assert out.returncode == 0, out.stdout[-2000:]
    assert probe.statuses, "the probe sent nothing"
    assert set(probe.statuses) == {200}, probe.statuses
    rows = list(csv.DictReader(prefix.with_suffix(".csv").read_text().splitlines()))
    return max(int(r["Connected"]) + int(r["Closed"]) for r in rows)


def closed(sc: Sidecar) -> Counter[str]:
    text = sc.metrics()
    found: Counter[str] = Counter()
    for line in text.splitlines():
        if line.startswith('asgi_connections_closed_total{reason="'):
            reason = line.split('"')[1]
            found[reason] = int(float(line.rsplit(" ", 1)[1]))
    return found


def assert_closed_by(sc: Sidecar, before: Counter[str], reason: str, count: int) -> None:
    """Exactly ``count`` connections were closed under ``reason`` since ``before``, and every
    other close was a client's own: slowhttptest's probe, which closes after its answer, or
    with a reset when it leaves part of that answer unread (slow read)."""
    delta = closed(sc) - before
    assert delta[reason] == count, delta
    assert set(delta) <= {reason, "client_closed", "client_error"}, delta


def assert_clean(sc: Sidecar) -> None:
    """Nothing of the attack is left: no client connection, no request, no app connection."""

    def settled() -> bool:
        connections = sc.metric("asgi_connections", 'state="active"') + sc.metric(
            "asgi_connections", 'state="idle"'
        )
        return (
            connections == 0
            and sc.metric("asgi_requests_in_flight") == 0
            and sc.metric("asgi_upstream_connections", 'state="active"') == 0
        )

    eventually(settled, 10, "attack connections closed")
    assert proc_status_kib(sc.proc.pid, "VmHWM") < MEMORY_BOUND_KIB


def test_slowloris_is_closed_at_the_header_timeout(sc, tmp_path):
    before = closed(sc)
    # The head never ends: one more header line every second.
    attackers = attack(sc, tmp_path, "-H", "-i", "1", connections=300)
    assert attackers == 300
    assert_closed_by(sc, before, "header_timeout", attackers)
    assert_clean(sc)


def test_slow_body_is_closed_at_the_body_timeout_and_holds_no_slot(sc, tmp_path):
    before = closed(sc)
    rejected = sc.metric("asgi_requests_rejected_total", 'reason="body_timeout"')
    # Content-Length 8192, a few bytes a second: 300 attackers against 50 slots, and the
    # probe still gets 200 every time (asserted in ``attack``): none of them took a slot.
    attackers = attack(sc, tmp_path, "-B", "-i", "1", "-s", "8192", connections=300)
    assert attackers == 300
    assert_closed_by(sc, before, "body_timeout", attackers)
    assert sc.metric("asgi_requests_rejected_total", 'reason="body_timeout"') - rejected == 300
    assert_clean(sc)


def test_slow_read_is_closed_at_the_send_timeout(sc, tmp_path):
    before = closed(sc)
    # A 16 MiB response (four times the most net.ipv4.tcp_wmem lets the kernel buffer, so
    # the sidecar's own buffer fills) read 32 bytes a second through a window of at most
    # 1 KiB; fewer attackers than slots, so the probe is served while they hold theirs.
    flags = ("-X", "-k", "1", "-w", "512", "-y", "1024", "-n", "1", "-z", "32")
    path = f"/download?n={16 << 20}"
    attackers = attack(sc, tmp_path, *flags, connections=40, path=path, seconds=8)
    assert attackers == 40
    assert_closed_by(sc, before, "send_timeout", attackers)
    assert_clean(sc)
