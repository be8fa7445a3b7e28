import pytest

from asgi_sidecar.admitting import QUEUED, Admission
from asgi_sidecar.limiting import ConcurrencyLimiter
from asgi_sidecar.settings import SidecarSettings
from asgi_sidecar.stats import Stats


def test_admits_exactly_the_limit():
    limiter: ConcurrencyLimiter[str] = ConcurrencyLimiter(2)
    assert limiter.try_acquire()
    assert limiter.try_acquire()
    assert not limiter.try_acquire()
    assert limiter.in_flight == 2


def test_limit_one_admits_one():
    limiter: ConcurrencyLimiter[str] = ConcurrencyLimiter(1)
    assert limiter.try_acquire()
    assert not limiter.try_acquire()


def test_no_limit_admits_everything():
    limiter: ConcurrencyLimiter[str] = ConcurrencyLimiter(None)
    assert all(limiter.try_acquire() for _ in range(1000))


def test_release_hands_the_slot_to_the_oldest_waiter():
    limiter: ConcurrencyLimiter[str] = ConcurrencyLimiter(1, queue_depth=2)
    assert limiter.try_acquire()
    assert limiter.enqueue("a", 10)
    assert limiter.enqueue("b", 10)
    assert not limiter.enqueue("c", 10)  # queue full
    assert limiter.release() == "a"
    assert limiter.in_flight == 1  # the slot moved, it was not freed
    assert not limiter.try_acquire()  # "b" waits ahead of newcomers
    assert limiter.release() == "b"
    assert limiter.release() is None
    assert limiter.in_flight == 0


def test_expire_and_cancel():
    limiter: ConcurrencyLimiter[str] = ConcurrencyLimiter(1, queue_depth=3)
    limiter.try_acquire()
    limiter.enqueue("a", 1.0)
    limiter.enqueue("b", 2.0)
    limiter.enqueue("c", 3.0)
    assert limiter.cancel("b")
    assert not limiter.cancel("b")
    assert limiter.expire(1.5) == ["a"]
    assert limiter.queued == 1


def test_raising_the_limit_admits_waiters_and_lowering_interrupts_nobody():
    limiter: ConcurrencyLimiter[str] = ConcurrencyLimiter(1, queue_depth=5)
    limiter.try_acquire()
    limiter.enqueue("a", 9)
    limiter.enqueue("b", 9)
    assert limiter.reconfigure(3, 5) == ["a", "b"]
    assert limiter.in_flight == 3
    assert limiter.reconfigure(1, 5) == []
    assert limiter.in_flight == 3
    assert not limiter.try_acquire()
    # Releases above the new limit free slots instead of passing them on.
    limiter.enqueue("c", 9)
    assert limiter.release() is None
    assert limiter.release() is None
    assert limiter.release() == "c"


# -- the admission engine both modes share ---------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def engine(woken: list[str], **settings: object) -> tuple[Admission[str], Clock]:
    clock = Clock()

    def wake(waiter: str) -> bool:
        if waiter.startswith("gone"):
            return False  # gave up already: the slot must pass on
        woken.append(waiter)
        return True

    values = {"limit_concurrency": 1, "queue_depth": 2, "queue_timeout": 5.0, **settings}
    return Admission(SidecarSettings(**values).validated(), Stats(), clock, wake), clock


def test_admission_queues_then_wakes_in_order_and_records():
    woken: list[str] = []
    admission, clock = engine(woken)
    assert admission.try_acquire()
    assert not admission.try_acquire()
    assert admission.queue("a") == QUEUED
    assert admission.queue("b") == QUEUED
    assert admission.queue("c") == "queue_full"
    admission.started(queued_at=-1.0, now=clock.now)
    assert admission.stats.queue_wait.count == 0
    admission.finished(0.02)
    assert woken == ["a"]
    assert admission.stats.request_duration.count == 1
    admission.started(queued_at=clock.now - 0.5, now=clock.now)
    assert admission.stats.queue_wait.sum == pytest.approx(0.5)
    admission.release()
    assert woken == ["a", "b"]
    admission.release()
    assert admission.limiter.in_flight == 0


def test_admission_refuses_without_a_queue_and_when_closed():
    admission, _ = engine([], queue_depth=0)
    assert admission.try_acquire()
    assert admission.queue("a") == "concurrency_limit"
    admission.close()
    assert admission.queue("a") == "shutting_down"


def test_admission_passes_a_slot_over_waiters_that_gave_up():
    woken: list[str] = []
    admission, _ = engine(woken)
    assert admission.try_acquire()
    admission.queue("gone-1")
    admission.queue("b")
    admission.release()
    assert woken == ["b"]
    assert admission.limiter.in_flight == 1


def test_admission_expires_waiters_by_the_clock():
    admission, clock = engine([])
    assert admission.try_acquire()
    admission.queue("a")
    clock.now += 4.9
    assert admission.expire(clock.now) == []
    clock.now += 0.2
    assert admission.expire(clock.now) == ["a"]


def test_admission_apply_raises_the_limit_and_wakes_waiters():
    woken: list[str] = []
    admission, _ = engine(woken)
    assert admission.try_acquire()
    admission.queue("a")
    admission.queue("gone-b")
    admission.apply(SidecarSettings(limit_concurrency=3, queue_depth=2).validated())
    assert woken == ["a"]
    assert admission.limiter.in_flight == 2  # the slot of the one that gave up came back
    assert admission.limiter.limit == 3


def test_admission_adaptive_limit_moves_only_on_ticks():
    admission, _ = engine([], adaptive=True, limit_concurrency=40, adaptive_min=1)
    assert admission.adaptive is not None
    assert admission.limiter.limit == 40
    for now in (0.0, 0.25, 0.5, 0.75, 1.0):
        for _ in range(20):
            admission.adaptive.record(0.010 if now < 0.5 else 0.100, 40)
        admission.tick(now)
    assert admission.limiter.limit is not None
    assert admission.limiter.limit < 40
    assert admission.limiter.limit == admission.adaptive.current
    kept = admission.adaptive
    admission.apply(
        SidecarSettings(adaptive=True, limit_concurrency=99, adaptive_max=500).validated()
    )
    assert admission.adaptive is kept  # what it learnt survives a reload
    admission.apply(SidecarSettings(limit_concurrency=7).validated())
    assert admission.adaptive is None
    assert admission.limiter.limit == 7
