"""One error type, one table (node/errors.py)."""

from __future__ import annotations

import json

from node.errors import ERRORS, ClientError, CloseCode, ErrorCode


def test_every_code_has_a_treatment() -> None:
    assert set(ERRORS) == set(ErrorCode)


def test_a_refusal_knows_its_status_close_code_and_hint() -> None:
    error = ClientError(ErrorCode.BROKER_UNAVAILABLE, "down", rid=3, channel="news")
    assert (error.status, error.close_code, error.retry_after) == (503, CloseCode.TRY_AGAIN_LATER, 1)
    assert json.loads(error.body()) == {"error": "broker_unavailable", "message": "down"}
    assert (b"retry-after", b"1") in error.headers()


def test_extra_fields_go_into_the_body() -> None:
    error = ClientError(ErrorCode.BROKER_UNAVAILABLE, "x", extra={"failed_at": 2})
    assert json.loads(error.body())["failed_at"] == 2


def test_with_request_keeps_the_code_and_adds_the_request() -> None:
    error = ClientError(ErrorCode.SUBSCRIBE_FORBIDDEN, "no").with_request(7, "a")
    assert (error.code, error.rid, error.channel) == (ErrorCode.SUBSCRIBE_FORBIDDEN, 7, "a")
