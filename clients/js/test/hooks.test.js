// A subscribe hook whose backend fails (hooks.md, hook_failure deny): the node
// refuses with backend_unavailable, which is passing, so the client subscribes
// again by itself until the backend answers.
import assert from "node:assert/strict";
import { createServer } from "node:http";
import { after, before, test } from "node:test";
import { Fanline } from "../dist/index.js";
import { Node, freePort, record, until } from "./helpers.js";

let backend;
let node;
let calls = 0;

before(async () => {
  const port = await freePort();
  // The first two calls fail with a 500; later ones allow.
  backend = createServer((req, res) => {
    req.resume();
    req.on("end", () => {
      calls += 1;
      res.writeHead(calls <= 2 ? 500 : 200, { "content-type": "application/json" });
      res.end(calls <= 2 ? "{}" : '{"allow": true}');
    });
  });
  await new Promise((resolve) => backend.listen(port, "127.0.0.1", resolve));
  node = await new Node("memory://", "--hook-subscribe-url", `http://127.0.0.1:${port}/subscribe`).start();
});
after(async () => {
  await node?.stop();
  backend?.close();
});

test("a subscribe refused with backend_unavailable is retried until the hook's backend answers", async () => {
  const c = new Fanline({ url: node.url, transport: "websocket" }).connect();
  const channel = `test:hooks.${process.pid}`;
  const sub = c.subscribe(channel);
  const log = record(sub);
  await until(() => log.subscribed.length, "subscribed once the backend answers", 30000);
  assert.equal(log.errors.length, 2);
  assert.ok(log.errors.every((e) => e.code == "backend_unavailable" && e.retryIn >= 0 && e.retryIn <= 5000));
  assert.equal(sub.state, "subscribed");
  await node.publish(channel, "hello");
  await until(() => log.publications.length, "an event");
  assert.equal(log.publications[0].data, "hello");
  c.close();
});
