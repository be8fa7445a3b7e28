"""Where limitConcurrency should be: ``decide_limit(history, limit, bounds)``. Pure.

**limitConcurrency** aims at the knee of the app's latency curve: the most
requests in flight that still run at the baseline latency, plus ``BUFFER``.

* Past the knee, latency grows with concurrency (requests queue inside the app),
  so ``in_flight / (p50 / baseline)`` estimates the knee directly (Little's law
  at baseline latency).  The limit moves there in one step, at most halving.
* Below the knee, latency stays at the baseline while the limit rejects work, so
  the limit doubles until latency rises; a knee seen earlier caps the climb, so
  a mildly overloaded server is not fed ever more concurrency (Gradient2's
  complaint).
* The baseline (minimum p50 over the window) is trusted only once the history
  holds a saturated interval whose throughput fell short of the best at a lower
  limit: proof that latency was measured below the knee.  Starting far past the
  knee, every p50 includes queueing (a *poisoned* minimum); then the limit is
  probed downwards, one interval at a time, while throughput holds.  Once
  trusted there are no more probes, so no periodic 503 bursts (Envoy's minRTT
  windows).
* If a decrease leaves latency where it was, the latency is not queueing: the
  app got slower, the baseline is *stale*, and it is measured again.

Changes below ``HYSTERESIS`` are not made; steps are bounded to x``MAX_UP`` and
x``MAX_DOWN`` per interval; everything stays within the AsgiServer's bounds.
"""

from __future__ import annotations

from collections.abc import Sequence

from asgi_operator.observations import Bounds, Observation, saturated

BUFFER = 0.15  # headroom above the estimated knee
TOLERANCE = 0.25  # p50 within 25% of the baseline counts as "at baseline"
HYSTERESIS = 0.1  # changes smaller than 10% are not made
MAX_UP = 2.0
MAX_DOWN = 0.5
PROBE_DOWN = 0.5
WINDOW = 120  # intervals of history considered (an hour at 30 s)
THROUGHPUT_HELD = 0.95
THROUGHPUT_SHORT = 0.9
REGIME_CHANGE = 0.25  # throughput at the same limit changed by this much: capacity changed


def _clamp(value: float, low: float, high: float) -> float:
    return max(low, min(high, value))


def _limit_change(old: int, new: float, bounds: Bounds, reason: str) -> tuple[int, str] | None:
    target = round(_clamp(new, bounds.limit_min, bounds.limit_max))
    if abs(target - old) < max(1.0, HYSTERESIS * old):
        return None
    return target, reason


