"""The open-loop results' arithmetic: goodput, percentiles of the 2xx only, per-second bins."""

from __future__ import annotations

import pytest

from bench.loadstats import Hit, percentile, phase_summary, series, summarize
from bench.openloop import parse_csv


def test_nearest_rank_percentiles():
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50.0
    assert percentile(values, 99) == 99.0
    assert percentile(values, 100) == 100.0
    assert percentile([7.0], 99) == 7.0
    assert percentile([], 50) is None


def test_a_summary_counts_2xx_503_and_failures_apart():
    hits = [Hit(0.1 * i, 0.020, 200) for i in range(10)]
    hits += [Hit(0.05, 0.0002, 503), Hit(0.15, 0.0004, 503)]
    hits += [Hit(0.2, 2.0, 0), Hit(0.3, 0.01, 500)]
    s = summarize(hits, 0.0, 1.0)
    assert (s.sent, s.ok, s.rejected, s.failed) == (14, 10, 2, 2)
    assert s.goodput == pytest.approx(10.0)  # all ten 2xx ended within the second
    assert s.offered == pytest.approx(14.0)
    # fast 503s do not make the admitted requests look fast
    assert s.p50 == s.p99 == 0.020
    assert s.rejected_p50 == 0.0002


def test_a_summary_takes_only_its_span():
    hits = [Hit(t, 0.01, 200) for t in (0.5, 1.0, 1.5, 2.0)]
    s = summarize(hits, 1.0, 2.0)
    assert s.sent == 2  # [1.0, 2.0): the one sent at 2.0 belongs to the next span
    assert s.goodput == pytest.approx(2.0)


def test_goodput_counts_2xx_where_they_end_and_phases_by_their_sender():
    # A backlog: sent in phase 0, answered only during phase 1's second.
    hits = [Hit(0.9, 0.5, 200, phase=0), Hit(0.95, 0.6, 200, phase=0)]
    hits += [Hit(1.0 + i / 10, 0.02, 200, phase=1) for i in range(3)]
    first, second = phase_summary(hits, 0, 0.0, 1.0), phase_summary(hits, 1, 1.0, 2.0)
    assert (first.sent, first.ok, first.goodput) == (2, 2, 0.0)
    assert (second.sent, second.ok, second.goodput) == (3, 3, 5.0)
    assert first.p50 == 0.5


def test_series_bins_per_second_and_covers_empty_seconds():
    hits = [Hit(0.2, 0.01, 200), Hit(0.7, 0.01, 200), Hit(2.5, 0.01, 503)]
    bins = series(hits, 0.0, 3.0)
    assert [b.ok for b in bins] == [2, 0, 0]
    assert [b.rejected for b in bins] == [0, 0, 1]
    assert bins[1].p99 is None


def test_vegeta_csv_rows_become_hits_relative_to_the_origin():
    origin = 1_700_000_000.0
    rows = [
        "1700000000500000000,200,20000000,0,11,,eyJvayI6dHJ1ZX0=,,0,GET,http://127.0.0.1:1/,",
        "1700000001000000000,0,2000000000,0,0,Get: timeout,,,1,GET,http://127.0.0.1:1/,",
        "",
    ]
    hits = parse_csv(rows, origin)
    assert hits == [Hit(pytest.approx(0.5), pytest.approx(0.02), 200),
                    Hit(pytest.approx(1.0), pytest.approx(2.0), 0)]  # fmt: skip
