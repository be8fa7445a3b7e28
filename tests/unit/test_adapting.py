"""The adaptive concurrency limit against a deterministic model of an app with a knee.

The model: requests in flight ``L`` take ``base`` seconds up to the knee ``K`` and
``base * L / K`` beyond it (the app's throughput is saturated, so extra requests only
queue inside it).  Clients are closed-loop: ``demand`` of them, each sending its next
request as soon as the last ended, so ``min(demand, limit)`` are in flight.  Each
0.25 s window yields ``L * 0.25 / latency`` completions (Little's law), with +-10 %
noise from a seeded generator.
"""

from __future__ import annotations

import dataclasses
import math
import random
from collections.abc import Callable

import pytest

from asgi_sidecar.adapting import UPDATE_INTERVAL, AdaptiveLimit
from asgi_sidecar.configuring import ConfigError, build_settings
from asgi_sidecar.parsing import build_parser, settings_flags
from asgi_sidecar.settings import SidecarSettings

KNEE = 50
BASE = 0.010
Value = float | Callable[[float], float]


@dataclasses.dataclass
class Sim:
    ctl: AdaptiveLimit
    now: float = 0.0
    rng: random.Random = dataclasses.field(default_factory=lambda: random.Random(7))
    limits: list[tuple[float, int]] = dataclasses.field(default_factory=list)

    def run(
        self,
        seconds: float,
        demand: Value,
        base: Value = BASE,
        knee: int = KNEE,
        factor: Callable[[float], float] = lambda t: 1.0,
    ) -> None:
        for _ in range(round(seconds / UPDATE_INTERVAL)):
            t = self.now
            wanted = demand(t) if callable(demand) else demand
            load = max(1, min(round(wanted), self.ctl.current))
            b = base(t) if callable(base) else base
            latency = (b if load <= knee else b * load / knee) * factor(t)
            for _ in range(max(1, min(2000, int(load * UPDATE_INTERVAL / latency)))):
                self.ctl.record(latency * self.rng.uniform(0.9, 1.1), load)
            self.now += UPDATE_INTERVAL
            self.ctl.update(self.now, load)
            self.limits.append((self.now, self.ctl.current))

    def since(self, start: float) -> list[int]:
        return [limit for t, limit in self.limits if t >= start]


def ramp(top: float, seconds: float = 10.0) -> Callable[[float], float]:
    """Traffic arriving gradually, as at a Pod that just turned ready."""
    return lambda t: min(top, 1 + top * t / seconds)


@pytest.mark.parametrize("start", [10, 1000])
def test_converges_near_the_knee_from_below_and_above(start):
    sim = Sim(AdaptiveLimit(start, 1, 1000))
    sim.run(40, ramp(3 * KNEE))
    settled = sim.since(25)
    # latency may reach 1.25 x the baseline: the limit settles just past the knee
    assert all(KNEE <= limit <= 1.4 * KNEE for limit in settled), settled
    assert sim.ctl.baseline == pytest.approx(BASE, rel=0.1)


def test_growth_from_a_low_start_is_quick():
    sim = Sim(AdaptiveLimit(10, 1, 1000))
    sim.run(8, 3 * KNEE)
    assert sim.ctl.current >= KNEE  # within 8 s, no long warm-up shedding


def test_stays_put_at_steady_state():
    sim = Sim(AdaptiveLimit(10, 1, 1000))
    sim.run(180, 3 * KNEE)
    settled = sim.since(30)
    assert max(settled) - min(settled) <= 0.1 * KNEE, (min(settled), max(settled))


def test_mild_overload_does_not_make_it_grow():
    sim = Sim(AdaptiveLimit(10, 1, 1000))
    sim.run(300, 1.5 * KNEE)  # demand just past the knee, for five minutes
    assert max(sim.since(20)) <= 1.4 * KNEE
    assert sim.since(280)[-1] <= sim.since(20)[0] + 3  # no drift upwards over time


def test_does_not_grow_when_the_limit_is_not_reached():
    sim = Sim(AdaptiveLimit(100, 1, 1000))
    sim.run(60, 20)  # 20 clients, far below both the limit and the knee
    limits = sim.since(0)
    assert max(limits) <= 100  # never up
    # it eases down to twice the peak in flight, and never as far as to refuse anyone
    assert limits[-1] == 40
    assert min(limits) >= 40


def test_follows_a_permanently_slower_app_without_collapsing():
    sim = Sim(AdaptiveLimit(10, 1, 1000))
    sim.run(60, ramp(3 * KNEE))
    before = sim.ctl.current
    # Every request now takes twice as long (a slower dependency); the knee stays.
    sim.run(60, 3 * KNEE, base=2 * BASE)
    after = sim.since(60)
    # a dip (the baseline rises only on windows at half the knee or less), never to the floor
    assert min(after) >= KNEE / 4, min(after)
    assert abs(after[-1] - before) <= 0.15 * before  # back near the knee
    assert sim.ctl.baseline == pytest.approx(2 * BASE, rel=0.1)  # re-baselined


