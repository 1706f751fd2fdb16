// The client over SSE (receive-only) against real nodes, and the fallback from
// WebSocket to SSE when WebSocket cannot connect.
import assert from "node:assert/strict";
import { request as httpRequest, createServer } from "node:http";
import { after, before, test } from "node:test";
import { Fanline } from "../dist/index.js";
import { MemoryStore, Node, record, until } from "./helpers.js";

let node;
let channels = 0;
const fresh = () => `test:sse.${process.pid}.${channels++}`;

before(async () => {
  node = await new Node("memory://", "--client-publish").start();
});
after(async () => {
  await node?.stop();
});

function client(options = {}) {
  return new Fanline({ url: node.url, transport: "sse", ...options });
}

test("events of every type arrive, typed or not, known to the page or not", async () => {
  const c = client().connect();
  const channel = fresh();
  const log = record(c.subscribe(channel));
  await until(() => log.subscribed.length, "subscribed");
  assert.equal(c.transport, "sse");
  await node.publish(channel, 1);
  await node.publish(channel, 2, "a-type-nobody-listens-for");
  await node.publish(channel, 3, "headline");
  await until(() => log.publications.length == 3, "3 events");
  assert.deepEqual(log.publications.map((p) => [p.data, p.event]), [[1, undefined], [2, "a-type-nobody-listens-for"], [3, "headline"]]);
  c.close();
});

test("publish and ping are refused on SSE: it only receives", async () => {
  const c = client().connect();
  await assert.rejects(c.publish("x", 1), { code: "receive_only" });
  await assert.rejects(c.ping(), { code: "receive_only" });
  c.close();
});

test("a stream resumes every channel after a reconnect, and after a new client on the same store", async () => {
  const store = new MemoryStore();
  const c = client({ store }).connect();
  const [a, b] = [fresh(), fresh()];
  const logA = record(c.subscribe(a));
  const logB = record(c.subscribe(b));
  await until(() => logA.subscribed.length && logB.subscribed.length, "subscribed");
  await node.publish(a, "a0");
  await until(() => logA.publications.length, "a0");
  c.close();
  await node.publish(a, "a1");
  await node.publish(b, "b1");
  c.connect();
  await until(() => logA.publications.length == 2 && logB.publications.length == 1, "missed events");
  assert.deepEqual(logA.subscribed.at(-1), { channel: a, id: logA.publications[0].id, recovered: true, replayed: 1 });
  c.close();
  await node.publish(b, "b2");
  const reloaded = client({ store }).connect();
  const logB2 = record(reloaded.subscribe(b));
  const logA2 = record(reloaded.subscribe(a));
  await until(() => logB2.publications.length == 1, "b2 after the reload");
  assert.deepEqual(logB2.publications.map((p) => p.data), ["b2"]);
  assert.equal(logA2.subscribed[0].recovered, true);
  assert.equal(logA2.publications.length + logA2.resets.length + logB2.resets.length, 0);
  reloaded.close();
});

test("changing the channel list reopens the stream: old channels resume, a new one just starts", async () => {
  const c = client().connect();
  const [a, b] = [fresh(), fresh()];
  await node.publish(b, "published before anyone subscribed");
  const logA = record(c.subscribe(a));
  await until(() => logA.subscribed.length, "a subscribed");
  await node.publish(a, 1);
  await until(() => logA.publications.length == 1, "a's first event");
  const logB = record(c.subscribe(b));
  await node.publish(a, 2);
  await until(() => logB.subscribed.length && logA.publications.length == 2, "b subscribed, a's second event");
  // b had no position: it starts now, without a reset (the placeholder is the client's business).
  assert.deepEqual(logB.subscribed, [{ channel: b, id: logB.subscribed[0].id }]);
  assert.equal(logB.resets.length, 0);
  assert.ok(logA.subscribed.slice(1).every((s) => s.recovered));
  await node.publish(b, "live");
  await until(() => logB.publications.length == 1, "b's live event");
  c.unsubscribe(a);
  await node.publish(a, 3);
  await node.publish(b, "live 2");
  await until(() => logB.publications.length == 2, "b's second event");
  assert.deepEqual(logA.publications.map((p) => p.data), [1, 2]);
  assert.equal(logA.resets.length, 0);
  c.close();
});

test("a drained node ends the stream with its hint and the client resumes on the next node", async () => {
  const draining = await new Node("memory://", "--drain-window", "1").start();
  try {
    const channel = fresh();
    const c = new Fanline({ url: [draining.url, node.url], transport: "sse" });
    const connected = [];
    const disconnects = [];
    c.on("connected", (info) => connected.push(info.url));
    c.on("disconnected", (d) => disconnects.push(d));
    c.connect();
    c.subscribe(channel);
    await until(() => connected.length, "connected");
    if (connected[0] != draining.url) {
      c.reconnect();
      await until(() => connected.length == 2, "connected to the node to drain");
    }
    const before = connected.length;
    await draining.drain();
    await until(() => connected.length > before, "connected again");
    // Two nodes on separate embedded brokers: the channel is a new epoch there.
    assert.equal(connected.at(-1), node.url);
    const end = disconnects.find((d) => d.reason == "stream ended");
    assert.ok(end && end.delay >= 250 && end.delay <= 1250, `the node's retry hint: ${JSON.stringify(disconnects)}`);
    c.close();
  } finally {
    await draining.stop();
  }
});

test("refusals that retrying cannot fix stop the client: a bad channel name (400)", async () => {
  const c = client();
  const failures = [];
  const disconnects = [];
  c.on("failed", (f) => failures.push(f));
  c.on("disconnected", (d) => disconnects.push(d));
  c.subscribe("not a channel");
  c.connect();
  await until(() => failures.length, "the failure");
  assert.deepEqual(failures[0], { code: 1008, reason: "invalid_channel" });
  assert.equal(c.state, "failed");
  assert.equal(disconnects.length, 0);
});

test("auto: when WebSocket cannot connect, the client falls back to SSE and stays on it", async () => {
  // A proxy that passes plain HTTP (the SSE stream) and refuses every WebSocket upgrade.
  const proxy = createServer((req, res) => {
    const upstream = httpRequest(
      { host: "127.0.0.1", port: node.port, path: req.url, method: req.method, headers: req.headers },
      (answer) => {
        res.writeHead(answer.statusCode, answer.headers);
        answer.pipe(res);
      },
    );
    req.pipe(upstream);
    res.on("close", () => upstream.destroy());
  });
  proxy.on("upgrade", (req, socket) => socket.end("HTTP/1.1 403 Forbidden\r\ncontent-length: 0\r\n\r\n"));
  await new Promise((resolve) => proxy.listen(0, "127.0.0.1", resolve));
  try {
    const c = new Fanline({ url: `http://127.0.0.1:${proxy.address().port}`, backoffBase: 50 });
    const transports = [];
    c.on("connected", (info) => transports.push(info.transport));
    const channel = fresh();
    const log = record(c.subscribe(channel));
    c.connect();
    await until(() => log.subscribed.length, "subscribed through the proxy");
    assert.equal(c.transport, "sse");
    assert.deepEqual(transports, ["sse"]);
    await node.publish(channel, "through SSE");
    await until(() => log.publications.length, "an event");
    c.reconnect();
    await until(() => transports.length == 2, "connected again");
    assert.deepEqual(transports, ["sse", "sse"]);
    c.close();
  } finally {
    proxy.closeAllConnections();
    proxy.close();
  }
});
