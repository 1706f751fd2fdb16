"""Smoke test of the Locust load test: a few users for a few seconds against a real local node.

Asserts only correctness (events arrive; no gap, duplicate or reset), never
speed: timings on a shared CI machine mean nothing.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from loadtest import run_local

# Only look for Locust, never import it here: importing it monkey-patches
# threading and sockets (gevent) for the whole pytest process, which breaks
# every other test that runs an event loop in a thread.  The run itself is a
# subprocess.
pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("locust") is None or importlib.util.find_spec("websocket") is None,
    reason="needs the loadtest extra: pip install -e '.[loadtest]'",
)


def test_locust_smoke(tmp_path: Path) -> None:
    report = run_local.run(
        users=6,
        spawn_rate=6,
        run_time="5s",
        publish_rate=20,
        channels="smoke.0,smoke.1",
        results=tmp_path / "latency.json",
        deadline=60,
        quiet=True,
    )
    assert report["published"] > 0, report
    received = report["received"]
    # Five subscribers split between the transports; both must hear events.
    assert received.get("WS", 0) > 0 and received.get("SSE", 0) > 0, report
    assert run_local.problems(report) == [], report
    latency = report["latency"]
    assert latency["WS"]["summary"]["count"] == received["WS"]
    assert latency["SSE"]["buckets_ms"], "raw histograms are written"
