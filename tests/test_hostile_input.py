"""Hostile input against a real node: property-based, with real clients.

Whatever arrives (random WebSocket frames, text or binary, raw RFC 6455
frames with any header bits, query strings, Last-Event-ID values, publish
bodies, ticket requests, tokens, JWKS documents), the node answers with a
documented error code or does the thing asked, never a 500, never a crash,
never a traceback; a bystander keeps receiving throughout; a forged resume
position never yields another channel's data; and thousands of bad frames do
not grow the node's memory beyond a generous bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import socket
import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from node import jwks
from node.errors import ErrorCode

from .processes import NodeProcess
from .rawws import ClosedByServer, RawWebSocket, frame_bytes

DOCUMENTED = {v for k, v in vars(ErrorCode).items() if k.isupper()}
REPLIES = {"error", "pong", "subscribed", "unsubscribed", "published", "event", "reset", "heartbeat", "refreshed"}
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None)
BYSTANDER_CHANNEL = "fuzz:bystander"
# The rate limiter is tested elsewhere; here every message should be parsed.
UNLIMITED = {"FANLINE_RATE_LIMIT": "1000000", "FANLINE_RATE_BURST": "1000000"}


@pytest.fixture(scope="module")
def node() -> Iterator[NodeProcess]:
    with NodeProcess("memory://?history_size=50", "--client-publish", "--max-message-bytes", "65536", env=UNLIMITED) as process:
        yield process


@pytest.fixture(scope="module")
def bystander(node: NodeProcess) -> Iterator[ClientConnection]:
    with connect(node.ws_url, open_timeout=10, max_size=2**24) as ws:
        assert json.loads(ws.recv(10))["type"] == "connected"
        ws.send(json.dumps({"type": "subscribe", "channel": BYSTANDER_CHANNEL}))
        assert json.loads(ws.recv(10))["type"] == "subscribed"
        yield ws


class Prober:
    """One WebSocket, reopened only if the node closed it; every reply checked."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.ws: ClientConnection | None = None
        self.probe = 0
        self.stack = contextlib.ExitStack()

    def _open(self) -> ClientConnection:
        if self.ws is None:
            self.ws = self.stack.enter_context(connect(self.url, open_timeout=10, max_size=2**24))
            assert json.loads(self.ws.recv(10))["type"] == "connected"
        return self.ws

    def send(self, frame: str | bytes) -> list[dict[str, Any]]:
        """Send one frame, then a ping, and return every reply that came before the pong."""
        ws = self._open()
        self.probe += 1
        replies: list[dict[str, Any]] = []
        try:
            ws.send(frame)
            ws.send(json.dumps({"type": "ping", "rid": f"probe{self.probe}"}))
            for _ in range(1000):
                raw = ws.recv(10)
                assert isinstance(raw, str), "the node sends text frames only"
                for line in raw.split("\n"):
                    message = json.loads(line)
                    if message == {"type": "pong", "rid": f"probe{self.probe}"}:
                        return replies
                    replies.append(message)
            raise AssertionError("no pong after 1000 messages")
        except ConnectionClosed as exc:
            self.ws = None
            # The only acceptable close: a frame beyond max_message_bytes (1009).
            assert exc.rcvd is not None and exc.rcvd.code == 1009, f"closed unexpectedly: {exc.rcvd}"
            return replies

    def close(self) -> None:
        self.stack.close()


def check_replies(replies: list[dict[str, Any]]) -> None:
    for message in replies:
        assert message.get("type") in REPLIES, message
        if message["type"] == "error":
            assert message["code"] in DOCUMENTED, message
            assert message["code"] != ErrorCode.INTERNAL, message


@pytest.fixture(scope="module")
def prober(node: NodeProcess) -> Iterator[Prober]:
    instance = Prober(node.ws_url)
    yield instance
    instance.close()


