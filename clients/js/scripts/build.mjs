// Builds the package and its tests, and checks the bundle's size:
//   dist/index.js    the ESM bundle (esbuild, minified, no dependencies)
//   dist/*.d.ts      type definitions (tsc)
//   build/           sources and tests compiled for node's test runner (tsc)
// Fails when the bundle is over SIZE_LIMIT bytes after minification and gzip.
import { execFileSync } from "node:child_process";
import { readFileSync, rmSync } from "node:fs";
import { gzipSync } from "node:zlib";
import { fileURLToPath } from "node:url";
import { build } from "esbuild";

const SIZE_LIMIT = 6 * 1024;
const root = fileURLToPath(new URL("..", import.meta.url));
process.chdir(root);
rmSync("dist", { recursive: true, force: true });
rmSync("build", { recursive: true, force: true });

await build({
  entryPoints: ["src/index.ts"],
  outfile: "dist/index.js",
  bundle: true,
  format: "esm",
  target: "es2020",
  minify: true,
  legalComments: "none",
  logLevel: "warning",
});
const tsc = fileURLToPath(new URL("../node_modules/typescript/bin/tsc", import.meta.url));
execFileSync(process.execPath, [tsc, "-p", "tsconfig.json"], { stdio: "inherit" });
execFileSync(process.execPath, [tsc, "-p", "tsconfig.test.json"], { stdio: "inherit" });

const bundle = readFileSync("dist/index.js");
const gzipped = gzipSync(bundle, { level: 9 }).length;
console.log(`dist/index.js: ${bundle.length} bytes minified, ${gzipped} bytes min+gzip (limit ${SIZE_LIMIT})`);
if (gzipped > SIZE_LIMIT) {
  console.error(`error: the bundle is ${gzipped} bytes min+gzip, over the ${SIZE_LIMIT}-byte budget`);
  process.exit(1);
}
