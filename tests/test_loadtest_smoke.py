"""The Locust load test against a real local node: one process, and distributed (``--processes``, master plus workers).

Asserts only correctness (events arrive; no gap, duplicate or reset; the
results file is complete and counts what Locust's own statistics counted),
never speed: timings on a shared CI machine mean nothing.
"""

from __future__ import annotations

import contextlib
import importlib.util
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from loadtest import run_local
from loadtest.merge import Merge, worker_part
from loadtest.stream_checks import Report

from .processes import ROOT

# Only look for Locust, never import it here: importing it monkey-patches
# threading and sockets (gevent) for the whole pytest process, which breaks
# every other test that runs an event loop in a thread.  The runs are
# subprocesses.
needs_locust = pytest.mark.skipif(
    importlib.util.find_spec("locust") is None,
    reason="needs the loadtest extra: pip install -e '.[loadtest]'",
)


def _untracked() -> set[str] | None:
    """Untracked files in the repository (ignored ones excluded), or None outside a git checkout."""
    done = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=all"], cwd=ROOT, capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        return None
    return {line[3:] for line in done.stdout.splitlines() if line.startswith("??")}


@contextlib.contextmanager
def cpu_load(processes: int, seconds: float) -> Iterator[None]:
    """Busy processes competing with Locust for the CPU, as on a shared machine; each stops by itself."""
    code = f"import time\nend = time.monotonic() + {seconds}\nwhile time.monotonic() < end: pass\n"
    burners = [subprocess.Popen([sys.executable, "-c", code]) for _ in range(processes)]
    try:
        yield
    finally:
        for burner in burners:
            burner.kill()
            burner.wait(5)


def _assert_complete_and_counted(report: dict[str, Any]) -> None:
    """The results file holds every event Locust's own statistics counted, from every process."""
    assert report["complete"] is True, report.get("workers")
    assert report["published"] > 0, report
    received = report["received"]
    assert received.get("WS", 0) > 0 and received.get("SSE", 0) > 0, report
    assert run_local.problems(report) == [], report
    # Locust's statistics as it wrote them when it exited (--json-file), and
    # as the results file recorded them: both agree with our counts.
    for locust in (report["locust_stats"], report["locust"]):
        assert locust["POST publish"] == {"requests": report["published"], "failures": 0}, (locust, report)
        for transport in ("WS", "SSE"):
            assert locust[f"{transport} receive"] == {"requests": received[transport], "failures": 0}, locust
    assert report["latency"]["WS"]["summary"]["count"] == received["WS"]
    assert report["latency"]["SSE"]["buckets_ms"], "raw histograms are written"


@needs_locust
def test_locust_smoke(tmp_path: Path) -> None:
    before = _untracked()
    report = run_local.run(
        users=6,
        spawn_rate=6,
        run_time="5s",
        publish_rate=20,
        channels="smoke.0,smoke.1",
        results=tmp_path / "latency.json",
        deadline=60,
        quiet=True,
        locust_stats=tmp_path / "locust.json",
    )
    _assert_complete_and_counted(report)
    assert report["workers"] is None
    # Locust ran from a temporary directory (the locustfile by absolute path)
    # and left nothing in the repository.
    assert _untracked() == before


@needs_locust
@pytest.mark.parametrize("mode", [run_local.Mode.PROCESSES, run_local.Mode.WORKERS])
def test_distributed_locust_results_are_complete_under_load(tmp_path: Path, mode: run_local.Mode) -> None:
    # Three busy processes on top of the node, the master and two workers: the
    # merge must not depend on how fast the workers' last messages travel.
    with cpu_load(3, seconds=60):
        report = run_local.run(
            users=12,
            spawn_rate=12,
            run_time="6s",
            publish_rate=50,
            channels="dist.0,dist.1",
            results=tmp_path / "latency.json",
            deadline=90,
            quiet=True,
            mode=mode,
            workers=2,
            locust_stats=tmp_path / "locust.json",
        )
    _assert_complete_and_counted(report)
    assert report["workers"] == {"reported": 2, "final": 2, "missing": []}
    assert report["locust_exit_code"] == 0 and all(code == 0 for code in report["worker_exit_codes"])


def test_master_flags_name_the_port_for_the_workers() -> None:
    plan = run_local.locust_commands(run_local.Mode.WORKERS, 2, ["--headless"], master_port=6001)
    assert "--master-bind-port" in plan.main and "6001" in plan.main
    for worker in plan.workers:
        assert worker[worker.index("--master-port") + 1] == "6001"
    forked = run_local.locust_commands(run_local.Mode.PROCESSES, 2, ["--headless"], master_port=6002).main
    assert forked[forked.index("--master-port") + 1] == "6002" and "--processes" in forked


def _delta(published: int, ws_latencies: list[float]) -> Report:
    report = Report(published=published)
    for ms in ws_latencies:
        report.latency("WS", ms)
    return report


def test_merge_counts_every_delta_and_only_answers_to_the_current_stop() -> None:
    merge = Merge()
    merge.add("w1", worker_part(_delta(3, [1.0, 2.0]), None))
    merge.add("w2", worker_part(_delta(2, [4.0]), "an-earlier-stop"))  # stale: not final for this stop
    merge.expect_final("stop-1")
    assert merge.pending(["w1", "w2"]) == {"w1", "w2"}
    merge.add("w1", worker_part(_delta(0, []), "an-earlier-stop"))
    merge.add("w2", worker_part(_delta(1, [5.0]), "stop-1"))
    assert merge.pending(["w1", "w2"]) == {"w1"}
    # A worker that left (quit, or missed its heartbeats) is not waited for.
    assert merge.pending(["w2"]) == set()
    merge.add("w1", worker_part(_delta(0, []), "stop-1"))
    assert merge.pending(["w1", "w2"]) == set()
    assert merge.report.published == 6 and merge.report.received == {"WS": 4}
    assert merge.report.histograms["WS"].max_ms == 5.0
