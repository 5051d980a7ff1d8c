// Copies the bundle into the gateway, which serves it to its try-it page as
// /demo/wsgate-client.js (cargo must not depend on npm, so the copy is committed).
// Run through `npm run embed`, which builds first; test/unit/embedded.test.ts fails when
// the committed copy is not the current bundle.
import { copyFileSync } from "node:fs";
import { fileURLToPath } from "node:url";

const from = fileURLToPath(new URL("../dist/index.js", import.meta.url));
const to = fileURLToPath(new URL("../../../crates/wsgate-server/src/http/demo/wsgate-client.js", import.meta.url));
copyFileSync(from, to);
console.log(`copied ${from} to ${to}`);
