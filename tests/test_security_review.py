"""Security review (issue 13): each finding's attack against a real node, and what stops it.

Every test plays the attacker with real sockets against a real node process
and asserts what the attacker gets: a refusal, a close code, a log line that
carries no secret.  The test names carry the finding's number; docs/security.md
lists every finding with its fix.  Deadlines are shortened with flags, and
what is asserted is an outcome (which answer came), never a duration.
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import http.server
import json
import os
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
import redis
import websockets
from cryptography.hazmat.primitives.asymmetric import rsa

from .clients import WSClient
from .processes import NodeProcess, free_port, wait_for
from .rawws import RawWebSocket

SECRET = "review-secret-0123456789-abcdefghij"
API_KEY = "review-api-key-0123456789"
INTERNAL_KEY = "review-internal-key-0123456789"


def token(sub: str = "ada", ttl: float = 300, secret: str = SECRET, **claims: Any) -> str:
    return jwt.encode({"sub": sub, "exp": time.time() + ttl, **claims}, secret, algorithm="HS256")


def fresh(node: NodeProcess) -> NodeProcess:
    """The node with an empty log: log files are per port and appended to, and ports come back."""
    node.log_path.unlink(missing_ok=True)
    return node


def start_all(nodes: list[NodeProcess]) -> None:
    """Start several nodes at once: each start mostly waits for its process to come up."""
    with concurrent.futures.ThreadPoolExecutor(len(nodes)) as pool:
        list(pool.map(lambda n: n.start(), nodes))


def log_lines(node: NodeProcess) -> list[dict[str, Any]]:
    """The node's JSON log lines (anything else in the log, like a bare traceback, is returned raw)."""
    lines: list[dict[str, Any]] = []
    for line in node.log_path.read_text(errors="replace").splitlines():
        try:
            lines.append(json.loads(line))
        except ValueError:
            lines.append({"level": "raw", "msg": line})
    return lines


def assert_quiet_log(node: NodeProcess) -> None:
    """No traceback and no error-level line: client input must never produce either."""
    text = node.log_path.read_text(errors="replace")
    assert "Traceback" not in text, text[-3000:]
    loud = [line for line in log_lines(node) if line.get("level") in ("error", "critical", "raw")]
    assert not loud, loud[:5]


def raw_request(port: int, head: str, *, source: str | None = None, timeout: float = 10.0) -> tuple[int | None, dict[str, str], bytes]:
    """Send a request head (and whatever follows it in ``head``) on a fresh socket; read the answer.

    Returns (status, headers, body); status None if the node closed without answering.
    ``source`` binds the client end to another loopback address (127.0.0.2), which the
    node must not take for its own loopback.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    if source:
        sock.bind((source, 0))
    sock.connect(("127.0.0.1", port))
    sock.sendall(head.encode("latin-1"))
    data = b""
    try:
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
        if b"\r\n\r\n" in data:
            head_bytes, _, rest = data.partition(b"\r\n\r\n")
            headers = {}
            for line in head_bytes.split(b"\r\n")[1:]:
                name, _, value = line.decode("latin-1").partition(":")
                headers[name.strip().lower()] = value.strip()
            length = int(headers.get("content-length", "0"))
            while len(rest) < length:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                rest += chunk
            return int(head_bytes.split(b" ", 2)[1]), headers, rest
    except (TimeoutError, OSError):
        pass
    finally:
        sock.close()
    return None, {}, data


def ws_head(host: str, origin: str | None = None, path: str = "/ws", extra: str = "") -> str:
    key = base64.b64encode(os.urandom(16)).decode()
    lines = [
        f"GET {path} HTTP/1.1", f"Host: {host}", "Upgrade: websocket", "Connection: Upgrade",
        f"Sec-WebSocket-Key: {key}", "Sec-WebSocket-Version: 13",
    ]  # fmt: skip
    if origin is not None:
        lines.append(f"Origin: {origin}")
    return "\r\n".join(lines) + "\r\n" + extra + "\r\n"


@pytest.fixture(scope="module")
def secured() -> Iterator[NodeProcess]:
    """A node configured the way docs/security.md recommends, with client publishing by rule."""
    flags = (
        "--jwt-secret", SECRET, "--api-keys", API_KEY, "--channel-rules", "news=subscribe:users,publish:users",
        "--handshake-timeout", "30", "--ticket-ttl", "2",
    )  # fmt: skip
    with fresh(NodeProcess("memory://", *flags)) as node:
        yield node


# -- 1: unauthenticated sockets and authenticated clients' slots -------------------------------------


def test_1_unauthenticated_sockets_never_take_the_slots_of_200(channel: str) -> None:
    """The review's numbers: 200 slots, an attacker holding more pending sockets than that, 64 clients."""
    flags = ("--jwt-secret", SECRET, "--max-connections", "200", "--auth-timeout", "30")
    with NodeProcess("memory://", *flags) as node:
        squatters = [RawWebSocket("127.0.0.1", node.port) for _ in range(250)]
        assert all(s.status == 101 for s in squatters)

        async def by_first_frame() -> WSClient:
            # The browser's way: no credential in the handshake, the token in the first frame.
            connection = await websockets.connect(node.ws_url, open_timeout=10)
            await connection.send(json.dumps({"type": "auth", "token": token()}))
            client = WSClient(connection)
            assert (await client.recv())["type"] == "connected"
            return client

        async def legitimate() -> int:
            clients = await asyncio.gather(
                *(WSClient.connect(f"{node.ws_url}?token={token()}") for _ in range(32)),
                *(by_first_frame() for _ in range(32)),
            )
            for client in clients:
                await client.close()
            return len(clients)

        assert asyncio.run(legitimate()) == 64
        metrics = node.metrics()
        assert metrics['fanline_pending_connections{port="client"}'] == 250
        assert metrics.get('fanline_limit_rejections_total{limit="connections"}', 0) == 0
        for squatter in squatters:
            squatter.close()


