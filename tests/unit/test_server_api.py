"""The server API's request checks (node/server_api.py), without a node or a broker."""

from __future__ import annotations

import json
from types import SimpleNamespace
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response

from node.api import _read_json, error_response
from node.errors import ClientError
from node.server_api import api_routes


class _Control:
    def __init__(self) -> None:
        self.sent: list[tuple[Any, dict[str, Any]]] = []

    async def send(self, command: Any, **fields: Any) -> None:
        self.sent.append((command, fields))


def _app() -> tuple[Starlette, _Control]:
    control = _Control()
    node = SimpleNamespace(settings=SimpleNamespace(max_channel_length=255, max_message_bytes=65536), control=control)

    def guarded(handler: Any) -> Any:
        async def endpoint(request: Request) -> Response:
            try:
                response: Response = await handler(node, request)
                return response
            except ClientError as exc:
                return error_response(exc)

        return endpoint

    return Starlette(routes=api_routes(node, guarded, _read_json)), control  # type: ignore[arg-type]


async def _post(app: Starlette, path: str, body: dict[str, Any]) -> tuple[int, Any]:
    payload = json.dumps(body).encode()
    scope = {
        "type": "http", "method": "POST", "path": path, "raw_path": path.encode(), "query_string": b"",
        "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())],
        "http_version": "1.1", "scheme": "http", "server": ("test", 80), "client": ("127.0.0.1", 1), "root_path": "",
    }  # fmt: skip
    received = False

    async def receive() -> dict[str, Any]:
        nonlocal received
        if received:
            return {"type": "http.disconnect"}
        received = True
        return {"type": "http.request", "body": payload, "more_body": False}

    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(scope, receive, send)
    status = next(m["status"] for m in sent if m["type"] == "http.response.start")
    answer = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return status, json.loads(answer)


async def test_a_disconnect_without_a_code_closes_with_4009() -> None:
    app, control = _app()
    assert await _post(app, "/api/disconnect", {"user": "ada"}) == (200, {})
    assert control.sent[0][1]["code"] == 4009


async def test_a_disconnect_code_outside_4000_to_4999_is_refused_even_0() -> None:
    app, control = _app()
    for code in (0, 1000, 5000):
        status, answer = await _post(app, "/api/disconnect", {"user": "ada", "code": code})
        assert (status, answer["error"]) == (400, "invalid_message"), code
    assert control.sent == []
