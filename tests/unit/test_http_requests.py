"""Reading requests within limits (node/http_requests.py)."""

from __future__ import annotations

import pytest

from node.errors import ClientError, ErrorCode
from node.http_requests import Limits, RequestReader

LIMITS = Limits(max_head=2048, max_line=512, max_headers=10, max_body=100)


def read(data: bytes, limits: Limits = LIMITS, cut: int = 0) -> RequestReader:
    reader = RequestReader(limits)
    if cut:
        for start in range(0, len(data), cut):
            reader.feed(data[start : start + cut])
    else:
        reader.feed(data)
    return reader


def test_a_request_with_a_body_in_pieces() -> None:
    reader = read(b"POST /api/publish?x=1 HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello", cut=7)
    (request,) = reader.requests
    assert (request.method, request.path, request.query) == ("POST", "/api/publish", b"x=1")
    assert request.header(b"host") == b"a" and request.body == b"hello" and request.complete
    assert request.keep_alive and not request.upgrade


def test_an_upgrade_keeps_the_bytes_after_the_head() -> None:
    reader = read(b"GET /ws HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n\x81\x80abcd")
    assert reader.requests[0].upgrade
    assert reader.upgrade_data == b"\x81\x80abcd"


def test_percent_encoded_paths_are_decoded() -> None:
    assert read(b"GET /s%73e?channel=a HTTP/1.1\r\n\r\n").requests[0].path == "/sse"


def refused(data: bytes, cut: int = 0) -> ErrorCode:
    with pytest.raises(ClientError) as raised:
        read(data, cut=cut)
    return raised.value.code


def test_too_many_headers() -> None:
    head = b"GET / HTTP/1.1\r\n" + b"".join(b"X-%d: 1\r\n" % i for i in range(11)) + b"\r\n"
    assert refused(head) == ErrorCode.HEADERS_TOO_LARGE


def test_a_header_line_too_long() -> None:
    assert refused(b"GET / HTTP/1.1\r\nX: " + b"a" * 600 + b"\r\n\r\n") == ErrorCode.HEADERS_TOO_LARGE


def test_a_request_line_too_long() -> None:
    assert refused(b"GET /" + b"a" * 600 + b" HTTP/1.1\r\n\r\n") == ErrorCode.BAD_REQUEST


def test_a_head_too_large_in_total() -> None:
    head = b"GET / HTTP/1.1\r\n" + b"".join(b"X-%d: %s\r\n" % (i, b"a" * 300) for i in range(9)) + b"\r\n"
    assert refused(head) == ErrorCode.HEADERS_TOO_LARGE


def test_an_endless_header_line_is_refused_before_it_ends() -> None:
    # Fed in small pieces, never finished: the raw byte count stops it.
    assert refused(b"GET / HTTP/1.1\r\nX: " + b"a" * 5000, cut=100) == ErrorCode.HEADERS_TOO_LARGE


def test_a_body_too_large() -> None:
    assert refused(b"POST / HTTP/1.1\r\nContent-Length: 500\r\n\r\n" + b"x" * 500) == ErrorCode.MESSAGE_TOO_LARGE


def test_garbage_is_a_bad_request() -> None:
    assert refused(b"\x16\x03\x01 hello\r\n\r\n") == ErrorCode.BAD_REQUEST


def test_keep_alive_requests_in_a_row_do_not_add_up() -> None:
    one = b"POST /a HTTP/1.1\r\nContent-Length: 80\r\n\r\n" + b"x" * 80
    reader = read(one * 40, cut=1000)
    assert len(reader.requests) == 40
