// The client over WebSocket against real nodes: delivery, resume, id
// bookkeeping, resets, drain hints, the watchdog and close().
import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import { Fanline } from "../dist/index.js";
import { MemoryStore, Node, record, until } from "./helpers.js";

let node;
let channels = 0;
const fresh = () => `test:ws.${process.pid}.${channels++}`;

before(async () => {
  node = await new Node("memory://", "--client-publish").start();
});
after(async () => {
  await node?.stop();
});

function client(options = {}) {
  return new Fanline({ url: node.url, transport: "websocket", ...options });
}

test("publications arrive in order and publish resolves to the event's id", async () => {
  const c = client().connect();
  const channel = fresh();
  const log = record(c.subscribe(channel));
  await until(() => log.subscribed.length, "subscribed");
  assert.equal(c.state, "connected");
  const ids = [];
  for (let i = 0; i < 20; i++) ids.push(await c.publish(channel, { i }, i % 2 ? "odd" : undefined));
  await until(() => log.publications.length == 20, "20 publications");
  assert.deepEqual(log.publications.map((p) => p.id), ids);
  assert.deepEqual(log.publications.map((p) => p.data.i), [...Array(20).keys()]);
  assert.equal(log.publications[1].event, "odd");
  assert.equal(log.publications[0].event, undefined);
  assert.equal(c.position(channel), ids.at(-1));
  assert.ok((await c.ping()) >= 0);
  c.close();
});

test("after a reconnect every channel resumes with since: the missed events, in order, then live ones", async () => {
  const c = client().connect();
  const [a, b] = [fresh(), fresh()];
  const logA = record(c.subscribe(a));
  const logB = record(c.subscribe(b));
  await until(() => logA.subscribed.length && logB.subscribed.length, "both subscribed");
  await node.publish(a, 0);
  await until(() => logA.publications.length == 1, "first event");
  c.close();
  for (let i = 1; i <= 3; i++) await node.publish(a, i);
  await node.publish(b, "missed");
  c.connect();
  await until(() => logA.publications.length == 4 && logB.publications.length == 1, "missed events");
  assert.deepEqual(logA.subscribed[1], { channel: a, id: logA.publications[0].id, recovered: true, replayed: 3 });
  assert.equal(logB.subscribed[1].replayed, 1);
  await node.publish(a, 4);
  await until(() => logA.publications.length == 5, "a live event");
  assert.deepEqual(logA.publications.map((p) => p.data), [0, 1, 2, 3, 4]);
  assert.equal(logA.resets.length + logB.resets.length, 0);
  c.close();
});

test("reconnect() drops the connection and resumes without loss or duplicates", async () => {
  const c = client().connect();
  const channel = fresh();
  const log = record(c.subscribe(channel));
  await until(() => log.subscribed.length, "subscribed");
  const disconnects = [];
  c.on("disconnected", (d) => disconnects.push(d));
  for (let round = 0; round < 5; round++) {
    c.reconnect();
    await node.publish(channel, round); // while the client is away
    await until(() => log.subscribed.length == round + 2, `resume ${round + 1}`);
  }
  await until(() => log.publications.length == 5 && c.state == "connected", "5 events");
  assert.deepEqual(log.publications.map((p) => p.data), [0, 1, 2, 3, 4]);
  assert.ok(disconnects.length >= 5);
  assert.ok(disconnects.every((d) => d.code == 1000 && d.delay >= 0));
  // Between two connections, subscribe and unsubscribe just change what the next one does.
  c.reconnect();
  assert.equal(c.state, "disconnected");
  const other = fresh();
  const logOther = record(c.subscribe(other));
  c.unsubscribe(channel);
  await until(() => logOther.subscribed.length, "subscribed on the next connection");
  assert.equal(log.subscribed.length, 6, "the unsubscribed channel was not resumed");
  c.close();
});

test("a new client on the same store resumes where the last one stopped (a page reload)", async () => {
  const store = new MemoryStore();
  const channel = fresh();
  const first = client({ store }).connect();
  const log1 = record(first.subscribe(channel));
  await until(() => log1.subscribed.length, "subscribed");
  await node.publish(channel, "seen");
  await until(() => log1.publications.length, "the first event");
  first.close();
  await node.publish(channel, "missed 1");
  await node.publish(channel, "missed 2");
  const second = client({ store }).connect();
  const log2 = record(second.subscribe(channel));
  await until(() => log2.publications.length == 2, "the missed events");
  assert.equal(log2.subscribed[0].recovered, true);
  assert.equal(log2.subscribed[0].id, log1.publications[0].id);
  assert.deepEqual(log2.publications.map((p) => p.data), ["missed 1", "missed 2"]);
  second.unsubscribe(channel);
  assert.equal(store.getItem("fanline:" + channel), null, "unsubscribe forgets the position");
  second.close();
});

