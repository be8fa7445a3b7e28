"""The fast level of autotuning: a latency-driven concurrency limit (``--adaptive``).

Pure: no asyncio, no clock, no I/O; callers pass times in.  The admission
engine (``admitting.Admission``, in both modes) calls ``record`` once per
admitted request when its response ends and ``update`` every
``UPDATE_INTERVAL`` (0.25 s); a number returned by ``update`` is the new limit,
applied with ``ConcurrencyLimiter.reconfigure`` (which admits queued waiters
when it rises).

Algorithm (a gradient controller like Envoy's adaptive concurrency filter, with
the known failures of the anchors designed out):

* **Sample.** Each window (the time between two ``update`` calls, extended until
  it holds ``MIN_SAMPLES`` = 10 latencies, dropped after ``MAX_WINDOW`` = 2 s
  without them) yields its median latency.  Latencies go into fixed log-spaced
  buckets (16 per doubling, 10 us to ~3 min, 4.4 % resolution): O(1) per
  request, bounded memory, no allocation; the median is read at update time.
  A few slow or fast outliers cannot move a median.  ``record`` also takes the
  number of requests in flight when the response ended, so each window knows
  its mean and peak load.

* **Baseline** (the app's latency without queueing).  Envoy measures it by
  pinning the limit low for ~50 requests every ~10 s, which users see as 503
  bursts; there is no such probe here.  Instead:

  - the *knee estimate* is the highest load (mean in flight) of a window whose
    latency was within ``FLAT_TOLERANCE`` (10 %) of the baseline, either way; it
    decays by 0.05 % a window (about 11 % a minute) so a noisy overestimate
    cannot stay;
  - a window is a baseline *candidate* only if its latency was flat at a load
    up to the knee (then it counts as at most the baseline: it confirms it, but
    a window up to 10 % above it must not raise it, or a slowly rising load would
    walk the baseline and the knee upwards together, which is Uber Cinnamon's
    drifting target), or higher at a load up to half the knee (``RISE_LOAD``: a
    knee that moved down must not pass for a slower app), or below the baseline
    at any load (direct evidence the baseline is too high).  Windows past the
    knee -- where queueing inside the app inflates latency -- never feed the
    baseline, so sustained overload cannot ratchet it (and with it the limit)
    upwards, which is Gradient2's "grows without bound under mild overload";
  - candidates are grouped in epochs of ``EPOCH_WINDOWS`` = 4 windows (1 s); an
    epoch with at least 3 candidates contributes the upper median of them (so
    up to half its windows can be outliers, high or low);
  - the baseline is a windowed minimum over the epochs of the last
    ``BASELINE_HORIZON`` = 5 s: the lowest of two, the second lowest of three
    or more, so one whole outlier epoch cannot poison it.  A lone epoch may
    raise it (its windows were at low load) but not lower it (one second of
    fast errors is no baseline).  Epochs expire, so an app that became
    permanently slower is re-baselined within a few seconds once the shrinking
    limit brings the load under half the knee (in the tests: a 2x slower app
    dips to a third or a little less of the knee for ~3 s, then settles back); when no
    epoch is fresh (steady overload) the last baseline is kept, never
    forgotten.

* **Gradient.** ``g = clamp(baseline * (1 + BUFFER) / sample, 0.5, 2.0)`` with
  ``BUFFER`` = 0.25: latency up to 25 % above the baseline is tolerated (it
  also absorbs the noise of comparing a median with a minimum).  ``g > 1``
  (growth) counts only when the limit was *binding* -- the window's peak in
  flight reached 90 % of the limit -- so an idle service never inflates its
  limit, and a service just past its knee does not keep growing.  Decreases
  always count.

* **Straight down when requests queue.** Under a sudden overload the limit is far
  above what the app can use, and easing down from it by 10 % a window takes seconds
  (100 to 10: 22 windows) while every admitted request waits in the app.  So when
  latency is over the tolerance while the window's throughput (completions per
  second) is still at least ``SATURATED`` (90 %) of the highest seen lately -- the
  app is as fast as ever, requests only queue in it -- the limit goes at once to what
  Little's law says that throughput needs at the tolerated latency:
  ``throughput * baseline * (1 + BUFFER)`` (never up this way).  A slower app or a
  pause shows as a throughput drop instead, and takes the gradual path below, so a
  one-second stall does not cut the limit to its floor.  The peak decays like the knee.

* **Small limits.** The tolerance is at least one request's worth of queueing:
  ``max(BUFFER, 1 / (limit - 1))``, so a knee of K requests settles at K + 1 when K
  is small (1.25 K when it is large).  A CPU-bound app with one worker has its knee
  at 1, where a 25 % tolerance would settle on 1 and leave the app idle for each
  round trip through the proxy.

* **Headroom while the limit is not reached.** A limit far above what is used (left
  high by an earlier burst, or the starting value) eases down, a fifth of the way a
  window, to ``IDLE_HEADROOM`` (2) times the recent peak in flight (decaying by 2 % a
  window) or the knee, whichever is higher.  It never sheds traffic (twice the peak is
  not reached), and a sudden overload then meets a limit near the app's size instead
  of admitting a hundred requests to queue inside it for the first window.

* **Step.** ``target = limit * g``, plus headroom ``sqrt(limit * g)`` only when
  growing (Envoy's headroom, which speeds up warm-up from a low limit; adding
  it on decreases too would settle the limit ~15 % further past the knee).  The
  limit moves by ``SMOOTHING`` = 0.2 of the way to the target (an EWMA: at most
  -10 % or about +25 % per window) and is clamped to ``[minimum, maximum]``.
  Under saturation it settles where latency is ``1 + BUFFER`` times the
  baseline, i.e. just past the knee.

Limitations: an app that became *faster* keeps the old baseline until its load
falls under the knee, so the limit grows until latency is 1.25 times the old
baseline again -- no more queueing in the app than before, but no gain either.
The first baseline comes from the first windows, so if the very first traffic
already overloads the app it starts high; it corrects the first time load falls
(a lower latency is always accepted).  Pods normally get traffic gradually after
turning ready.

Defaults in one place: window 0.25 s, >= 10 samples, buffer 0.25, gradient in
[0.5, 2], headroom sqrt when growing, smoothing 0.2, binding at 90 % of the
limit, baseline epochs 1 s over 5 s, straight down at 90 % of the peak throughput,
idle headroom 2x the recent peak.  The limit's bounds are settings (``adaptive_min``,
``adaptive_max``) that the operator's slow loop may move.
"""

