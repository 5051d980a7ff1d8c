import assert from "node:assert/strict";
import { test } from "node:test";
import WebSocket from "ws";
import { Client, type Push, type SessionInfo } from "../../src/index.js";
import { Pod } from "../support/pod.js";
import { e2e } from "../support/scene.js";
import { sleep, waitFor } from "../support/wait.js";

test("connect, subscribe, receive from the real gateway", async (t) => {
  const pod = await Pod.start("a", { env: { WSGATE__HISTORY__TOPICS: "chat.*=100/10m" } });
  t.after(() => pod.kill());
  const client = new Client(pod.wsUrl("alice"), { websocket: WebSocket });
  t.after(() => client.close());
  client.connect();
  const sub = client.subscribe("chat.1");
  const got: Push[] = [];
  sub.on("message", (m) => got.push(m));
  await sub.ready;
  await pod.publish("chat.1", "hello");
  await pod.publish("chat.1", `{"n":2}`, { json: true });
  await waitFor("two pushes", () => got.length === 2);
  assert.deepEqual(got, [
    { data: "hello", offset: 1, topic: "chat.1" },
    { data: { n: 2 }, offset: 2, topic: "chat.1" },
  ]);
});

e2e("the welcome, text and JSON pushes on topics with and without history, and user pushes", 15_000, async (scene) => {
  const pod = await scene.pod("a", { env: { WSGATE__HISTORY__TOPICS: "chat.*=100/10m" } });
  const [client, record] = scene.client(pod.wsUrl("alice"));
  const sessions: SessionInfo[] = [];
  client.on("connected", (s) => sessions.push(s));
  assert.equal(client.state, "closed", "a new client waits for connect()");
  client.connect();
  assert.equal(client.state, "connecting");
  await waitFor("the welcome", () => client.state === "connected", 5_000);

  assert.equal(sessions.length, 1);
  const session = sessions[0]!;
  assert.equal(session.userId, "alice");
  assert.match(session.sessionId, /^[0-9A-HJKMNP-TV-Z]{26}$/, "a ULID");
  assert.equal(session.heartbeatS, 25);
  assert.deepEqual(client.sessionInfo, session);
  assert.deepEqual(await pod.presence("alice").then((l) => l.map((line) => line.split(/\s+/)[0])), [session.sessionId]);
  assert.deepEqual(record.states, ["connecting", "connected"]);

  // A topic with history (offsets) and one without (none), made while connected.
  const chat = client.subscribe("chat.7");
  const news = client.subscribe("news");
  assert.equal(client.subscribe("chat.7"), chat, "one subscription per topic");
  const chatGot = scene.record(chat);
  const newsGot = scene.record(news);
  await Promise.all([chat.ready, news.ready]);
  assert.equal(chat.state, "subscribed");
  assert.equal(chatGot.subscribed.length, 1);
  assert.equal(chatGot.subscribed[0]!.offset, 0, "a new stream is at offset 0");
  assert.equal(chatGot.recovered.length, 0, "a first subscribe recovers nothing");
  assert.deepEqual(newsGot.subscribed, [{ epoch: undefined, offset: undefined, recovered: undefined }]);

  await pod.publish("chat.7", "hello");
  await pod.publish("chat.7", `{"n":2,"s":"two"}`, { json: true });
  await pod.publish("news", "breaking");
  await pod.publish("news", `[1,"x",null]`, { json: true });
  await pod.publish("elsewhere", "not subscribed");
  await pod.send("alice", "hi alice");
  await pod.send("alice", `{"n":1}`, { json: true });
  await pod.send("bob", "not for alice");

  await waitFor("every push", () => chatGot.messages.length + newsGot.messages.length + record.messages.length >= 6, 5_000);
  await sleep(200); // and nothing more: not the other topic, not bob's push
  assert.deepEqual(chatGot.messages, [
    { data: "hello", offset: 1, topic: "chat.7" },
    { data: { n: 2, s: "two" }, offset: 2, topic: "chat.7" },
  ]);
  assert.deepEqual(newsGot.messages, [
    { data: "breaking", topic: "news" },
    { data: [1, "x", null], topic: "news" },
  ]);
  assert.deepEqual(record.messages, [{ data: "hi alice" }, { data: { n: 1 } }], "user pushes, no topic");
  assert.deepEqual(chat.position, { epoch: chatGot.subscribed[0]!.epoch, offset: 2 });
  assert.equal(news.position, undefined, "a topic without history has no position");
  assert.equal(client.position, undefined, "no user history: no user position");
  assert.deepEqual(record.errors, []);
});

e2e("user history: user pushes carry offsets and the client keeps its position", 15_000, async (scene) => {
  const pod = await scene.pod("a", { env: { WSGATE__HISTORY__USER__SIZE: "100" } });
  // Pushes sent before the first connect are history, not delivered to a fresh client.
  await pod.send("alice", "before");
  const [client, record] = scene.client(pod.wsUrl("alice"));
  client.connect();
  await waitFor("the welcome", () => client.state === "connected", 5_000);
  assert.equal(client.position?.offset, 1, "the welcome names the user stream's newest offset");
  await pod.send("alice", "one");
  await pod.send("alice", `{"n":2}`, { json: true });
  await waitFor("two user pushes", () => record.messages.length >= 2, 5_000);
  assert.deepEqual(record.messages, [
    { data: "one", offset: 2 },
    { data: { n: 2 }, offset: 3 },
  ]);
  assert.equal(client.position?.offset, 3);
  assert.deepEqual(record.recovered, [], "a fresh connect recovers nothing");
});
