"""The Python client's pure decisions (broker_adapters/client_policy.py): backoff, close codes, refusals,
refresh timing, where a credential goes.  The same table as the JavaScript client's policy tests."""

from __future__ import annotations

import base64
import json
import random

import pytest

from broker_adapters.client_policy import (
    Close,
    Handshake,
    Retry,
    after_close,
    backoff,
    close_code_of_status,
    handshake,
    refresh_delay,
    retry_after_close,
    retry_after_seconds,
    socket_url,
    subscribe_retry_delay,
    token_expiry,
)


def test_backoff_is_full_jitter_between_0_and_the_capped_exponential() -> None:
    assert backoff(0, 0.5, 30, lambda: 0.0) == 0
    assert backoff(0, 0.5, 30, lambda: 0.5) == 0.25
    assert backoff(3, 0.5, 30, lambda: 1.0) == 4.0
    assert backoff(6, 0.5, 30, lambda: 1.0) == 30
    assert backoff(10_000, 0.5, 30, lambda: 1.0) == 30  # no overflow for a client retrying for days
    rng = random.Random(7)
    for attempt in range(12):
        delay = backoff(attempt, 0.5, 5, rng.random)
        assert 0 <= delay <= min(5, 0.5 * 2**attempt)


@pytest.mark.parametrize("code", [1008, 4001, 4003])
def test_permanent_close_codes_stop(code: int) -> None:
    assert retry_after_close(code, renewable=True) is None
    assert retry_after_close(code, renewable=False) is None


def test_an_expired_credential_retries_only_with_a_callback_and_rate_limits_wait_longer() -> None:
    assert retry_after_close(4011, renewable=False) is None
    assert retry_after_close(4011, renewable=True) == 0
    assert retry_after_close(4029, renewable=False) == 3


@pytest.mark.parametrize("code", [1000, 1001, 1006, 1007, 1009, 1011, 1012, 1013, 4008, 4503, 4999, 3000])
def test_every_other_code_resumes_unknown_ones_included(code: int) -> None:
    assert retry_after_close(code, renewable=False) == 0


def test_handshake_refusals_mean_the_close_code_of_the_same_cause() -> None:
    assert close_code_of_status(401, "token_expired") == Close.TOKEN_EXPIRED
    assert close_code_of_status(401, "invalid_ticket") == Close.UNAUTHORIZED
    assert close_code_of_status(401) == Close.UNAUTHORIZED
    assert close_code_of_status(403, "origin_forbidden") == Close.FORBIDDEN
    for status in (400, 404, 431):
        assert close_code_of_status(status) == Close.POLICY_VIOLATION, status
    for status in (408, 429, 500, 502, 503):
        assert close_code_of_status(status, "draining") == Close.TRY_AGAIN_LATER, status


def test_after_close_uses_the_drain_hint_exactly_and_keeps_the_attempt_count() -> None:
    assert after_close(1012, renewable=False, attempt=4, base=0.5, cap=30, hint=1.21) == Retry(1.21, 4)


def test_after_close_backs_off_and_counts_the_attempt() -> None:
    step = after_close(1006, renewable=False, attempt=2, base=0.5, cap=30, uniform=lambda: 1.0)
    assert step == Retry(2.0, 3)
    # 4029: three steps longer (x8).
    step = after_close(4029, renewable=False, attempt=0, base=0.5, cap=30, uniform=lambda: 1.0)
    assert step == Retry(4.0, 1)


def test_after_close_waits_at_least_retry_after_plus_the_jittered_backoff() -> None:
    step = after_close(1013, renewable=False, attempt=1, base=0.5, cap=30, retry_after=5, uniform=lambda: 0.5)
    assert step == Retry(5.5, 2)
    rng = random.Random(3)
    delays = [after_close(1013, renewable=False, attempt=0, base=0.5, cap=30, retry_after=1, uniform=rng.random) for _ in range(50)]
    assert all(step is not None and 1 <= step.delay <= 1.5 for step in delays)
    assert len({step.delay for step in delays if step}) > 1  # spread, not in lockstep