# -- strategies -------------------------------------------------------------------------------------

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**30), max_value=10**30)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=40)
)
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=20)
channel_like = st.one_of(
    st.sampled_from(["fuzz:a", "fuzz:b", "fanline.ticket.x", "user#1", "a..b", ".x", "", "x" * 300, BYSTANDER_CHANNEL]),
    st.text(max_size=30),
    scalars,
)
event_id_like = st.one_of(
    st.from_regex(r"\A[A-Za-z0-9]{1,40}-[0-9]{1,25}\Z"),
    st.text(max_size=40),
    scalars,
)
messages = st.fixed_dictionaries(
    {"type": st.one_of(st.sampled_from(["subscribe", "unsubscribe", "publish", "ping", "auth", "refresh"]), scalars)},
    optional={
        "channel": channel_like,
        "since": event_id_like,
        "data": json_values,
        "event": st.one_of(st.sampled_from(["note", "fanline.x", "-x", "a" * 70]), scalars),
        "rid": json_values,
        "token": st.one_of(st.text(max_size=60), scalars),
        "ticket": st.one_of(st.text(max_size=60), scalars),
    },
)


def _dump(value: Any) -> str:
    return json.dumps(value, allow_nan=True)


frames = st.one_of(
    messages.map(_dump),
    json_values.map(_dump),
    st.text(max_size=200),
    st.binary(max_size=200),
    st.integers(min_value=1, max_value=5000).map(lambda n: "9" * n),  # beyond int-string digit limits
)


# -- WebSocket frames ---------------------------------------------------------------------------------


@FUZZ
@given(frame=frames)
@example(frame="[" * 50_000)  # RecursionError in json.loads, not ValueError
@example(frame='{"a":' * 20_000)
@example(frame='{"type":"publish","channel":"fuzz:a","data":' + "[" * 30_000 + "]" * 30_000 + "}")
@example(frame='{"type":"publish","channel":"fuzz:a","data":' + "[" * 985 + "]" * 985 + "}")  # near the limit
@example(frame=b"\xff\xfe\x00")
@example(frame="x" * 70_000)  # beyond max_message_bytes
def test_arbitrary_websocket_frames_get_documented_answers(prober: Prober, frame: str | bytes) -> None:
    check_replies(prober.send(frame))


@FUZZ
@given(frame=frames)
@example(frame='{"type":"subscribe","channel":"fuzz:a"}')  # a valid message, in a binary frame
@example(frame=b"\xff\xfe\x00")
def test_arbitrary_binary_frames_get_documented_answers(prober: Prober, frame: str | bytes) -> None:
    check_replies(prober.send(frame.encode() if isinstance(frame, str) else frame))


def strict_json(line: str) -> Any:
    """Parse as a browser's JSON.parse would: NaN or Infinity in a reply is a bug."""

    def refuse(token: str) -> Any:
        raise AssertionError(f"the node sent {token}, which is not JSON: {line[:200]}")

    return json.loads(line, parse_constant=refuse)


@settings(max_examples=100, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    opcode=st.integers(min_value=0, max_value=15),
    fin=st.booleans(),
    rsv=st.sampled_from([0, 0, 0, 0x10, 0x40, 0x70]),
    masked=st.booleans(),
    payload=st.one_of(st.binary(max_size=300), st.text(max_size=100).map(str.encode)),
)
@example(opcode=1, fin=True, rsv=0, masked=True, payload=b'{"type":"ping","rid":NaN}')
@example(opcode=8, fin=True, rsv=0, masked=True, payload=b"\x03")  # a one-byte close payload
@example(opcode=8, fin=True, rsv=0, masked=True, payload=struct.pack("!H", 1000) + b"\xff")  # bad UTF-8 reason
@example(opcode=9, fin=True, rsv=0, masked=True, payload=b"x" * 126)  # a control frame too large
@example(opcode=0, fin=True, rsv=0, masked=True, payload=b"orphan continuation")
def test_raw_frames_with_any_header_bits_get_a_reply_or_an_rfc_close(
    node: NodeProcess, opcode: int, fin: bool, rsv: int, masked: bool, payload: bytes
) -> None:
    """Below the JSON layer: opcodes, RSV bits, masks, fragments.  The node answers, or closes with
    the RFC's code for what was wrong (1002 protocol, 1007 UTF-8, 1009 size), and nothing else."""
    ws = RawWebSocket("127.0.0.1", node.port, recv_buffer=None)
    try:
        assert ws.recv_messages()[0]["type"] == "connected"
        ws.sock.sendall(frame_bytes(opcode, payload, fin=fin, rsv=rsv, masked=masked))
        ws.send_json({"type": "ping", "rid": "after"})
        for _ in range(100):
            opcode_in, data = ws.recv_frame()
            if opcode_in == 0x8:
                code = struct.unpack("!H", data[:2])[0] if len(data) >= 2 else 1005
                # A close the client started is echoed; any other close is one of the RFC's.
                assert code in (1002, 1007, 1009) or opcode == 8, (code, data)
                return
            if opcode_in == 0x1:
                replies = [strict_json(line) for line in data.decode().split("\n")]
                check_replies([m for m in replies if m != {"type": "pong", "rid": "after"}])
                if {"type": "pong", "rid": "after"} in replies:
                    return
        raise AssertionError("neither a pong nor a close")
    except ClosedByServer:
        pass
    finally:
        ws.close()


