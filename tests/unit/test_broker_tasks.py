"""TaskSet and KeyedLocks: what the adapters use to own tasks and serialise work per key."""

from __future__ import annotations

import asyncio

from broker_adapters.keyed_locks import KeyedLocks
from broker_adapters.tasks import TaskSet


async def test_cancel_one_task_and_then_all() -> None:
    tasks = TaskSet()
    one = tasks.spawn(asyncio.sleep(60), "one")
    two = tasks.spawn(asyncio.sleep(60), "two")
    await tasks.cancel(one)
    assert one.cancelled() and len(tasks) == 1
    await tasks.cancel_all()
    assert two.cancelled() and len(tasks) == 0


async def test_cancel_swallows_what_the_task_raised() -> None:
    async def fail() -> None:
        raise OSError("connection reset")

    tasks = TaskSet()
    task = tasks.spawn(fail(), "fail")
    await asyncio.sleep(0)
    await tasks.cancel(task)
    assert len(tasks) == 0


async def test_keyed_locks_serialise_one_key_and_forget_it_afterwards() -> None:
    locks = KeyedLocks()
    order: list[str] = []

    async def hold(key: str, name: str) -> None:
        async with locks.hold(key):
            order.append(f"{name} in")
            await asyncio.sleep(0)
            order.append(f"{name} out")

    await asyncio.gather(hold("a", "first"), hold("a", "second"), hold("b", "other"))
    assert order.index("first out") < order.index("second in")
    assert len(locks) == 0
