"""RFC 6455 framing (node/websocket_frames.py): bytes in, events out."""

from __future__ import annotations

import os
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from node.errors import CloseCode
from node.websocket_frames import (
    Close,
    FrameError,
    FrameReader,
    Message,
    Opcode,
    Ping,
    Pong,
    accept_key,
    close_frame,
    text_frame,
    valid_key,
)


def client_frame(opcode: int, payload: bytes, *, fin: bool = True, mask: bytes | None = None, rsv: int = 0) -> bytes:
    """A frame as a client sends it: masked."""
    mask = os.urandom(4) if mask is None else mask
    first = (0x80 if fin else 0) | rsv | opcode
    length = len(payload)
    if length < 126:
        head = struct.pack("!BB", first, 0x80 | length)
    elif length < 65536:
        head = struct.pack("!BBH", first, 0x80 | 126, length)
    else:
        head = struct.pack("!BBQ", first, 0x80 | 127, length)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return head + mask + masked


def test_the_rfc_example_handshake_key() -> None:
    # RFC 6455 §1.3.
    assert accept_key("dGhlIHNhbXBsZSBub25jZQ==") == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
    assert valid_key("dGhlIHNhbXBsZSBub25jZQ==")
    assert not valid_key("short") and not valid_key("not base64!!!!!!!!!!!!==")


def test_server_frames_are_unmasked_and_sized() -> None:
    assert text_frame(b"hi") == b"\x81\x02hi"
    assert text_frame(b"x" * 200)[:4] == b"\x81\x7e\x00\xc8"
    assert text_frame(b"x" * 70000)[:2] == b"\x81\x7f"
    assert close_frame(4008, "slow consumer") == b"\x88\x0f\x0f\xa8slow consumer"


def test_a_close_reason_is_cut_on_a_character_boundary() -> None:
    frame = close_frame(1000, "é" * 100)
    assert len(frame) <= 127
    frame[4:].decode("utf-8")


@given(st.binary(max_size=300), st.integers(1, 50))
def test_messages_arrive_whole_however_the_bytes_are_cut(payload: bytes, cut: int) -> None:
    data = client_frame(Opcode.BINARY, payload) + client_frame(Opcode.PING, b"p")
    reader = FrameReader(max_message=1024)
    events = []
    for start in range(0, len(data), cut):
        events.extend(reader.feed(data[start : start + cut]))
    assert events == [Message(payload, False), Ping(b"p")]


def test_fragments_are_reassembled_with_control_frames_in_between() -> None:
    reader = FrameReader(max_message=100)
    data = (
        client_frame(Opcode.TEXT, b"hel", fin=False)
        + client_frame(Opcode.PONG, b"")
        + client_frame(Opcode.CONTINUATION, b"lo")
    )
    assert reader.feed(data) == [Pong(b""), Message(b"hello", True)]


def test_close_frames_carry_their_code_and_reason() -> None:
    reader = FrameReader(max_message=100)
    assert reader.feed(client_frame(Opcode.CLOSE, struct.pack("!H", 1000) + b"bye")) == [Close(1000, "bye")]
    assert reader.feed(client_frame(Opcode.CLOSE, b"")) == [Close(None, "")]


@pytest.mark.parametrize(
    "data,code",
    [
        (client_frame(Opcode.TEXT, b"x")[:1] + bytes([0x01]) + b"x", CloseCode.PROTOCOL_ERROR),  # unmasked
        (client_frame(Opcode.TEXT, b"x", rsv=0x40), CloseCode.PROTOCOL_ERROR),  # compression bit
        (client_frame(0x3, b"x"), CloseCode.PROTOCOL_ERROR),  # reserved opcode
        (client_frame(Opcode.PING, b"x" * 126), CloseCode.PROTOCOL_ERROR),  # control frame too long
        (client_frame(Opcode.PING, b"", fin=False), CloseCode.PROTOCOL_ERROR),  # fragmented control
        (client_frame(Opcode.CONTINUATION, b"x"), CloseCode.PROTOCOL_ERROR),  # nothing to continue
        (client_frame(Opcode.TEXT, b"\xff\xfe"), CloseCode.INVALID_DATA),  # text not UTF-8
        (client_frame(Opcode.CLOSE, b"\x03"), CloseCode.PROTOCOL_ERROR),  # one-byte close payload
        (client_frame(Opcode.CLOSE, struct.pack("!H", 1005)), CloseCode.PROTOCOL_ERROR),  # reserved code
        (client_frame(Opcode.CLOSE, struct.pack("!H", 1000) + b"\xff"), CloseCode.INVALID_DATA),
        (client_frame(Opcode.TEXT, b"a", fin=False) + client_frame(Opcode.TEXT, b"b"), CloseCode.PROTOCOL_ERROR),
    ],
)
def test_protocol_violations_close_with_the_rfc_code(data: bytes, code: CloseCode) -> None:
    with pytest.raises(FrameError) as raised:
        FrameReader(max_message=100).feed(data)
    assert raised.value.code == code


def test_an_oversized_message_is_refused_from_its_header_alone() -> None:
    reader = FrameReader(max_message=1000)
    header = client_frame(Opcode.TEXT, b"x" * 5000)[:8]  # the payload never arrives
    with pytest.raises(FrameError) as raised:
        reader.feed(header)
    assert raised.value.code == CloseCode.MESSAGE_TOO_BIG


def test_fragments_count_toward_the_message_limit() -> None:
    reader = FrameReader(max_message=10)
    reader.feed(client_frame(Opcode.TEXT, b"x" * 8, fin=False))
    with pytest.raises(FrameError):
        reader.feed(client_frame(Opcode.CONTINUATION, b"x" * 8))


def test_an_idle_reader_keeps_no_buffer() -> None:
    reader = FrameReader(max_message=100)
    reader.feed(client_frame(Opcode.TEXT, b"done"))
    assert reader._pending is None and reader._parts is None