from __future__ import annotations

import math
from bisect import insort
from collections import deque
from typing import Final

UPDATE_INTERVAL: Final = 0.25  # seconds between two update() calls
MIN_SAMPLES: Final = 10  # a window with fewer latencies makes no decision
MAX_WINDOW: Final = 2.0  # seconds a window may be extended to collect MIN_SAMPLES
BUFFER: Final = 0.25  # tolerated latency above the baseline
GRADIENT_MIN: Final = 0.5
GRADIENT_MAX: Final = 2.0
SMOOTHING: Final = 0.2  # EWMA weight of a new target
BINDING: Final = 0.9  # peak in flight / limit from which the limit counts as binding
FLAT_TOLERANCE: Final = 0.10  # a window within this of the baseline is "flat" (below the knee)
KNEE_DECAY: Final = 0.0005  # per window: about 11 % a minute
RISE_LOAD: Final = 0.5  # a higher latency re-baselines only at loads up to this x the knee
EPOCH_WINDOWS: Final = 4
EPOCH_MIN_CANDIDATES: Final = 3
BASELINE_HORIZON: Final = 5.0  # seconds an epoch's baseline value stays authoritative
SATURATED: Final = 0.9  # throughput / its recent peak from which rising latency is queueing
IDLE_HEADROOM: Final = 2.0  # a limit not reached eases down to this x the recent peak in flight
PEAK_DECAY: Final = 0.02  # per window: the recent peak in flight halves in about 9 s

