"""How make bench-overload judges its goals: best static per phase, settling, oscillation."""

from __future__ import annotations

from bench.loadstats import Summary
from bench.scenarios import (
    best_per_phase,
    p99_goal,
    reversals,
    scenarios,
    settling,
    total_goodput,
)


def summary(ok: int, p99: float = 0.02, seconds: float = 10.0) -> Summary:
    return Summary(seconds, ok, ok, 0, 0, 0.02, p99, None, completed=ok)


def test_the_suite_has_every_scenario_the_issue_asks_for():
    names = {s.name for s in scenarios(10.0)}
    assert {"cpu 2x", "cpu 4x", "cpu 10x", "pool 2x", "pool 4x", "pool 10x"} <= names
    assert {"cpu shift", "pool shift", "pool step", "pool 0.8x"} <= names
    step = next(s for s in scenarios(10.0) if s.name == "pool step")
    assert [x.load for x in step.steps] == [0.5, 4.0, 0.5]
    assert step.changes
    assert not next(s for s in scenarios(1) if s.name == "pool 2x").changes
    assert all(x.seconds == 7.5 for s in scenarios(7.5) for x in s.steps)


def test_p99_goal_is_looser_only_at_10x():
    assert p99_goal(2) == p99_goal(4) == 2.0
    assert p99_goal(10) == 3.0


def test_the_best_static_is_chosen_per_phase():
    sweep = {
        8: [summary(3990), summary(4000)],
        16: [summary(4000, p99=0.05), summary(7900)],
        4: [summary(2000), summary(2000)],
    }
    best = best_per_phase(sweep)
    # within 1 % of the top goodput, the lower p99 wins: 8 in the first phase
    assert [value for value, _ in best] == [8, 16]
    assert total_goodput(sweep[16]) == (4000 + 7900) / 20


def test_settling_finds_when_the_limit_stopped_moving():
    samples = [(t / 4, 100.0 - t * 10 if t < 9 else 12.0) for t in range(40)]
    assert settling(samples, 0.0, 10.0) == 2.0  # from t = 2.25 s on it stays near 12


def test_settling_is_none_for_a_limit_that_keeps_swinging():
    samples = [(t / 4, 8.0 if t % 2 else 30.0) for t in range(40)]
    assert settling(samples, 0.0, 10.0) is None
    assert reversals(samples, 0.0, 10.0) == 38


def test_small_limits_settle_within_one_request():
    samples = [(t / 4, 3.0 if t % 2 else 4.0) for t in range(40)]
    assert settling(samples, 0.0, 10.0) == 0.0


def test_no_samples_no_verdict():
    assert settling([], 0.0, 10.0) is None