def test_1_a_socket_that_never_authenticates_is_closed_at_the_short_default_deadline() -> None:
    with NodeProcess("memory://", "--jwt-secret", SECRET) as node:
        squatter = RawWebSocket("127.0.0.1", node.port)
        # The socket's own timeout (10 s) is longer than the default auth_timeout (3 s).
        code, reason, _ = squatter.recv_close()
        assert (code, reason) == (4001, "unauthorized")
        squatter.close()


# -- 2: secrets in logs, metrics and errors; secrets from files --------------------------------------

BROKER_PASSWORD = "broker-pass-0123456789"
JWKS_PASSWORD = "jwks-pass-0123456789"


@pytest.fixture(scope="module")
def redis_with_password() -> Iterator[int]:
    from .servers.redis_server import redis_server_binary

    port = free_port()
    proc = subprocess.Popen(
        [redis_server_binary(), "--port", str(port), "--bind", "127.0.0.1", "--requirepass", BROKER_PASSWORD,
         "--save", "", "--appendonly", "no", "--daemonize", "no"],
        stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
    )  # fmt: skip

    def answers() -> bool:
        try:
            with redis.Redis(port=port, password=BROKER_PASSWORD, socket_timeout=1) as client:
                return bool(client.ping())
        except redis.RedisError:
            return False

    try:
        wait_for(answers, what="redis with a password")
        yield port
    finally:
        proc.kill()
        proc.wait(10)


class Keys:
    def __init__(self) -> None:
        self.rsa = rsa.generate_private_key(public_exponent=65537, key_size=2048)

    def jwks(self, kid: str = "k1") -> bytes:
        jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(self.rsa.public_key()))
        jwk.update(kid=kid, use="sig", alg="RS256")
        return json.dumps({"keys": [jwk]}).encode()

    def token(self, kid: str = "k1", sub: str = "ada") -> str:
        payload = {"sub": sub, "exp": time.time() + 300}
        return jwt.encode(payload, self.rsa, algorithm="RS256", headers={"kid": kid})


