// The stream parser and the position store, without a network.
import assert from "node:assert/strict";
import { test } from "node:test";
import { Positions } from "../dist/positions.js";
import { StreamParser } from "../dist/sse.js";
import { MemoryStore } from "./helpers.js";

test("the stream parser completes events across any chunk boundary", () => {
  const stream =
    "retry: 2000\nevent: fanline.subscribed\nid: a-1.b-2\ndata: {\"x\":1}\n\n" +
    ": keepalive\n\n" +
    "id: a-2.b-2\ndata: {\"y\":2}\n\n" +
    "event: headline\r\ndata: line one\r\ndata: line two\r\n\r\n" +
    "retry: 812\n\n";
  for (let size = 1; size <= stream.length; size++) {
    const parser = new StreamParser();
    const events = [];
    for (let i = 0; i < stream.length; i += size) events.push(...parser.feed(stream.slice(i, i + size)));
    assert.deepEqual(events, [
      { type: "fanline.subscribed", data: '{"x":1}' },
      { type: "message", data: '{"y":2}' },
      { type: "headline", data: "line one\nline two" },
    ], `chunks of ${size}`);
    assert.equal(parser.retry, 812);
  }
});

test("the stream parser ignores comments, unknown fields and a field without a value", () => {
  const parser = new StreamParser();
  assert.deepEqual(parser.feed(": hi\nfoo: bar\ndata\n\nretry: soon\ndata:x\n\n"), [
    { type: "message", data: "" },
    { type: "message", data: "x" },
  ]);
  assert.equal(parser.retry, undefined);
});

test("positions live in memory and, with a store, survive a new client", () => {
  const store = new MemoryStore();
  const positions = new Positions(store, "app:");
  positions.set("news", "ab12-3");
  assert.equal(store.getItem("app:news"), "ab12-3");
  assert.equal(new Positions(store, "app:").get("news"), "ab12-3");
  assert.equal(new Positions(store).get("news"), undefined, "another prefix is another application");
  positions.delete("news");
  assert.equal(new Positions(store, "app:").get("news"), undefined);
});

test("a store that throws (full, or disabled) does not lose the position in memory", () => {
  const broken = { getItem() { throw new Error("denied"); }, setItem() { throw new Error("quota"); }, removeItem() { throw new Error("denied"); } };
  const positions = new Positions(broken);
  assert.equal(positions.get("news"), undefined);
  positions.set("news", "ab12-3");
  assert.equal(positions.get("news"), "ab12-3");
  positions.delete("news");
  assert.equal(positions.get("news"), undefined);
});
