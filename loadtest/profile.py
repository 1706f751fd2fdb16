"""Profile a node under fan-out load with py-spy, and say where the time goes per delivery.

    python -m loadtest.profile [--transport ws] [--subscribers 1000] [--publish-batch 1] [--seconds 8]

py-spy (``pip install py-spy``; not a project dependency) samples the node
process from outside while this process drives it exactly as the benchmark
does.  The collapsed stacks are written to loadtest/results/ and summarised
two ways: self time per function, and inclusive time of the frames that
matter for a delivery (our writer loop, the ASGI send path, uvicorn and
websockets framing, the hub, JSON).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from .bench import CHANNEL, CLIENT_CPU, NODE_CPU, fanout, node_flags
from .fastclient import Totals, open_clients
from .local import LocalNode, raise_open_files

RESULTS = Path(__file__).resolve().parent / "results"

# Inclusive buckets: a sample counts towards every bucket whose marker is on its stack.
BUCKETS = {
    "hub fan-out (Hub._fan_out)": "_fan_out (node/hub.py",
    "outbox put (Connection.push)": "push (node/connection.py",
    "writer loop (write_forever)": "write_forever (node/connection.py",
    "outbox take": "take (node/outbox.py",
    "transport write (our write())": "write (node/",
    "uvicorn websockets-sansio asgi_send": "asgi_send (uvicorn/protocols/websockets/websockets_sansio_impl.py",
    "uvicorn httptools send (SSE)": "send (uvicorn/protocols/http/httptools_impl.py",
    "websockets frame serialisation": "serialize (websockets/frames.py",
    "websockets send_text": "send_text (websockets/protocol.py",
    "HTTP publish request": "publish_batch (node/api.py",
    "HTTP single publish": "publish (node/api.py",
    "JSON encode/decode": "json/",
    "event loop (uvloop run_forever, idle)": "run_forever",
}


def summarise(stacks: Path, deliveries: int) -> str:
    self_time: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in stacks.read_text().splitlines():
        frames, _, count_text = line.rpartition(" ")
        if not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        parts = frames.split(";")
        self_time[parts[-1]] += count
        for name, marker in BUCKETS.items():
            if marker in frames:
                inclusive[name] += count
    lines = [f"{total} samples; {deliveries:,} deliveries while sampling", "", "Inclusive (share of samples):"]
    for name, _marker in BUCKETS.items():
        lines.append(f"  {100.0 * inclusive[name] / max(total, 1):5.1f}%  {name}")
    lines += ["", "Self time, top 30:"]
    for frame, count in self_time.most_common(30):
        lines.append(f"  {100.0 * count / max(total, 1):5.1f}%  {frame[:150]}")
    return "\n".join(lines) + "\n"


def start_py_spy(py_spy: str, pid: int, seconds: float, output: Path) -> subprocess.Popen[bytes]:
    # --nonblocking: sample without pausing the node, so the load is not distorted.
    return subprocess.Popen(
        [py_spy, "record", "--pid", str(pid), "--duration", str(int(seconds)), "--rate", "250",
         "--format", "raw", "--output", str(output), "--nonblocking"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )


async def drive(args: argparse.Namespace, py_spy: str) -> int:
    flags = node_flags(args.subscribers, args.write_batch)
    with LocalNode("memory://", flags, cpu=NODE_CPU, module=args.node_module) as node:
        totals = Totals()
        clients = await open_clients(args.transport, "127.0.0.1", node.port, args.subscribers, [CHANNEL], totals)
        variant = "" if args.node_module == "node" else "-" + args.node_module.rsplit(".", 1)[-1]
        stem = f"profile-{args.transport}-n{args.subscribers}-pb{args.publish_batch}-wb{args.write_batch}{variant}"
        raw = RESULTS / f"{stem}.collapsed.txt"
        spy = start_py_spy(py_spy, node.pid, args.seconds, raw)
        await asyncio.sleep(0.5)
        window = 20 if args.publish_batch == 1 else 400
        result = await fanout(
            node, totals, args.subscribers, duration=args.seconds - 1.5, batch=args.publish_batch, window=window
        )
        try:
            spy.wait(timeout=args.seconds + 30)
        except subprocess.TimeoutExpired:
            spy.kill()
        for client in clients:
            client.close()
    if not raw.exists():
        print(f"py-spy wrote nothing: {spy.stderr.read().decode() if spy.stderr else ''}", file=sys.stderr)
        return 1
    header = (
        f"{args.transport} fan-out, N={args.subscribers}, publish batch {args.publish_batch},"
        f" --write-batch {args.write_batch}: {result['deliveries_per_s']:,.0f} deliveries/s,"
        f" node CPU {result['node_cpu_pct']:.0f}% = {result['node_us_per_delivery']:.2f} µs/delivery,"
        f" {result['events_per_frame']:.1f} events/frame, client CPU {result['client_cpu_pct']:.0f}%\n\n"
    )
    text = header + summarise(raw, result["delivered"])
    (RESULTS / f"{stem}.txt").write_text(text)
    print(text)
    print(f"wrote loadtest/results/{stem}.txt and {raw.name}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtest.profile", description=__doc__.split("\n")[0])
    parser.add_argument("--transport", default="ws", choices=["ws", "sse"])
    parser.add_argument("--subscribers", type=int, default=1000)
    parser.add_argument("--publish-batch", type=int, default=1)
    parser.add_argument("--write-batch", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--node-module", default="node", help="module run as the node (an experiment may wrap it)")
    args = parser.parse_args(argv)
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not os.path.exists(py_spy):
        print("py-spy is not installed: pip install py-spy", file=sys.stderr)
        return 2
    raise_open_files(args.subscribers + 2000)
    RESULTS.mkdir(exist_ok=True)
    os.sched_setaffinity(0, {CLIENT_CPU})
    import uvloop

    started = time.monotonic()
    code = uvloop.run(drive(args, py_spy))
    print(f"({time.monotonic() - started:.0f} s)")
    return code


if __name__ == "__main__":
    sys.exit(main())
