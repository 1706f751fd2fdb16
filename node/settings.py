"""One settings object for a node, read from CLI flags and environment variables.

Every field of :class:`Settings` is a flag ``--field-name`` and an environment
variable ``FANLINE_FIELD_NAME``.  A flag wins over the environment, which wins
over the default.  ``fanline settings`` prints the table that
docs/configuration.md carries, so the docs cannot drift from the code.

Secrets.  A setting marked :attr:`Secrecy.SECRET` (the whole value) or
:attr:`Secrecy.URL` (a URL whose password is secret) can also be read from a
file, ``--field-name-file`` / ``FANLINE_FIELD_NAME_FILE``, which is how
Kubernetes mounts a Secret; it is masked in the settings log line, and
:meth:`Settings.secret_values` gives node.redaction every value to mask
anywhere else.  One mechanism for every secret, so a new secret setting
gets all of it by being marked.
"""

from __future__ import annotations

import argparse
import dataclasses
import enum
import math
import os
import socket
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, unquote, urlsplit, urlunsplit

from broker_adapters.errors import ConfigError

from .redaction import MASK, redact_url

ENV_PREFIX = "FANLINE_"
FILE_SUFFIX = "_file"
#: The header that carries ``internal_key`` (not Authorization: the Kubernetes API server's
#: pod proxy strips that one).
INTERNAL_KEY_HEADER = "x-fanline-internal-key"
SLOW_CONSUMER_POLICIES = ("disconnect", "reset", "latest")


class Secrecy(enum.Enum):
    PLAIN = "plain"
    SECRET = "secret"  # the whole value
    URL = "url"  # a URL whose password (userinfo) is secret


def _setting(default: Any, help: str, *, secret: bool = False, url: bool = False) -> Any:
    secrecy = Secrecy.SECRET if secret else Secrecy.URL if url else Secrecy.PLAIN
    return field(default=default, metadata={"help": help, "secrecy": secrecy})


def secrecy(f: dataclasses.Field[Any]) -> Secrecy:
    value: Secrecy = f.metadata.get("secrecy", Secrecy.PLAIN)
    return value


# Broker URL schemes whose adapters take a password in the URL's userinfo, and whether
# they percent-decode it (redis-py does; nats-py passes it on as written).
_PASSWORD_SCHEMES = {"redis": True, "rediss": True, "nats": False, "tls": False}
_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")


