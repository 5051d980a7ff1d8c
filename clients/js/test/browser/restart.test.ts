/**
 * The client in a real browser: headless Debian Chromium driven by playwright-core (never
 * a downloaded browser), on a page served by the gateway itself, through a restart of
 * the pod the page is connected to. Pod B publishes and sends while pod A is away; the
 * page must come back, recover its topic and its user stream, and see every push exactly
 * once, in order.
 *
 * Needs `/usr/bin/chromium` (or `CHROMIUM`), `redis-server` and the gateway binary
 * (`cargo build -p wsgate`). On failure a screenshot, the page's record and the pods'
 * logs are saved under `target/test-artifacts/`.
 */
import assert from "node:assert/strict";
import { mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { after, before, type TestContext, test } from "node:test";
import { fileURLToPath } from "node:url";
import { type Browser, type Page, chromium } from "playwright-core";
import type { DisconnectInfo, Push } from "../../src/index.js";
import { Pod } from "../support/pod.js";
import { Redis } from "../support/redis.js";
import { sleep, waitFor } from "../support/wait.js";

const CHROMIUM = process.env.CHROMIUM ?? "/usr/bin/chromium";
// build/test/browser/restart.test.js -> the repository root is five levels up.
const ARTIFACTS = fileURLToPath(new URL("../../../../../target/test-artifacts/", import.meta.url));
/** History on the `chat.*` topics and on every user's stream, on both pods. */
const HISTORY = { WSGATE__HISTORY__TOPICS: "chat.*=100/10m", WSGATE__HISTORY__USER__SIZE: "100" };
/** How long the page may take to come back after the pod is up again. */
const RECOVERY_WAIT_MS = 20_000;

let browser: Browser;

before(async () => {
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: [
      "--headless",
      "--no-sandbox",
      "--disable-gpu",
      "--disable-quic",
      "--no-first-run",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
    ],
    timeout: 30_000,
  });
});

after(async () => {
  await browser?.close();
});

/** What the page's client saw, kept in `window.rec`. */
interface Recording {
  topic: Push[];
  user: Push[];
  topicRecovered: boolean[];
  userRecovered: boolean[];
  connected: number;
  disconnects: DisconnectInfo[];
  errors: string[];
}

interface Tab {
  page: Page;
  /** Uncaught exceptions in the page. */
  problems: string[];
  /** Runs the test's body; when it throws, saves a screenshot, the page's record and the pods' logs. */
  capture(body: () => Promise<void>): Promise<void>;
}

/** A tab in a fresh context, closed after the test. */
async function openPage(t: TestContext, name: string, pods: () => Pod[]): Promise<Tab> {
  const context = await browser.newContext({ viewport: { width: 1280, height: 860 } });
  t.after(() => context.close());
  const page = await context.newPage();
  const problems: string[] = [];
  page.on("pageerror", (e) => problems.push(`exception: ${e.message}`));
  const capture = async (body: () => Promise<void>) => {
    try {
      await body();
    } catch (e) {
      mkdirSync(ARTIFACTS, { recursive: true });
      const shot = join(ARTIFACTS, `${name}-failure.png`);
      await page.screenshot({ path: shot, fullPage: true }).catch((s) => console.error(`no screenshot: ${s}`));
      const rec = await page.evaluate(() => JSON.stringify((window as any).rec ?? null, null, 1)).catch(String);
      writeFileSync(join(ARTIFACTS, `${name}-failure.json`), rec);
      for (const pod of pods()) writeFileSync(join(ARTIFACTS, `${name}-pod-${pod.name}.log`), pod.log());
      console.error(`artifacts: ${shot} (and ${name}-failure.json, ${name}-pod-*.log)`);
      throw e;
    }
  };
  return { page, problems, capture };
}

/** Redis, pod A (the page's) and pod B (the publisher), with history on both. */
async function cluster(t: TestContext): Promise<{ a: Pod; b: Pod }> {
  const redis = await Redis.start();
  t.after(() => redis.stop());
  const a = await Pod.start("a", { redisUrl: redis.url, env: HISTORY });
  t.after(() => a.kill());
  const b = await Pod.start("b", { redisUrl: redis.url, env: HISTORY });
  t.after(() => b.kill());
  return { a, b };
}

/** Takes pod A down with `signal`, runs `during` while it is down, then starts it again on its ports. */
async function restart(t: TestContext, a: Pod, signal: "SIGTERM" | "SIGKILL", during: () => Promise<unknown>) {
  const started = Date.now();
  if (signal === "SIGTERM") await a.term();
  else await a.kill();
  const down = Date.now();
  await during();
  await a.restart();
  t.diagnostic(`pod a: ${signal} took ${down - started} ms, down for ${Date.now() - down} ms`);
}