def decide_limit(history: Sequence[Observation], limit: int, bounds: Bounds) -> tuple[int, str]:
    """The new limit and why (the same limit when holding)."""
    window = [o for o in history[-WINDOW:] if o.p50 and o.throughput > 0 and o.limit]
    if not window or window[-1] is not history[-1]:
        return limit, "no traffic in the last interval: holding"
    window = window[_regime_start(window) :]
    now = window[-1]
    assert now.p50 is not None
    busy = [o for o in window if saturated(o)] or [now]
    baseline = min(o.p50 for o in window if o.p50)
    top = max(busy, key=lambda o: o.throughput)
    best = top.throughput
    # Proof the baseline was measured below the knee: a lower limit lost throughput.
    trusted = any(
        o.throughput < THROUGHPUT_SHORT * best and (o.limit or 0) < (top.limit or 0) for o in busy
    )
    if not saturated(now):
        ratio = now.p50 / baseline
        if trusted and ratio > 1 + TOLERANCE:
            # Not binding, yet latency is well above the baseline: requests queue inside
            # the app. A limit near the knee protects the latency of admitted requests.
            knee = now.in_flight / ratio
            target = min(knee * (1 + BUFFER), limit * (1 - HYSTERESIS))
            return _apply(
                limit,
                max(target, limit * MAX_DOWN),
                bounds,
                f"p50 {ratio:.1f}x the baseline with {now.in_flight:.0f} in flight, below the"
                f" limit: requests queue in the app; the knee is about {knee:.0f}",
            )
        return limit, "the limit is not binding (no rejections, in-flight below it): holding"
    prev = window[-2] if len(window) > 1 else None
    ratio = now.p50 / baseline
    decreased = prev is not None and (now.limit or 0) < 0.95 * (prev.limit or 0)

    if decreased and prev is not None and prev.p50 and ratio > 1 + TOLERANCE:  # noqa: SIM102
        if now.p50 >= 0.95 * prev.p50:
            # Fewer in flight, same latency: not queueing. The app itself got slower.
            return limit, (
                f"latency stayed at {now.p50 * 1000:.1f} ms with fewer requests in flight: the"
                " baseline is stale and is measured again; holding"
            )
    if ratio > 1 + TOLERANCE:
        knee = now.in_flight / ratio
        target = _clamp(knee * (1 + BUFFER), limit * MAX_DOWN, limit * (1 - HYSTERESIS))
        there = round(target)
        tried = [o.throughput for o in busy if o.limit and 0.9 * there <= o.limit <= 1.1 * there]
        if trusted and tried and max(tried) < THROUGHPUT_HELD * best:
            # That lower limit was tried and served clearly less: latency rises here
            # because the app is kept busy, not because it is overloaded. Hold.
            return limit, (
                f"p50 {ratio:.1f}x the baseline, but a limit of {there} served only"
                f" {max(tried):.0f}/s of {best:.0f}/s before: holding"
            )
        return _apply(
            limit,
            target,
            bounds,
            f"p50 {ratio:.1f}x the baseline with {now.in_flight:.0f} in flight: past the"
            f" knee, estimated at {knee:.0f}",
        )
    if not trusted and decreased and prev is not None:  # noqa: SIM102
        if now.throughput >= THROUGHPUT_HELD * prev.throughput:
            return _apply(
                limit,
                limit * PROBE_DOWN,
                bounds,
                "throughput held with fewer requests in flight and the baseline is not yet"
                " proven: probing lower",
            )
    # Knee estimates from intervals past the knee; only once the baseline is proven, since
    # a poisoned baseline makes them meaningless.
    uppers = [
        (o.in_flight * baseline / o.p50)
        for o in busy
        if trusted and o.p50 and o.p50 / baseline > 1 + TOLERANCE and (o.limit or 0) > limit
    ]
    if uppers:
        target = min(uppers) * (1 + BUFFER)
        if limit >= target / (1 + HYSTERESIS):
            if trusted:
                # Latency says "knee", but if a higher limit served clearly more, the
                # estimate is too low (a proxy hop or I/O pauses hide idle app time).
                enough = [
                    o.limit for o in busy if o.limit and o.throughput >= THROUGHPUT_HELD * best
                ]
                if now.throughput < THROUGHPUT_HELD * best and enough and min(enough) > limit:
                    return _apply(
                        limit,
                        min(limit * MAX_UP, *enough),
                        bounds,
                        f"throughput {now.throughput:.0f}/s is short of the {best:.0f}/s a"
                        f" limit of {min(enough)} served: rising towards it",
                    )
                return limit, f"at the knee (about {min(uppers):.0f} in flight): holding"
            return _apply(
                limit,
                limit * PROBE_DOWN,
                bounds,
                "at the apparent knee but the baseline latency was only seen under"
                " saturation: probing lower",
            )
        return _apply(
            limit,
            min(limit * MAX_UP, target),
            bounds,
            f"rejecting at baseline latency; the knee is about {min(uppers):.0f}: rising to it",
        )
    if not trusted:
        # The baseline was only ever measured with the limit full: it may include queueing
        # inside the app (a poisoned minimum). Going down shows which: throughput holds
        # past the knee and falls below it. Going up first would learn nothing.
        start = min(limit, max(now.in_flight, bounds.limit_min))
        return _apply(
            limit,
            start * PROBE_DOWN,
            bounds,
            "rejecting, but the baseline latency was only seen with the limit full:"
            " probing lower to find the knee",
        )
    if limit < bounds.limit_max:
        return _apply(
            limit,
            limit * MAX_UP,
            bounds,
            "rejecting while latency stays at the baseline: below the knee, rising",
        )
    return limit, "at the upper bound: holding"


def _regime_start(window: Sequence[Observation]) -> int:
    """Index where the app's capacity last changed: the same limit serving a quarter more
    or less than it did before.  What was learned before then no longer holds."""
    start = 0
    for i, o in enumerate(window):
        for earlier in window[start:i]:
            same_limit = o.limit and earlier.limit and abs(o.limit - earlier.limit) <= 0.1 * o.limit
            if same_limit and saturated(o) and saturated(earlier):
                change = o.throughput / earlier.throughput
                if change < 1 - REGIME_CHANGE or change > 1 / (1 - REGIME_CHANGE):
                    start = i
                    break
    return start


def _apply(limit: int, target: float, bounds: Bounds, reason: str) -> tuple[int, str]:
    change = _limit_change(limit, target, bounds, reason)
    if change is None:
        return limit, f"{reason} (change under {HYSTERESIS:.0%}: holding)"
    return change
