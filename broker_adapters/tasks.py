"""Background tasks with one owner.

Every long-lived object that starts tasks (the hub, the node, an adapter)
keeps them in a :class:`TaskSet`: spawned there, forgotten when they finish,
and all cancelled and awaited by :meth:`TaskSet.cancel_all` when the owner
closes (or one of them by :meth:`TaskSet.cancel`, when it belongs to
something shorter-lived than the owner).  No task outlives its owner.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

R = TypeVar("R")


class TaskSet:
    __slots__ = ("_tasks",)

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[Any]] = set()

    def __len__(self) -> int:
        return len(self._tasks)

    def spawn(self, coro: Coroutine[Any, Any, R], name: str) -> asyncio.Task[R]:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def cancel(self, task: asyncio.Task[Any]) -> None:
        """Cancel one task and wait until it has ended, whatever it raised."""
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    async def cancel_all(self) -> None:
        """Cancel every task still running and wait until all have ended."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks.clear()
