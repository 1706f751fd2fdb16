"""A deliberately bad WebSocket client on a raw socket.

Well-behaved client libraries read eagerly and answer pings; this one does
exactly what it is told, so tests can play a client that never reads, or a
peer that vanished without closing.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import struct
from typing import Any


class RawWebSocket:
    def __init__(self, host: str, port: int, path: str = "/ws", recv_buffer: int | None = 4096) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if recv_buffer:
            # A small receive window makes "not reading" bite quickly.
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, recv_buffer)
        self.sock.settimeout(10)
        self.sock.connect((host, port))
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall(
            (
                f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )
        self.buffer = b""
        while b"\r\n\r\n" not in self.buffer:
            chunk = self.sock.recv(4096)
            if not chunk:
                raise ConnectionError("closed during handshake")
            self.buffer += chunk
        head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
        self.status = int(head.split(b" ", 2)[1])

    def send_json(self, message: dict[str, Any]) -> None:
        self.sock.sendall(frame_bytes(0x1, json.dumps(message).encode()))

    def send_frame(self, opcode: int, payload: bytes) -> None:
        """One masked, final frame: lets a test send what a library would refuse (bad UTF-8 text)."""
        self.sock.sendall(frame_bytes(opcode, payload))

    def recv_close(self) -> tuple[int, str, list[dict[str, Any]]]:
        """Read until the server's close frame: (code, reason, the messages before it)."""
        messages: list[dict[str, Any]] = []
        while True:
            try:
                messages.extend(self.recv_messages())
            except ClosedByServer as closed:
                return closed.code, closed.reason, messages

    def _read_exact(self, count: int) -> bytes:
        while len(self.buffer) < count:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("connection closed")
            self.buffer += chunk
        data, self.buffer = self.buffer[:count], self.buffer[count:]
        return data

    def recv_frame(self) -> tuple[int, bytes]:
        """(opcode, payload) of the next frame; pings are NOT answered."""
        first, second = self._read_exact(2)
        length = second & 0x7F
        if length == 126:
            (length,) = struct.unpack("!H", self._read_exact(2))
        elif length == 127:
            (length,) = struct.unpack("!Q", self._read_exact(8))
        return first & 0x0F, self._read_exact(length)

    def recv_messages(self) -> list[dict[str, Any]]:
        """The messages of the next text frame (skipping pings); raises on close."""
        while True:
            opcode, payload = self.recv_frame()
            if opcode == 0x1:
                return [json.loads(line) for line in payload.decode().split("\n")]
            if opcode == 0x8:
                code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005
                raise ClosedByServer(code, payload[2:].decode(errors="replace"))

    def close(self) -> None:
        self.sock.close()


class ClosedByServer(Exception):
    def __init__(self, code: int, reason: str) -> None:
        super().__init__(f"closed by server: {code} {reason}")
        self.code = code
        self.reason = reason


def frame_bytes(opcode: int, payload: bytes, *, fin: bool = True, rsv: int = 0, masked: bool = True) -> bytes:
    """A client frame, as RFC 6455 lays it out (masked unless told otherwise)."""
    header = bytes([(0x80 if fin else 0) | (rsv & 0x70) | (opcode & 0x0F)])
    length = len(payload)
    flag = 0x80 if masked else 0
    if length < 126:
        header += bytes([flag | length])
    elif length < 65536:
        header += bytes([flag | 126]) + struct.pack("!H", length)
    else:
        header += bytes([flag | 127]) + struct.pack("!Q", length)
    if not masked:
        return header + payload
    mask = os.urandom(4)
    return header + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