# Latency buckets: 16 per doubling from 10 us; the last one takes everything above.
_FLOOR: Final = 1e-5
_PER_DOUBLING: Final = 16
_BUCKETS: Final = _PER_DOUBLING * 24  # up to 10 us * 2**24 = 168 s
# log2(x) * _PER_DOUBLING as math.log(x) * this: compiled, math.log is a C call and
# math.log2 a generic one (a module attribute lookup, then a call).
_PER_E: Final = _PER_DOUBLING / math.log(2)
_RATIO: Final = 2.0 ** (1.0 / _PER_DOUBLING)


def _bucket_value(index: int) -> float:
    """Geometric middle of a bucket."""
    return float(_FLOOR * _RATIO ** (index + 0.5))


class AdaptiveLimit:
    """A concurrency limit that follows the app's latency; see the module docstring."""

    __slots__ = (
        "_buckets",
        "_candidates",
        "_count",
        "_epoch_windows",
        "_epochs",
        "_load_sum",
        "_peak",
        "_recent_peak",
        "_reported",
        "_throughput_peak",
        "_window_start",
        "baseline",
        "knee",
        "limit",
        "maximum",
        "minimum",
    )

    def __init__(self, initial: int, minimum: int = 1, maximum: int = 1000) -> None:
        if not 1 <= minimum <= maximum:
            raise ValueError("need 1 <= minimum <= maximum")
        self.minimum = minimum
        self.maximum = maximum
        self.limit = float(min(max(initial, minimum), maximum))
        self.baseline: float | None = None  # seconds
        self.knee = 0.0  # requests in flight
        self._buckets = [0] * (_BUCKETS + 1)
        self._count = 0
        self._load_sum = 0
        self._peak = 0
        self._window_start: float | None = None
        self._candidates: list[float] = []  # baseline candidates of the current epoch
        self._epoch_windows = 0
        self._epochs: deque[tuple[float, float]] = deque()  # (time, value)
        self._reported = round(self.limit)
        self._throughput_peak = 0.0  # completions per second, decaying like the knee
        self._recent_peak = 0.0  # requests in flight, decaying by PEAK_DECAY a window

    @property
    def current(self) -> int:
        """The limit as the limiter applies it."""
        return self._reported

    # -- hot path ---------------------------------------------------------------------------

    def record(self, latency: float, in_flight: int) -> None:
        """An admitted request ended after ``latency`` s with ``in_flight`` (itself included)."""
        if latency > _FLOOR:
            index = int(math.log(latency / _FLOOR) * _PER_E)
            self._buckets[index if index < _BUCKETS else _BUCKETS] += 1
        else:
            self._buckets[0] += 1
        self._count += 1
        self._load_sum += in_flight
        self._peak = max(self._peak, in_flight)

    # -- every UPDATE_INTERVAL --------------------------------------------------------------

    def set_bounds(self, minimum: int, maximum: int) -> int | None:
        """New bounds (a live reload); returns the new limit if clamping changed it."""
        if not 1 <= minimum <= maximum:
            raise ValueError("need 1 <= minimum <= maximum")
        self.minimum, self.maximum = minimum, maximum
        self.limit = min(max(self.limit, minimum), maximum)
        return self._report()

    def update(self, now: float, in_flight: int) -> int | None:
        """Close the window if it holds enough samples; returns a new limit or None."""
        started = self._window_start
        if started is None:
            started = self._window_start = now
        count = self._count
        if count < MIN_SAMPLES:
            if now - started >= MAX_WINDOW:
                self._reset(now)
            return None
        sample = self._median()
        load = self._load_sum / count
        peak = max(self._peak, in_flight)
        # completions per second; unknown (0) for a first window, whose start was not seen
        throughput = count / (now - started) if now > started else 0.0
        self._reset(now)
        self._learn_baseline(now, sample, load)
        baseline = self.baseline
        assert baseline is not None
        limit = self.limit
        # At least one request's worth of queueing is tolerated: at a limit of 1 or 2 a 25 %
        # tolerance would leave the app idle between requests (a CPU-bound single worker).
        tolerance = 1.0 + max(BUFFER, 1.0 / (limit - 1.0) if limit > 1.5 else 1.0)
        gradient = min(max(baseline * tolerance / sample, GRADIENT_MIN), GRADIENT_MAX)
        saturated = throughput >= SATURATED * self._throughput_peak
        self._throughput_peak = max(throughput, self._throughput_peak * (1.0 - KNEE_DECAY))
        self._recent_peak = max(float(peak), self._recent_peak * (1.0 - PEAK_DECAY))
        if gradient < 1.0 and saturated:
            fit = throughput * baseline * tolerance  # Little's law at the tolerance
            if fit < limit:  # at once, not a fifth of the way: the app is saturated
                self.limit = min(max(fit, float(self.minimum)), float(self.maximum))
                return self._report()
        if gradient >= 1.0 and peak < BINDING * self._reported:  # the limit as applied
            # Not binding: no evidence that more would be used.  A limit far above what is
            # used eases down to IDLE_HEADROOM x the recent peak (and the knee), so a sudden
            # overload meets a limit near the app's size, not the last high-water mark.
            room = IDLE_HEADROOM * max(self._recent_peak, self.knee, 1.0)
            if limit > room:
                limit += SMOOTHING * (room - limit)
                self.limit = min(max(limit, float(self.minimum)), float(self.maximum))
                return self._report()
            gradient = 1.0
        target = limit * gradient
        if gradient > 1.0:
            target += math.sqrt(target)
        limit += SMOOTHING * (target - limit)
        self.limit = min(max(limit, float(self.minimum)), float(self.maximum))
        return self._report()

    # -- internals --------------------------------------------------------------------------

    def _report(self) -> int | None:
        new = min(max(round(self.limit), self.minimum), self.maximum)
        if new == self._reported:
            return None
        self._reported = new
        return new

    def _reset(self, now: float) -> None:
        buckets = self._buckets
        for i in range(len(buckets)):
            buckets[i] = 0
        self._count = 0
        self._load_sum = 0
        self._peak = 0
        self._window_start = now

    def _median(self) -> float:
        half = (self._count + 1) // 2
        seen = 0
        for index, n in enumerate(self._buckets):
            seen += n
            if seen >= half:
                return _bucket_value(index)
        return _bucket_value(_BUCKETS)  # pragma: no cover - counts always add up

    def _learn_baseline(self, now: float, sample: float, load: float) -> None:
        baseline = self.baseline
        if baseline is None:
            self.baseline = sample
            self.knee = load
            return
        if baseline * (1.0 - FLAT_TOLERANCE) <= sample <= baseline * (1.0 + FLAT_TOLERANCE):
            self.knee = max(self.knee, load)  # still flat at this load
        else:
            self.knee *= 1.0 - KNEE_DECAY
        flat = sample <= baseline * (1.0 + FLAT_TOLERANCE)
        if load <= RISE_LOAD * self.knee or sample < baseline:
            insort(self._candidates, sample)
        elif load <= self.knee and flat:
            # Near the knee a flat window confirms the baseline but may not raise it: each
            # one may be up to FLAT_TOLERANCE above, and raising on them would let a slowly
            # rising load walk the baseline (and with it the knee) upwards without end.
            insort(self._candidates, min(sample, baseline))
        self._epoch_windows += 1
        if self._epoch_windows >= EPOCH_WINDOWS:
            if len(self._candidates) >= EPOCH_MIN_CANDIDATES:
                self._epochs.append((now, self._candidates[len(self._candidates) // 2]))
            self._candidates = []
            self._epoch_windows = 0
        epochs = self._epochs
        while epochs and epochs[0][0] < now - BASELINE_HORIZON:
            epochs.popleft()
        if len(epochs) >= 2:
            values = sorted(value for _, value in epochs)
            self.baseline = values[1] if len(values) >= 3 else values[0]
        elif epochs and epochs[0][1] > baseline:
            # One epoch may raise the baseline (its higher values come from loads of at
            # most half the knee) but not lower it: a second of fast errors is no baseline.
            self.baseline = epochs[0][1]
