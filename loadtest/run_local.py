"""``make loadtest``: a local node on the memory broker and a short headless Locust run against it.

    python -m loadtest.run_local [--users 40] [--spawn-rate 20] [--run-time 25s] [--rate 20]

Starts ``fanline node --client-publish`` on free ports, runs
``locust -f loadtest/locustfile.py --headless`` with a time limit (and a hard
deadline on top), then prints the Locust summary and the raw latency
histograms' percentiles.  Exits non-zero if any event revealed a gap, a
duplicate or a reset, or if nothing was received.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from .local import ROOT, LocalNode, raise_open_files

RESULTS = Path(__file__).resolve().parent / "results"


def run(
    *,
    users: int,
    spawn_rate: float,
    run_time: str,
    publish_rate: float,
    publishers: int = 1,
    channels: str = "loadtest.0,loadtest.1",
    results: Path,
    deadline: float,
    quiet: bool = False,
) -> dict[str, Any]:
    """Run one local node and one headless Locust; return the histogram report as a dict."""
    raise_open_files(4096)
    with LocalNode("memory://", ["--client-publish", "--no-demo"]) as node:
        cmd = [
            sys.executable, "-m", "locust",
            "-f", str(ROOT / "loadtest" / "locustfile.py"),
            "--headless",
            "-u", str(users),
            "-r", str(spawn_rate),
            "-t", run_time,
            "--stop-timeout", "2",
            "--host", node.url,
            "--only-summary",
            "--fanline-channels", channels,
            "--fanline-publishers", str(publishers),
            "--fanline-publish-rate", str(publish_rate),
            "--fanline-results", str(results),
        ]
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        started = time.monotonic()
        completed = subprocess.run(
            cmd, cwd=ROOT, env=env, timeout=deadline, capture_output=quiet, text=True, check=False
        )
        elapsed = time.monotonic() - started
    if not results.exists():
        output = (completed.stdout or "") + (completed.stderr or "") if quiet else ""
        raise RuntimeError(f"locust wrote no results (exit {completed.returncode}) after {elapsed:.0f}s\n{output}")
    report: dict[str, Any] = json.loads(results.read_text())
    report["locust_exit_code"] = completed.returncode
    return report


def problems(report: dict[str, Any]) -> list[str]:
    """The reasons this run is not clean: stream problems, or nothing received."""
    found = [f"{key}: {count}" for key, count in report.get("problems", {}).items() if count]
    if not sum(report.get("received", {}).values()):
        found.append("no events received")
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtest.run_local", description=__doc__.split("\n")[0])
    parser.add_argument("--users", type=int, default=40, help="Locust users, one of them the publisher")
    parser.add_argument("--spawn-rate", type=float, default=20)
    parser.add_argument("--run-time", default="25s")
    parser.add_argument("--rate", type=float, default=20.0, help="publications/s")
    args = parser.parse_args(argv)
    RESULTS.mkdir(exist_ok=True)
    results = RESULTS / f"latency-{time.strftime('%Y%m%d-%H%M%S')}.json"
    report = run(
        users=args.users,
        spawn_rate=args.spawn_rate,
        run_time=args.run_time,
        publish_rate=args.rate,
        results=results,
        deadline=120,
    )
    print()
    print(f"published {report['published']}, received {report['received']}")
    for transport, histogram in report.get("latency", {}).items():
        s = histogram["summary"]
        print(
            f"{transport}: {s['count']} events, latency p50 {s['p50_ms']:.1f} ms, p90 {s['p90_ms']:.1f} ms,"
            f" p99 {s['p99_ms']:.1f} ms, max {s['max_ms']:.1f} ms"
        )
    found = problems(report)
    print("stream problems: " + (", ".join(found) if found else "none (no gaps, duplicates or resets)"))
    print(f"raw histograms: {results.relative_to(ROOT)}")
    return 1 if found or report["locust_exit_code"] not in (0,) else 0


if __name__ == "__main__":
    sys.exit(main())
