import assert from "node:assert/strict";
import { WsgateError } from "../../src/index.js";
import { e2e } from "../support/scene.js";
import { token } from "../support/token.js";
import { freePort, sleep, waitFor } from "../support/wait.js";

const isCode = (code: string) => (e: unknown) => {
  assert.ok(e instanceof WsgateError, `a WsgateError, not ${e}`);
  assert.equal(e.code, code);
  return true;
};

e2e("forbidden_topic rejects ready; the client stays connected and allowed topics work", 15_000, async (scene) => {
  const pod = await scene.pod("a", { jwt: true });
  const [client, record] = scene.client(pod.wsUrl(), { token: token("erin", { topics: ["news"] }) });
  const secret = client.subscribe("secret");
  const secretRecord = scene.record(secret);
  const news = client.subscribe("news");
  const newsRecord = scene.record(news);
  client.connect();

  await assert.rejects(secret.ready, isCode("forbidden_topic"));
  await news.ready;
  assert.equal(secret.state, "unsubscribed");
  assert.deepEqual(secretRecord.unsubscribed, ["forbidden_topic"]);
  assert.deepEqual(secretRecord.errors.map((e) => e.code), ["forbidden_topic"]);
  assert.equal(client.subscription("secret"), undefined, "the client forgets the refused subscription");
  assert.equal(client.subscription("news"), news);

  // Refused again on a new subscription made while connected.
  const again = client.subscribe("secret");
  assert.notEqual(again, secret);
  await assert.rejects(again.ready, isCode("forbidden_topic"));

  await pod.publish("secret", "classified");
  await pod.publish("news", "public");
  await waitFor("the news", () => newsRecord.messages.length === 1, 5_000);
  await sleep(200);
  assert.deepEqual(newsRecord.messages, [{ data: "public", topic: "news" }]);
  assert.deepEqual(secretRecord.messages, []);
  assert.equal(client.state, "connected");
  assert.deepEqual(record.disconnected, [], "a refused subscribe does not cost the connection");
  assert.equal(record.connected.length, 1);
});

e2e("refused handshakes: getToken fails, then gives a bad token, then a good one; the client connects", 15_000, async (scene) => {
  const pod = await scene.pod("a", { jwt: true });
  const tokens = [
    () => {
      throw new Error("the auth service is down");
    },
    () => token("gina", { topics: ["news"], secret: "not-the-gateways-secret-not-the-gateways" }),
    () => token("gina", { topics: ["news"], ttlS: -60 }), // expired
    () => token("gina", { topics: ["news"] }),
  ];
  let calls = 0;
  const [client, record] = scene.client(pod.wsUrl(), { getToken: () => tokens[Math.min(calls++, tokens.length - 1)]!() });
  const news = client.subscribe("news");
  client.connect();
  await news.ready;

  assert.equal(calls, 4, "a new token before every attempt after a refused one");
  assert.equal(record.connected.length, 1);
  assert.equal(record.connected[0]!.userId, "gina");
  assert.deepEqual(
    record.disconnected.map((d) => [d.code, d.reconnect]),
    [
      [1006, true], // no token
      [1006, true], // 401: bad signature
      [1006, true], // 401: expired
    ],
  );
  assert.equal(record.disconnected[0]!.reason, "no token");
  assert.deepEqual(record.errors.map((e) => e.code), ["token"], "the getToken failure is reported");
  assert.equal(client.state, "connected");
});

e2e("close(): state closed with 1000, no reconnect; a later connect() resubscribes and recovers", 15_000, async (scene) => {
  const pod = await scene.pod("a", { env: { WSGATE__HISTORY__TOPICS: "chat.*=100/10m" } });
  const [client, record] = scene.client(pod.wsUrl("hugo"));
  const sub = client.subscribe("chat.c");
  const topic = scene.record(sub);
  client.connect();
  await sub.ready;
  await pod.publish("chat.c", `{"n":0}`, { json: true });
  await waitFor("the first push", () => topic.messages.length === 1, 5_000);

  client.close();
  assert.equal(client.state, "closed");
  assert.deepEqual(record.disconnected, [{ code: 1000, reason: "closed by the client", reconnect: false }]);
  await waitFor("the gateway to end the session", async () => (await pod.presence("hugo")).length === 0, 5_000);
  await pod.publish("chat.c", `{"n":1}`, { json: true });
  await pod.publish("chat.c", `{"n":2}`, { json: true });
  await sleep(500);
  assert.equal(client.state, "closed", "no reconnect after close()");
  assert.equal(record.connected.length, 1);
  assert.deepEqual(topic.ns, [0]);

  // The subscription is kept, with its position: a later connect() recovers what was missed.
  client.connect();
  await waitFor("the reconnect", () => record.connected.length === 2, 5_000);
  await waitFor("the missed pushes", () => topic.ns.length === 3, 5_000);
  assert.deepEqual(topic.ns, [0, 1, 2]);
  assert.deepEqual(topic.recovered, [true]);
  assert.equal(sub.state, "subscribed");
});

e2e("close() before any welcome: a pending ready rejects with closed", 10_000, async (scene) => {
  const port = await freePort(); // nothing listens there
  const [client, record] = scene.client(`ws://127.0.0.1:${port}/ws?user=ivy`);
  const sub = client.subscribe("news");
  client.connect();
  await waitFor("a refused attempt", () => record.disconnected.length > 0, 5_000);
  assert.equal(record.disconnected[0]!.code, 1006);
  assert.equal(record.disconnected[0]!.reconnect, true);
  const ready = sub.ready; // close() arms a fresh one for a later connect()
  client.close();
  await assert.rejects(ready, isCode("closed"));
  assert.equal(client.state, "closed");
  assert.equal(record.disconnected.at(-1)!.reconnect, false);
});
