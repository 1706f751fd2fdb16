"""Smoke test of the Locust load test: a few users for a few seconds against a real local node.

Asserts only correctness (events arrive; no gap, duplicate or reset), never
speed: timings on a shared CI machine mean nothing.
"""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("locust")
pytest.importorskip("websocket")

from loadtest import run_local  # noqa: E402


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
