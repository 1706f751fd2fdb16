"""The security review's pure decisions (issue 13), case by case: secrets from files and
masked on the way out, origins and host names, ticket retention, expiry times, JWKS documents."""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from node import jwks, redaction
from node.access import HostPolicy, OriginPolicy, parse_origin, request_origin
from node.auth import MAX_EXPIRY, TokenError, claims_from
from node.settings import Settings, SettingsError, add_arguments, env_secret
from node.tickets import retention_problem


@pytest.fixture(autouse=True)
def no_registered_secrets() -> Iterator[None]:
    redaction.clear()
    yield
    redaction.clear()


def load(argv: list[str], environ: dict[str, str] | None = None) -> Settings:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return Settings.from_namespace(parser.parse_args(argv), environ or {})


# -- secrets from files ---------------------------------------------------------------------------


def test_every_secret_setting_reads_a_file_by_flag_or_environment(tmp_path: Path) -> None:
    (tmp_path / "jwt").write_text("from-a-file\n")
    (tmp_path / "keys").write_text("key-one\nkey-two\n")
    (tmp_path / "broker").write_text("redis://:pw@redis:6379/0")
    settings = load(
        ["--jwt-secret-file", str(tmp_path / "jwt"), "--broker-file", str(tmp_path / "broker")],
        {"FANLINE_API_KEYS_FILE": str(tmp_path / "keys"), "FANLINE_JWT_SECRET": "loses-to-the-flag"},
    )
    assert settings.jwt_secret == "from-a-file"  # one trailing newline is not part of it
    assert settings.api_keys == "key-one\nkey-two"
    assert settings.broker == "redis://:pw@redis:6379/0"
    assert {"from-a-file", "key-one", "key-two", "pw"} <= set(settings.secret_values())


@pytest.mark.parametrize(
    "argv,environ,complaint",
    [
        (["--jwt-secret", "x", "--jwt-secret-file", "f"], {}, "both set in the flags"),
        ([], {"FANLINE_API_KEYS": "k", "FANLINE_API_KEYS_FILE": "f"}, "both set in the environment"),
        (["--internal-key-file", "/nonexistent/key"], {}, "cannot read /nonexistent/key"),
        (["--broker", "kafka://k:9092", "--broker-password", "pw"], {}, "kafka:// takes no password"),
        (["--broker", "nats://n:4222", "--broker-password", "p@ss"], {}, "NATS reads a URL's password as written"),
        (["--broker", "redis://:a@r/0", "--broker-password", "b"], {}, "carries a password already"),
        (["--auth-timeout", "nan"], {}, "auth_timeout must be a finite number"),
        (["--jwks-timeout", "inf"], {}, "jwks_timeout must be a finite number"),
    ],
)
def test_ambiguous_missing_or_impossible_secrets_stop_the_node(
    argv: list[str], environ: dict[str, str], complaint: str
) -> None:
    with pytest.raises(SettingsError, match=complaint):
        load(argv, environ)


def test_an_empty_secret_file_is_refused_rather_than_switching_the_check_off(tmp_path: Path) -> None:
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(SettingsError, match="is empty"):
        load(["--jwt-secret-file", str(tmp_path / "empty")])


def test_the_broker_password_goes_into_the_url_encoded_where_the_client_decodes() -> None:
    redis = Settings(broker="redis://user@redis:6379/0", broker_password="p@ss/w:rd")
    assert redis.broker_url == "redis://user:p%40ss%2Fw%3Ard@redis:6379/0"
    assert Settings(broker="nats://a:4222,b:4222", broker_password="plain-Pass_1").broker_url == (
        "nats://:plain-Pass_1@a:4222,b:4222"
    )
    assert redis.redacted()["broker_password"] == "***" and "p@ss" not in json.dumps(redis.redacted())