const range = (from: number, to: number) => Array.from({ length: to - from + 1 }, (_, i) => from + i);

for (const signal of ["SIGTERM", "SIGKILL"] as const) {
  test(`a page's client recovers a topic and its user stream across a pod restart (${signal})`, async (t) => {
    const { a, b } = await cluster(t);
    const { page, problems, capture } = await openPage(t, `restart-${signal.toLowerCase()}`, () => [a, b]);
    await capture(async () => {
      // A page of pod A's origin: the client comes from the gateway, as on the try-it page.
      await page.goto(`http://127.0.0.1:${a.http}/`);
      await page.evaluate(async (url) => {
        const module = "/demo/wsgate-client.js";
        const { Client } = (await import(module)) as typeof import("../../src/index.js");
        const rec: Recording = {
          topic: [],
          user: [],
          topicRecovered: [],
          userRecovered: [],
          connected: 0,
          disconnects: [],
          errors: [],
        };
        (window as any).rec = rec;
        // Short backoff: the test waits for the recovery, not for the jitter.
        const client = new Client(url, { backoff: { baseMs: 200, capMs: 2_000 } });
        (window as any).client = client;
        client.on("connected", () => rec.connected++);
        client.on("disconnected", (d) => rec.disconnects.push(d));
        client.on("message", (m) => rec.user.push(m));
        client.on("recovered", (r) => rec.userRecovered.push(r));
        client.on("error", (e) => rec.errors.push(`client: ${e.code}: ${e.message}`));
        const sub = client.subscribe("chat.1");
        sub.on("message", (m) => rec.topic.push(m));
        sub.on("recovered", (r) => rec.topicRecovered.push(r));
        sub.on("error", (e) => rec.errors.push(`chat.1: ${e.code}: ${e.message}`));
        client.connect();
        let timer: ReturnType<typeof setTimeout> | undefined;
        await Promise.race([
          sub.ready,
          new Promise((_, reject) => {
            timer = setTimeout(() => reject(new Error("chat.1 not subscribed within 10 s")), 10_000);
          }),
        ]);
        clearTimeout(timer);
      }, a.wsUrl("carol"));
      const rec = () => page.evaluate(() => (window as any).rec as Recording);

      const push = async (n: number) => {
        await b.publish("chat.1", JSON.stringify({ n }), { json: true });
        await b.send("carol", JSON.stringify({ n }), { json: true });
      };
      for (const n of range(1, 5)) await push(n);
      await waitFor("pushes 1..5 on the page", async () => {
        const r = await rec();
        return r.topic.length >= 5 && r.user.length >= 5;
      });

      // From the outage on, B pushes 6, 7, … without a pause: 6..15 at least while pod A
      // is down, and more while the page reconnects, so that some pushes race the
      // replay of the missed ones.
      let next = 6;
      let stopped = false;
      let failed: unknown;
      const publisher = (async () => {
        while (!stopped) await push(next++);
      })().catch((e) => (failed = e));
      const published = (n: number) => {
        if (failed) throw failed;
        return next > n;
      };
      const outage = Date.now();
      try {
        await restart(t, a, signal, () => waitFor("B to push 6..15", () => published(15)));
        const up = Date.now();
        await waitFor(
          "the page to reconnect and recover both streams",
          async () => {
            const r = await rec();
            const recovered = r.topicRecovered.length > 0 && r.userRecovered.length > 0;
            return r.connected >= 2 && recovered && r.topic.length >= 15 && r.user.length >= 15;
          },
          RECOVERY_WAIT_MS,
        );
        t.diagnostic(
          `the page recovered 15+ pushes on each stream ${Date.now() - up} ms after pod a was up ` +
            `(${Date.now() - outage} ms after the ${signal})`,
        );
        // Live pushes go on after the recovery.
        const mark = next;
        await waitFor("B to push 5 more", () => published(mark + 5));
      } finally {
        stopped = true;
        await publisher;
      }
      if (failed) throw failed;
      const last = next - 1;
      t.diagnostic(`B pushed 1..${last} on each stream`);
      await waitFor(`pushes 1..${last} on the page`, async () => {
        const r = await rec();
        return r.topic.length >= last && r.user.length >= last;
      });
      await sleep(300); // room for a duplicate to show up

      const r = await rec();
      assert.deepEqual(r.errors, []);
      assert.equal(r.connected, 2, "one reconnect");
      assert.deepEqual(r.topicRecovered, [true]);
      assert.deepEqual(r.userRecovered, [true]);
      assert.equal(r.disconnects[0]?.code, signal === "SIGTERM" ? 1001 : 1006, JSON.stringify(r.disconnects));
      assert.ok(r.disconnects.every((d) => d.reconnect), JSON.stringify(r.disconnects));
      const expected = range(1, last);
      assert.deepEqual(
        r.topic,
        expected.map((n) => ({ data: { n }, offset: n, topic: "chat.1" })),
        `chat.1: 1..${last} exactly once, in order`,
      );
      assert.deepEqual(
        r.user,
        expected.map((n) => ({ data: { n }, offset: n })),
        `the user stream: 1..${last} exactly once, in order`,
      );
      assert.deepEqual(problems, []);
    });
  });
}

