"""Authentication, authorization and tickets, against real nodes with real clients.

One node (module-scoped) verifies three kinds of token at once: HS256 with a
shared secret, ES256 with a PEM public key, and RS256 with keys served as a
JWKS from a local HTTP server.  Every refusal is checked for the status or
close code and the error code docs/security.md documents.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.server
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
import websockets
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from websockets.exceptions import ConnectionClosed, InvalidStatus

from .clients import SSEClient, WSClient, publish
from .processes import NodeProcess
from .servers import server_class

SECRET = "test-secret-0123456789-abcdefghij"
API_KEY = "key-one-abcdef"
ORIGIN = "https://app.example"
RULES = "public=subscribe:anyone;chat=subscribe:users,publish:users;news=publish:granted;locked=subscribe:nobody"


# -- fixtures -------------------------------------------------------------------------------------


class Keys:
    def __init__(self) -> None:
        self.ec = ec.generate_private_key(ec.SECP256R1())
        self.rsa = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.kid = "rsa-1"

    def jwks(self) -> bytes:
        jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(self.rsa.public_key()))
        jwk.update(kid=self.kid, use="sig", alg="RS256")
        return json.dumps({"keys": [jwk]}).encode()

    def token(self, sub: str = "7", *, ttl: float = 300, alg: str = "HS256", **claims: Any) -> str:
        payload = {"sub": sub, "exp": time.time() + ttl, **claims}
        if alg == "HS256":
            return jwt.encode(payload, SECRET, algorithm="HS256")
        if alg == "ES256":
            return jwt.encode(payload, self.ec, algorithm="ES256")
        return jwt.encode(payload, self.rsa, algorithm="RS256", headers={"kid": self.kid})


@pytest.fixture(scope="module")
def keys() -> Keys:
    return Keys()


@pytest.fixture(scope="module")
def jwks_url(keys: Keys) -> Iterator[str]:
    body = keys.jwks()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/jwks.json"
    server.shutdown()
    server.server_close()


def security_flags(pem: Path, jwks: str) -> list[str]:
    return [
        "--jwt-secret", SECRET,
        "--jwt-public-key-file", str(pem),
        "--jwks-url", jwks,
        "--api-keys", f"{API_KEY},another-key",
        "--allowed-origins", ORIGIN,
        "--channel-rules", RULES,
        "--auth-timeout", "1",
    ]


@pytest.fixture(scope="module")
def node(keys: Keys, jwks_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    pem = tmp_path_factory.mktemp("keys") / "ec.pem"
    pem.write_bytes(
        keys.ec.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    with NodeProcess("memory://", *security_flags(pem, jwks_url), env={"FANLINE_RATE_BURST": "1000"}) as process:
        yield process


# -- helpers --------------------------------------------------------------------------------------


async def closed_with(url: str, first: str | None = None, **kwargs: Any) -> tuple[int, str]:
    """Open a WebSocket, optionally send one frame, and return how the server closed it."""
    async with websockets.connect(url, open_timeout=10, **kwargs) as ws:
        if first is not None:
            await ws.send(first)
        with contextlib.suppress(ConnectionClosed):
            while True:
                frame = await asyncio.wait_for(ws.recv(), 10)
                assert '"type":"connected"' not in str(frame), f"connection was accepted: {frame}"
        assert ws.close_code is not None
        return ws.close_code, ws.close_reason or ""


async def sse_refusal(url: str, params: list[tuple[str, str]], headers: dict[str, str] | None = None) -> tuple[int, str]:
    async with httpx.AsyncClient(timeout=10) as http:
        response = await http.get(url + "/sse", params=params, headers=headers or {})
        return response.status_code, response.json()["error"]


async def sse_first(url: str, params: list[tuple[str, str]], headers: dict[str, str] | None = None) -> httpx.Response:
    """Open an SSE stream and return the response once its headers arrived (then close it)."""
    async with httpx.AsyncClient(timeout=10) as http, http.stream("GET", url + "/sse", params=params, headers=headers or {}) as response:
        return response


async def ticket_for(url: str, **kwargs: Any) -> str:
    async with httpx.AsyncClient(timeout=10) as http:
        response = await http.post(url + "/api/tickets", **kwargs)
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["expires_in"] == 30
        return str(body["ticket"])


# -- connecting: refusals ------------------------------------------------------------------------


async def test_websocket_without_a_token_must_authenticate_with_its_first_frame(node: NodeProcess) -> None:
    # The first frame is not auth: closed as unauthorized.
    assert await closed_with(node.ws_url, json.dumps({"type": "subscribe", "channel": "public:x"})) == (4001, "unauthorized")
    # Nothing at all within auth_timeout (1 s here): the same.
    assert await closed_with(node.ws_url) == (4001, "unauthorized")


async def test_sse_without_a_token_is_refused(node: NodeProcess) -> None:
    assert await sse_refusal(node.url, [("channel", "public:x")]) == (401, "unauthorized")


async def test_expired_and_forged_tokens_are_refused_with_their_codes(node: NodeProcess, keys: Keys) -> None:
    expired = keys.token(ttl=-10)
    forged = jwt.encode({"sub": "7", "exp": time.time() + 300}, "not-the-secret-but-long-enough-32b", algorithm="HS256")
    unsigned = jwt.encode({"sub": "7", "exp": time.time() + 300}, None, algorithm="none")
    # An RS256 token whose kid is not in the JWKS, and an HS256 token signed with the JWKS public key as secret.
    unknown_kid = jwt.encode({"sub": "7", "exp": time.time() + 300}, keys.rsa, algorithm="RS256", headers={"kid": "nope"})
    assert await closed_with(f"{node.ws_url}?token={expired}") == (4011, "token_expired")
    assert await sse_refusal(node.url, [("channel", "public:x"), ("token", expired)]) == (401, "token_expired")
    for bad in (forged, unsigned, unknown_kid, "not.a.jwt", "x" * 8000):
        assert await closed_with(node.ws_url, json.dumps({"type": "auth", "token": bad})) == (4001, "invalid_token")
        assert await sse_refusal(node.url, [("channel", "public:x")], {"authorization": f"Bearer {bad}"}) == (
            401,
            "invalid_token",
        )
    # A token too long for a header line never reaches the verifier: the head limits refuse it.
    assert await closed_with(node.ws_url, json.dumps({"type": "auth", "token": "x" * 9000})) == (4001, "invalid_token")
    assert await sse_refusal(node.url, [("channel", "public:x")], {"authorization": "Bearer " + "x" * 9000}) == (
        431,
        "headers_too_large",
    )


async def test_tokens_without_sub_or_exp_or_with_a_foreign_audience_are_refused(node: NodeProcess) -> None:
    for payload in ({"exp": time.time() + 60}, {"sub": "7"}, {"sub": "7", "exp": time.time() + 60, "aud": "other"}):
        token = jwt.encode(payload, SECRET, algorithm="HS256")
        assert await closed_with(node.ws_url, json.dumps({"type": "auth", "token": token})) == (4001, "invalid_token")


async def test_a_foreign_origin_is_refused_and_the_allowed_one_gets_cors(node: NodeProcess, keys: Keys) -> None:
    token = keys.token()
    with pytest.raises(InvalidStatus) as refused:
        await websockets.connect(f"{node.ws_url}?token={token}", origin="https://evil.example", open_timeout=10)
    assert refused.value.response.status_code == 403
    assert json.loads(refused.value.response.body or b"{}")["error"] == "origin_forbidden"
    headers = {"origin": "https://evil.example", "authorization": f"Bearer {token}"}
    assert await sse_refusal(node.url, [("channel", "public:x")], headers) == (403, "origin_forbidden")

    client = await WSClient.connect(f"{node.ws_url}?token={token}", origin=ORIGIN)
    await client.close()
    response = await sse_first(node.url, [("channel", "public:x")], {"origin": ORIGIN, "authorization": f"Bearer {token}"})
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == ORIGIN


# -- connecting: every way in -------------------------------------------------------------------


async def test_every_credential_source_and_algorithm_connects(node: NodeProcess, keys: Keys, channel: str) -> None:
    public = "public:" + channel
    ways = [
        ({"additional_headers": {"authorization": f"Bearer {keys.token(alg='RS256')}"}}, None),  # JWKS, by kid
        ({"additional_headers": {"cookie": f"other=1; fanline_token={keys.token(alg='ES256')}"}}, None),  # PEM
        ({}, keys.token()),  # query parameter, HS256
    ]
    clients = []
    for kwargs, query in ways:
        clients.append(await WSClient.connect(node.ws_url + (f"?token={query}" if query else ""), **kwargs))
    # The first frame, which keeps the token out of URLs and logs.
    connection = await websockets.connect(node.ws_url, open_timeout=10)
    await connection.send(json.dumps({"type": "auth", "token": keys.token()}))
    first = WSClient(connection)
    assert (await first.recv())["type"] == "connected"
    clients.append(first)
    sse = await SSEClient.connect(node.url, [public], headers={"authorization": f"Bearer {keys.token(alg='ES256')}"})
    for client in clients:
        await client.subscribe(public)
    assert (await sse.next_event()).event == "fanline.subscribed"
    event_id = await publish_with_key(node.url, public, {"n": 1})
    for client in clients:
        assert [(e["id"], e["data"]) for e in await client.events(1)] == [(event_id, {"n": 1})]
        await client.close()
    assert (await sse.events(1))[0].json()["id"] == event_id
    await sse.close()


# -- channels --------------------------------------------------------------------------------------


async def test_grants_rules_and_user_boundaries_decide_subscriptions(node: NodeProcess, keys: Keys, channel: str) -> None:
    token = keys.token("7", channels=["news:sport.*", "exact:one"], publish=["news:sport.*"])
    client = await WSClient.connect(f"{node.ws_url}?token={token}")
    allowed = ["news:sport.tennis", "exact:one", "public:anything", "chat:room1", "user#7", "inbox:user#7"]
    refused = ["news:politics", "exact:one.two", "user#42", "inbox:user#42", "locked:x", "fanline.ticket.abc", "plain"]
    for name in allowed:
        assert (await client.subscribe(name))["channel"] == name
    for rid, name in enumerate(refused):
        await client.send({"type": "subscribe", "channel": name, "rid": rid})
        error = await client.recv_type("error")
        assert (error["code"], error["rid"]) == ("subscribe_forbidden", rid), name
    # Publishing: the token's publish grant and the chat namespace rule; nothing else.
    for rid, (name, expected) in enumerate(
        [("news:sport.golf", "published"), ("chat:room1", "published"), ("public:x", "error"), ("user#7", "error")]
    ):
        await client.send({"type": "publish", "channel": name, "data": rid, "rid": rid})
        while True:
            reply = await client.recv()
            if reply.get("rid") == rid:
                break
        assert reply["type"] == expected, (name, reply)
        if expected == "error":
            assert reply["code"] == "publish_forbidden"
    await client.close()
    headers = {"authorization": f"Bearer {token}"}
    assert await sse_refusal(node.url, [("channel", "public:a"), ("channel", "user#42")], headers) == (
        403,
        "subscribe_forbidden",
    )


# -- expiry and refresh ---------------------------------------------------------------------------


async def test_a_connection_closes_when_its_token_expires_unless_refreshed(node: NodeProcess, keys: Keys) -> None:
    short = await WSClient.connect(f"{node.ws_url}?token={keys.token(ttl=1.5)}")
    refreshed = await WSClient.connect(f"{node.ws_url}?token={keys.token(ttl=1.5)}")
    await refreshed.send({"type": "refresh", "token": keys.token(ttl=60), "rid": 1})
    reply = await refreshed.recv_type("refreshed")
    assert reply["rid"] == 1 and reply["user"] == "7" and reply["exp"] > time.time() + 50
    # Another user's token cannot take over the connection.
    await refreshed.send({"type": "refresh", "token": keys.token("8", ttl=60), "rid": 2})
    assert (await refreshed.recv_type("error"))["code"] == "invalid_token"
    with pytest.raises(ConnectionClosed):
        await short.recv(timeout=10)
    assert (short.connection.close_code, short.connection.close_reason) == (4011, "token_expired")
    await refreshed.send({"type": "ping", "rid": 3})
    assert (await refreshed.recv_type("pong"))["rid"] == 3  # still open after the first token's exp
    await refreshed.close()


async def test_an_sse_stream_ends_when_its_token_expires(node: NodeProcess, keys: Keys) -> None:
    sse = await SSEClient.connect(node.url, ["public:exp"], headers={"authorization": f"Bearer {keys.token(ttl=1.5)}"})
    assert (await sse.next_event()).event == "fanline.subscribed"
    with pytest.raises(EOFError):
        await sse.next_event(timeout=10)
    await sse.close()


# -- tickets ----------------------------------------------------------------------------------------


async def test_tickets_work_once_on_both_transports(node: NodeProcess, keys: Keys) -> None:
    bearer = {"headers": {"authorization": f"Bearer {keys.token('7', channels=['news:*'])}"}}
    ticket = await ticket_for(node.url, **bearer)
    client = await WSClient.connect(f"{node.ws_url}?ticket={ticket}")
    assert (await client.subscribe("news:a"))["channel"] == "news:a"  # the token's grants came along
    await client.close()
    assert await closed_with(f"{node.ws_url}?ticket={ticket}") == (4001, "invalid_ticket")

    server_issued = {"headers": {"x-api-key": API_KEY}, "json": {"sub": "42", "channels": ["news:b"]}}
    ticket = await ticket_for(node.url, **server_issued)
    response = await sse_first(node.url, [("channel", "news:b"), ("channel", "user#42"), ("ticket", ticket)])
    assert response.status_code == 200
    assert await sse_refusal(node.url, [("channel", "news:b"), ("ticket", ticket)]) == (401, "invalid_ticket")
    # A ticket is not a token, even though both derive from jwt_secret.
    ticket = await ticket_for(node.url, **server_issued)
    assert await closed_with(f"{node.ws_url}?token={ticket}") == (4001, "invalid_token")
    # The first frame may carry a ticket too.
    ticket = await ticket_for(node.url, **server_issued)
    connection = await websockets.connect(node.ws_url, open_timeout=10)
    await connection.send(json.dumps({"type": "auth", "ticket": ticket}))
    assert json.loads(await connection.recv())["type"] == "connected"
    await connection.close()


async def test_ticket_requests_need_a_valid_token_or_api_key(node: NodeProcess, keys: Keys) -> None:
    cases = [
        ({}, 401, "unauthorized"),
        ({"headers": {"authorization": f"Bearer {keys.token(ttl=-5)}"}}, 401, "token_expired"),
        ({"headers": {"authorization": "Bearer garbage"}}, 401, "invalid_token"),
        ({"headers": {"x-api-key": "wrong"}, "json": {"sub": "1"}}, 401, "invalid_api_key"),
        ({"headers": {"x-api-key": API_KEY}, "json": {"channels": ["x"]}}, 400, "invalid_message"),
        ({"headers": {"x-api-key": API_KEY}, "json": {"sub": "1", "channels": "x"}}, 400, "invalid_message"),
    ]
    async with httpx.AsyncClient(timeout=10) as http:
        for kwargs, status, code in cases:
            response = await http.post(node.url + "/api/tickets", **kwargs)
            assert (response.status_code, response.json()["error"]) == (status, code), kwargs


# -- server API -----------------------------------------------------------------------------------


async def publish_with_key(url: str, channel: str, data: Any) -> str:
    async with httpx.AsyncClient(timeout=10) as http:
        response = await http.post(
            url + "/api/publish", json={"channel": channel, "data": data}, headers={"authorization": f"apikey {API_KEY}"}
        )
        assert response.status_code == 200, response.text
        return str(response.json()["id"])


async def test_the_server_api_needs_an_api_key(node: NodeProcess) -> None:
    body = {"channel": "public:api", "data": 1}
    batch = {"publications": [body]}
    async with httpx.AsyncClient(timeout=10) as http:
        for path, payload in (("/api/publish", body), ("/api/publish/batch", batch)):
            missing = await http.post(node.url + path, json=payload)
            assert (missing.status_code, missing.json()["error"]) == (401, "unauthorized")
            wrong = await http.post(node.url + path, json=payload, headers={"authorization": "apikey nope"})
            assert (wrong.status_code, wrong.json()["error"]) == (401, "invalid_api_key")
            for headers in ({"authorization": f"apikey {API_KEY}"}, {"x-api-key": "another-key"}):
                assert (await http.post(node.url + path, json=payload, headers=headers)).status_code == 200
        reserved = await http.post(
            node.url + "/api/publish", json={"channel": "fanline.ticket.x", "data": 1}, headers={"x-api-key": API_KEY}
        )
        assert (reserved.status_code, reserved.json()["error"]) == (403, "publish_forbidden")


def test_secrets_and_tokens_never_reach_the_log(node: NodeProcess) -> None:
    # Runs after the tests above, which sent tokens and tickets in query strings.
    log = node.log_path.read_text(errors="replace")
    assert "node starting" in log
    for secret in (SECRET, API_KEY, "another-key", "eyJ"):
        assert secret not in log


# -- two nodes, one broker --------------------------------------------------------------------------


async def test_a_ticket_from_node_a_works_once_on_node_b(keys: Keys) -> None:
    cls = server_class("redis")
    if cls is None:
        pytest.skip("tests.servers.redis_server is not available, so there is no broker two nodes can share")
    server = cls()
    server.start()
    try:
        flags = ["--jwt-secret", SECRET]
        with NodeProcess(server.url(), *flags) as node_a, NodeProcess(server.url(), *flags) as node_b:
            ticket = await ticket_for(node_a.url, headers={"authorization": f"Bearer {keys.token('9')}"})
            # Two nodes race for the same ticket: exactly one wins.
            outcomes = await asyncio.gather(
                sse_status(node_b.url, ticket), sse_status(node_a.url, ticket), return_exceptions=True
            )
            assert sorted(outcomes) == [200, 401], outcomes  # type: ignore[type-var]
            ticket = await ticket_for(node_a.url, headers={"authorization": f"Bearer {keys.token('9')}"})
            client = await WSClient.connect(f"{node_b.ws_url}?ticket={ticket}")
            await client.subscribe("user#9")
            await publish(node_a.url, "user#9", "hi")
            assert (await client.events(1))[0]["data"] == "hi"
            await client.close()
            assert await closed_with(f"{node_a.ws_url}?ticket={ticket}") == (4001, "invalid_ticket")
    finally:
        server.stop()


async def sse_status(url: str, ticket: str) -> int:
    return (await sse_first(url, [("channel", "user#9"), ("ticket", ticket)])).status_code
