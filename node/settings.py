"""One settings object for a node, read from CLI flags and environment variables.

Every field of :class:`Settings` is a flag ``--field-name`` and an environment
variable ``FANLINE_FIELD_NAME``.  A flag wins over the environment, which wins
over the default.  ``fanline settings`` prints the table that
docs/configuration.md carries, so the docs cannot drift from the code.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from broker_adapters.errors import ConfigError

ENV_PREFIX = "FANLINE_"
SLOW_CONSUMER_POLICIES = ("disconnect", "reset", "latest")


def _setting(default: Any, help: str, *, secret: bool = False) -> Any:
    return field(default=default, metadata={"help": help, "secret": secret})


class SettingsError(ConfigError):
    """A setting has a value outside what it accepts."""


@dataclass(frozen=True)
class Settings:
    # -- serving ---------------------------------------------------------------
    host: str = _setting("127.0.0.1", "Address to listen on for clients.")
    port: int = _setting(8000, "Port for clients: WebSocket, SSE, HTTP API and demo page.")
    internal_port: int = _setting(
        9000,
        "Port for metrics, health and drain, kept off the client port. "
        "0 serves them on the client port instead.",
    )
    broker: str = _setting("memory://", "Broker URL: memory://, redis://, nats:// or kafka://.")
    node_id: str = _setting("", "Name of this node in logs and metrics; defaults to hostname-pid.")
    log_level: str = _setting("info", "Log level: debug, info, warning or error.")
    demo: bool = _setting(True, "Serve the demo page at /.")

    # -- streams and resume ----------------------------------------------------
    replay_limit: int = _setting(
        300,
        "Most publications replayed to one resuming subscriber. A client further "
        "behind gets a reset instead.",
    )

    resume_window: int = _setting(
        64,
        "Publications per live channel a node keeps to answer subscribes and resumes without "
        "reading the broker. 0 keeps none (every resume reads the broker).",
    )
    subscribe_wait: float = _setting(
        5.0,
        "Seconds a subscribe waits for the broker while the node (re)connects to it, before it "
        "fails with broker_unavailable and the client retries.",
    )
    stream_check_interval: float = _setting(
        30.0,
        "Seconds between checks of each subscribed channel's stream top against what the node "
        "delivered, to catch a lost live message on an idle channel. 0 disables the check.",
    )

    # -- per-connection bounds -------------------------------------------------
    max_connections: int = _setting(
        10000,
        "Established client connections per node (WebSockets and SSE streams with a proven identity); "
        "more are refused with 503 too_many_connections.",
    )
    max_pending: int = _setting(
        1000,
        "Sockets per port still in their handshake (request head, credential check, a WebSocket awaiting "
        "its auth frame), or plain HTTP connections; more are refused at once with 503 too_many_pending. "
        "Counted apart from max_connections, so they can never take served clients' slots.",
    )
    handshake_timeout: float = _setting(
        10.0,
        "Seconds a socket may take to send a whole request (head and body); a slower one gets 408 and is "
        "closed. A WebSocket's auth frame has auth_timeout on top.",
    )
    keep_alive_timeout: float = _setting(5.0, "Seconds an idle HTTP connection is kept open between requests.")
    max_request_head: int = _setting(
        16384,
        "Largest request head (request line and headers) in bytes; one header line may be at most 8192 "
        "bytes and a request may have at most 100 headers. Larger ones get 431 or 400 and are closed.",
    )
    max_subscriptions: int = _setting(128, "Channels per connection (WebSocket subscriptions or SSE channels).")
    max_channel_length: int = _setting(255, "Longest channel name, in characters.")
    max_message_bytes: int = _setting(
        65536, "Largest inbound WebSocket message and HTTP publish body, in bytes."
    )
    outbox_max_messages: int = _setting(
        1000, "Messages queued for one connection before it counts as a slow consumer."
    )
    outbox_max_bytes: int = _setting(
        1048576, "Bytes queued for one connection before it counts as a slow consumer."
    )
    send_timeout: float = _setting(
        5.0,
        "Seconds one write to a client may take. A client that does not read "
        "for this long is closed as a slow consumer.",
    )
    write_batch: int = _setting(
        64,
        "Most messages in one WebSocket frame (or one SSE write); publications that arrive together "
        "leave together, up to this many per frame.",
    )
    send_buffer: int = _setting(
        65536,
        "Bytes the kernel may hold unsent for one socket (SO_SNDBUF; Linux doubles it) and bytes "
        "the node's transport buffers before it stops writing and queues in the outbox.",
    )
    max_lag: float = _setting(
        20.0,
        "Seconds the oldest queued event of a connection may wait behind its full socket; past it the "
        "slow-consumer policy applies, as for an outbox overflow.",
    )
    slow_consumer_policy: str = _setting(
        "disconnect",
        "What happens to a client whose outbox overflows: disconnect (it resumes on reconnect), "
        "reset (queued events are dropped and each channel gets a reset) or latest (only the "
        "newest event per channel is kept until the client catches up).",
    )
    slow_consumer_namespaces: str = _setting(
        "",
        "Per-namespace overrides of slow_consumer_policy, as namespace=policy pairs separated "
        "by commas, e.g. 'ticker=latest,feed=reset'. The namespace is the channel name up to "
        "its first ':'.",
    )
    rate_limit: float = _setting(
        50.0, "Client messages per second allowed per WebSocket connection, on average."
    )
    rate_burst: int = _setting(100, "Client messages a WebSocket connection may send in a burst.")

    # -- heartbeats ------------------------------------------------------------
    heartbeat_interval: float = _setting(
        25.0, "Seconds between heartbeats: WebSocket pings and heartbeat frames, SSE comments."
    )
    heartbeat_timeout: float = _setting(
        10.0, "Seconds a WebSocket peer may take to answer a ping before it is closed."
    )
    sse_retry_ms: int = _setting(2000, "Reconnect delay suggested to SSE clients (the retry: field).")

    # -- drain -------------------------------------------------------------------------
    drain_window: float = _setting(
        20.0,
        "Seconds over which a draining node closes its connections, in paced batches with "
        "jitter, so clients reconnect to other nodes gradually.",
    )

    # -- publishing --------------------------------------------------------------
    client_publish: bool = _setting(
        False, "Let WebSocket clients publish. The HTTP API is separate."
    )

    # -- security (docs/security.md) --------------------------------------------
    jwt_secret: str = _setting(
        "", "HS256 secret for connection tokens. Setting any JWT key makes a token required.", secret=True
    )
    jwt_public_key_file: str = _setting("", "PEM public key (RSA or P-256 EC) for RS256/ES256 connection tokens.")
    jwks_url: str = _setting("", "JWKS URL for RS256/ES256 tokens, keys picked by kid; fetched with a 5 s timeout, cached 5 min.")
    jwt_audience: str = _setting("", "Required aud claim of connection tokens; empty: tokens must carry no aud.")
    jwt_issuer: str = _setting("", "Required iss claim of connection tokens; empty: not checked.")
    api_keys: str = _setting(
        "", "Comma-separated API keys for /api/publish and server-side /api/tickets; empty: no key needed.", secret=True
    )
    allowed_origins: str = _setting(
        "", "Comma-separated browser origins allowed to connect; empty: same-origin only; *: any origin."
    )
    channel_rules: str = _setting(
        "",
        "Per-namespace rules, e.g. 'public=subscribe:anyone,publish:nobody;*=subscribe:granted'. "
        "Modes: anyone, users, granted, nobody.",
    )
    channel_rules_file: str = _setting("", "JSON file of per-namespace rules; channel_rules overrides it.")
    ticket_secret: str = _setting(
        "", "Secret signing connection tickets, shared by all nodes; empty: derived from jwt_secret.", secret=True
    )
    ticket_ttl: float = _setting(30.0, "Seconds a connection ticket stays valid (it is single-use).")
    auth_timeout: float = _setting(5.0, "Seconds a WebSocket may take to send its auth frame when it needs one.")

    # -- presence (docs/presence.md) ------------------------------------------------
    presence_namespaces: str = _setting(
        "",
        "Namespaces whose channels keep presence (who is subscribed), comma-separated; * for every "
        "channel; empty: presence is off.",
    )
    presence_ttl: float = _setting(
        30.0,
        "Seconds a presence entry outlives its node's last refresh: the clients of a node that died "
        "leave presence within this time. The same on every node.",
    )
    presence_refresh: float = _setting(
        10.0,
        "Seconds between a node's refreshes of its presence entries: one batched write per interval "
        "for all its channels. Less than presence_ttl.",
    )
    presence_max_clients: int = _setting(1000, "Most presence entries per channel; clients beyond it are not listed.")
    presence_max_info_bytes: int = _setting(
        256, "Largest info (from the token's info claim or the connect hook), as compact JSON; larger is dropped."
    )
    presence_join_leave: bool = _setting(
        True, "Publish join and leave events for presence channels, for subscribers that ask for them."
    )
    presence_store: str = _setting(
        "",
        "Broker URL (redis:// or nats://) that keeps presence when the broker has no structure for it "
        "(Kafka); empty: the broker itself.",
    )
    announce_interval: float = _setting(
        3.0,
        "Seconds between a node's announcements on the control channel; a node silent for 2.5 "
        "intervals counts as gone (cluster-wide counts, server API commands).",
    )

    # -- backend hooks (docs/hooks.md) ------------------------------------------------
    hook_connect_url: str = _setting("", "URL the node POSTs to on every connect; empty: no connect hook.")
    hook_subscribe_url: str = _setting("", "URL the node POSTs to on every client subscribe; empty: none.")
    hook_publish_url: str = _setting("", "URL the node POSTs to on every client publish; empty: none.")
    hook_refresh_url: str = _setting(
        "", "URL the node POSTs to when a connection's expiry set by the connect hook arrives; empty: none."
    )
    hook_timeout: float = _setting(1.0, "Seconds a hook call may take, waiting for a free slot included.")
    hook_max_concurrency: int = _setting(64, "Hook calls in flight per node; more wait (within hook_timeout).")
    hook_headers: str = _setting(
        "", "Request headers forwarded to the connect hook, comma-separated names; none unless listed."
    )
    hook_cookies: str = _setting("", "Cookies forwarded to the connect hook, comma-separated names; none unless listed.")
    hook_failure: str = _setting(
        "deny",
        "What a failed hook call (timeout, error status, unreachable backend) means: deny (refuse, the "
        "client retries later) or allow (go on without the hook's answer).",
    )

    def __post_init__(self) -> None:
        positive = (
            "replay_limit",
            "max_connections",
            "max_subscriptions",
            "max_channel_length",
            "max_message_bytes",
            "outbox_max_messages",
            "outbox_max_bytes",
            "send_timeout",
            "write_batch",
            "max_pending",
            "handshake_timeout",
            "keep_alive_timeout",
            "max_request_head",
            "send_buffer",
            "max_lag",
            "heartbeat_interval",
            "heartbeat_timeout",
            "drain_window",
            "subscribe_wait",
            "rate_limit",
            "rate_burst",
            "presence_ttl",
            "presence_refresh",
            "presence_max_clients",
            "presence_max_info_bytes",
            "announce_interval",
            "hook_timeout",
            "hook_max_concurrency",
        )
        for name in positive:
            if getattr(self, name) <= 0:
                raise SettingsError(f"{name} must be greater than 0")
        if not (0 < self.port < 65536) or not (0 <= self.internal_port < 65536):
            raise SettingsError("ports must be between 1 and 65535 (internal_port may be 0)")
        if self.internal_port == self.port:
            raise SettingsError("internal_port must differ from port (or be 0)")
        if self.resume_window < 0 or self.resume_window > self.replay_limit:
            raise SettingsError("resume_window must be between 0 and replay_limit")
        if self.stream_check_interval < 0:
            raise SettingsError("stream_check_interval must be 0 (off) or more")
        self.namespace_policies()
        if self.presence_refresh >= self.presence_ttl:
            raise SettingsError("presence_refresh must be less than presence_ttl")
        if self.hook_failure not in ("deny", "allow"):
            raise SettingsError("hook_failure must be deny or allow")
        if self.log_level not in ("debug", "info", "warning", "error"):
            raise SettingsError("log_level must be debug, info, warning or error")

    def namespace_policies(self) -> dict[str, str]:
        """``slow_consumer_namespaces`` parsed, with every policy checked."""
        policies: dict[str, str] = {}
        for pair in filter(None, (p.strip() for p in self.slow_consumer_namespaces.split(","))):
            namespace, sep, policy = pair.partition("=")
            if not sep or not namespace.strip():
                raise SettingsError(f"slow_consumer_namespaces: {pair!r} is not namespace=policy")
            policies[namespace.strip()] = policy.strip()
        for policy in (self.slow_consumer_policy, *policies.values()):
            if policy not in SLOW_CONSUMER_POLICIES:
                raise SettingsError(
                    f"slow consumer policy {policy!r} is not one of {', '.join(SLOW_CONSUMER_POLICIES)}"
                )
        return policies

    @property
    def node_name(self) -> str:
        return self.node_id or f"{socket.gethostname()}-{os.getpid()}"

    # -- loading -----------------------------------------------------------------

    @classmethod
    def from_sources(
        cls, argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None
    ) -> Settings:
        environ = os.environ if environ is None else environ
        parser = argparse.ArgumentParser(prog="fanline node", description="Run a Fanline edge node.")
        add_arguments(parser)
        namespace = parser.parse_args(list(argv or []))
        return cls.from_namespace(namespace, environ)

    @classmethod
    def from_namespace(cls, namespace: argparse.Namespace, environ: Mapping[str, str]) -> Settings:
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            flag_value = getattr(namespace, f.name, None)
            if flag_value is not None:
                values[f.name] = _convert(f, flag_value)
            elif ENV_PREFIX + f.name.upper() in environ:
                values[f.name] = _convert(f, environ[ENV_PREFIX + f.name.upper()])
        return cls(**values)

    def redacted(self) -> dict[str, Any]:
        """The settings as a dict, with secrets masked, for the startup log line."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            out[f.name] = "***" if f.metadata.get("secret") and value else value
        return out


