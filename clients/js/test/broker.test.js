// A broker outage, with a real Redis server: a subscribe refused with
// broker_unavailable is retried with the same since until it succeeds.
import assert from "node:assert/strict";
import { rmSync } from "node:fs";
import { after, before, test } from "node:test";
import { Fanline } from "../dist/index.js";
import { Node, Redis, record, until } from "./helpers.js";

let redis;
let node;

before(async () => {
  redis = await new Redis().start();
  node = await new Node(redis.url, "--client-publish").start();
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
