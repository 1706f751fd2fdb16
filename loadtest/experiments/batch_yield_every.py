"""Experiment, not production code: the batch publish API yielding every K items instead of every item.

    FANLINE_EXPERIMENT_YIELD_EVERY=32 python -m loadtest.experiments.batch_yield_every node [node flags...]

``POST /api/publish/batch`` awaits ``asyncio.sleep(0)`` after every item so
writers run between publications.  That also means every writer wakes per
publication, so each frame carries one event and write batching never
engages.  This wrapper makes that ``sleep(0)`` yield only on every K-th call,
so a batch fans out K publications per burst (K events per frame, still far
below the outbox bound), and ``loadtest.bench --node-module
loadtest.experiments.batch_yield_every`` measures the difference.
"""

from __future__ import annotations

import asyncio
import os
import sys
from typing import Any

import node.api
from node.cli import main

EVERY = int(os.environ.get("FANLINE_EXPERIMENT_YIELD_EVERY", "32"))


class _AsyncioShim:
    """``asyncio`` as node.api sees it, with a sleep(0) that yields every EVERY-th call."""

    def __init__(self) -> None:
        self.calls = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(asyncio, name)

    async def sleep(self, delay: float, result: Any = None) -> Any:
        self.calls += 1
        if delay or self.calls % EVERY == 0:
            return await asyncio.sleep(delay, result)
        return result


node.api.asyncio = _AsyncioShim()  # type: ignore[assignment]

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
