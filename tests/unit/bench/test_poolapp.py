"""The benchmark's I/O-bound app: a pool whose slots can double mid-run, in arrival order."""

from __future__ import annotations

import asyncio

from bench import poolapp


def test_the_pool_admits_its_slots_and_doubles_on_a_shift():
    async def scenario() -> list[int]:
        pool = poolapp.Pool()
        seen = []
        order: list[int] = []

        async def one(i: int) -> None:
            await pool.acquire()
            order.append(i)

        tasks = [asyncio.create_task(one(i)) for i in range(20)]
        await asyncio.sleep(0)
        seen.append(pool.busy)  # 8 slots
        poolapp.SHIFT.factor = 2
        pool.release()  # one ends: the doubled pool wakes enough waiters to fill 16
        await asyncio.sleep(0)
        seen.append(pool.busy)
        seen.append(len(pool.waiters))
        poolapp.SHIFT.factor = 1
        for task in tasks:
            task.cancel()
        assert order == sorted(order)  # first come, first served
        return seen

    try:
        assert asyncio.run(scenario()) == [8, 16, 20 - 16 - 1]
    finally:
        poolapp.SHIFT.factor = 1


def test_a_cancelled_waiter_gives_its_slot_back():
    async def scenario() -> int:
        pool = poolapp.Pool()
        for _ in range(poolapp.SLOTS):
            await pool.acquire()
        waiter = asyncio.create_task(pool.acquire())
        await asyncio.sleep(0)
        pool.release()  # hands the slot to the waiter ...
        waiter.cancel()  # ... which is cancelled before it runs
        await asyncio.gather(waiter, return_exceptions=True)
        return pool.busy

    assert asyncio.run(scenario()) == poolapp.SLOTS - 1