def test_other_commands_read_the_internal_key_the_same_way(tmp_path: Path) -> None:
    (tmp_path / "key").write_text("ik-from-file\n")
    assert env_secret("internal_key", {"FANLINE_INTERNAL_KEY_FILE": str(tmp_path / "key")}) == "ik-from-file"
    assert env_secret("internal_key", {"FANLINE_INTERNAL_KEY": "direct"}) == "direct"
    assert env_secret("internal_key", {}) == ""


# -- masking --------------------------------------------------------------------------------------


def test_url_passwords_are_masked_in_any_text_and_registered_secrets_everywhere() -> None:
    redaction.register(["s3cret-value", "abc"])  # too short to register: it would wreck every line
    text = "cannot connect to redis://:hunter22@redis:6379/0 and nats://u:p%40ss@n:4222, s3cret-value, abc"
    assert redaction.redact(text) == (
        "cannot connect to redis://:***@redis:6379/0 and nats://u:***@n:4222, ***, abc"
    )
    assert redaction.scrub({"a": ["x s3cret-value", 3, None], "b": ("redis://:pw@h",)}) == {
        "a": ["x ***", 3, None],
        "b": ["redis://:***@h"],
    }
    assert redaction.redact_url("https://idp.example/jwks?x=1") == "https://idp.example/jwks?x=1"
    assert redaction.redact_url("https://u:p@idp.example/jwks") == "https://u:***@idp.example/jwks"


def test_a_client_error_message_never_carries_a_secret() -> None:
    from node.errors import ClientError, ErrorCode

    redaction.register(["topsecret-1"])
    error = ClientError(ErrorCode.BROKER_UNAVAILABLE, "publish failed: AUTH topsecret-1 at redis://:topsecret-1@r")
    assert "topsecret-1" not in error.message and "topsecret-1" not in error.body().decode()


# -- origins and hosts ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value,expected",
    [
        ("https://App.Example.com", ("https", "app.example.com", 443)),
        ("http://127.0.0.1:8000", ("http", "127.0.0.1", 8000)),
        ("http://[::1]:8000", ("http", "::1", 8000)),
        ("ftp://app.example.com", None),
        ("null", None),
        ("https://app.example.com/path", None),
        ("https://user@app.example.com", None),
        ("https://app.example.com:99999", None),
        ("https://", None),
    ],
)
def test_an_origin_is_a_scheme_a_host_and_a_port(value: str, expected: Any) -> None:
    assert parse_origin(value) == expected


@pytest.mark.parametrize(
    "allowed,origin,host,proto,permitted",
    [
        ("", "http://127.0.0.1:8000", "127.0.0.1:8000", None, True),
        ("", "ftp://127.0.0.1:8000", "127.0.0.1:8000", None, False),
        ("", "https://127.0.0.1:8000", "127.0.0.1:8000", None, False),  # the scheme counts
        ("", "https://app.example", "app.example", "https", True),  # behind a TLS proxy
        ("", "https://app.example", "app.example:443", "https,http", True),
        ("", "http://app.example", "app.example", "https", False),
        ("", "http://app.example:8000", "app.example", None, False),  # the port counts
        ("", "null", "app.example", None, False),
        ("", None, "anything", None, True),  # not a browser page
        ("https://app.example", "https://app.example", "rt.example", "https", True),
        ("https://app.example", "https://app.example:8443", "rt.example", "https", False),
        ("https://app.example,null", "null", "rt.example", None, True),
        ("*", "ftp://anything", "rt.example", None, True),
    ],
)
def test_origin_policy(allowed: str, origin: str | None, host: str, proto: str | None, permitted: bool) -> None:
    assert OriginPolicy(allowed).permits(origin, host, proto) is permitted


def test_an_allowed_origin_that_is_not_an_origin_stops_the_node() -> None:
    with pytest.raises(SettingsError, match="is not an origin"):
        OriginPolicy("app.example.com")


def test_host_names_ignore_the_port_and_case() -> None:
    hosts = HostPolicy("rt.example, RT2.example")
    assert hosts.permits("rt.example:8443") and hosts.permits("Rt2.Example") and hosts.permits("rt.example.")
    assert not hosts.permits("evil.example") and not hosts.permits(None)
    assert HostPolicy("").permits("anything")
    assert request_origin("[::1]:8000", None) == ("http", "::1", 8000)


