"""Real processes for tests: Fanline nodes, started, killed and restarted.

Nothing here is mocked.  A :class:`NodeProcess` is ``python -m node node`` in
its own process on free loopback ports, so a test can SIGKILL it mid-stream.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(predicate: Callable[[], object], timeout: float = 15.0, interval: float = 0.05, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what}")


def http_status(url: str, timeout: float = 1.0) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code
    except (urllib.error.URLError, OSError):
        return None


class ChildProcess:
    """A process a test owns and may crash on purpose."""

    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> object:
        raise NotImplementedError

    def restart(self) -> None:
        """SIGKILL, then start again on the same port, retrying while the kernel still holds it."""
        self.kill()
        for attempt in range(5):
            try:
                self.start()
                return
            except (RuntimeError, TimeoutError):
                self.kill()
                if attempt == 4:
                    raise
                time.sleep(0.5)

    def kill(self) -> None:
        """SIGKILL: no chance to say goodbye, as in a crash."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def stop_process(self) -> None:
        """SIGTERM, and SIGKILL if it does not exit within 10 s."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


class NodeProcess(ChildProcess):
    """One Fanline node in a child process."""

    def __init__(
        self, broker: str = "memory://", *flags: str, env: dict[str, str] | None = None, prelude: str = ""
    ) -> None:
        self.broker = broker
        self.flags = list(flags)
        self.env = env or {}
        # Python run before the CLI, e.g. to make an optional module unimportable.
        self.prelude = prelude
        self.port = free_port()
        self.internal_port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = Path(os.environ.get("TMPDIR", "/tmp")) / f"fanline-node-{self.port}.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    @property
    def internal_url(self) -> str:
        return f"http://127.0.0.1:{self.internal_port}"

    def start(self, wait_ready: bool = True) -> NodeProcess:
        entry = ["-m", "node"]
        if self.prelude:
            entry = ["-c", f"import sys; {self.prelude}; from node.cli import main; sys.exit(main())"]
        cmd = [
            sys.executable, *entry, "node",
            "--port", str(self.port),
            "--internal-port", str(self.internal_port),
            "--broker", self.broker,
            "--node-id", f"node-{self.port}",
            *self.flags,
        ]
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **self.env}
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=self._log, stderr=subprocess.STDOUT)
        probe = "/readyz" if wait_ready else "/healthz"
        try:
            wait_for(lambda: self._alive_or_raise() and http_status(self.url + probe) == 200, what=f"node {probe}")
        except TimeoutError:
            self.kill()
            raise RuntimeError(f"node did not start; log:\n{self.log()}") from None
        return self

    def _alive_or_raise(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise RuntimeError(f"node exited with {self.proc.returncode}; log:\n{self.log()}")
        return True

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-6000:]
        except OSError:
            return ""

    def metrics(self) -> dict[str, float]:
        """The node's /metrics as {'name{labels}': value}."""
        with urllib.request.urlopen(self.internal_url + "/metrics", timeout=5) as response:
            text = response.read().decode()
        out: dict[str, float] = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                out[name] = float(value)
        return out

    def rss_kib(self) -> int:
        """Resident memory of the node process, from /proc."""
        assert self.proc is not None
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise RuntimeError("no VmRSS")

    def terminate(self, timeout: float = 30.0) -> int:
        """SIGTERM and wait for exit; return the exit code."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def stop(self) -> None:
        self.stop_process()
        if getattr(self, "_log", None):
            self._log.close()

    def __enter__(self) -> NodeProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
