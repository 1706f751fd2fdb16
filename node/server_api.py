"""The server API: what a backend can ask of the cluster over HTTP, with an API key.

Every endpoint is a ``POST`` of a JSON object to ``/api/<name>`` on the
client port, guarded like ``/api/publish`` (docs/server-api.md):

- ``history``: a channel's publications from a position, oldest or newest
  first, with the same ids as the stream;
- ``info``: subscribers on every live node, and the presence count;
- ``presence``, ``presence_stats``: the channel's present clients, or their count;
- ``disconnect``, ``unsubscribe``, ``refresh``, ``revoke``: commands that
  reach every node through the broker (node.commands); a node that holds
  none of the user's connections ignores them;
- ``nodes`` (``GET``): the live nodes and their connection counts.

Reads go to the broker (or the presence store), never only to this node.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from broker_adapters.base import BrokerError
from broker_adapters.control import MAX_REASON, Command
from broker_adapters.presence import users_of
from broker_adapters.types import InvalidChannel, InvalidEventId, Position, Publication, validate_channel

from .auth import is_unix_time
from .commands import DEFAULT_DISCONNECT_CODE, MAX_BAN
from .errors import ClientError, ErrorCode

if TYPE_CHECKING:
    from .runtime import Node

Handler = Callable[["Node", Request], Awaitable[Response]]
ReadJSON = Callable[["Node", Request], Awaitable[Any]]

#: Most publications one history request returns.
MAX_HISTORY = 1000


def _field(body: Any, name: str, kind: type | tuple[type, ...], required: bool = True) -> Any:
    if not isinstance(body, dict):
        raise ClientError(ErrorCode.INVALID_MESSAGE, "send a JSON object")
    value = body.get(name)
    if value is None:
        if required:
            raise ClientError(ErrorCode.INVALID_MESSAGE, f"{name} is required")
        return None
    if isinstance(value, bool) and bool not in (kind if isinstance(kind, tuple) else (kind,)):
        raise ClientError(ErrorCode.INVALID_MESSAGE, f"{name} has the wrong type")
    if not isinstance(value, kind):
        raise ClientError(ErrorCode.INVALID_MESSAGE, f"{name} has the wrong type")
    return value


def _channel(node: Node, body: Any) -> str:
    try:
        return validate_channel(_field(body, "channel", str), node.settings.max_channel_length)
    except InvalidChannel as exc:
        raise ClientError(ErrorCode.INVALID_CHANNEL, str(exc)) from None


def _user(body: Any) -> str:
    user: str = _field(body, "user", str)
    if not user or len(user) > 255:
        raise ClientError(ErrorCode.INVALID_MESSAGE, "user must be 1 to 255 characters")
    return user


def _publication(publication: Publication) -> dict[str, Any]:
    out: dict[str, Any] = {"id": publication.position.event_id}
    if publication.event is not None:
        out["event"] = publication.event
    if publication.time_ms:
        out["time"] = publication.time_ms
    out["data"] = _Raw(publication.data)
    return out


class _Raw(str):
    """Publication data: compact JSON text, spliced into the answer as it is."""

    __slots__ = ()


class _Answer(JSONResponse):
    def render(self, content: Any) -> bytes:
        return _encode(content).encode()


def _encode(value: Any) -> str:
    if isinstance(value, _Raw):
        return str(value)
    if isinstance(value, dict):
        return "{" + ",".join(f"{json.dumps(k)}:{_encode(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ",".join(_encode(v) for v in value) + "]"
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def plan_history(since: Position | None, top: Position) -> tuple[int, bool]:
    """Where a history read starts, and whether ``since`` is still in the stream (pure).

    No ``since``: from the oldest retained publication.  A ``since`` of
    another epoch: the stream it named is gone, so nothing follows it.
    """
    if since is None:
        return 0, True
    if since.epoch != top.epoch:
        return 0, False
    return since.offset, True


def api_routes(node: Node, guarded: Callable[[Handler], Any], read_json: ReadJSON) -> list[Route]:
    """The server API's routes; ``guarded`` checks the API key and turns ClientError into answers."""

    async def history(node: Node, request: Request) -> Response:
        body = await read_json(node, request)
        channel = _channel(node, body)
        limit = _field(body, "limit", int, required=False)
        limit = 100 if limit is None else limit
        if not 0 <= limit <= MAX_HISTORY:
            raise ClientError(ErrorCode.INVALID_MESSAGE, f"limit must be 0 to {MAX_HISTORY}")
        reverse = bool(_field(body, "reverse", bool, required=False))
        since_text = _field(body, "since", str, required=False)
        try:
            since = Position.parse(since_text) if since_text else None
        except InvalidEventId as exc:
            raise ClientError(ErrorCode.INVALID_EVENT_ID, str(exc)) from None
        try:
            top = (await node.broker.history(channel, None, 0)).top
            start, same_epoch = plan_history(since, top)
            if not same_epoch:
                return _Answer({"channel": channel, "top": top.event_id, "complete": False, "publications": []})
            # Newest first reads everything retained after `since` (at most
            # MAX_HISTORY), then keeps the newest `limit`: offsets may skip,
            # so they cannot be counted back from the top.
            read = await node.broker.history(channel, start, MAX_HISTORY if reverse else limit)
        except BrokerError as exc:
            raise ClientError(ErrorCode.BROKER_UNAVAILABLE, f"cannot read history now: {exc}") from None
        publications = list(read.publications)
        if reverse:
            publications = publications[::-1][:limit]
        return _Answer(
            {
                "channel": channel,
                "top": read.top.event_id,
                "complete": read.complete or since is None,
                "publications": [_publication(p) for p in publications],
            }
        )

    async def info(node: Node, request: Request) -> Response:
        channel = _channel(node, await read_json(node, request))
        count = await node.control.channel_count(channel)
        presence = await node.presence.count(channel) if node.presence.enabled(channel) and node.presence.store else None
        return JSONResponse(
            {
                "channel": channel,
                "subscribers": count.subscribers,
                "nodes": count.answered,
                "nodes_expected": count.expected,
                "presence": presence,
            }
        )

    async def presence(node: Node, request: Request) -> Response:
        channel = _channel(node, await read_json(node, request))
        entries = await node.presence.list(channel)
        return JSONResponse(
            {"channel": channel, "clients": [e.as_dict() for e in entries], "users": users_of(entries)}
        )

    async def presence_stats(node: Node, request: Request) -> Response:
        channel = _channel(node, await read_json(node, request))
        return JSONResponse({"channel": channel, "clients": await node.presence.count(channel)})

    def _ban(body: Any) -> float | None:
        ban = _field(body, "ban", (int, float), required=False)
        if ban is not None and not 0 <= ban <= MAX_BAN:
            raise ClientError(ErrorCode.INVALID_MESSAGE, f"ban must be 0 to {MAX_BAN:g} seconds")
        return None if ban is None else float(ban)

    async def disconnect(node: Node, request: Request) -> Response:
        body = await read_json(node, request)
        user = _user(body)
        code = _field(body, "code", int, required=False)
        # Only a missing code takes the default: 0 is out of range, not "none".
        code = DEFAULT_DISCONNECT_CODE if code is None else code
        if not 4000 <= code <= 4999:
            raise ClientError(ErrorCode.INVALID_MESSAGE, "code must be 4000 to 4999")
        reason = _field(body, "reason", str, required=False) or "disconnected"
        if len(reason) > MAX_REASON:
            raise ClientError(ErrorCode.INVALID_MESSAGE, f"reason must be at most {MAX_REASON} characters")
        await node.control.send(
            Command.DISCONNECT, user=user, client=_field(body, "client", str, required=False), code=code,
            reason=reason, ban=_ban(body),
        )
        return JSONResponse({})

    async def unsubscribe(node: Node, request: Request) -> Response:
        body = await read_json(node, request)
        user, channel = _user(body), _channel(node, body)
        await node.control.send(
            Command.UNSUBSCRIBE, user=user, channel=channel, client=_field(body, "client", str, required=False)
        )
        return JSONResponse({})

    async def refresh(node: Node, request: Request) -> Response:
        body = await read_json(node, request)
        user = _user(body)
        expire_at = _field(body, "expire_at", (int, float))
        if not is_unix_time(expire_at):
            # Sent on to every node, where it becomes a timer: a number beyond a float would fail there.
            raise ClientError(ErrorCode.INVALID_MESSAGE, "expire_at must be a Unix time in seconds, at most year 9999")
        await node.control.send(
            Command.REFRESH, user=user, expire_at=expire_at, client=_field(body, "client", str, required=False)
        )
        return JSONResponse({})

    async def revoke(node: Node, request: Request) -> Response:
        body = await read_json(node, request)
        await node.control.send(Command.REVOKE, user=_user(body), ban=_ban(body))
        return JSONResponse({})

    async def nodes(node: Node, request: Request) -> Response:
        live = node.control.live_nodes()
        return JSONResponse({"nodes": [{"name": n, "connections": c} for n, c in sorted(live.items())]})

    posts: list[tuple[str, Handler]] = [
        ("history", history),
        ("info", info),
        ("presence", presence),
        ("presence_stats", presence_stats),
        ("disconnect", disconnect),
        ("unsubscribe", unsubscribe),
        ("refresh", refresh),
        ("revoke", revoke),
    ]
    routes = [Route(f"/api/{name}", guarded(handler), methods=["POST"]) for name, handler in posts]
    routes.append(Route("/api/nodes", guarded(nodes), methods=["GET"]))
    return routes
