"""WebSocket framing (RFC 6455), server side, without I/O.

Bytes go in, events come out: :class:`FrameReader` turns what a client sent
into whole :class:`Message`, :class:`Ping`, :class:`Pong` and :class:`Close`
events, and raises :class:`FrameError` with the close code the RFC asks for
when the client breaks the protocol.  The ``*_frame`` functions build what
the server sends.  Nothing here touches a socket or a clock, so it is tested
with bytes alone.

Only what Fanline needs is implemented: no extensions (the node never
negotiates compression, so the RSV bits must be 0), masked client frames,
unmasked server frames, fragmented client messages reassembled up to
``max_message`` bytes.
"""

from __future__ import annotations

import base64
import enum
import hashlib
import struct
from dataclasses import dataclass

from .errors import CloseCode

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


class Opcode(enum.IntEnum):
    CONTINUATION = 0x0
    TEXT = 0x1
    BINARY = 0x2
    CLOSE = 0x8
    PING = 0x9
    PONG = 0xA


_DATA = frozenset((Opcode.TEXT, Opcode.BINARY))
_CONTROL = frozenset((Opcode.CLOSE, Opcode.PING, Opcode.PONG))
_KNOWN = frozenset(int(op) for op in Opcode)


class FrameError(Exception):
    """The client broke the protocol; close the connection with ``code``."""

    def __init__(self, code: CloseCode, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Message:
    """A whole data message: ``text`` is True for a text message (valid UTF-8)."""

    payload: bytes
    text: bool


@dataclass(frozen=True, slots=True)
class Ping:
    payload: bytes


@dataclass(frozen=True, slots=True)
class Pong:
    payload: bytes


@dataclass(frozen=True, slots=True)
class Close:
    code: int | None
    reason: str


Event = Message | Ping | Pong | Close


def accept_key(key: str) -> str:
    """The ``Sec-WebSocket-Accept`` answer to a ``Sec-WebSocket-Key``."""
    return base64.b64encode(hashlib.sha1(key.encode("ascii") + _GUID).digest()).decode("ascii")


def valid_key(key: str) -> bool:
    """A client key must be 16 bytes, base64-encoded (RFC 6455 §4.1)."""
    try:
        return len(base64.b64decode(key.encode("ascii"), validate=True)) == 16
    except (ValueError, UnicodeEncodeError):
        return False


def frame(opcode: Opcode, payload: bytes) -> bytes:
    """A final, unmasked frame, as a server sends it."""
    length = len(payload)
    first = 0x80 | opcode
    if length < 126:
        return struct.pack("!BB", first, length) + payload
    if length < 65536:
        return struct.pack("!BBH", first, 126, length) + payload
    return struct.pack("!BBQ", first, 127, length) + payload


def text_frame(payload: bytes) -> bytes:
    return frame(Opcode.TEXT, payload)


def close_frame(code: int, reason: str = "") -> bytes:
    # The reason is cut to what a control frame can carry (125 bytes in all).
    encoded = reason.encode("utf-8")[:123]
    while True:
        try:
            encoded.decode("utf-8")
            break
        except UnicodeDecodeError:
            encoded = encoded[:-1]
    return frame(Opcode.CLOSE, struct.pack("!H", code) + encoded)


PING_FRAME = frame(Opcode.PING, b"")


def _unmask(payload: bytes, mask: bytes) -> bytes:
    length = len(payload)
    if not length:
        return b""
    # One big-integer XOR is much faster in CPython than a loop over bytes.
    key = (mask * (length // 4 + 1))[:length]
    return (int.from_bytes(payload, "big") ^ int.from_bytes(key, "big")).to_bytes(length, "big")


def _valid_close_code(code: int) -> bool:
    return code in (1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014) or 3000 <= code <= 4999


class FrameReader:
    """An incremental reader of client frames, bounded by ``max_message`` bytes per message.

    Keeps nothing between calls unless a frame or a fragmented message is
    incomplete, so an idle connection costs no buffer.
    """

    __slots__ = ("max_message", "_pending", "_parts", "_parts_opcode", "_parts_size")

    def __init__(self, max_message: int) -> None:
        self.max_message = max_message
        self._pending: bytes | None = None
        self._parts: list[bytes] | None = None
        self._parts_opcode = Opcode.TEXT
        self._parts_size = 0

    def feed(self, data: bytes) -> list[Event]:
        """Events completed by ``data``, in order.  Raises :class:`FrameError`."""
        if self._pending:
            data = self._pending + data
            self._pending = None
        events: list[Event] = []
        position = 0
        end = len(data)
        while position < end:
            parsed = self._frame_at(data, position, end)
            if parsed is None:
                self._pending = data[position:]
                break
            position, event = parsed
            if event is not None:
                events.append(event)
        return events

    def _frame_at(self, data: bytes, start: int, end: int) -> tuple[int, Event | None] | None:
        if end - start < 2:
            return None
        first, second = data[start], data[start + 1]
        fin, opcode = first & 0x80, first & 0x0F
        if first & 0x70:
            raise FrameError(CloseCode.PROTOCOL_ERROR, "reserved bits set without an extension")
        if opcode not in _KNOWN:
            raise FrameError(CloseCode.PROTOCOL_ERROR, f"unknown opcode {opcode}")
        if not second & 0x80:
            raise FrameError(CloseCode.PROTOCOL_ERROR, "client frames must be masked")
        length = second & 0x7F
        head = 2
        if length == 126:
            if end - start < 4:
                return None
            (length,) = struct.unpack_from("!H", data, start + 2)
            head = 4
        elif length == 127:
            if end - start < 10:
                return None
            (length,) = struct.unpack_from("!Q", data, start + 2)
            head = 10
        if opcode in _CONTROL:
            if not fin or length > 125:
                raise FrameError(CloseCode.PROTOCOL_ERROR, "control frames must be final and at most 125 bytes")
        elif length + self._parts_size > self.max_message:
            # Refused from the header alone: the payload is never buffered.
            raise FrameError(CloseCode.MESSAGE_TOO_BIG, f"messages are limited to {self.max_message} bytes")
        frame_end = start + head + 4 + length
        if frame_end > end:
            return None
        mask = data[start + head : start + head + 4]
        payload = _unmask(data[start + head + 4 : frame_end], mask)
        return frame_end, self._event(Opcode(opcode), bool(fin), payload)

    def _event(self, opcode: Opcode, fin: bool, payload: bytes) -> Event | None:
        if opcode is Opcode.PING:
            return Ping(payload)
        if opcode is Opcode.PONG:
            return Pong(payload)
        if opcode is Opcode.CLOSE:
            return _close_event(payload)
        if opcode is Opcode.CONTINUATION:
            if self._parts is None:
                raise FrameError(CloseCode.PROTOCOL_ERROR, "continuation frame without a message to continue")
            self._parts.append(payload)
            self._parts_size += len(payload)
            if not fin:
                return None
            whole = b"".join(self._parts)
            opcode = self._parts_opcode
            self._parts, self._parts_size = None, 0
            return _message(opcode, whole)
        if self._parts is not None:
            raise FrameError(CloseCode.PROTOCOL_ERROR, "a new message started inside a fragmented one")
        if not fin:
            self._parts, self._parts_opcode, self._parts_size = [payload], opcode, len(payload)
            return None
        return _message(opcode, payload)


def _message(opcode: Opcode, payload: bytes) -> Message:
    if opcode is Opcode.TEXT:
        try:
            payload.decode("utf-8")
        except UnicodeDecodeError:
            raise FrameError(CloseCode.INVALID_DATA, "text message is not valid UTF-8") from None
        return Message(payload, True)
    return Message(payload, False)


def _close_event(payload: bytes) -> Close:
    if not payload:
        return Close(None, "")
    if len(payload) == 1:
        raise FrameError(CloseCode.PROTOCOL_ERROR, "close frame with a one-byte payload")
    (code,) = struct.unpack_from("!H", payload)
    if not _valid_close_code(code):
        raise FrameError(CloseCode.PROTOCOL_ERROR, f"invalid close code {code}")
    try:
        reason = payload[2:].decode("utf-8")
    except UnicodeDecodeError:
        raise FrameError(CloseCode.INVALID_DATA, "close reason is not valid UTF-8") from None
    return Close(code, reason)
