"""The node's HTTP endpoints, as Starlette routes.

Client port: ``POST /api/publish``, ``POST /api/publish/batch``, the demo page
and the health probes.  Internal port: health probes, ``/metrics``,
``POST /drain``, ``POST /shed`` and ``GET /status`` (node.shed, node.status).
The two that change state take a caller on loopback or the internal key
(:meth:`~node.access.AccessPolicy.check_operator`).
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from broker_adapters.base import BrokerError
from broker_adapters.types import (
    RESERVED_CHANNEL_PREFIX,
    InvalidChannel,
    InvalidData,
    InvalidEventType,
    encode_data,
    validate_channel,
    validate_event_type,
)

from .errors import ClientError, ErrorCode
from .protocol import strict_loads
from .server_api import api_routes
from .shed import Shedder
from .status import Status

if TYPE_CHECKING:
    from .runtime import Node

MAX_BATCH = 1000
# Publications of one batch fanned out per loop pass (see publish_batch).
BATCH_PASS = 32
# A batch body may hold this many maximum-size publications' worth of bytes.
BATCH_BODY_FACTOR = 16
DEMO_PAGE = Path(__file__).with_name("demo.html")
# The JavaScript client (clients/js), built and copied here by `npm run build:node`; the demo page imports it.
CLIENT_DIR = Path(__file__).with_name("js-client")


#: Operator endpoints, served on the client port too when there is no internal port.
INTERNAL_PATHS = frozenset(("/metrics", "/drain", "/shed", "/status"))


def error_response(error: ClientError) -> Response:
    return Response(
        error.body(),
        error.status,
        headers={k.decode(): v.decode() for k, v in error.headers()},
        media_type="application/json",
    )


async def _read_json(node: Node, request: Request, optional: bool = False, limit: int | None = None) -> Any:
    limit = limit or node.settings.max_message_bytes
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise ClientError(ErrorCode.MESSAGE_TOO_LARGE, f"bodies are limited to {limit} bytes")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise ClientError(ErrorCode.MESSAGE_TOO_LARGE, f"bodies are limited to {limit} bytes")
    if optional and not body.strip():
        return None
    try:
        return strict_loads(bytes(body))
    except (ValueError, UnicodeDecodeError) as exc:
        raise ClientError(ErrorCode.INVALID_JSON, f"body is not JSON: {exc}") from None
    except RecursionError:
        # Deep nesting exhausts the decoder's recursion, which is not a ValueError.
        raise ClientError(ErrorCode.INVALID_JSON, "body is nested too deeply") from None


def _parse_publication(node: Node, item: Any) -> tuple[str, str, str | None]:
    if not isinstance(item, dict):
        raise ClientError(ErrorCode.INVALID_MESSAGE, "a publication is a JSON object")
    if "data" not in item:
        raise ClientError(ErrorCode.INVALID_MESSAGE, "a publication needs a data field")
    try:
        channel = validate_channel(item.get("channel"), node.settings.max_channel_length)
        event = validate_event_type(item.get("event"))
        data = encode_data(item["data"])
        if len(data) > node.settings.max_message_bytes:
            raise ClientError(ErrorCode.MESSAGE_TOO_LARGE, f"data is limited to {node.settings.max_message_bytes} bytes")
    except InvalidChannel as exc:
        raise ClientError(ErrorCode.INVALID_CHANNEL, str(exc)) from None
    except InvalidEventType as exc:
        raise ClientError(ErrorCode.INVALID_EVENT_TYPE, str(exc)) from None
    except InvalidData as exc:
        raise ClientError(ErrorCode.INVALID_DATA, str(exc)) from None
    if channel.startswith(RESERVED_CHANNEL_PREFIX):
        raise ClientError(ErrorCode.PUBLISH_FORBIDDEN, f"channels starting with {RESERVED_CHANNEL_PREFIX!r} are reserved")
    return channel, data, event


async def _publish_one(node: Node, channel: str, data: str, event: str | None) -> dict[str, Any]:
    try:
        publication = await node.hub.publish(channel, data, event, source="http")
    except BrokerError as exc:
        raise ClientError(ErrorCode.BROKER_UNAVAILABLE, f"publish failed: {exc}") from None
    return {"channel": channel, "id": publication.position.event_id}


def _node(request: Request) -> Node:
    node: Node = request.app.state.node
    return node


def _guarded(handler: Any, check_api: bool = True) -> Any:
    async def endpoint(request: Request) -> Response:
        node = _node(request)
        try:
            if check_api:
                node.access.check_api(request.headers)
            response: Response = await handler(node, request)
            return response
        except ClientError as exc:
            node.metrics.client_errors.labels(exc.code.value).inc()
            return error_response(exc)

    return endpoint


async def publish(node: Node, request: Request) -> Response:
    body = await _read_json(node, request)
    channel, data, event = _parse_publication(node, body)
    return JSONResponse(await _publish_one(node, channel, data, event))


async def publish_batch(node: Node, request: Request) -> Response:
    body = await _read_json(node, request, limit=node.settings.max_message_bytes * BATCH_BODY_FACTOR)
    items = body.get("publications") if isinstance(body, dict) else None
    if not isinstance(items, list) or not items:
        raise ClientError(ErrorCode.INVALID_MESSAGE, 'send {"publications": [...]} with at least one item')
    if len(items) > MAX_BATCH:
        raise ClientError(ErrorCode.MESSAGE_TOO_LARGE, f"at most {MAX_BATCH} publications per batch")
    # Validate everything before publishing anything, so a bad item cannot
    # leave half a batch behind.
    parsed = [_parse_publication(node, item) for item in items]
    results = []
    for index, (channel, data, event) in enumerate(parsed):
        try:
            results.append(await _publish_one(node, channel, data, event))
            if index % BATCH_PASS == BATCH_PASS - 1:
                # The embedded broker fans out without suspending: let the
                # flush run now and then, so a large batch leaves in frames
                # of a few dozen events rather than as one pass.
                await asyncio.sleep(0)
        except ClientError as exc:
            # Earlier items are published and keep their ids; say exactly where it stopped.
            return error_response(
                ClientError(exc.code, exc.message, extra={"published": results, "failed_at": index})
            )
    return JSONResponse({"results": results})


async def issue_ticket(node: Node, request: Request) -> Response:
    # Authenticates itself: a Bearer JWT, or an API key for server-side issuance.
    issued = await node.access.issue_ticket(request.headers, await _read_json(node, request, optional=True))
    return JSONResponse(issued, headers={"cache-control": "no-store"})


async def healthz(request: Request) -> Response:
    return PlainTextResponse("ok")


async def readyz(request: Request) -> Response:
    ready, why = await _node(request).ready()
    return PlainTextResponse(why, 200 if ready else 503)


async def metrics(request: Request) -> Response:
    return PlainTextResponse(_node(request).metrics.render(), media_type="text/plain; version=0.0.4")


async def demo(request: Request) -> Response:
    return HTMLResponse(DEMO_PAGE.read_text(encoding="utf-8"))


def client_routes(node: Node) -> list[BaseRoute]:
    routes: list[BaseRoute] = [
        Route("/api/publish", _guarded(publish), methods=["POST"]),
        Route("/api/publish/batch", _guarded(publish_batch), methods=["POST"]),
        Route("/api/tickets", _guarded(issue_ticket, check_api=False), methods=["POST"]),
        Route("/healthz", healthz),
        Route("/readyz", readyz),
        # The server API: history, info, presence, and commands to every node (node/server_api.py).
        *api_routes(node, _guarded, _read_json),
    ]
    if node.settings.demo:
        routes += [Route("/", demo), Mount("/fanline", StaticFiles(directory=CLIENT_DIR))]
    return routes


def _operator(endpoint: Any) -> Any:
    """Guard an endpoint that changes the node's state: loopback, or the internal key."""

    async def guarded(request: Request) -> Response:
        if request.method == "POST":
            node = _node(request)
            try:
                node.access.check_operator(request.client.host if request.client else None, request.headers)
            except ClientError as exc:
                node.metrics.client_errors.labels(exc.code.value).inc()
                return error_response(exc)
        response: Response = await endpoint(request)
        return response

    return guarded


async def drain(request: Request) -> Response:
    """POST starts the paced drain; GET reports how far it got (for ``fanline drain --wait``)."""
    node = _node(request)
    if request.method == "POST":
        node.begin_drain()
    return JSONResponse(
        {"draining": node.draining, "connections": len(node.connections), "window": node.settings.drain_window}
    )


def internal_routes(node: Node) -> list[Route]:
    shedder = Shedder(node)
    return [
        Route("/healthz", healthz),
        Route("/readyz", readyz),
        Route("/metrics", metrics),
        Route("/drain", _operator(drain), methods=["GET", "POST"]),
        # Changes state like /drain (it closes connections): the same guard.
        Route("/shed", _operator(shedder.endpoint), methods=["POST"]),
        Route("/status", Status(node, shedder).endpoint),
    ]