def test_after_close_stops_on_a_permanent_failure_whatever_the_hints() -> None:
    assert after_close(4001, renewable=True, attempt=0, base=0.5, cap=30, hint=1.0, retry_after=1) is None


def test_a_refused_subscribe_is_retried_after_half_a_second_doubling_to_five() -> None:
    assert [subscribe_retry_delay(tries, lambda: 1.0) for tries in range(6)] == [0.5, 1.0, 2.0, 4.0, 5.0, 5.0]
    assert subscribe_retry_delay(0, lambda: 0.0) == 0.0


def test_refresh_comes_at_80_percent_of_the_time_left_and_sooner_each_time() -> None:
    assert refresh_delay(exp=1100, now=1000) == pytest.approx(80)
    # After a failed refresh 80 s later, 20 s are left: next try in 16 s, then 3.2 s, never under 1 s.
    assert refresh_delay(exp=1100, now=1080) == pytest.approx(16)
    assert refresh_delay(exp=1100, now=1096) == pytest.approx(3.2)
    assert refresh_delay(exp=1100, now=1099.5) == 1.0
    assert refresh_delay(exp=1100, now=2000) == 1.0  # already expired: try at once (almost)


def test_retry_after_is_read_in_seconds() -> None:
    assert retry_after_seconds("5") == 5.0
    assert retry_after_seconds(" 1 ") == 1.0
    assert retry_after_seconds(None) is None
    assert retry_after_seconds("Wed, 21 Oct 2015 07:28:00 GMT") is None
    assert retry_after_seconds("-3") is None


def _jwt(claims: object) -> str:
    def part(value: object) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()

    return f"{part({'alg': 'HS256'})}.{part(claims)}.signature"


def test_a_tokens_expiry_is_read_from_its_exp_claim() -> None:
    assert token_expiry(_jwt({"sub": "7", "exp": 1795318798})) == 1795318798.0
    assert token_expiry(_jwt({"sub": "7", "exp": 1795318798.5})) == 1795318798.5
    assert token_expiry(_jwt({"sub": "7"})) is None
    assert token_expiry(_jwt({"exp": True})) is None
    assert token_expiry(_jwt(["not", "an", "object"])) is None
    assert token_expiry("not-a-jwt") is None
    assert token_expiry("a.%%%.c") is None
    assert token_expiry(None) is None


def test_node_urls_become_websocket_urls() -> None:
    assert socket_url("http://127.0.0.1:8000") == "ws://127.0.0.1:8000/ws"
    assert socket_url("https://rt.example.com/") == "wss://rt.example.com/ws"
    assert socket_url("ws://127.0.0.1:8000/ws") == "ws://127.0.0.1:8000/ws"
    assert socket_url("wss://example.com/realtime") == "wss://example.com/realtime/ws"
    for wrong in ("127.0.0.1:8000", "ftp://host", "http://", ""):
        with pytest.raises(ValueError):
            socket_url(wrong)


def test_a_token_goes_in_a_header_or_the_auth_frame_and_a_ticket_in_the_query_or_the_auth_frame() -> None:
    url = "ws://h/ws"
    assert handshake(url, token="t.o.k", ticket=None, auth_frame=False) == Handshake(
        url, headers=(("Authorization", "Bearer t.o.k"),)
    )
    assert handshake(url, token="t.o.k", ticket=None, auth_frame=True) == Handshake(
        url, first_frame={"type": "auth", "token": "t.o.k"}
    )
    assert handshake(url, token=None, ticket="tk/+=", auth_frame=False) == Handshake("ws://h/ws?ticket=tk%2F%2B%3D")
    assert handshake(url, token=None, ticket="tk", auth_frame=True) == Handshake(
        url, first_frame={"type": "auth", "ticket": "tk"}
    )
    assert handshake(url, token=None, ticket=None, auth_frame=True) == Handshake(url)
