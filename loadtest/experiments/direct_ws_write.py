"""Experiment, not production code: how much of a WebSocket delivery is uvicorn's ASGI send path?

    python -m loadtest.experiments.direct_ws_write node [node flags...]

Runs a normal node, except that :meth:`WebSocketSession.write` frames the text
itself (server frames are unmasked: a 2-10 byte header and the UTF-8 payload)
and writes it straight to the socket transport, skipping uvicorn's
``send`` (its ``writable`` event, websockets' ``send_text`` and
``data_to_send``).  It falls back to the ASGI path whenever uvicorn is
paused for flow control or closing, so nothing is lost.  ``loadtest.bench
--node-module loadtest.experiments.direct_ws_write`` measures it.
"""

from __future__ import annotations

import sys
from typing import Any

from node.cli import main
from node.websocket import WebSocketSession

_asgi_write = WebSocketSession.write


def _header(size: int) -> bytes:
    if size < 126:
        return bytes((0x81, size))
    if size < 65536:
        return b"\x81\x7e" + size.to_bytes(2, "big")
    return b"\x81\x7f" + size.to_bytes(8, "big")


async def _direct_write(self: Any, batch: list[str]) -> None:
    protocol = getattr(self.send, "__self__", None)
    # Not self.socket: node.connection.transport_of() returns None under
    # uvloop, whose transports are not asyncio.BaseTransport subclasses.
    transport = getattr(protocol, "transport", None)
    if (
        transport is None
        or protocol is None
        or transport.is_closing()
        or getattr(protocol, "close_sent", True)
        or not protocol.writable.is_set()
    ):
        await _asgi_write(self, batch)
        return
    text = batch[0] if len(batch) == 1 else "\n".join(batch)
    payload = text.encode()
    transport.write(_header(len(payload)) + payload)
    self.count_written(len(batch), len(text))


WebSocketSession.write = _direct_write  # type: ignore[method-assign]

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
