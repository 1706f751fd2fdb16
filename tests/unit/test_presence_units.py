"""The pure parts of presence, the control channel, the server API and the hooks."""

from __future__ import annotations

import json
import time

from broker_adapters.control import MAX_AGE_MS, Command, decode, encode, presence_events_channel
from broker_adapters.presence import PresenceEntry, users_of
from broker_adapters.types import Position
from node.hooks import FAILED, parse_answer, server_positions
from node.presence import parse_namespaces
from node.protocol import PresenceQuery, Subscribe, parse_client_message
from node.server_api import plan_history


def test_entries_round_trip_and_show_info_decoded() -> None:
    entry = PresenceEntry("n.1", "ada", '{"role":"mod"}')
    assert PresenceEntry.decode("n.1", entry.encode()) == entry
    assert entry.as_dict() == {"client": "n.1", "user": "ada", "info": {"role": "mod"}}
    assert PresenceEntry.decode("n.1", "not json") is None and PresenceEntry.decode("n.1", "[1,2]") is None


def test_users_counts_named_users_once_and_anonymous_clients_each() -> None:
    entries = [PresenceEntry("a", "ada"), PresenceEntry("b", "ada"), PresenceEntry("c"), PresenceEntry("d")]
    assert users_of(entries) == 3


def test_commands_round_trip_and_stale_ones_are_ignored() -> None:
    text = encode(Command.DISCONNECT, user="ada", code=4009, client=None)
    message = decode(text)
    assert message is not None and message.command is Command.DISCONNECT
    assert message.get_str("user") == "ada" and message.get_number("code") == 4009 and "client" not in message.fields
    late = int(time.time() * 1000) + MAX_AGE_MS + 1
    assert decode(text, now_ms=late) is None
    assert decode('{"cmd":"format_disk","time":1}') is None and decode("[]") is None and decode("{") is None
    assert presence_events_channel("chat:1") == "fanline.presence.chat:1"


def test_namespaces_parse() -> None:
    assert parse_namespaces("chat, game") == (frozenset({"chat", "game"}), False)
    assert parse_namespaces("*") == (frozenset(), True)


def test_history_plan_starts_at_since_in_its_own_epoch_only() -> None:
    top = Position("e1", 10)
    assert plan_history(None, top) == (0, True)
    assert plan_history(Position("e1", 4), top) == (4, True)
    assert plan_history(Position("e0", 4), top) == (0, False)


def test_hook_answers() -> None:
    allowed = parse_answer(200, json.dumps({"user": "u", "info": {"a": 1}, "channels": ["x:y"], "expire_at": 5}).encode())
    assert allowed.ok and allowed.allow and allowed.user == "u" and allowed.info == '{"a":1}'
    assert allowed.channels == ("x:y",) and allowed.expire_at == 5.0
    assert parse_answer(200, b"").allow
    denied = parse_answer(200, b'{"allow": false, "reason": "no"}')
    assert denied.ok and not denied.allow and denied.reason == "no"
    for status, body in [(500, b"{}"), (200, b"nope"), (200, b"[]"), (200, b'{"allow": "yes"}'),
                         (200, b'{"channels": ["bad name"]}'), (200, b'{"user": ""}'), (302, b"")]:
        assert parse_answer(status, body) is FAILED, body


def test_server_side_positions_come_from_the_url() -> None:
    positions = server_positions(b"since=chat:lobby:abc-5&since=news:e-1&since=junk&since=x:not-an-id&other=1")
    assert positions == {"chat:lobby": Position("abc", 5), "news": Position("e", 1)}


def test_the_new_client_messages_parse() -> None:
    assert parse_client_message('{"type":"presence","channel":"c","rid":1}') == PresenceQuery("c", False, 1)
    assert parse_client_message('{"type":"presence_stats","channel":"c"}') == PresenceQuery("c", True)
    subscribe = parse_client_message('{"type":"subscribe","channel":"c","join_leave":true}')
    assert isinstance(subscribe, Subscribe) and subscribe.join_leave and not subscribe.server