test("since given to subscribe wins over the stored position; since: null starts afresh", async () => {
  const store = new MemoryStore();
  const channel = fresh();
  const ids = [];
  for (let i = 0; i < 3; i++) ids.push(await node.publish(channel, i));
  store.setItem("fanline:" + channel, ids[2]);
  const c = client({ store }).connect();
  const log = record(c.subscribe(channel, { since: ids[0] }));
  await until(() => log.publications.length == 2, "replay from since");
  assert.deepEqual(log.publications.map((p) => p.data), [1, 2]);
  c.unsubscribe(channel);
  store.setItem("fanline:" + channel, ids[0]);
  const log2 = record(c.subscribe(channel, { since: null }));
  await until(() => log2.subscribed.length, "subscribed afresh");
  assert.deepEqual(log2.subscribed[0], { channel, id: ids[2] });
  c.close();
});

test("a refused subscribe fails its handle only; the connection and other channels go on", async () => {
  const c = client().connect();
  const ok = record(c.subscribe(fresh()));
  const refused = c.subscribe("fanline.reserved");
  const log = record(refused);
  await until(() => log.errors.length && ok.subscribed.length, "the refusal");
  assert.equal(log.errors[0].code, "subscribe_forbidden");
  assert.equal(log.errors[0].retryIn, undefined);
  assert.equal(refused.state, "failed");
  assert.equal(c.subscription("fanline.reserved"), undefined);
  assert.equal(c.state, "connected");
  c.close();
});

test("close() stops everything: no reconnect, and requests reject", async () => {
  const c = client().connect();
  await until(() => c.state == "connected", "connected");
  const states = [];
  c.on("state", (s) => states.push(s));
  c.close();
  assert.equal(c.state, "closed");
  await assert.rejects(c.publish("x", 1), { code: "closed" });
  assert.deepEqual(states, ["closed"]);
});

test("a restarted embedded broker is a new epoch: the client gets a reset with the reason, then live events", async () => {
  const own = await new Node("memory://", "--client-publish").start();
  try {
    const c = new Fanline({ url: own.url, transport: "websocket" }).connect();
    const channel = fresh();
    const log = record(c.subscribe(channel));
    await until(() => log.subscribed.length, "subscribed");
    await own.publish(channel, "before");
    await until(() => log.publications.length, "an event");
    const before = c.position(channel);
    await own.restart();
    await until(() => log.resets.length, "the reset");
    const reset = log.resets[0];
    assert.equal(reset.reason, "epoch_changed");
    assert.equal(reset.previous, before);
    assert.notEqual(reset.id.split("-")[0], before.split("-")[0], "a new epoch");
    assert.equal(log.subscribed.at(-1).recovered, false);
    assert.equal(c.position(channel), reset.id, "the reset's id is the new position");
    await own.publish(channel, "after");
    await until(() => log.publications.length == 2, "a live event after the reset");
    // The order the application saw: the event, the failed resume, the reset, the new event.
    assert.deepEqual(log.all.map(([type]) => type), ["subscribed", "publication", "subscribed", "reset", "publication"]);
    c.close();
  } finally {
    await own.stop();
  }
});

test("a drain hint sets the reconnect delay, and the client moves to the next node", async () => {
  const draining = await new Node("memory://", "--drain-window", "1").start();
  try {
    const c = new Fanline({ url: [draining.url, node.url], transport: "websocket" });
    const connected = [];
    const drains = [];
    const disconnects = [];
    c.on("connected", (info) => connected.push(info.url));
    c.on("drain", (d) => drains.push(d));
    c.on("disconnected", (d) => disconnects.push(d));
    c.connect();
    c.subscribe(fresh());
    await until(() => connected.length, "connected");
    if (connected[0] != draining.url) {
      c.reconnect(); // start on the node that will drain
      await until(() => connected.length == 2, "connected to the other node");
    }
    const before = connected.length;
    await draining.drain();
    await until(() => connected.length > before, "connected again");
    assert.equal(drains.length, 1);
    assert.equal(disconnects.at(-1).code, 1012);
    assert.equal(disconnects.at(-1).delay, drains[0].reconnectAfter);
    assert.equal(connected.at(-1), node.url);
    c.close();
  } finally {
    await draining.stop();
  }
});

test("2 × heartbeat without a frame is a dead connection: the client moves on", async () => {
  const frozen = await new Node("memory://", "--heartbeat-interval", "0.5").start();
  try {
    const c = new Fanline({ url: [frozen.url, node.url], transport: "websocket" });
    const connected = [];
    const disconnects = [];
    c.on("connected", (info) => connected.push(info.url));
    c.on("disconnected", (d) => disconnects.push(d));
    c.connect();
    await until(() => connected.length, "connected");
    if (connected[0] != frozen.url) {
      c.reconnect();
      await until(() => connected.length == 2, "connected to the node to freeze");
    }
    frozen.signal("SIGSTOP"); // the socket stays open; nothing comes through it
    await until(() => disconnects.some((d) => d.reason == "no heartbeat"), "the watchdog");
    await until(() => c.state == "connected", "connected to the live node");
    assert.equal(connected.at(-1), node.url);
    c.close();
  } finally {
    frozen.signal("SIGCONT");
    await frozen.stop();
  }
});