def _type_name(f: dataclasses.Field[Any]) -> str:
    return str(f.type)


def _convert(f: dataclasses.Field[Any], raw: Any) -> Any:
    kind = _type_name(f)
    if not isinstance(raw, str):
        return raw
    try:
        if kind == "bool":
            lowered = raw.strip().lower()
            if lowered in ("1", "true", "yes", "on"):
                return True
            if lowered in ("0", "false", "no", "off", ""):
                return False
            raise ValueError(raw)
        if kind == "int":
            return int(raw)
        if kind == "float":
            return float(raw)
    except ValueError:
        raise SettingsError(f"{f.name}: {raw!r} is not a valid {kind}") from None
    return raw


def _shown_default(f: dataclasses.Field[Any]) -> str:
    default = f.default
    return "(empty)" if default == "" else str(default).lower() if isinstance(default, bool) else str(default)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    for f in dataclasses.fields(Settings):
        flag = "--" + f.name.replace("_", "-")
        # "%%": argparse formats help strings with %.
        help_text = f"{f.metadata['help']} Default: {_shown_default(f)}. [env {ENV_PREFIX}{f.name.upper()}]".replace(
            "%", "%%"
        )
        if _type_name(f) == "bool":
            parser.add_argument(flag, dest=f.name, default=None, action=argparse.BooleanOptionalAction, help=help_text)
        else:
            parser.add_argument(flag, dest=f.name, default=None, metavar=_type_name(f).upper(), help=help_text)


def markdown_table() -> str:
    """The configuration reference, as docs/configuration.md carries it."""
    rows = [
        "| Flag | Environment variable | Default | Meaning |",
        "|---|---|---|---|",
    ]
    for f in dataclasses.fields(Settings):
        rows.append(
            f"| `--{f.name.replace('_', '-')}` | `{ENV_PREFIX}{f.name.upper()}` | `{_shown_default(f)}` | "
            f"{f.metadata['help']} |"
        )
    return "\n".join(rows) + "\n"