class JWKSServer:
    """Serves JWKS documents by path, some of them hostile.  ``/drip`` sends one byte at a time."""

    def __init__(self, documents: dict[str, bytes], password: str | None = None) -> None:
        self.documents = documents
        self.drip_abandoned = threading.Event()
        self.requests = 0
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                outer.requests += 1
                if password is not None:
                    expected = "Basic " + base64.b64encode(f"fanline:{password}".encode()).decode()
                    if self.headers.get("authorization") != expected:
                        self.send_response(401)
                        self.send_header("content-length", "0")
                        self.end_headers()
                        return
                if self.path == "/drip":
                    self._drip()
                    return
                body = outer.documents[self.path]
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _drip(self) -> None:
                body = b'{"keys": [' + b" " * 60 + b"]}"
                self.send_response(200)
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                try:
                    for byte in body:  # bounded: one byte a second, 64 bytes
                        self.wfile.write(bytes([byte]))
                        self.wfile.flush()
                        time.sleep(1.0)
                except OSError:
                    outer.drip_abandoned.set()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str, user: str | None = None, password: str | None = None) -> str:
        credentials = f"{user}:{password}@" if user else ""
        return f"http://{credentials}127.0.0.1:{self.server.server_address[1]}{path}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def keys() -> Keys:
    return Keys()


def test_2_secrets_never_reach_the_log_the_metrics_or_the_settings_line(
    redis_with_password: int, keys: Keys
) -> None:
    jwks = JWKSServer({"/jwks.json": keys.jwks()}, password=JWKS_PASSWORD)
    flags = (
        "--jwks-url", jwks.url("/jwks.json", "fanline", JWKS_PASSWORD),
        "--api-keys", API_KEY, "--internal-key", INTERNAL_KEY, "--ticket-secret", SECRET,
    )  # fmt: skip
    broker = f"redis://:{BROKER_PASSWORD}@127.0.0.1:{redis_with_password}/0"
    try:
        with fresh(NodeProcess(broker, *flags)) as node:  # ready: the broker took the password
            async def connect() -> None:
                client = await WSClient.connect(f"{node.ws_url}?token={keys.token()}")  # the JWKS took its credentials
                await client.close()

            asyncio.run(connect())
            metrics = urllib_text(node.internal_url + "/metrics")
            text = node.log_path.read_text(errors="replace")
            (starting,) = [line for line in log_lines(node) if line.get("msg") == "node starting"]
    finally:
        jwks.close()
    for secret in (BROKER_PASSWORD, JWKS_PASSWORD, API_KEY, INTERNAL_KEY, SECRET):
        assert secret not in text and secret not in metrics
    settings = starting["settings"]
    assert settings["broker"] == f"redis://:***@127.0.0.1:{redis_with_password}/0"
    assert settings["jwks_url"].startswith("http://fanline:***@127.0.0.1:")
    assert settings["api_keys"] == settings["internal_key"] == settings["ticket_secret"] == "***"


def urllib_text(url: str) -> str:
    with httpx.Client(timeout=10) as http:
        return http.get(url).text


def test_2_secret_settings_come_from_files(redis_with_password: int, tmp_path: Path) -> None:
    files = {
        "broker_password": BROKER_PASSWORD + "\n",  # as `echo` writes it: the newline is not part of it
        "jwt_secret": SECRET,
        "api_keys": "first-key-0123456789\n" + API_KEY + "\n",  # one per line
        "internal_key": INTERNAL_KEY,
    }
    for name, content in files.items():
        (tmp_path / name).write_text(content)
    env = {
        "FANLINE_BROKER_PASSWORD_FILE": str(tmp_path / "broker_password"),
        "FANLINE_API_KEYS_FILE": str(tmp_path / "api_keys"),
    }
    flags = ("--jwt-secret-file", str(tmp_path / "jwt_secret"), "--internal-key-file", str(tmp_path / "internal_key"))
    with fresh(NodeProcess(f"redis://127.0.0.1:{redis_with_password}/0", *flags, env=env)) as node:

        async def use() -> None:
            client = await WSClient.connect(f"{node.ws_url}?token={token()}")
            await client.close()
            async with httpx.AsyncClient(timeout=10) as http:
                published = await http.post(
                    node.url + "/api/publish", json={"channel": "x", "data": 1}, headers={"x-api-key": API_KEY}
                )
                assert published.status_code == 200, published.text

        asyncio.run(use())
        text = node.log_path.read_text(errors="replace")
    for secret in (BROKER_PASSWORD, SECRET, API_KEY, INTERNAL_KEY):
        assert secret not in text