# -- tickets and expiry ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url,ttl,refused",
    [
        ("memory://", 30, False),
        ("redis://r:6379/0?history_ttl=60&meta_ttl=3600", 30, False),
        ("redis://r:6379/0?history_ttl=30", 30, True),
        ("memory://?meta_ttl=10", 30, True),
        ("nats://n:4222?history_size=0", 30, True),
        ("kafka://k:9092?history_ttl=600", 3600, True),
        ("redis://r/0?history_ttl=oops", 30, False),  # the adapter refuses the URL itself
    ],
)
def test_a_broker_must_keep_claims_longer_than_tickets_live(url: str, ttl: float, refused: bool) -> None:
    assert (retention_problem(url, ttl) is not None) is refused


@pytest.mark.parametrize(
    "exp", [math.nan, math.inf, -math.inf, 1e300, 10**400, MAX_EXPIRY + 1, 0, -5, True, "1767225600", [1]]
)
def test_exp_must_be_a_unix_time(exp: Any) -> None:
    with pytest.raises(TokenError, match="exp must be a Unix time"):
        claims_from({"sub": "1", "exp": exp})


def test_a_real_exp_is_kept() -> None:
    assert claims_from({"sub": "1", "exp": 1767225600}).expires == 1767225600.0
    assert claims_from({"sub": "1", "exp": MAX_EXPIRY}).expires == float(MAX_EXPIRY)


# -- JWKS documents -------------------------------------------------------------------------------


def rsa_jwk(kid: Any = "k1") -> dict[str, Any]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key()
    jwk: dict[str, Any] = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key))
    jwk.update(kid=kid, alg="RS256")
    return jwk


def test_a_jwks_gives_keys_by_kid_and_a_lone_key_for_tokens_without_one() -> None:
    keys = jwks.parse(json.dumps({"keys": [rsa_jwk()]}).encode())
    assert set(keys) == {"k1", None}


@pytest.mark.parametrize(
    "document",
    [
        b"[1, 2]",
        b'"keys"',
        b"null",
        b'{"keys": ' + b"[" * 50_000 + b"]" * 50_000 + b"}",
        b'{"keys": {"a": 1}}',
        b'{"keys": [1, "x"]}',
        b'{"keys": []}',
        b'{"keys": [{"kty": "RSA", "n": [1], "e": "AQAB", "kid": "k"}]}',
        b'{"keys": [{"kty": "EC", "crv": "P-256", "x": 5, "y": null}]}',
        b'{"keys": [{"kty": "oct", "k": {}}]}',
        b'{"keys": [{"kty": []}]}',
        b'{"keys": [{"kty": "RSA", "alg": "none"}]}',  # PyJWT: NotImplementedError (found by the fuzzer)
        json.dumps({"keys": [{"kty": "RSA"}] * 101}).encode(),
        b"\xff\xfe not utf-8",
    ],
)
def test_a_document_that_is_not_a_usable_jwks_is_refused_with_one_error_type(document: bytes) -> None:
    with pytest.raises(jwks.JWKSError):
        jwks.parse(document)


def test_a_key_with_a_kid_that_is_not_a_string_serves_no_kid() -> None:
    keys = jwks.parse(json.dumps({"keys": [rsa_jwk(kid=7), rsa_jwk(kid="k2")]}).encode())
    assert set(keys) == {"k2"}


@pytest.mark.parametrize("expire_at", ["1e300", "9" * 400, "-5", "true"])
def test_a_hook_answer_with_an_expiry_that_is_not_a_time_is_a_failed_call(expire_at: str) -> None:
    from node.hooks import FAILED, parse_answer

    assert parse_answer(200, b'{"allow": true, "expire_at": %s}' % expire_at.encode()) == FAILED
    assert parse_answer(200, b'{"allow": true, "expire_at": 1767225600}').expire_at == 1767225600.0
