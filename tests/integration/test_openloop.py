"""The open-loop harness of make bench-overload, against a real sidecar and a real app.

vegeta sends rate x duration requests whatever the server does (a busy vegeta may
drop a few at a phase's end, never more than it was asked for); the harness must
give every one back, split 2xx from 503, and run each phase's hook at its start.
"""

from __future__ import annotations

import pytest

from bench import openloop
from bench.loadstats import phase_summary, summarize
from bench.procs import processes, start_sidecar, start_uvicorn
from hack.cache import ROOT

pytestmark = pytest.mark.timeout(120)


def test_vegeta_offers_its_rate_and_every_request_comes_back(tmp_path):
    started: list[int] = []
    with processes(tmp_path) as procs:
        _, app_port = start_uvicorn(procs, "poolapp", "bench.poolapp:app", 1, app_dir=str(ROOT))
        flags = ["--limit-concurrency", "8", "--queue-depth", "0", "--retry-after", "1"]
        upstream = ["proxy", "--upstream", f"http://127.0.0.1:{app_port}"]
        _, port = start_sidecar(procs, "sidecar", upstream, 0, *flags)
        phases = [
            openloop.Phase(100, 1.0, lambda: started.append(1)),
            openloop.Phase(1600, 1.0, lambda: started.append(2)),  # 4x the pool's 400/s
        ]
        hits, _ = openloop.attack(f"http://127.0.0.1:{port}/", phases, tmp_path)
    assert started == [1, 2]
    # rate x duration each; a busy vegeta may drop a few last ticks, never add any
    assert 0.99 * (100 + 1600) <= len(hits) <= 100 + 1600
    assert {h.code for h in hits} <= {200, 503}
    calm, storm = phase_summary(hits, 0, 0.0, 1.0), phase_summary(hits, 1, 1.0, 2.0)
    assert 99 <= calm.sent <= 100
    # a quarter of capacity is all admitted (until the storm begins: the calm phase's last
    # requests may meet it)
    assert summarize(hits, 0.0, 0.9).rejected == 0
    assert calm.p50 is not None
    assert calm.p50 >= 0.019  # the pool's 20 ms (asyncio's timers may end a little early)
    assert 0.99 * 1600 <= storm.sent <= 1600
    assert storm.rejected > 800  # at most 8 in flight of 20 ms each: ~400/s get in
    assert 0 < storm.ok < 600
    assert storm.rejected_p50 is not None
    assert storm.rejected_p50 < 0.020


def test_a_failed_attack_says_why(tmp_path):
    with pytest.raises(RuntimeError, match=r"vegeta attack exited with 1: .*bad target"):
        openloop.attack("", [openloop.Phase(10, 0.5)], tmp_path)  # "GET " is no target


def test_a_phase_never_asks_vegeta_for_its_unbounded_rate():
    with pytest.raises(ValueError, match="rate >= 1/s"):
        openloop.Phase(0.4, 1.0)