@settings(max_examples=60, deadline=None, database=None)
@given(since=event_id_like)
@example(since=math.inf)
def test_forged_resume_positions_never_leak_another_channels_data(node: NodeProcess, since: Any) -> None:
    with connect(node.ws_url, open_timeout=10) as ws:
        assert json.loads(ws.recv(10))["type"] == "connected"
        ws.send(json.dumps({"type": "subscribe", "channel": "fuzz:empty", "since": since, "rid": 1}))
        ws.send(json.dumps({"type": "ping", "rid": "end"}))
        replies = []
        for _ in range(100):
            messages = [json.loads(line) for line in str(ws.recv(10)).split("\n")]
            replies.extend(messages)
            if {"type": "pong", "rid": "end"} in messages:
                break
    check_replies([m for m in replies if m["type"] != "pong"])
    assert all(m.get("channel") in (None, "fuzz:empty") for m in replies), replies
    assert not [m for m in replies if m["type"] == "event"], "an empty channel delivered events"
    if isinstance(since, float) and not math.isfinite(since):
        # NaN and Infinity are not JSON: the frame is refused whole, so the error has no rid.
        assert [m.get("code") for m in replies if m["type"] == "error"] == ["invalid_json"], replies
        return
    kinds = [m["type"] for m in replies if m.get("rid") == 1]
    assert kinds == ["subscribed"] or kinds == ["error"], replies


def test_another_channels_position_gives_a_reset_not_its_data(node: NodeProcess) -> None:
    with httpx.Client(timeout=10) as http:
        ids = [http.post(node.url + "/api/publish", json={"channel": "fuzz:secret", "data": i}).json()["id"] for i in range(3)]
        http.post(node.url + "/api/publish", json={"channel": "fuzz:other", "data": "mine"}).raise_for_status()
    with connect(node.ws_url, open_timeout=10) as ws:
        assert json.loads(ws.recv(10))["type"] == "connected"
        ws.send(json.dumps({"type": "subscribe", "channel": "fuzz:other", "since": ids[0]}))
        ws.send(json.dumps({"type": "ping", "rid": "end"}))
        replies: list[dict[str, Any]] = []
        while {"type": "pong", "rid": "end"} not in replies and len(replies) < 100:
            replies.extend(json.loads(line) for line in str(ws.recv(10)).split("\n"))
    assert [m["type"] for m in replies[:2]] == ["subscribed", "reset"], replies
    assert replies[1]["reason"] == "epoch_changed"
    assert "secret" not in json.dumps(replies) and all(m.get("data") != 1 for m in replies)


# -- SSE query strings and Last-Event-ID ------------------------------------------------------------

# What an HTTP client can put in a header: latin-1 without controls, no outer whitespace.
header_text = st.text(
    alphabet=st.characters(min_codepoint=32, max_codepoint=255, exclude_characters="\x7f"), max_size=80
).map(str.strip)


