"""The ``fanline`` command: ``node``, ``publish``, ``drain``, ``settings`` and ``cluster`` (node.cluster)."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from urllib.parse import urlsplit

from broker_adapters.errors import ConfigError

from . import __version__
from .cluster import cli as cluster_cli
from .redaction import redact
from .settings import INTERNAL_KEY_HEADER, Settings, SettingsError, add_arguments, env_secret, markdown_table
from .startup import ExitStatus, StartupError


def _parse_data(raw: str) -> object:
    """DATA is JSON if it parses as JSON, otherwise a plain string."""
    try:
        return json.loads(raw)
    except ValueError:
        return raw


def _publish_http(url: str, channel: str, data: object, event: str | None, api_key: str | None) -> int:
    body = {"channel": channel, "data": data}
    if event:
        body["event"] = event
    request = urllib.request.Request(
        url.rstrip("/") + "/api/publish",
        data=json.dumps(body).encode(),
        headers={"content-type": "application/json", **({"authorization": f"apikey {api_key}"} if api_key else {})},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            print(json.loads(response.read())["id"])
            return 0
    except urllib.error.HTTPError as exc:
        print(f"publish failed: {exc.code} {exc.read().decode(errors='replace')}", file=sys.stderr)
    except urllib.error.URLError as exc:
        print(f"publish failed: cannot reach {url}: {exc.reason}", file=sys.stderr)
    return 1


def broker_publish_refusal(url: str) -> str | None:
    """Why ``fanline publish --broker URL`` must not run, or None.

    The memory broker lives inside one process: publishing to a fresh one
    from this command would print an id for an event no node can ever see.
    """
    if urlsplit(url).scheme == "memory":
        return (
            "--broker memory:// is private to one process, so no node would see this event; "
            "publish through the node instead: fanline publish CHANNEL DATA --url http://HOST:PORT"
        )
    return None


async def _publish_broker(url: str, channel: str, data: object, event: str | None) -> int:
    from broker_adapters import BrokerError, UnknownBrokerURL
    from broker_adapters.publisher import Publisher

    try:
        async with Publisher(url) as publisher:
            position = await publisher.publish(channel, data, event=event)
    except UnknownBrokerURL as exc:
        print(f"fanline publish: error: --broker: {exc}", file=sys.stderr)
        return ExitStatus.CONFIG
    except (BrokerError, OSError) as exc:
        print(f"publish failed: {exc}", file=sys.stderr)
        return 1
    except ValueError as exc:  # an invalid channel or event type
        print(f"fanline publish: error: {exc}", file=sys.stderr)
        return ExitStatus.CONFIG
    print(position.event_id)
    return 0


def _drain(url: str, wait: bool) -> int:
    """Start a node's drain; with ``wait``, block until it has no connections left.

    As a Kubernetes preStop hook this keeps SIGTERM back until the paced
    drain is done, bounded by the node's own drain window plus a margin.
    """
    endpoint = url.rstrip("/") + "/drain"
    try:
        # On loopback (the preStop hook) no key is needed; from elsewhere the node wants its internal key.
        key = env_secret("internal_key", os.environ)
        headers = {INTERNAL_KEY_HEADER: key} if key else {}
        request = urllib.request.Request(endpoint, data=b"", method="POST", headers=headers)
        with urllib.request.urlopen(request, timeout=10) as response:
            status = json.loads(response.read())
        print(json.dumps(status))
        deadline = time.monotonic() + float(status["window"]) + 5.0
        while wait and status["connections"] and time.monotonic() < deadline:
            time.sleep(0.5)
            with urllib.request.urlopen(endpoint, timeout=5) as response:
                status = json.loads(response.read())
    except (urllib.error.URLError, OSError, ValueError, KeyError, SettingsError) as exc:
        # A node that is already gone has nothing left to drain.
        print(f"drain: {exc}", file=sys.stderr)
        return 1
    if wait:
        print(json.dumps(status))
    return 0


def _node(args: argparse.Namespace) -> int:
    """``fanline node``: one line and a non-zero status for a node that cannot start, never a traceback."""
    from .server import serve

    try:
        serve(Settings.from_namespace(args, os.environ))
    except (ConfigError, StartupError) as exc:
        # A setting the node refuses (a broker URL, a ticket_ttl its broker
        # cannot keep), a port in use: one line naming it, secrets masked.
        print(f"fanline node: error: {redact(str(exc))}", file=sys.stderr)
        return exc.status if isinstance(exc, StartupError) else ExitStatus.CONFIG
    return ExitStatus.OK


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fanline", description="Fanline real-time edge node.")
    parser.add_argument("--version", action="version", version=f"fanline {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    node_parser = commands.add_parser(
        "node", help="run an edge node", description="Run a Fanline edge node. Every flag is also an environment variable."
    )
    add_arguments(node_parser)

    publish_parser = commands.add_parser("publish", help="publish one event")
    publish_parser.add_argument("channel")
    publish_parser.add_argument("data", help="JSON, or a plain string")
    publish_parser.add_argument("--event", help="event type (SSE event name)")
    target = publish_parser.add_mutually_exclusive_group()
    target.add_argument("--broker", help="publish straight to this broker URL, with no node")
    target.add_argument("--url", default="http://127.0.0.1:8000", help="node to publish through (default %(default)s)")
    publish_parser.add_argument("--api-key", help="API key for the node's HTTP API")

    drain_parser = commands.add_parser("drain", help="start a node's graceful drain (for a preStop hook)")
    drain_parser.add_argument("--url", default="http://127.0.0.1:9000", help="the node's internal address")
    drain_parser.add_argument("--wait", action="store_true", help="block until the node has no connections left")

    commands.add_parser("settings", help="print the configuration reference as Markdown")

    cluster_cli.add_parser(commands)

    args = parser.parse_args(argv)
    if args.command == "node":
        return _node(args)
    if args.command == "publish":
        data = _parse_data(args.data)
        if args.broker:
            refusal = broker_publish_refusal(args.broker)
            if refusal is not None:
                print(f"fanline publish: error: {refusal}", file=sys.stderr)
                return ExitStatus.CONFIG
            return asyncio.run(_publish_broker(args.broker, args.channel, data, args.event))
        return _publish_http(args.url, args.channel, data, args.event, args.api_key)
    if args.command == "drain":
        return _drain(args.url, args.wait)
    if args.command == "cluster":
        return cluster_cli.run(args)
    print(markdown_table(), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