# -- 4 and 5: frames the rate limiter must see, frames that must not produce a traceback -------------


def test_4_a_burst_of_invalid_binary_frames_is_closed_with_4029(secured: NodeProcess) -> None:
    ws = RawWebSocket("127.0.0.1", secured.port, path=f"/ws?token={token()}", recv_buffer=None)
    assert ws.recv_messages()[0]["type"] == "connected"
    frame = b"".join(_frame(0x2, b"\xff\xfe\x00 not utf-8") for _ in range(400))
    ws.sock.sendall(frame)
    code, reason, messages = ws.recv_close()
    errors = [m["code"] for m in messages if m["type"] == "error"]
    assert code == 4029, (code, reason)
    assert "rate_limited" in errors and len(errors) < 400
    ws.close()


def _frame(opcode: int, payload: bytes) -> bytes:
    from .rawws import frame_bytes

    return frame_bytes(opcode, payload)


def test_5_invalid_utf8_text_frames_close_with_1007_and_no_traceback(secured: NodeProcess) -> None:
    for index in range(100):
        # Half before authenticating (the review's case), half after.
        path = "/ws" if index % 2 else f"/ws?token={token()}"
        ws = RawWebSocket("127.0.0.1", secured.port, path=path, recv_buffer=None)
        ws.send_frame(0x1, b'{"type":"auth","token":"\xff\xfe"}')
        code, _, _ = ws.recv_close()
        assert code == 1007
        ws.close()
    assert_quiet_log(secured)


# -- 6: numbers from requests -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "body,code",
    [
        ('{"sub": "1", "exp": NaN}', "invalid_json"),
        ('{"sub": "1", "exp": Infinity}', "invalid_json"),
        ('{"sub": "1", "exp": -Infinity}', "invalid_json"),
        ('{"sub": "1", "exp": 1e400}', "invalid_json"),  # json.loads makes this inf
        ('{"sub": "1", "exp": ' + "9" * 400 + "}", "invalid_message"),  # beyond a float
        ('{"sub": "1", "exp": 1e300}', "invalid_message"),  # finite, but no real expiry
        ('{"sub": "1", "exp": true}', "invalid_message"),
        ('{"sub": "1", "exp": "1767225600"}', "invalid_message"),
    ],
)
def test_6_ticket_requests_with_numbers_that_are_not_times_are_refused(
    secured: NodeProcess, body: str, code: str
) -> None:
    with httpx.Client(timeout=10) as http:
        response = http.post(
            secured.url + "/api/tickets", content=body, headers={"x-api-key": API_KEY, "content-type": "application/json"}
        )
    assert (response.status_code, response.json()["error"]) == (400, code), response.text


@pytest.mark.parametrize(
    "expire_at,code", [("1e400", "invalid_json"), ("9" * 400, "invalid_message"), ("1e300", "invalid_message")]
)
def test_6_the_server_api_refuses_expiry_times_that_are_not_times(secured: NodeProcess, expire_at: str, code: str) -> None:
    # Before: sent on to every node, where a 400-digit number failed as a float with a traceback.
    with httpx.Client(timeout=10) as http:
        response = http.post(
            secured.url + "/api/refresh", content='{"user": "ada", "expire_at": ' + expire_at + "}",
            headers={"x-api-key": API_KEY, "content-type": "application/json"},
        )  # fmt: skip
    assert (response.status_code, response.json()["error"]) == (400, code), response.text


def test_6_websocket_messages_with_nan_get_invalid_json_not_a_non_json_reply(secured: NodeProcess) -> None:
    ws = RawWebSocket("127.0.0.1", secured.port, path=f"/ws?token={token()}", recv_buffer=None)
    assert ws.recv_messages()[0]["type"] == "connected"
    for text in ('{"type":"ping","rid":NaN}', '{"type":"ping","rid":Infinity}', '{"type":"publish","channel":"news:a","data":NaN}'):
        ws.send_frame(0x1, text.encode())
        (reply,) = [m for m in ws.recv_messages() if m["type"] != "heartbeat"]
        assert (reply["type"], reply["code"]) == ("error", "invalid_json"), reply
    ws.close()


