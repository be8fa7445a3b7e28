from asgi_sidecar.limiting import ConcurrencyLimiter


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
