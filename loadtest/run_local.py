"""``make loadtest``: a local node on the memory broker and a short headless Locust run against it.

    python -m loadtest.run_local [--users 40] [--spawn-rate 20] [--run-time 25s] [--rate 20]
                                 [--processes N | --workers N] [--results FILE]

Starts ``fanline node --client-publish`` on free ports, runs
``locust -f loadtest/locustfile.py --headless`` with a time limit (and a hard
deadline on top), then prints the Locust summary and the raw latency
histograms' percentiles.  Exits non-zero if any event revealed a gap, a
duplicate or a reset, if nothing was received, or if a distributed run's
results are incomplete.

Locust can run as one process (the default), as a master that forks N
workers (``--processes N``), or as a master plus N separate worker processes
(``--workers N``), the way a run spread over machines is started.  Locust
runs in a temporary directory, so the locustfile is exercised from outside
the repository and nothing is written into it; the results go to the
temporary directory too unless ``--results`` names a file.
"""

from __future__ import annotations

import argparse
import enum
import json
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .local import ROOT, LocalNode, free_port, raise_open_files

LOCUSTFILE = ROOT / "loadtest" / "locustfile.py"
RESULTS = Path(tempfile.gettempdir()) / "fanline-loadtest"


class Mode(enum.Enum):
    LOCAL = "local"  # one Locust process
    PROCESSES = "processes"  # a master that forks its workers (--processes N)
    WORKERS = "workers"  # a master and separate worker processes (--master / --worker)


@dataclass(frozen=True)
class Plan:
    """The Locust commands of one run: the process that runs the test (and prints), and any separate workers."""

    main: list[str]
    workers: list[list[str]]


def locust_commands(
    mode: Mode,
    count: int,
    test_options: list[str],
    *,
    locustfile: Path = LOCUSTFILE,
    master_port: int = 0,
) -> Plan:
    """The command lines for ``mode``; ``count`` is the number of worker processes (ignored for LOCAL).

    The master listens on loopback only.  A worker needs ``--master-port`` as
    well as the master's ``--master-bind-port``: without it, workers wait on
    the default port 5557.
    """
    base = [sys.executable, "-m", "locust", "-f", str(locustfile)]
    if mode is Mode.LOCAL:
        return Plan([*base, *test_options], [])
    bind = ["--master-bind-host", "127.0.0.1", "--master-bind-port", str(master_port)]
    if mode is Mode.PROCESSES:
        # The forked workers inherit these options, --master-port included.
        return Plan([*base, *test_options, "--processes", str(count), *bind, "--master-port", str(master_port)], [])
    worker = [*base, "--worker", "--master-host", "127.0.0.1", "--master-port", str(master_port)]
    master = [*base, *test_options, "--master", *bind, "--expect-workers", str(count), "--expect-workers-max-wait", "60"]
    return Plan(master, [list(worker) for _ in range(count)])


def locust_counts(stats_json: Path) -> dict[str, dict[str, int]]:
    """Locust's own ``--json-file`` stats as {"METHOD name": {"requests": n, "failures": n}}."""
    rows = json.loads(stats_json.read_text())
    return {f"{r['method']} {r['name']}": {"requests": r["num_requests"], "failures": r["num_failures"]} for r in rows}


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
    mode: Mode = Mode.LOCAL,
    workers: int = 2,
    locust_stats: Path | None = None,
    locustfile: Path = LOCUSTFILE,
) -> dict[str, Any]:
    """Run one local node and one headless Locust; return the results file as a dict.

    With ``locust_stats``, Locust writes its own statistics there (``--json-file``;
    it then prints no table), and the returned dict carries them as ``locust_stats``.
    """
    raise_open_files(4096)
    options = [
        "--headless",
        "-u", str(users),
        "-r", str(spawn_rate),
        "-t", run_time,
        "--stop-timeout", "2",
        "--only-summary",
        "--fanline-channels", channels,
        "--fanline-publishers", str(publishers),
        "--fanline-publish-rate", str(publish_rate),
        "--fanline-results", str(results),
    ]
    if locust_stats is not None:
        options += ["--json-file", str(locust_stats.with_suffix(""))]  # Locust appends ".json"
    output = subprocess.DEVNULL if quiet else None
    with tempfile.TemporaryDirectory(prefix="fanline-locust-") as cwd, LocalNode(
        "memory://", ["--client-publish", "--no-demo"]
    ) as node:
        plan = locust_commands(
            mode, workers, [*options, "--host", node.url], locustfile=locustfile, master_port=free_port()
        )
        started = time.monotonic()
        worker_procs = [
            subprocess.Popen(cmd, cwd=cwd, stdout=output, stderr=output) for cmd in plan.workers
        ]
        try:
            completed = subprocess.run(
                plan.main, cwd=cwd, timeout=deadline, stdout=output, stderr=output, check=False
            )
        finally:
            # Workers quit when their master does; bounded in case one does not.
            for proc in worker_procs:
                try:
                    proc.wait(max(5.0, deadline - (time.monotonic() - started)))
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(5)
        elapsed = time.monotonic() - started
    if not results.exists():
        raise RuntimeError(f"locust wrote no results (exit {completed.returncode}) after {elapsed:.0f}s")
    report: dict[str, Any] = json.loads(results.read_text())
    report["locust_exit_code"] = completed.returncode
    report["worker_exit_codes"] = [proc.returncode for proc in worker_procs]
    if locust_stats is not None:
        report["locust_stats"] = locust_counts(locust_stats)
    return report


def problems(report: dict[str, Any]) -> list[str]:
    """The reasons this run is not clean: stream problems, nothing received, or results missing a worker."""
    found = [f"{key}: {count}" for key, count in report.get("problems", {}).items() if count]
    if not sum(report.get("received", {}).values()):
        found.append("no events received")
    if not report.get("complete", True):
        found.append(f"no final report from workers {report.get('workers', {}).get('missing')}")
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtest.run_local", description=__doc__.split("\n")[0])
    parser.add_argument("--users", type=int, default=40, help="Locust users, one of them the publisher")
    parser.add_argument("--spawn-rate", type=float, default=20)
    parser.add_argument("--run-time", default="25s")
    parser.add_argument("--rate", type=float, default=20.0, help="publications/s")
    distributed = parser.add_mutually_exclusive_group()
    distributed.add_argument("--processes", type=int, default=0, help="run a master that forks N workers")
    distributed.add_argument("--workers", type=int, default=0, help="run a master and N separate worker processes")
    parser.add_argument(
        "--results", type=Path, default=None,
        help=f"results file (default: {RESULTS}/latency-<timestamp>.json, outside the repository)",
    )
    args = parser.parse_args(argv)
    results = args.results or RESULTS / f"latency-{time.strftime('%Y%m%d-%H%M%S')}.json"
    mode, count = (
        (Mode.PROCESSES, args.processes) if args.processes
        else (Mode.WORKERS, args.workers) if args.workers
        else (Mode.LOCAL, 0)
    )
    report = run(
        users=args.users,
        spawn_rate=args.spawn_rate,
        run_time=args.run_time,
        publish_rate=args.rate,
        results=results,
        deadline=120,
        mode=mode,
        workers=count,
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
    print(f"raw histograms: {results}")
    return 1 if found or report["locust_exit_code"] != 0 else 0


if __name__ == "__main__":
    sys.exit(main())
