from __future__ import annotations

import itertools
import re
from collections.abc import Iterator

import pytest

from .processes import NodeProcess

_names = itertools.count()


@pytest.fixture
def channel(request: pytest.FixtureRequest) -> str:
    """A channel name no other test uses, so tests can share one node."""
    return f"test:{re.sub(r'[^A-Za-z0-9_]+', '_', request.node.name)[:40]}.{next(_names)}"


@pytest.fixture(scope="session")
def memory_node() -> Iterator[NodeProcess]:
    """One node on the embedded broker, shared by the tests that only need a node."""
    with NodeProcess("memory://?history_size=200", "--client-publish", "--replay-limit", "100") as node:
        yield node
