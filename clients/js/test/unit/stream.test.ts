import assert from "node:assert/strict";
import { test } from "node:test";
import { Stream } from "../../src/stream.js";

test("a push at or below the position is a duplicate", () => {
  const s = new Stream();
  assert.equal(s.answer({ epoch: "e", offset: 3 }), undefined);
  assert.deepEqual(s.position, { epoch: "e", offset: 3 });
  assert.equal(s.accept(3), false);
  assert.equal(s.accept(4), true);
  assert.equal(s.accept(4), false);
  assert.equal(s.accept(2), false);
  assert.equal(s.accept(6), true, "a gap is the gateway's to detect, not a duplicate");
  assert.deepEqual(s.position, { epoch: "e", offset: 6 });
  assert.equal(s.accept(undefined), true, "pushes without an offset are never dropped");
});

test("recovered keeps the application's position until the replay moves it", () => {
  const s = new Stream({ epoch: "e", offset: 5 });
  assert.equal(s.answer({ epoch: "e", offset: 9, recovered: true }), true);
  assert.deepEqual(s.position, { epoch: "e", offset: 5 });
  assert.deepEqual([5, 6, 7, 8, 9, 9].map((o) => s.accept(o)), [false, true, true, true, true, false]);
});

test("not recovered: start from the stream's newest offset, even when it went back", () => {
  const s = new Stream({ epoch: "old", offset: 50 });
  assert.equal(s.answer({ epoch: "new", offset: 2, recovered: false }), false);
  assert.deepEqual(s.position, { epoch: "new", offset: 2 });
  assert.equal(s.accept(3), true);

  const back = new Stream({ epoch: "e", offset: 50 });
  assert.equal(back.answer({ epoch: "e", offset: 40, recovered: false }), false);
  assert.deepEqual(back.position, { epoch: "e", offset: 40 });
  assert.equal(back.accept(41), true, "offsets after the rollback are new messages");
});

test("a plain answer never moves the position back within an epoch", () => {
  const s = new Stream();
  s.answer({ epoch: "e", offset: 4 });
  s.accept(5); // a push that overtook the reply of a second subscribe
  s.answer({ epoch: "e", offset: 4 });
  assert.deepEqual(s.position, { epoch: "e", offset: 5 });
  s.answer({ epoch: "f", offset: 1 });
  assert.deepEqual(s.position, { epoch: "f", offset: 1 }, "another epoch replaces it");
  assert.equal(new Stream().answer({}), undefined, "no history: no position");
});