test("the try-it page shows the recovery of its topic and user stream across a pod restart", async (t) => {
  const { a, b } = await cluster(t);
  const { page, problems, capture } = await openPage(t, "try-it-restart", () => [a, b]);
  await capture(async () => {
    await page.goto(`http://127.0.0.1:${a.http}/?user=dave&subscribe=chat.2`);
    const state = () => page.locator("#state").getAttribute("data-state");
    const subscribed = () => page.locator("#subscriptions").getAttribute("data-subscribed");
    await waitFor(
      "the page to be connected and subscribed",
      async () => (await state()) === "open" && (await subscribed()) === "chat.2",
    );

    const push = async (n: number) => {
      await b.publish("chat.2", `chat ${n}`);
      await b.send("dave", `user ${n}`);
    };
    /** The pushes on the page, oldest first (the log shows the newest on top). */
    const shown = () =>
      page.$$eval("#log li.push", (lis) =>
        lis
          .map((li) => ({
            topic: li.querySelector(".topic")?.textContent ?? null,
            offset: li.getAttribute("data-offset"),
            text: li.querySelector(".text")?.textContent,
          }))
          .reverse(),
      );
    for (const n of range(1, 3)) await push(n);
    await waitFor("pushes 1..3 on the page", async () => (await shown()).length >= 6);

    await restart(t, a, "SIGTERM", async () => {
      // In the log: `#close-info` may already show a refused attempt's 1006.
      const drained = page.locator("#log li.close .tag", { hasText: "closed 1001" });
      await waitFor("the page to show the 1001", async () => (await drained.count()) === 1);
      for (const n of range(4, 6)) await push(n);
    });
    const up = Date.now();
    // The page's own client keeps the default backoff (500 ms, doubling, full jitter).
    await waitFor(
      "the page to show both recoveries",
      async () =>
        (await page.locator('#log li.recovery[data-recovered="true"]').count()) === 2 &&
        (await subscribed()) === "chat.2" &&
        (await shown()).length >= 12,
      RECOVERY_WAIT_MS,
    );
    t.diagnostic(`the try-it page recovered ${Date.now() - up} ms after pod a was up`);
    await sleep(300);

    assert.equal(await state(), "open");
    // The drain's 1001, then maybe refused attempts (1006) while the pod was down.
    const closes = await page.$$eval("#log li.close .tag", (tags) => tags.map((t) => t.textContent).reverse());
    assert.equal(closes[0], "closed 1001", JSON.stringify(closes));
    assert.ok(closes.slice(1).every((c) => c === "closed 1006"), JSON.stringify(closes));
    const recoveries = await page.$$eval("#log li.recovery", (lis) =>
      lis.map((li) => {
        const tag = li.querySelector(".tag")?.textContent;
        return `${tag} ${li.querySelector(".topic")?.textContent ?? "(user)"}`;
      }),
    );
    assert.deepEqual(recoveries.sort(), ["recovered (user)", "recovered chat.2"]);
    const pushes = await shown();
    assert.deepEqual(
      pushes.filter((p) => p.topic === "chat.2"),
      range(1, 6).map((n) => ({ topic: "chat.2", offset: String(n), text: `chat ${n}` })),
      "chat.2: 1..6 exactly once, in order",
    );
    assert.deepEqual(
      pushes.filter((p) => p.topic === null),
      range(1, 6).map((n) => ({ topic: null, offset: String(n), text: `user ${n}` })),
      "the user stream: 1..6 exactly once, in order",
    );
    assert.match((await page.locator("#user-stream").textContent()) ?? "", /^offset 6 \(epoch .+\)$/);
    mkdirSync(ARTIFACTS, { recursive: true });
    await page.screenshot({ path: join(ARTIFACTS, "try-it-restart.png") });
    assert.deepEqual(problems, []);
  });
});
