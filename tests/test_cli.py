"""The ``fanline`` command as a user types it."""

from __future__ import annotations

import subprocess
import sys

import pytest

from node.settings import Settings, SettingsError

from .clients import WSClient
from .processes import ROOT, NodeProcess
from .servers import running


def fanline(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "node", *args], cwd=ROOT, capture_output=True, text=True, timeout=30
    )


async def test_fanline_publish_through_a_node_prints_the_event_id(memory_node: NodeProcess, channel: str) -> None:
    client = await WSClient.connect(memory_node.ws_url)
    await client.subscribe(channel)
    done = fanline("publish", channel, '{"hello": "cli"}', "--event", "greeting", "--url", memory_node.url)
    assert done.returncode == 0, done.stderr
    (event,) = await client.events(1)
    assert event["id"] == done.stdout.strip()
    assert event["data"] == {"hello": "cli"} and event["event"] == "greeting"
    plain = fanline("publish", channel, "not json, just text", "--url", memory_node.url)
    assert plain.returncode == 0
    assert (await client.events(1))[0]["data"] == "not json, just text"
    await client.close()


def test_fanline_publish_reports_an_unreachable_node() -> None:
    done = fanline("publish", "news", "1", "--url", "http://127.0.0.1:9")
    assert done.returncode == 1 and "cannot reach" in done.stderr


def test_bad_settings_are_refused_with_the_reason() -> None:
    done = fanline("node", "--port", "0")
    assert done.returncode == 2 and "ports must be between" in done.stderr
    done = fanline("node", "--slow-consumer-policy", "ignore")
    assert done.returncode == 2 and "slow consumer policy" in done.stderr


def test_flags_win_over_environment_which_wins_over_defaults() -> None:
    environ = {"FANLINE_PORT": "8100", "FANLINE_SEND_TIMEOUT": "2.5", "FANLINE_CLIENT_PUBLISH": "true"}
    settings = Settings.from_sources(["--port", "8200"], environ)
    assert settings.port == 8200 and settings.send_timeout == 2.5 and settings.client_publish is True
    assert Settings.from_sources([], {}).port == 8000
    with pytest.raises(SettingsError):
        Settings.from_sources([], {"FANLINE_MAX_CONNECTIONS": "lots"})


async def test_fanline_publish_straight_to_the_broker_reaches_a_node(channel: str) -> None:
    with running("redis") as server, NodeProcess(server.url()) as node:
        client = await WSClient.connect(node.ws_url)
        await client.subscribe(channel)
        done = fanline("publish", channel, '{"via": "broker"}', "--broker", server.url())
        assert done.returncode == 0, done.stderr
        (event,) = await client.events(1)
        assert event["id"] == done.stdout.strip() and event["data"] == {"via": "broker"}
        await client.close()
