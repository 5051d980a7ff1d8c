// The gateway's try-it page imports the client from a committed copy of the bundle
// (crates/wsgate-server/src/http/demo/wsgate-client.js, served as /demo/wsgate-client.js):
// cargo must not need npm. This test (run after `npm run build`) keeps that copy current.
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { test } from "node:test";
import { fileURLToPath } from "node:url";

// build/test/unit/embedded.test.js -> clients/js is three levels up.
const bundle = fileURLToPath(new URL("../../../dist/index.js", import.meta.url));
const embedded = fileURLToPath(
  new URL("../../../../../crates/wsgate-server/src/http/demo/wsgate-client.js", import.meta.url),
);

test("the gateway embeds the current bundle", () => {
  const fresh = readFileSync(bundle, "utf8");
  let copy: string;
  try {
    copy = readFileSync(embedded, "utf8");
  } catch (e) {
    assert.fail(`cannot read the gateway's copy of the client (${e}): run \`npm run embed\` in clients/js`);
  }
  assert.ok(
    copy === fresh,
    `${embedded} is not the current build of ${bundle}: run \`npm run embed\` in clients/js, and commit the copy`,
  );
});