# -- 7: hostile JWKS documents, and a JWKS that drips ------------------------------------------------

NESTED = b'{"keys": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"


def test_7_hostile_jwks_documents_refuse_the_token_and_never_hang_a_handshake(keys: Keys) -> None:
    documents = {"/list": b"[1, 2]", "/string": b'"keys"', "/nested": NESTED, "/no-keys": b'{"keys": {"a": 1}}'}
    server = JWKSServer(documents)
    paths = [*documents, "/drip"]
    # With the credentials in the URL, the fetch warnings must show them masked.
    nodes = [
        fresh(NodeProcess("memory://", "--jwks-url", server.url(path, "fanline", JWKS_PASSWORD), "--jwks-timeout", "1",
                    "--handshake-timeout", "20"))
        for path in paths
    ]  # fmt: skip
    try:
        start_all(nodes)

        async def refused(node: NodeProcess) -> list[tuple[int, str]]:
            # Two handshakes at once: the second waits for the first's fetch, never past its deadline.
            async def one() -> tuple[int, str]:
                async with websockets.connect(f"{node.ws_url}?token={keys.token()}", open_timeout=10) as ws:
                    try:
                        await asyncio.wait_for(ws.recv(), 10)
                    except websockets.ConnectionClosed:
                        pass
                    return ws.close_code or 0, ws.close_reason or ""

            return list(await asyncio.gather(one(), one()))

        for node in nodes:
            assert asyncio.run(refused(node)) == [(4001, "invalid_token")] * 2, node.log()
        # The drip-fed fetch was given up at its deadline: the server saw the node hang up.
        assert server.drip_abandoned.wait(20)
        for node in nodes:
            assert_quiet_log(node)
            warnings = [line for line in log_lines(node) if line.get("msg") == "JWKS fetch failed"]
            assert warnings and all(JWKS_PASSWORD not in json.dumps(w) for w in warnings)
    finally:
        with concurrent.futures.ThreadPoolExecutor(len(nodes)) as pool:
            list(pool.map(lambda n: n.stop(), nodes))
        server.close()


# -- 8: patterns that match before a trailing newline ------------------------------------------------


def test_8_a_trailing_newline_is_refused_everywhere_input_is_validated(secured: NodeProcess) -> None:
    async def websocket() -> None:
        client = await WSClient.connect(f"{secured.ws_url}?token={token()}")
        cases = [
            ({"type": "subscribe", "channel": "news\n"}, "invalid_channel"),
            ({"type": "subscribe", "channel": "news:a", "since": "abc-1\n"}, "invalid_event_id"),
            ({"type": "publish", "channel": "news\n", "data": 1}, "invalid_channel"),
            ({"type": "publish", "channel": "news:a", "data": 1, "event": "headline\n"}, "invalid_event_type"),
            ({"type": "unsubscribe", "channel": "news\n"}, "invalid_channel"),
        ]
        for rid, (message, code) in enumerate(cases):
            await client.send({**message, "rid": rid})
            reply = await client.recv_type("error")
            assert (reply["code"], reply["rid"]) == (code, rid), (message, reply)
        await client.close()

    asyncio.run(websocket())
    key = {"x-api-key": API_KEY}
    bearer = {"authorization": f"Bearer {token()}"}
    with httpx.Client(timeout=10) as http:
        for body, code in (
            ({"channel": "news\n", "data": 1}, "invalid_channel"),
            ({"channel": "news:a", "data": 1, "event": "headline\n"}, "invalid_event_type"),
        ):
            for path, payload in (("/api/publish", body), ("/api/publish/batch", {"publications": [body]})):
                response = http.post(secured.url + path, json=payload, headers=key)
                assert (response.status_code, response.json()["error"]) == (400, code), (path, body)
        for params, code in (
            ([("channel", "news\n")], "invalid_channel"),
            ([("channel", "news:a"), ("last_event_id", "abc-1\n")], "invalid_event_id"),
        ):
            response = http.get(secured.url + "/sse", params=params, headers=bearer)
            assert (response.status_code, response.json()["error"]) == (400, code), params


