// The pure decisions: backoff, what each close code and SSE refusal means.
import assert from "node:assert/strict";
import { test } from "node:test";
import { backoff, closeCodeOfStatus, retryAfterClose } from "../dist/policy.js";

test("backoff is full jitter between 0 and min(cap, base * 2^attempt)", () => {
  assert.equal(backoff(0, 500, 30000, () => 0), 0);
  assert.equal(backoff(0, 500, 30000, () => 0.5), 250);
  assert.equal(backoff(3, 500, 30000, () => 1), 4000);
  assert.equal(backoff(6, 500, 30000, () => 1), 30000);
  assert.equal(backoff(60, 500, 30000, () => 1), 30000);
  for (let attempt = 0; attempt < 12; attempt++) {
    const delay = backoff(attempt, 500, 5000);
    assert.ok(delay >= 0 && delay <= Math.min(5000, 500 * 2 ** attempt), `attempt ${attempt}: ${delay}`);
  }
});

test("permanent close codes stop; 4011 retries only with a credential callback; 4029 waits longer", () => {
  for (const code of [1008, 4001, 4003]) {
    assert.equal(retryAfterClose(code, true), false, `code ${code}`);
    assert.equal(retryAfterClose(code, false), false, `code ${code}`);
  }
  assert.equal(retryAfterClose(4011, false), false);
  assert.equal(retryAfterClose(4011, true), 0);
  assert.equal(retryAfterClose(4029, false), 3);
  // Everything else resumes, unknown codes included (docs/protocol.md, "Close codes").
  for (const code of [1000, 1001, 1006, 1007, 1009, 1011, 1012, 1013, 4008, 4503, 4999, 3000]) {
    assert.equal(retryAfterClose(code, false), 0, `code ${code}`);
  }
});

test("SSE refusals map to the close code that means the same", () => {
  assert.equal(closeCodeOfStatus(401, "token_expired"), 4011);
  assert.equal(closeCodeOfStatus(401, "invalid_ticket"), 4001);
  assert.equal(closeCodeOfStatus(401), 4001);
  assert.equal(closeCodeOfStatus(403, "subscribe_forbidden"), 4003);
  assert.equal(closeCodeOfStatus(400, "invalid_channel"), 1008);
  assert.equal(closeCodeOfStatus(404), 1008);
  for (const status of [408, 429, 500, 502, 503]) assert.equal(closeCodeOfStatus(status), 1013, `status ${status}`);
});
