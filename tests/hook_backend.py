"""A small application backend for the hook tests: a real Starlette app in its own process.

Its answers depend on what the node forwards, so one backend serves every
case: the ``mode`` cookie picks allow, deny, slow, fail or garbage for the
connect hook; channels starting with ``secret`` are refused on subscribe;
the data ``"forbidden"`` is refused on publish.  Run as
``python -m tests.hook_backend PORT``.
"""

from __future__ import annotations

import asyncio
import sys
import time

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

SLOW = 5.0


async def connect(request: Request) -> Response:
    body = await request.json()
    mode = body["cookies"].get("mode", "allow")
    if mode == "slow":
        await asyncio.sleep(SLOW)
    if mode == "fail":
        return PlainTextResponse("backend bug", 500)
    if mode == "garbage":
        return PlainTextResponse("not json")
    if mode == "deny":
        return JSONResponse({"allow": False, "reason": "no session"})
    session = body["cookies"].get("session")
    if session is None:
        return JSONResponse({"allow": False, "reason": "log in first"})
    return JSONResponse(
        {
            "user": f"sess-{session}",
            "info": {"plan": "pro", "trace": body["headers"].get("x-trace")},
            "channels": ["chat:server"],
            "expire_at": time.time() + (1 if mode == "short" else 600),
        }
    )


async def subscribe(request: Request) -> Response:
    body = await request.json()
    if body["channel"].startswith("secret"):
        return JSONResponse({"allow": False, "reason": "not for you"})
    return JSONResponse({})


async def publish(request: Request) -> Response:
    body = await request.json()
    return JSONResponse({"allow": body["data"] != "forbidden"})


async def refresh(request: Request) -> Response:
    return JSONResponse({"expire_at": time.time() + 600})


app = Starlette(
    routes=[
        Route("/connect", connect, methods=["POST"]),
        Route("/subscribe", subscribe, methods=["POST"]),
        Route("/publish", publish, methods=["POST"]),
        Route("/refresh", refresh, methods=["POST"]),
        Route("/healthz", lambda request: PlainTextResponse("ok")),
    ]
)

if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning")
