"""Who may connect, subscribe and publish (node/access.py), in-process."""

from __future__ import annotations

import pytest

from node.access import ANONYMOUS, AccessPolicy, ChannelRules, Identity, OriginPolicy, Rule
from node.errors import ClientError, ErrorCode
from node.settings import Settings, SettingsError


def test_channel_rules_parse_and_fall_back_to_the_wildcard() -> None:
    specs = ChannelRules.parse_text("public=subscribe:anyone,publish:nobody;*=subscribe:granted")
    rules = ChannelRules.build(specs, Rule("anyone", "nobody"))
    assert rules.rule_for("public:x") == Rule("anyone", "nobody")
    assert rules.rule_for("other:x") == Rule("granted", "nobody")
    assert rules.rule_for("plain") == Rule("granted", "nobody")


@pytest.mark.parametrize("text", ["x", "ns=subscribe", "ns=subscribe:everyone", "=subscribe:anyone"])
def test_bad_channel_rules_are_refused(text: str) -> None:
    with pytest.raises(SettingsError):
        ChannelRules.build(ChannelRules.parse_text(text), Rule("anyone", "nobody"))


@pytest.mark.parametrize(
    "allowed,origin,host,ok",
    [
        ("", None, "node:8000", True),  # not a browser
        ("", "http://node:8000", "node:8000", True),  # same origin
        ("", "http://evil:8000", "node:8000", False),
        ("*", "http://evil", "node:8000", True),
        ("https://app.example", "https://app.example", "node:8000", True),
        ("https://app.example", "https://other.example", "node:8000", False),
    ],
)
def test_origins(allowed: str, origin: str | None, host: str, ok: bool) -> None:
    assert OriginPolicy(allowed).permits(origin, host) is ok


def policy(**settings: object) -> AccessPolicy:
    return AccessPolicy(Settings(**settings))  # type: ignore[arg-type]


def test_reserved_and_personal_channels() -> None:
    access = policy()
    with pytest.raises(ClientError) as raised:
        access.check_subscribe(ANONYMOUS, "fanline.tickets")
    assert raised.value.code is ErrorCode.SUBSCRIBE_FORBIDDEN
    with pytest.raises(ClientError):
        access.check_subscribe(Identity(user="bob"), "inbox#ada")
    access.check_subscribe(Identity(user="ada"), "inbox#ada")


def test_publishing_needs_client_publish_or_a_rule() -> None:
    with pytest.raises(ClientError) as raised:
        policy().check_client_publish(ANONYMOUS, "chat:x")
    assert raised.value.code is ErrorCode.PUBLISH_FORBIDDEN
    policy(client_publish=True).check_client_publish(ANONYMOUS, "chat:x")


def test_api_keys() -> None:
    access = policy(api_keys="k1,k2")
    access.check_api({"authorization": "apikey k2"})
    access.check_api({"x-api-key": "k1"})
    for headers, code in (({}, ErrorCode.UNAUTHORIZED), ({"x-api-key": "nope"}, ErrorCode.INVALID_API_KEY)):
        with pytest.raises(ClientError) as raised:
            access.check_api(headers)
        assert raised.value.code is code
