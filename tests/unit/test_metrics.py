import dataclasses
from pathlib import Path

from asgi_sidecar.metrics import Gauges, SidecarCollector, settings_info
from asgi_sidecar.settings import SidecarSettings
from asgi_sidecar.stats import Histogram, Stats
from tests.support.metrics import samples

README = Path(__file__).resolve().parents[2] / "README.md"

GAUGES = Gauges(
    connections_active=3,
    connections_idle=2,
    in_flight=1,
    concurrency_limit=None,
    queue_length=0,
    queue_depth=4,
    backlog=2048,
    backlog_effective=128,
    accept_queue=5,
    listen_overflows=7,
    listen_drops=8,
    somaxconn=128,
    keep_alive_timeout=75.0,
    max_connections=100,
    upstream_connections=4,
    upstream_idle=1,
    ready=True,
)


def scrape(stats: Stats) -> str:
    info = settings_info(SidecarSettings().model_dump(), "proxy", "0.1.0", "compiled")
    return SidecarCollector(stats, lambda: GAUGES, lambda: info).scrape().decode()


def sample(text: str, key: str) -> float:
    return samples(text)[key]


def test_stats_become_prometheus_samples():
    stats = Stats()
    stats.requests[200] = stats.requests.get(200, 0) + 3
    stats.rejected["concurrency_limit"] = stats.rejected.get("concurrency_limit", 0) + 2
    stats.idle_gap.observe(61.0)
    stats.request_duration.observe(0.002)
    text = scrape(stats)
    assert sample(text, 'asgi_requests_total{code="200"}') == 3
    assert sample(text, 'asgi_requests_rejected_total{reason="concurrency_limit"}') == 2
    assert sample(text, 'asgi_idle_gap_seconds_bucket{le="60.0"}') == 0
    assert sample(text, 'asgi_idle_gap_seconds_bucket{le="75.0"}') == 1
    assert sample(text, 'asgi_request_duration_seconds_bucket{le="0.0025"}') == 1
    assert sample(text, "asgi_request_duration_seconds_count") == 1
    assert sample(text, "asgi_concurrency_limit") == float("inf")
    assert sample(text, "asgi_listen_backlog_effective") == 128
    assert sample(text, 'asgi_connections{state="idle"}') == 2
    assert sample(text, 'asgi_upstream_connections{state="active"}') == 3
    assert "asgi_sidecar_info{" in text


def test_every_metric_and_setting_is_documented_in_the_readme():
    readme = README.read_text()
    names = {line.split()[2] for line in scrape(Stats()).splitlines() if line.startswith("# TYPE")}
    for name in names:
        documented = name if not name.endswith("_created") else None
        if documented is None:
            continue
        for suffix in ("_total", "_info"):
            if f"`{name}{suffix}" in readme:
                break
        else:
            assert f"`{name}" in readme, name
    for field in SidecarSettings.model_fields:
        assert f"`{field}`" in readme, field


def test_adaptive_gauges_are_exported_and_documented():
    gauges = dataclasses.replace(GAUGES, adaptive_limit=42, adaptive_baseline=0.012)
    info = settings_info(SidecarSettings().model_dump(), "proxy", "0.1.0", "compiled")
    text = SidecarCollector(Stats(), lambda: gauges, lambda: info).scrape().decode()
    assert sample(text, "asgi_adaptive_limit") == 42
    assert sample(text, "asgi_adaptive_baseline_seconds") == 0.012
    plain = SidecarCollector(Stats(), lambda: GAUGES, lambda: info).scrape().decode()
    assert "asgi_adaptive_limit" not in plain
    readme = README.read_text()
    for name in ("asgi_adaptive_limit", "asgi_adaptive_baseline_seconds"):
        assert f"`{name}`" in readme


def test_a_histogram_counts_each_value_in_the_first_bucket_whose_bound_it_does_not_exceed():
    histogram = Histogram((0.1, 1.0, 10.0))
    for value in (0.0, 0.1, 0.10001, 1.0, 9.99, 10.0, 10.5, 1e9):
        histogram.observe(value)
    assert histogram.counts == [2, 2, 2, 2]  # the last bucket is +Inf
    assert histogram.cumulative() == [(0.1, 2), (1.0, 4), (10.0, 6), (float("inf"), 8)]
    assert histogram.count == 8


def test_the_drain_token_is_never_exported():
    token = "a-secret-token-of-32-characters!"
    info = settings_info(SidecarSettings(drain_token=token).model_dump(), "proxy", "0", "pure")
    text = SidecarCollector(Stats(), lambda: GAUGES, lambda: info).scrape().decode()
    assert token not in text
    assert 'drain_token="set"' in text
    unset = settings_info(SidecarSettings().model_dump(), "proxy", "0", "pure")
    assert unset["drain_token"] == ""
