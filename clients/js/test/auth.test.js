// Credentials against a node that requires them: the auth first frame,
// tickets, a callback per (re)connect, refresh before expiry, and the
// permanent failures the client must stop on.
import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import { Fanline } from "../dist/index.js";
import { Node, jwt, record, until } from "./helpers.js";

const SECRET = "test-secret-with-enough-length-for-hs256";
let node;
let channels = 0;
const fresh = () => `test:auth.${process.pid}.${channels++}`;
const token = (seconds, sub = "ada") =>
  jwt(SECRET, { sub, exp: Math.floor(Date.now() / 1000) + seconds, channels: ["*"], publish: ["*"] });

before(async () => {
  node = await new Node("memory://", "--client-publish", "--jwt-secret", SECRET).start();
});
after(async () => {
  await node?.stop();
});

async function ticket() {
  const response = await fetch(node.url + "/api/tickets", {
    method: "POST",
    headers: { authorization: "Bearer " + token(600) },
  });
  assert.equal(response.status, 200);
  return { ticket: (await response.json()).ticket };
}

test("a token goes in the auth first frame; subscribe and publish work", async () => {
  const c = new Fanline({ url: node.url, transport: "websocket", token: token(600) }).connect();
  const channel = fresh();
  const log = record(c.subscribe(channel));
  await until(() => log.subscribed.length, "subscribed");
  await c.publish(channel, "hi");
  await until(() => log.publications.length, "the event");
  c.close();
});

test("a callback gives a fresh ticket for every connect, on WebSocket and on SSE", async () => {
  for (const transport of ["websocket", "sse"]) {
    let calls = 0;
    const c = new Fanline({ url: node.url, transport, credential: () => (calls++, ticket()) });
    const channel = fresh();
    const log = record(c.subscribe(channel));
    c.connect();
    await until(() => log.subscribed.length, `subscribed over ${transport}`);
    await node.publish(channel, 1);
    await until(() => log.publications.length, "an event");
    c.reconnect();
    await node.publish(channel, 2);
    await until(() => log.publications.length == 2 && c.state == "connected", "resumed with a new ticket");
    assert.equal(calls, 2, transport);
    c.close();
  }
});

test("SSE sends a token in the Authorization header", async () => {
  const c = new Fanline({ url: node.url, transport: "sse", token: token(600) }).connect();
  const log = record(c.subscribe(fresh()));
  await until(() => log.subscribed.length, "subscribed");
  c.close();
});

test("refresh before expiry keeps the connection past the first token's exp", async () => {
  let issued = 0;
  const c = new Fanline({
    url: node.url,
    transport: "websocket",
    credential: () => (issued++, token(3)),
  });
  const refreshed = [];
  const disconnects = [];
  c.on("refreshed", (r) => refreshed.push(r));
  c.on("disconnected", (d) => disconnects.push(d));
  const channel = fresh();
  const log = record(c.subscribe(channel));
  c.connect();
  await until(() => log.subscribed.length, "subscribed");
  const firstExp = Math.floor(Date.now() / 1000) + 3;
  // Two refreshes: the connection outlives two tokens.
  await until(() => refreshed.length >= 2, "two refreshes", 20000);
  assert.equal(refreshed[0].user, "ada");
  assert.ok(refreshed[1].exp > firstExp);
  assert.deepEqual(disconnects, []);
  await c.publish(channel, "still here");
  await until(() => log.publications.length, "an event");
  assert.equal(issued, 3);
  c.close();
});

test("an expired fixed token ends the client with 4011; with a callback it reconnects", async () => {
  const fixed = new Fanline({ url: node.url, transport: "websocket", token: token(1) });
  const failures = [];
  fixed.on("failed", (f) => failures.push(f));
  fixed.subscribe(fresh());
  fixed.connect();
  await until(() => failures.length, "the failure");
  assert.deepEqual(failures[0], { code: 4011, reason: "token_expired" });
  assert.equal(fixed.state, "failed");

  // A callback without refresh (say it fails): the node closes with 4011 and the client reconnects.
  let calls = 0;
  const renewing = new Fanline({
    url: node.url,
    transport: "websocket",
    credential: () => (calls++, token(2)),
    refresh: () => Promise.reject(new Error("identity provider down")),
  });
  const disconnects = [];
  renewing.on("disconnected", (d) => disconnects.push(d));
  const log = record(renewing.subscribe(fresh()));
  renewing.connect();
  await until(() => disconnects.some((d) => d.code == 4011) && log.subscribed.length == 2, "a reconnect after 4011", 20000);
  assert.ok(calls >= 2);
  renewing.close();
});

test("permanent failures stop the client and say why: 4001 on WebSocket, 401 on SSE", async () => {
  for (const [transport, options, code, reason] of [
    ["websocket", {}, 4001, "unauthorized"],
    ["websocket", { token: "not-a-jwt" }, 4001, "invalid_token"],
    ["sse", {}, 4001, "unauthorized"],
    ["sse", { token: jwt("another secret", { sub: "x", exp: 2e9 }) }, 4001, "invalid_token"],
  ]) {
    const c = new Fanline({ url: node.url, transport, ...options });
    const failures = [];
    const disconnects = [];
    c.on("failed", (f) => failures.push(f));
    c.on("disconnected", (d) => disconnects.push(d));
    c.subscribe(fresh());
    c.connect();
    await until(() => failures.length, `the failure (${transport} ${reason})`);
    assert.deepEqual(failures[0], { code, reason });
    assert.equal(c.state, "failed");
    assert.deepEqual(disconnects, [], "no retry");
  }
});