@FUZZ
@given(
    channels=st.lists(st.one_of(channel_like.filter(lambda c: isinstance(c, str)), st.just("fuzz:a")), max_size=4),
    last_event_id=st.none()
    | header_text
    | st.lists(st.from_regex(r"\A[A-Za-z0-9]{1,40}-[0-9]{1,25}\Z") | header_text, min_size=1, max_size=4).map(".".join),
    in_query=st.booleans(),
    extra=st.lists(st.tuples(st.text(max_size=10), st.text(max_size=20)), max_size=3),
)
def test_arbitrary_sse_requests_get_documented_answers(
    node: NodeProcess, channels: list[str], last_event_id: str | None, in_query: bool, extra: list[tuple[str, str]]
) -> None:
    params = [("channel", c) for c in channels] + extra
    headers: dict[str, bytes] = {}
    if last_event_id is not None:
        if in_query:
            params.append(("last_event_id", last_event_id))
        else:
            headers["last-event-id"] = last_event_id.encode("latin-1")
    with httpx.Client(timeout=10) as http, http.stream("GET", node.url + "/sse", params=params, headers=headers) as response:
        assert response.status_code in (200, 400, 403), response.status_code
        if response.status_code == 200:
            first = next(response.iter_lines())
            assert first.startswith("retry:")
        else:
            response.read()
            assert response.json()["error"] in DOCUMENTED


# -- publish API bodies -----------------------------------------------------------------------------

publications = st.fixed_dictionaries(
    {}, optional={"channel": channel_like, "data": json_values, "event": st.one_of(st.sampled_from(["note", "fanline.x"]), scalars)}
)
bodies = st.one_of(
    publications.map(_dump),
    st.fixed_dictionaries({"publications": st.one_of(st.lists(publications, max_size=4), json_values)}).map(_dump),
    json_values.map(_dump),
    st.binary(max_size=300),
)


@FUZZ
@given(body=bodies, batch=st.booleans())
@example(body="[" * 50_000, batch=False)
@example(body=b"{" * 70_000, batch=True)  # beyond max_message_bytes
def test_arbitrary_publish_bodies_get_documented_answers(node: NodeProcess, body: str | bytes, batch: bool) -> None:
    path = "/api/publish/batch" if batch else "/api/publish"
    content = body.encode() if isinstance(body, str) else body
    with httpx.Client(timeout=10) as http:
        response = http.post(node.url + path, content=content, headers={"content-type": "application/json"})
    assert response.status_code in (200, 400, 403, 413), (response.status_code, response.text)
    if response.status_code != 200:
        assert response.json()["error"] in DOCUMENTED


# -- the node afterwards ------------------------------------------------------------------------------