def test_follows_an_app_whose_knee_moved_down():
    sim = Sim(AdaptiveLimit(10, 1, 1000))
    sim.run(60, ramp(3 * KNEE))
    sim.run(60, 3 * KNEE, knee=KNEE // 2)  # e.g. half the CPU
    assert all(KNEE / 2 <= limit <= 1.4 * KNEE / 2 for limit in sim.since(90))


@pytest.mark.parametrize("factor", [10.0, 0.1])
def test_an_outlier_burst_does_not_poison_the_baseline(factor):
    sim = Sim(AdaptiveLimit(10, 1, 1000))
    sim.run(60, ramp(3 * KNEE))
    before = sim.ctl.current
    # One second of 10x slower (a GC pause) or 10x faster (cached errors) responses.
    sim.run(30, 3 * KNEE, factor=lambda t: factor if 60 <= t < 61 else 1.0)
    assert sim.ctl.baseline == pytest.approx(BASE, rel=0.1)
    assert all(KNEE <= limit <= 1.4 * KNEE for limit in sim.since(70))
    assert abs(sim.ctl.current - before) <= 3


def test_a_sudden_overload_is_cut_to_the_knee_in_one_window():
    sim = Sim(AdaptiveLimit(1000, 1, 1000))
    sim.run(10, 45)  # just under the knee: the limit, not reached, eases to twice that
    assert 80 <= sim.ctl.current <= 95
    sim.run(5, 3 * KNEE)  # then 3x the knee at once
    # one window shows it: throughput at its peak while latency rose, so requests queue
    assert sim.since(10.25)[0] <= 1.4 * KNEE, sim.since(10)[:4]
    assert all(KNEE <= limit <= 1.4 * KNEE for limit in sim.since(10.25))  # and no undershoot


def test_a_small_knee_settles_one_request_past_it():
    """A CPU-bound single worker: one request at a time is its knee, but the proxy's round
    trip would leave it idle between requests at a limit of 1."""
    for knee, settled in ((1, 2), (2, 3)):
        sim = Sim(AdaptiveLimit(1, 1, 1000))
        sim.run(30, 20, base=0.001, knee=knee)
        assert all(limit == settled for limit in sim.since(5)), (knee, sim.since(0)[:40])


def test_a_grown_pool_is_followed_up_within_ten_windows():
    sim = Sim(AdaptiveLimit(10, 1, 1000))
    sim.run(30, ramp(3 * 8), base=0.020, knee=8)  # 8 slots of 20 ms
    assert 8 <= sim.ctl.current <= 12
    sim.run(10, 3 * 8, base=0.020, knee=16)  # the pool doubles: 1.5x its new knee
    assert sim.since(32.5)[0] >= 16, sim.since(30)[:12]  # ten windows later
    assert all(16 <= limit <= 24 for limit in sim.since(32.5))


def test_no_baseline_drift_over_a_half_hour_of_slowly_varying_load():
    """A deterministic soak: 30 simulated minutes, demand between 0.3x and 2.7x the knee,
    starting low (a Pod gets traffic gradually) and rising and falling every 10 minutes."""
    knee, base = 8, 0.020
    sim = Sim(AdaptiveLimit(100, 1, 1000))
    baselines = []

    def demand(t: float) -> float:
        return knee * (1.5 - 1.2 * math.cos(2 * math.pi * t / 600))

    for _ in range(1800 // 30):
        sim.run(30, demand, base=base, knee=knee)
        baselines.append(sim.ctl.baseline)
    assert all(b is not None and abs(b - base) <= 0.2 * base for b in baselines), baselines
    # not binding at first (light load); from the first overload on, never far past the knee
    assert max(sim.since(300)) <= 1.5 * knee


def test_windows_with_few_samples_decide_nothing():
    ctl = AdaptiveLimit(20, 1, 100)
    for _ in range(9):
        ctl.record(1.0, 20)
    assert ctl.update(0.25, 20) is None
    assert ctl.baseline is None
    assert ctl.update(3.0, 20) is None  # too old: dropped
    ctl.record(1.0, 20)
    assert ctl.update(3.25, 20) is None
    assert ctl.baseline is None


def test_bounds_clamp_at_once_and_are_validated():
    ctl = AdaptiveLimit(500, 2, 50)
    assert ctl.current == 50
    assert ctl.set_bounds(2, 10) == 10
    assert ctl.set_bounds(20, 30) == 20
    assert ctl.set_bounds(20, 40) is None  # 20 is still inside
    with pytest.raises(ValueError, match="minimum <= maximum"):
        ctl.set_bounds(5, 4)
    sim = Sim(ctl)
    sim.run(30, 1000)
    assert all(20 <= limit <= 40 for limit in sim.since(0))


def test_settings_check_the_bounds():
    assert SidecarSettings(adaptive=True, adaptive_min=2, adaptive_max=2).adaptive_max == 2
    with pytest.raises(ConfigError, match=r"adaptive_min \(5\) must not exceed adaptive_max \(3\)"):
        build_settings(flags={"adaptive_min": "5", "adaptive_max": "3"})


def test_adaptive_flag_needs_no_value():
    args = build_parser().parse_args(["proxy", "--adaptive", "--adaptive-max", "50"])
    assert build_settings(flags=settings_flags(args)).adaptive is True
    args = build_parser().parse_args(["proxy", "--adaptive", "false"])
    assert build_settings(flags=settings_flags(args)).adaptive is False
