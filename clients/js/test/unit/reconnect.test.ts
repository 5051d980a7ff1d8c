import assert from "node:assert/strict";
import { test } from "node:test";
import { backoffDelay, closeAction } from "../../src/index.js";

test("the close-code table of the reconnect contract", () => {
  for (const code of [1001, 1006, 1011, 3001, 3008, 3010]) assert.equal(closeAction(code), "reconnect", `${code}`);
  for (const code of [1000, 1002, 1003, 1007, 1008, 1009, 1010, 3003, 3006]) assert.equal(closeAction(code), "stop", `${code}`);
  for (const code of [4000, 4001, 4500, 4999]) assert.equal(closeAction(code), "stop", `${code}`);
  assert.equal(closeAction(3005), "token");
  // Codes the protocol does not name (a proxy's, a close without a status) reconnect.
  for (const code of [1005, 1012, 1013, 1014, 1015, 3000, 3999]) assert.equal(closeAction(code), "reconnect", `${code}`);
});

test("backoff: full jitter under min(cap, base * 2^attempt)", () => {
  const top = (attempt: number) => backoffDelay(attempt, 500, 30_000, () => 1);
  assert.deepEqual([0, 1, 2, 3, 4, 5, 6, 7].map(top), [500, 1000, 2000, 4000, 8000, 16_000, 30_000, 30_000]);
  assert.equal(backoffDelay(3, 500, 30_000, () => 0), 0);
  assert.equal(backoffDelay(3, 500, 30_000, () => 0.25), 1000);
  // A client that failed for days still waits a finite, capped time.
  assert.equal(top(10_000), 30_000);
  const spread = new Set(Array.from({ length: 50 }, () => backoffDelay(2, 500, 30_000)));
  assert.ok(spread.size > 40, "Math.random spreads the delays");
  for (const d of spread) assert.ok(d >= 0 && d < 2000);
});