def with_password(url: str, password: str) -> str:
    """``url`` with ``password`` in its userinfo (its user name kept).  Raises SettingsError."""
    parts = urlsplit(url)
    decodes = _PASSWORD_SCHEMES.get(parts.scheme)
    if decodes is None:
        schemes = ", ".join(f"{s}://" for s in _PASSWORD_SCHEMES)
        raise SettingsError(f"broker_password works with {schemes} URLs; {parts.scheme}:// takes no password")
    if parts.password is not None:
        raise SettingsError("the broker URL carries a password already: set it there or in broker_password, not both")
    if not decodes and not set(password) <= _UNRESERVED:
        raise SettingsError(
            "NATS reads a URL's password as written, so broker_password may hold only letters, digits and "
            "- . _ ~; put a URL with any other password in broker (or broker_file) instead"
        )
    userinfo, _, hosts = parts.netloc.rpartition("@")
    user = userinfo.partition(":")[0]
    return urlunsplit(parts._replace(netloc=f"{user}:{quote(password, safe='')}@{hosts}"))


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
    internal_host: str = _setting(
        "127.0.0.1",
        "Address the internal port listens on. Loopback keeps /metrics, /drain and /shed on this host; "
        "in Kubernetes use the pod's address (0.0.0.0), since probes, Prometheus and the API server's pod "
        "proxy connect from outside the pod (the Helm chart sets it).",
    )
    broker: str = _setting(
        "memory://", "Broker URL: memory://, redis://, nats:// or kafka://. Its password is masked in logs.", url=True
    )
    broker_password: str = _setting(
        "",
        "Password for the broker, put into the broker URL (its user name kept): for redis://, rediss://, "
        "nats:// and tls:// URLs.",
        secret=True,
    )
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
    # 4000, not fewer: a dead node's clients all arrive at once (the storm in
    # `make bench`: 10,000 clients to 2 nodes), and a refused one comes back
    # seconds later. A pending socket costs a few KiB, at most max_request_head.
    max_pending: int = _setting(
        4000,
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
    jwks_url: str = _setting(
        "", "JWKS URL for RS256/ES256 tokens, keys picked by kid; cached 5 min. Its password is masked in logs.",
        url=True,
    )
    jwks_timeout: float = _setting(
        5.0,
        "Seconds one JWKS fetch may take in all (connect, TLS, response); a handshake waits at most this long "
        "for keys, and a failed fetch keeps the keys the node has.",
    )
    jwt_audience: str = _setting("", "Required aud claim of connection tokens; empty: tokens must carry no aud.")
    jwt_issuer: str = _setting("", "Required iss claim of connection tokens; empty: not checked.")
    api_keys: str = _setting(
        "",
        "API keys for /api/publish and server-side /api/tickets, separated by commas (or one per line in a "
        "file); empty: no key needed.",
        secret=True,
    )
    allowed_origins: str = _setting(
        "", "Comma-separated browser origins allowed to connect; empty: same-origin only; *: any origin."
    )
    allowed_hosts: str = _setting(
        "",
        "Comma-separated host names the client port answers to (the Host header, without port); others "
        "get 400. Empty: any. Stops DNS rebinding.",
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
    auth_timeout: float = _setting(
        3.0, "Seconds a WebSocket may take to send its auth frame when it needs one (after its handshake)."
    )
    internal_key: str = _setting(
        "",
        "Key that lets a caller from beyond loopback POST /drain and /shed (header X-Fanline-Internal-Key); "
        "empty: only callers on 127.0.0.1 or ::1 may.",
        secret=True,
    )

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
        url=True,
    )
    announce_interval: float = _setting(
        3.0,
        "Seconds between a node's announcements on the control channel; a node silent for 2.5 "
        "intervals counts as gone (cluster-wide counts, server API commands).",
    )

    # -- backend hooks (docs/hooks.md) ------------------------------------------------
    hook_connect_url: str = _setting("", "URL the node POSTs to on every connect; empty: no connect hook.", url=True)
    hook_subscribe_url: str = _setting("", "URL the node POSTs to on every client subscribe; empty: none.", url=True)
    hook_publish_url: str = _setting("", "URL the node POSTs to on every client publish; empty: none.", url=True)
    hook_refresh_url: str = _setting(
        "", "URL the node POSTs to when a connection's expiry set by the connect hook arrives; empty: none.",
        url=True,
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
            "jwks_timeout",
        )
        for f in dataclasses.fields(self):
            # NaN passes every comparison below, and infinity is no timeout at all.
            if _type_name(f) == "float" and not math.isfinite(getattr(self, f.name)):
                raise SettingsError(f"{f.name} must be a finite number")
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
        if self.broker_password:
            with_password(self.broker, self.broker_password)
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

    @property
    def broker_url(self) -> str:
        """The URL the node connects to: ``broker`` with ``broker_password`` in it, when set."""
        return with_password(self.broker, self.broker_password) if self.broker_password else self.broker

    def secret_values(self) -> Iterator[str]:
        """Every secret value these settings hold, for node.redaction to mask wherever it appears."""
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            kind = secrecy(f)
            if not value or kind is Secrecy.PLAIN:
                continue
            if kind is Secrecy.SECRET:
                yield value
                # A list of keys: each key is a secret on its own.
                yield from (part.strip() for part in value.replace("\n", ",").split(",") if part.strip())
            else:
                password = _url_password(value)
                if password:
                    yield password
                    yield unquote(password)

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
            has_file = secrecy(f) is not Secrecy.PLAIN
            flag_file = getattr(namespace, f.name + FILE_SUFFIX, None) if has_file else None
            env_name = ENV_PREFIX + f.name.upper()
            env_file = environ.get(env_name + FILE_SUFFIX.upper()) if has_file else None
            # The flags, either form, win over the environment, either form.
            for value, path, where in (
                (getattr(namespace, f.name, None), flag_file, "flags"),
                (environ.get(env_name), env_file, "environment"),
            ):
                if value is not None and path is not None:
                    raise SettingsError(f"{f.name} and {f.name}{FILE_SUFFIX} are both set in the {where}: set one")
                if value is not None:
                    values[f.name] = _convert(f, value)
                    break
                if path is not None:
                    values[f.name] = read_secret_file(f.name, path)
                    break
        return cls(**values)

    def redacted(self) -> dict[str, Any]:
        """The settings as a dict, with secrets masked, for the startup log line."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            kind = secrecy(f)
            if kind is Secrecy.SECRET and value:
                value = MASK
            elif kind is Secrecy.URL and value:
                value = redact_url(value)
            out[f.name] = value
        return out


def _url_password(url: str) -> str | None:
    try:
        return urlsplit(url).password
    except ValueError:
        return None


def read_secret_file(name: str, path: str) -> str:
    """A secret from a file, as Kubernetes mounts them.  One trailing newline (what ``echo`` adds) is
    not part of it; an empty file is refused, since an empty secret would switch the check off."""
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except OSError as exc:
        raise SettingsError(f"{name}{FILE_SUFFIX}: cannot read {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise SettingsError(f"{name}{FILE_SUFFIX}: {path} is not UTF-8 text") from None
    value = text.removesuffix("\n").removesuffix("\r")
    if not value.strip():
        raise SettingsError(f"{name}{FILE_SUFFIX}: {path} is empty")
    return value


def env_secret(name: str, environ: Mapping[str, str]) -> str:
    """A secret setting for the other commands (``fanline drain``, ``fanline cluster``): from
    ``FANLINE_NAME`` or the file ``FANLINE_NAME_FILE`` names; empty when neither is set."""
    variable = ENV_PREFIX + name.upper()
    if environ.get(variable):
        return environ[variable]
    path = environ.get(variable + FILE_SUFFIX.upper())
    return read_secret_file(name, path) if path else ""


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
        if secrecy(f) is not Secrecy.PLAIN:
            parser.add_argument(
                flag + "-file", dest=f.name + FILE_SUFFIX, default=None, metavar="PATH",
                help=f"read {f.name} from this file [env {ENV_PREFIX}{f.name.upper()}{FILE_SUFFIX.upper()}]",
            )  # fmt: skip


def _secret_note(f: dataclasses.Field[Any]) -> str:
    kind = secrecy(f)
    if kind is Secrecy.PLAIN:
        return ""
    what = "Secret: masked in logs" if kind is Secrecy.SECRET else "Masked in logs"
    name = f.name.replace("_", "-")
    return f" *{what}; also read from a file: `--{name}-file`, `{ENV_PREFIX}{f.name.upper()}_FILE`.*"


def markdown_table() -> str:
    """The configuration reference, as docs/configuration.md carries it."""
    rows = [
        "| Flag | Environment variable | Default | Meaning |",
        "|---|---|---|---|",
    ]
    for f in dataclasses.fields(Settings):
        rows.append(
            f"| `--{f.name.replace('_', '-')}` | `{ENV_PREFIX}{f.name.upper()}` | `{_shown_default(f)}` | "
            f"{f.metadata['help']}{_secret_note(f)} |"
        )
    return "\n".join(rows) + "\n"