def test_8_ticket_ids_and_nats_names_match_whole(tmp_path: Path) -> None:
    from broker_adapters.nats import NatsOptions
    from node.auth import TokenError
    from node.tickets import TicketBook

    book = TicketBook(SECRET, 30, "n")
    forged = jwt.encode(
        {"typ": "fanline-ticket", "jti": "0" * 32 + "\n", "sub": "1", "exp": time.time() + 30},
        book._key,  # the test holds the secret; an attacker does not, but the id check must hold on its own
        algorithm="HS256",
    )
    with pytest.raises(TokenError, match="not a Fanline ticket"):
        book.verify(forged)
    for options in ({"stream": "FANLINE\n"}, {"subject_prefix": "fanline\n"}, {"live_prefix": "live\n"}):
        with pytest.raises(ValueError):
            NatsOptions(**options)


# -- 9: same-origin means scheme, host and port; Host names when configured ------------------------


def test_9_the_default_same_origin_check_compares_scheme_host_and_port(secured: NodeProcess) -> None:
    host = f"127.0.0.1:{secured.port}"
    refused = [f"ftp://{host}", f"https://{host}", "http://127.0.0.1", f"http://localhost:{secured.port}", "null"]
    for origin in refused:
        status, _, body = raw_request(secured.port, ws_head(host, origin))
        assert (status, json.loads(body)["error"]) == (403, "origin_forbidden"), origin
    assert raw_request(secured.port, ws_head(host, f"http://{host}"))[0] == 101
    # Behind a TLS-terminating proxy the page is https: the proxy's X-Forwarded-Proto says so.
    assert raw_request(secured.port, ws_head("app.example", "https://app.example", extra="X-Forwarded-Proto: https\r\n"))[0] == 101
    assert raw_request(secured.port, ws_head("app.example", "http://app.example", extra="X-Forwarded-Proto: https\r\n"))[0] == 403
    with httpx.Client(timeout=10) as http:
        response = http.get(
            secured.url + "/sse", params=[("channel", "news:a")],
            headers={"origin": f"ftp://{host}", "authorization": f"Bearer {token()}"},
        )  # fmt: skip
    assert response.status_code == 403 and "access-control-allow-origin" not in response.headers


def test_9_a_host_list_stops_dns_rebinding_and_any_origin_gets_no_credentials() -> None:
    with NodeProcess("memory://", "--allowed-hosts", "rt.example", "--allowed-origins", "*") as node:
        # A rebinding page: its own name resolves to the node, so Origin and Host agree.
        rebound = raw_request(node.port, ws_head(f"evil.example:{node.port}", f"http://evil.example:{node.port}"))
        assert (rebound[0], json.loads(rebound[2])["error"]) == (400, "bad_request")
        assert raw_request(node.port, ws_head("rt.example", "https://app.example"))[0] == 101
        status, _, body = raw_request(node.port, "POST /api/publish HTTP/1.1\r\nHost: evil.example\r\nContent-Length: 2\r\n\r\n{}")
        assert (status, json.loads(body)["error"]) == (400, "bad_request")
        with httpx.Client(timeout=10) as http:
            with http.stream("GET", node.url + "/sse", params=[("channel", "a")],
                             headers={"origin": "https://app.example", "host": "rt.example"}) as response:  # fmt: skip
                assert response.status_code == 200
                assert response.headers["access-control-allow-origin"] == "*"
                assert "access-control-allow-credentials" not in response.headers


# -- 10: ticket replay when the claim's history is shorter than the ticket --------------------------


def test_10_a_broker_that_forgets_claims_before_tickets_expire_is_refused_at_start() -> None:
    node = NodeProcess("memory://?history_ttl=5&meta_ttl=5", "--jwt-secret", SECRET, "--ticket-ttl", "30")
    with pytest.raises(RuntimeError, match="ticket_ttl"):
        node.start()
    node.stop()


# -- 11: credentials before bodies -------------------------------------------------------------------


