"""The master's side of a distributed Locust run: merge worker reports as they arrive, and know when all are in.

No gevent and no Locust here (like :mod:`loadtest.stream_checks`), so the
bookkeeping is testable on its own.

Each worker attaches what it measured *since its previous report* to every
Locust stats report (the ``report_to_master`` event, every 3 s), so the master
merges as the run goes and a late or lost message costs at most one interval,
never the whole run.  To end a run, the master sends every worker a stop
token; a worker stops its users and then sends one more report that answers
the token.  The master writes the results once every connected worker has
answered, or when a bounded wait runs out (the file then says which workers
are missing).  A token per stop makes stale answers harmless: a report that
says "final" for an earlier stop does not count for this one.

Locust's own statistics ride in the same messages, so the merged results
and Locust's table count the same events.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from loadtest.stream_checks import Report

# The key of a worker's part in a Locust stats report.
PART_KEY = "fanline"


def worker_part(delta: Report, answered: str | None) -> dict[str, Any]:
    """What a worker attaches to a stats report: its measurements since the last one, and the stop token it answers."""
    return {"report": delta.to_json(), "final": answered}


@dataclass
class Merge:
    """The master's running merge for one test."""

    report: Report = field(default_factory=Report)
    token: str | None = None
    reported: set[str] = field(default_factory=set)
    final: set[str] = field(default_factory=set)

    def expect_final(self, token: str) -> None:
        """A stop was sent with ``token``: only reports answering it count as final from now on."""
        self.token = token
        self.final.clear()

    def add(self, worker: str, part: dict[str, Any]) -> None:
        self.report.merge(Report.from_json(part.get("report", {})))
        self.reported.add(worker)
        if self.token is not None and part.get("final") == self.token:
            self.final.add(worker)

    def pending(self, connected: Iterable[str]) -> set[str]:
        """The connected workers whose final report has not arrived."""
        return {worker for worker in connected if worker not in self.final}
