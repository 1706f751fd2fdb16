"""Structured logs: one JSON object per line on stderr.

Every value of every line passes through node.redaction, so a secret is
masked whichever library wrote it (docs/security.md, "Secrets and logs").
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable

from . import redaction

# Attributes every LogRecord has; anything else was passed through ``extra``.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime", "taskName"}


class JSONFormatter(logging.Formatter):
    def __init__(self, node: str) -> None:
        super().__init__()
        self.node = node

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": redaction.redact(record.getMessage()),
            "node": self.node,
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = redaction.scrub(value)
        if record.exc_info:
            entry["exc"] = redaction.redact(self.formatException(record.exc_info))
        return json.dumps(entry, default=str, separators=(",", ":"))


def configure(level: str, node: str, secrets: Iterable[str] = ()) -> None:
    redaction.register(secrets)
    handler = logging.StreamHandler()
    handler.setFormatter(JSONFormatter(node))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # uvicorn's own loggers go through the same handler and format.
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        logger.handlers[:] = []
        logger.propagate = True
    # One line per WebSocket handshake is noise at 100k connections.
    logging.getLogger("uvicorn.error").setLevel(max(logging.WARNING, root.level))


class LogThrottle:
    """At most one log line per key per interval; counts what it held back.

    A client flooding a limit must not be able to flood the log as well.
    """

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def allow(self, key: str) -> int | None:
        """None to stay quiet; otherwise log, with the count suppressed since the last line."""
        now = time.monotonic()
        if now - self._last.get(key, -self.interval) < self.interval:
            self._suppressed[key] = self._suppressed.get(key, 0) + 1
            return None
        self._last[key] = now
        return self._suppressed.pop(key, 0)
