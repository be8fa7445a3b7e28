"""The operator reads exactly what the sidecar writes: metrics text from the real collector."""

from dataclasses import replace

from asgi_operator.observing import observe, parse_metrics, quantile, share_above
from asgi_sidecar.metrics import Gauges, SidecarCollector
from asgi_sidecar.stats import Stats

GAUGES = Gauges(
    connections_active=3, connections_idle=7, in_flight=4, concurrency_limit=50,
    queue_length=0, queue_depth=0, backlog=2048, backlog_effective=1024, accept_queue=2,
    listen_overflows=10, listen_drops=10, somaxconn=1024, keep_alive_timeout=60.0,
    max_connections=500, upstream_connections=4, upstream_idle=1, ready=True,
)  # fmt: skip


def text(stats: Stats, gauges: Gauges = GAUGES) -> str:
    return SidecarCollector(stats, lambda: gauges, dict).scrape().decode()


def test_parse_reads_the_sidecar_exposition():
    stats = Stats()
    stats.requests[200] = stats.requests.get(200, 0) + 90
    stats.requests[503] = stats.requests.get(503, 0) + 10
    stats.rejected["concurrency_limit"] = stats.rejected.get("concurrency_limit", 0) + 10
    stats.rejected["bad_request"] = stats.rejected.get("bad_request", 0) + 3  # not a 503 rejection
    stats.connections_closed["idle_timeout"] = stats.connections_closed.get("idle_timeout", 0) + 4
    for _ in range(90):
        stats.request_duration.observe(0.02)
    snap = parse_metrics(text(stats), at=1.0)
    assert (snap.requests, snap.rejected, snap.idle_closes) == (100, 10, 4)
    assert snap.duration_count == 90
    assert snap.limit == 50
    assert snap.backlog_effective == 1024
    assert snap.max_connections == 500
    assert snap.keep_alive == 60
    unlimited = replace(GAUGES, concurrency_limit=None, max_connections=None)
    snap = parse_metrics(text(Stats(), unlimited), at=1.0)
    assert snap.limit is None
    assert snap.max_connections is None


def test_observe_computes_per_pod_rates_and_latency():
    before, after = {}, {}
    idle_gauge = replace(GAUGES, in_flight=0)
    for pod in ("a", "b"):
        stats = Stats()
        before[pod] = parse_metrics(text(stats, idle_gauge), at=0.0)
        for _ in range(300):  # 10 admitted requests/s over 30 s, 20 ms each
            stats.request_duration.observe(0.02)
            stats.requests[200] = stats.requests.get(200, 0) + 1
        stats.requests[503] = stats.requests.get(503, 0) + 100
        stats.rejected["queue_full"] = stats.rejected.get("queue_full", 0) + 100
        after[pod] = parse_metrics(text(stats, idle_gauge), at=30.0)
    o = observe(before, after)
    assert o.pods == 2
    assert o.throughput == 10.0
    assert abs(o.in_flight - 0.2) < 1e-9  # Little: 10/s x 20 ms
    assert 0.01 < o.p50 <= 0.025
    assert o.rejected_ratio == 0.25
    assert o.limit == 50
    assert o.stale is None
    # requests that outlast the interval: the gauge bounds Little's law from below
    busy = {p: replace(s, in_flight=40.0) for p, s in after.items()}
    assert observe(before, busy).in_flight == 20.0  # (0 + 40) / 2


def test_restarted_or_missing_pods_make_the_observation_stale():
    old = parse_metrics(text(Stats()), at=0.0)
    busy = Stats()
    busy.requests[200] = busy.requests.get(200, 0) + 5
    new = parse_metrics(text(busy), at=30.0)
    assert observe({"a": new}, {"a": replace(old, at=60.0)}).stale  # counters went down
    assert observe({}, {"a": new}).stale  # no earlier round
    ok = observe({"a": old, "b": old}, {"a": new, "b": new, "c": new})
    assert ok.stale is None  # 2 of 3 usable
    assert ok.pods == 2


def test_quantiles_and_shares():
    buckets = ((0.1, 50.0), (1.0, 100.0), (float("inf"), 100.0))
    assert quantile(buckets, 0.5) == 0.1
    assert quantile(buckets, 0.75) == 0.55
    assert quantile((), 0.5) is None
    gaps = ((45.0, 60.0), (60.0, 80.0), (75.0, 100.0), (float("inf"), 100.0))
    assert share_above(gaps, 48.0) == 0.4  # 40 of 100 reuses came after 45 s


def test_a_decision_is_live_once_every_pod_scrapes_its_values():
    from asgi_operator.observing import Snapshot, not_yet_live

    round_ = {
        "a": Snapshot(at=1.0, limit=8.0, keep_alive=65.0),
        "b": Snapshot(at=1.0, limit=16.0, keep_alive=65.0),
        "c": Snapshot(at=1.0, limit=8.0, keep_alive=75.0),
    }
    assert not_yet_live(round_, 8, None) == ["b"]
    assert not_yet_live(round_, 8, 65.0) == ["b", "c"]
    assert not_yet_live(round_, None, 65.0) == ["c"]
    assert not_yet_live(round_, None, None) == []
    # The adaptive limit moves by itself: within the tuned bounds is live.
    assert not_yet_live(round_, 8, None, adaptive_bounds=(4, 10)) == ["b"]
    assert not_yet_live(round_, 8, None, adaptive_bounds=(4, 16)) == []
