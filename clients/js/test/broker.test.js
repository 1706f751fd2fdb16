// A broker outage, with a real Redis server: a subscribe refused with
// broker_unavailable is retried with the same since until it succeeds, by the
// client and by the minimal client of docs/protocol.md.
import assert from "node:assert/strict";
import { readFileSync, rmSync } from "node:fs";
import { after, before, test } from "node:test";
import { Fanline } from "../dist/index.js";
import { Node, Redis, record, sleep, until } from "./helpers.js";

let redis;
let node;

before(async () => {
  redis = await new Redis().start();
  // A subscribe waits this long for the broker before the node refuses it with broker_unavailable.
  node = await new Node(redis.url, "--client-publish", "--subscribe-wait", "0.5").start();
});
after(async () => {
  await node?.stop();
  await redis?.kill();
  if (redis?.dir) rmSync(redis.dir, { recursive: true, force: true });
});

test("a subscribe refused with broker_unavailable is retried with the same since until the broker is back", async () => {
  const c = new Fanline({ url: node.url, transport: "websocket" }).connect();
  const steady = `test:broker.${process.pid}.steady`;
  const logSteady = record(c.subscribe(steady));
  await until(() => logSteady.subscribed.length, "subscribed");
  await node.publish(steady, "before");
  await until(() => logSteady.publications.length, "the first event");
  const since = c.position(steady);

  await redis.kill();
  // Subscribed again from its position while the broker is down: refused, then retried.
  c.unsubscribe(steady);
  const sub = c.subscribe(steady, { since });
  const log = record(sub);
  await until(() => log.errors.length, "a refusal", 30000);
  assert.equal(log.errors[0].code, "broker_unavailable");
  assert.ok(log.errors[0].retryIn >= 0 && log.errors[0].retryIn <= 500, "the first retry within 0.5 s");
  assert.equal(sub.state, "subscribing");
  assert.equal(c.state, "connected");
  assert.equal(c.position(steady), since, "a refusal does not move the position");

  await redis.start();
  await until(() => log.subscribed.length, "subscribed after the outage", 30000);
  assert.deepEqual(log.subscribed[0], { channel: steady, id: since, recovered: true, replayed: 0 });
  assert.ok(log.errors.every((e) => e.code == "broker_unavailable" && e.retryIn <= 5000));
  await until(async () => {
    try {
      return await node.publish(steady, "after");
    } catch {
      return false; // the node's publisher may still be reconnecting
    }
  }, "a publish after the outage", 30000);
  await until(() => log.publications.length, "an event after the outage");
  assert.equal(log.publications[0].data, "after");
  assert.equal(log.resets.length, 0);
  c.close();
});

test("the minimal WebSocket client of docs/protocol.md retries a subscribe refused with broker_unavailable", async () => {
  // The documented code itself, run with a WebSocket and setTimeout the test can stop.
  const doc = readFileSync(new URL("../../../docs/protocol.md", import.meta.url), "utf8");
  const section = doc.slice(doc.indexOf("### WebSocket with resume"));
  const code = section.slice(section.indexOf("```js\n") + 6, section.indexOf("\nconnect("));
  // A node takes no new connection while its broker is down, so the outage must
  // meet a subscribe on an open connection: the test holds the client's sends
  // until the broker is gone.
  let stopped = false;
  let held = [];
  const sockets = [];
  class TrackedWebSocket extends WebSocket {
    constructor(url) {
      super(url);
      sockets.push(this);
    }
    send(data) {
      if (held) held.push(() => super.send(data));
      else super.send(data);
    }
  }
  const laterUnlessStopped = (fn, ms) => setTimeout(() => stopped || fn(), ms);
  const connect = new Function("WebSocket", "setTimeout", "console", code + "\nreturn connect;")(
    TrackedWebSocket,
    laterUnlessStopped,
    { warn() {} },
  );

  const channel = `test:broker.${process.pid}.minimal`;
  await node.publish(channel, "before the outage");
  const events = [];
  const resets = [];
  connect(node.url.replace("http", "ws") + "/ws", [channel], (m) => events.push(m), (m) => resets.push(m));
  try {
    await until(() => held.length, "the client's subscribe");
    await redis.kill();
    const release = held;
    held = null;
    for (const send of release) send();
    await sleep(1500); // its subscribe, and a retry or two, meet the outage
    await redis.start();
    // It subscribed without since (it had no position): publish until an event gets through.
    await until(async () => {
      await node.publish(channel, "after the outage").catch(() => null);
      await sleep(100);
      return events.some((e) => e.data == "after the outage");
    }, "an event through the retried subscribe", 30000);
    assert.equal(resets.length, 0);
  } finally {
    stopped = true;
    for (const socket of sockets) socket.close();
  }
});