@pytest.mark.parametrize(
    "path,headers,code",
    [
        ("/api/tickets", "", "unauthorized"),
        ("/api/tickets", "Authorization: Bearer not-a-token\r\n", "invalid_token"),
        ("/api/tickets", "X-API-Key: wrong\r\n", "invalid_api_key"),
        ("/api/publish", "", "unauthorized"),
        ("/api/publish/batch", "Authorization: apikey wrong\r\n", "invalid_api_key"),
        ("/api/presence", "", "unauthorized"),  # the server API
        ("/api/revoke", "X-API-Key: wrong\r\n", "invalid_api_key"),
    ],
)
def test_11_a_request_without_a_good_credential_is_refused_from_its_head(
    secured: NodeProcess, path: str, headers: str, code: str
) -> None:
    # A megabyte announced, nothing sent: a node that waited for the body would not answer
    # before its handshake_timeout (30 s here), long after this socket gives up (10 s).
    head = f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000000\r\n{headers}\r\n"
    status, _, body = raw_request(secured.port, head)
    assert status == 401 and json.loads(body)["error"] == code


def test_11_a_good_credential_gets_its_100_continue(secured: NodeProcess) -> None:
    head = f"POST /api/publish HTTP/1.1\r\nHost: x\r\nX-API-Key: {API_KEY}\r\nContent-Length: 10\r\nExpect: 100-continue\r\n\r\n"
    assert raw_request(secured.port, head)[0] == 100


# -- 12: the internal port's address, and who may drain or shed ------------------------------------


def listening_addresses(pid: int) -> dict[int, str]:
    """Port -> IPv4 address of the process's listening TCP sockets, from /proc (no network traffic)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        target = os.readlink(fd)
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    out: dict[int, str] = {}
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, state, inode = fields[1], fields[3], fields[9]
        if state == "0A" and inode in inodes:  # LISTEN
            address, port = local.split(":")
            out[int(port, 16)] = socket.inet_ntoa(bytes.fromhex(address)[::-1])
    return out


def test_12_the_internal_port_binds_loopback_by_default_and_drain_needs_loopback_or_the_key() -> None:
    with NodeProcess("memory://", "--host", "0.0.0.0", "--internal-key", INTERNAL_KEY) as node:
        assert node.proc is not None
        addresses = listening_addresses(node.proc.pid)
        assert (addresses[node.port], addresses[node.internal_port]) == ("0.0.0.0", "127.0.0.1")

        def post(path: str, key: str | None = None, source: str = "127.0.0.2") -> tuple[int | None, dict[str, Any]]:
            extra = f"X-Fanline-Internal-Key: {key}\r\n" if key else ""
            head = f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n{extra}\r\n"
            status, _, body = raw_request(node.internal_port, head, source=source)
            return status, json.loads(body) if body else {}

        status, body = post("/shed?count=0")
        assert (status, body["error"]) == (401, "unauthorized")
        assert post("/drain", "wrong")[1]["error"] == "invalid_api_key"
        assert post("/shed?count=0", INTERNAL_KEY)[0] == 200
        assert post("/shed?count=0", source="127.0.0.1")[0] == 200  # the pod itself: the preStop hook
        status, body = post("/drain", INTERNAL_KEY)
        assert status == 200 and body["draining"] is True


# -- docs versus code ------------------------------------------------------------------------------


def test_docs_an_expired_ticket_is_token_expired_and_a_used_one_invalid_ticket(secured: NodeProcess) -> None:
    with httpx.Client(timeout=10) as http:
        ticket = http.post(secured.url + "/api/tickets", headers={"authorization": f"Bearer {token()}"}).json()["ticket"]
    time.sleep(2.5)  # ticket_ttl is 2 s on this node
    ws = RawWebSocket("127.0.0.1", secured.port, path=f"/ws?ticket={ticket}", recv_buffer=None)
    assert ws.recv_close()[:2] == (4011, "token_expired")
    ws.close()


@pytest.mark.parametrize("aud", ["", [], ["other"]])
def test_docs_without_jwt_audience_a_token_with_any_aud_is_refused(secured: NodeProcess, aud: Any) -> None:
    ws = RawWebSocket("127.0.0.1", secured.port, path=f"/ws?token={token(aud=aud)}", recv_buffer=None)
    assert ws.recv_close()[:2] == (4001, "invalid_token")
    ws.close()
