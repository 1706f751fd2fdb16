"""The seeded fault schedule: which fault, when, on what. Pure: the same seed gives the same plan."""

from __future__ import annotations

import random
from dataclasses import dataclass
from enum import StrEnum


class Action(StrEnum):
    NODE_KILL = "node_kill"  # SIGKILL a node, start it again on the same port after a short outage
    NODE_DRAIN = "node_drain"  # SIGTERM: the node drains its clients over its drain window, exits, and restarts
    BROKER_RESTART = "broker_restart"  # SIGKILL the broker server, restart it on the same storage
    PAUSE = "pause"  # some clients stop reading for 3-22 s
    STORM = "storm"  # many clients resume at once from random past positions on one node


@dataclass(frozen=True)
class Fault:
    at: float  # seconds after the start of the run
    action: Action
    target: int = 0  # node index (node faults)
    down: float = 0.0  # seconds the node or broker stays down
    count: int = 0  # clients (pause, storm)
    seconds: float = 0.0  # pause length


WEIGHTS = {
    Action.NODE_KILL: 3,
    Action.NODE_DRAIN: 2,
    Action.BROKER_RESTART: 2,
    Action.PAUSE: 2,
    Action.STORM: 3,
}


def plan(seed: int, seconds: float, nodes: int, networked: bool, first: float = 4.0, gap: tuple[float, float] = (5.0, 12.0)) -> list[Fault]:
    """Faults from ``first`` to ``seconds``, one every ``gap`` seconds.

    The memory broker lives inside its only node, so it has no broker restart:
    a node restart is its broker losing its data (a new epoch).
    """
    rng = random.Random(seed)
    actions = [a for a in WEIGHTS if networked or a is not Action.BROKER_RESTART]
    weights = [WEIGHTS[a] for a in actions]
    faults: list[Fault] = []
    at = first
    while at < seconds:
        action = rng.choices(actions, weights=weights)[0]
        faults.append(
            Fault(
                at=round(at, 3),
                action=action,
                target=rng.randrange(nodes),
                down=round(rng.uniform(0.3, 3.0), 3),
                count=rng.randint(20, 40) if action is Action.STORM else rng.randint(2, 6),
                seconds=round(rng.uniform(3.0, 22.0), 3),
            )
        )
        at += rng.uniform(*gap)
    return faults