def rss_kib(node: NodeProcess) -> int:
    assert node.proc is not None
    for line in Path(f"/proc/{node.proc.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


BAD_FRAMES = ["[" * 5000, "not json", '{"type":"subscribe","channel":"a..b"}', '{"type":"nope"}', "\u0000" * 100]


def test_thousands_of_bad_frames_do_not_grow_memory(node: NodeProcess) -> None:
    def hammer(count: int) -> None:
        with connect(node.ws_url, open_timeout=10) as ws:
            assert json.loads(ws.recv(10))["type"] == "connected"
            for i in range(count):
                ws.send(BAD_FRAMES[i % len(BAD_FRAMES)])
                if i % 200 == 199:  # let the replies drain so the outbox never overflows
                    ws.send(json.dumps({"type": "ping", "rid": i}))
                    for _ in range(1000):
                        if f'"rid":{i}' in str(ws.recv(10)):
                            break

    hammer(1000)  # warm up allocator pools and caches
    before = rss_kib(node)
    for _ in range(5):
        hammer(1000)
    after = rss_kib(node)
    assert after - before < 64 * 1024, f"RSS grew by {after - before} KiB over 5000 bad frames"


def test_the_node_stays_healthy_and_the_bystander_kept_receiving(node: NodeProcess, bystander: ClientConnection) -> None:
    assert node.proc is not None and node.proc.poll() is None
    log = node.log_path.read_text(errors="replace")
    assert "Traceback" not in log and "Exception in ASGI application" not in log, log[-3000:]
    with httpx.Client(timeout=10) as http:
        assert http.get(node.url + "/healthz").status_code == 200
        event_id = http.post(node.url + "/api/publish", json={"channel": BYSTANDER_CHANNEL, "data": "still here"}).json()["id"]
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        for line in str(bystander.recv(10)).split("\n"):
            message = json.loads(line)
            if message["type"] == "event":
                assert (message["id"], message["data"]) == (event_id, "still here")
                return
    raise AssertionError("the bystander got nothing")


# -- hostile credentials --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def auth_node() -> Iterator[NodeProcess]:
    with NodeProcess("memory://", "--jwt-secret", "s" * 32, "--api-keys", "k" * 16) as process:
        yield process


# Every field of a ticket request, with numbers that are not numbers and values of every wrong type.
awkward_numbers = st.one_of(
    st.sampled_from([math.nan, math.inf, -math.inf, 1e308, 10**400, -1, 0, 2**63, 253_402_300_800]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(min_value=-(10**40), max_value=10**40),
)
any_value = st.one_of(awkward_numbers, json_values)
ticket_bodies = st.fixed_dictionaries(
    {},
    optional={
        "sub": st.one_of(st.sampled_from(["42", "", "x" * 300]), any_value),
        "channels": st.one_of(st.lists(st.text(max_size=20), max_size=5), any_value),
        "publish": st.one_of(st.lists(st.text(max_size=20), max_size=5), any_value),
        "exp": st.one_of(st.floats(min_value=time.time() + 60, max_value=time.time() + 3600), any_value),
    },
)


@settings(max_examples=50, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=st.one_of(ticket_bodies.map(_dump), json_values.map(_dump), st.binary(max_size=100)))
@example(body='{"sub": "42", "exp": NaN}')
@example(body='{"sub": "42", "exp": Infinity}')
@example(body='{"sub": "42", "exp": 1e400}')
@example(body='{"sub": "42", "exp": ' + "9" * 5000 + "}")
def test_arbitrary_ticket_requests_get_documented_answers_and_tickets_that_work(
    auth_node: NodeProcess, body: str | bytes
) -> None:
    with httpx.Client(timeout=10) as http:
        response = http.post(
            auth_node.url + "/api/tickets", content=body, headers={"x-api-key": "k" * 16, "content-type": "application/json"}
        )
    assert response.status_code in (200, 400), (response.status_code, response.text)
    if response.status_code == 400:
        assert response.json()["error"] in ("invalid_json", "invalid_message"), response.text
        return
    # Issued: the ticket opens a connection, and everything the node says on it is JSON.
    ticket = response.json()["ticket"]
    with connect(f"{auth_node.ws_url}?ticket={ticket}", open_timeout=10) as ws:
        try:
            hello = strict_json(str(ws.recv(10)))
        except ConnectionClosed as exc:
            assert exc.rcvd is not None and (exc.rcvd.code, exc.rcvd.reason) == (4011, "token_expired"), exc.rcvd
            return
        assert hello["type"] == "connected"
        ws.send(json.dumps({"type": "refresh", "ticket": "x", "rid": 1}))
        assert strict_json(str(ws.recv(10)))["code"] == "invalid_ticket"


@settings(max_examples=60, deadline=None, database=None)
@given(value=header_text, where=st.sampled_from(["bearer", "query", "cookie", "ticket", "apikey"]))
@example(value="eyJhbGciOiJub25lIn0.eyJzdWIiOiIxIn0.", where="bearer")  # alg none
def test_hostile_credentials_are_refused_with_documented_codes(auth_node: NodeProcess, value: str, where: str) -> None:
    params: list[tuple[str, str]] = [("channel", "public:x")]
    headers: dict[str, bytes] = {}
    if where == "bearer":
        headers["authorization"] = f"Bearer {value}".strip().encode("latin-1")
    elif where == "cookie":
        headers["cookie"] = f"fanline_token={value}".encode("latin-1")
    elif where in ("query", "ticket"):
        params.append(("token" if where == "query" else "ticket", value))
    with httpx.Client(timeout=10) as http:
        if where == "apikey":
            response = http.post(auth_node.url + "/api/publish", json={"channel": "x", "data": 1}, headers={"x-api-key": value.encode("latin-1")})
            assert (response.status_code, response.json()["error"]) in ((401, "invalid_api_key"), (401, "unauthorized"))
            return
        response = http.get(auth_node.url + "/sse", params=params, headers=headers)
    assert response.status_code == 401, response.text
    assert response.json()["error"] in ("unauthorized", "invalid_token", "invalid_ticket")


# -- JWKS documents and the answers that carry them --------------------------------------------------


class DocumentServer:
    """An HTTP server whose one answer a test sets: a JWKS document, or raw bytes for the whole answer."""

    def __init__(self) -> None:
        self.document = b"{}"
        self.raw: bytes | None = None
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.2)
        self.port = self.listener.getsockname()[1]
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.stopped.is_set():
            try:
                conn, _ = self.listener.accept()
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(5)
                with contextlib.suppress(OSError):
                    conn.recv(65536)
                    if self.raw is not None:
                        conn.sendall(self.raw)
                    else:
                        head = f"HTTP/1.1 200 OK\r\nContent-Length: {len(self.document)}\r\n\r\n".encode()
                        conn.sendall(head + self.document)

    def close(self) -> None:
        self.stopped.set()
        self.thread.join(5)
        self.listener.close()


@pytest.fixture(scope="module")
def document_server() -> Iterator[DocumentServer]:
    server = DocumentServer()
    yield server
    server.close()


jwk_fields = st.fixed_dictionaries(
    {},
    optional={
        "kty": st.one_of(st.sampled_from(["RSA", "EC", "oct", "OKP", "none"]), scalars),
        "kid": st.one_of(st.text(max_size=10), scalars),
        "alg": st.one_of(st.sampled_from(["RS256", "ES256", "HS256", "none"]), scalars),
        "n": st.one_of(st.sampled_from(["AQAB", "", "!!"]), json_values),
        "e": st.one_of(st.just("AQAB"), json_values),
        "crv": st.one_of(st.sampled_from(["P-256", "P-384", "Ed25519"]), scalars),
        "x": json_values,
        "y": json_values,
        "k": json_values,
    },
)
jwks_documents = st.one_of(
    st.fixed_dictionaries({"keys": st.lists(jwk_fields, max_size=4)}).map(_dump),
    st.fixed_dictionaries({"keys": json_values}).map(_dump),
    json_values.map(_dump),
    st.binary(max_size=200),
)


def _fetch(server: DocumentServer) -> None:
    """One fetch and parse, as the node does it: keys, or a JWKSError, and nothing else."""
    url = f"http://127.0.0.1:{server.port}/jwks.json"
    with contextlib.suppress(jwks.JWKSError):
        jwks.parse(asyncio.run(jwks.fetch(url, 5.0)))


@settings(max_examples=100, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(document=jwks_documents)
@example(document="[" * 50_000 + "]" * 50_000)
@example(document='"keys"')
@example(document='{"keys": [{"kty": "RSA", "n": [[[]]], "e": "AQAB"}]}')
def test_arbitrary_jwks_documents_give_keys_or_one_error(document_server: DocumentServer, document: str | bytes) -> None:
    document_server.raw = None
    document_server.document = document.encode() if isinstance(document, str) else document
    _fetch(document_server)


@settings(max_examples=60, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    answer=st.one_of(
        st.binary(max_size=300),
        st.builds(
            lambda status, headers, body: f"HTTP/1.1 {status} X\r\n{headers}\r\n".encode() + body,
            st.sampled_from([200, 301, 404, 500, 999]),
            st.sampled_from(["", "Content-Length: 5\r\n", "Content-Length: 99999999\r\n",
                             "Transfer-Encoding: chunked\r\n", "Content-Length: x\r\n"]),
            st.binary(max_size=100),
        ),
    )
)
@example(answer=b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nffffffffff\r\n")
def test_arbitrary_http_answers_from_a_jwks_url_give_keys_or_one_error(
    document_server: DocumentServer, answer: bytes
) -> None:
    document_server.raw = answer
    _fetch(document_server)
