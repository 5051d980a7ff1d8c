import assert from "node:assert/strict";
import { Publisher } from "../support/publisher.js";
import { range } from "../support/record.js";
import { e2e } from "../support/scene.js";
import { sleep, waitFor } from "../support/wait.js";

const HISTORY = { WSGATE__HISTORY__TOPICS: "chat.*=100/10m", WSGATE__HISTORY__USER__SIZE: "100" };

e2e("Redis restarted empty: the topic and the user stream say recovered false, then pushes go on", 30_000, async (scene) => {
  const redis = await scene.redis();
  const pod = await scene.pod("a", { redisUrl: redis.url, env: HISTORY });
  const [client, record] = scene.client(pod.wsUrl("carol"));
  const sub = client.subscribe("chat.r");
  const topic = scene.record(sub);
  client.connect();
  await sub.ready;
  for (const i of [1, 2, 3]) {
    await pod.publish("chat.r", `before ${i}`);
    await pod.send("carol", `before ${i}`);
  }
  await waitFor("the pushes before", () => topic.messages.length === 3 && record.messages.length === 3, 5_000);
  const topicBefore = sub.position!;
  const userBefore = client.position!;
  assert.equal(topicBefore.offset, 3);
  assert.equal(userBefore.offset, 3);

  // How many pushes had arrived when each stream said `recovered: false`.
  const atReload = { topic: -1, user: -1 };
  sub.on("recovered", (r) => !r && atReload.topic < 0 && (atReload.topic = topic.messages.length));
  client.on("recovered", (r) => !r && atReload.user < 0 && (atReload.user = record.messages.length));

  await redis.restartEmpty();
  // The gateway is back on Redis when a publish answers again (with a new epoch).
  await waitFor("a publish after the restart", () => pod.publish("chat.r", "after the restart").then(() => true, () => false), 10_000);
  await waitFor("the pod to be ready", async () => (await pod.readyz()) === 200, 10_000);

  // The session cannot vouch for either stream any more: the topic is dropped with
  // `insufficient_state` (the client subscribes again with its position) and the user
  // stream ends the session with 3010 (the client reconnects with `since`).
  await waitFor("recovered false on the topic", () => topic.recovered.includes(false), 10_000);
  await waitFor("recovered false on the user stream", () => record.recovered.includes(false), 10_000);
  await waitFor("the client connected again", () => client.state === "connected" && sub.state === "subscribed", 5_000);

  assert.equal(record.disconnected[0]?.code, 3010, record.log.join("\n"));
  assert.ok(record.disconnected.every((d) => d.reconnect), "always reconnects");
  assert.equal(record.recovered[0], false, "the user stream's first answer after the restart");
  assert.equal(topic.recovered[0], false, "the topic's first answer after the restart");
  assert.ok(topic.recovered.slice(1).every((r) => r), "once on the new epoch, recovered again");
  assert.notEqual(sub.position!.epoch, topicBefore.epoch, "the topic follows the new epoch");
  assert.notEqual(client.position!.epoch, userBefore.epoch, "the user stream follows the new epoch");
  // Nothing of the new epochs was passed on as if it followed the old ones.
  assert.deepEqual(atReload, { topic: 3, user: 3 }, "no push of a new epoch before the reload");

  // Pushes after the reload arrive, every one once and in order.
  const N = 20;
  const topicPub = new Publisher(N, (text) => pod.publish("chat.r", text, { json: true }));
  const userPub = new Publisher(N, (text) => pod.send("carol", text, { json: true }));
  await Promise.all([topicPub.done, userPub.done]);
  await waitFor("the pushes after", () => topic.ns.length >= N && record.ns.length >= N, 5_000);
  await sleep(200);
  assert.deepEqual(topic.ns, range(0, N));
  assert.deepEqual(record.ns, range(0, N));
  assert.equal(sub.state, "subscribed");
  assert.notEqual(client.state, "closed");
});

e2e("Redis restarted empty, topic history only: the topic is dropped and subscribed again on the same session", 30_000, async (scene) => {
  const redis = await scene.redis();
  const pod = await scene.pod("a", { redisUrl: redis.url, env: { WSGATE__HISTORY__TOPICS: "chat.*=100/10m" } });
  const [client, record] = scene.client(pod.wsUrl("dave"));
  const sub = client.subscribe("chat.r");
  const topic = scene.record(sub);
  const states: string[] = [];
  sub.on("state", (s) => states.push(s));
  client.connect();
  await sub.ready;
  for (const i of [1, 2, 3]) await pod.publish("chat.r", `before ${i}`);
  await waitFor("the pushes before", () => topic.messages.length === 3, 5_000);
  const session = client.sessionInfo!.sessionId;
  const before = sub.position!;
  let atReload = -1;
  sub.on("recovered", (r) => !r && atReload < 0 && (atReload = topic.messages.length));

  await redis.restartEmpty();
  await waitFor("a publish after the restart", () => pod.publish("chat.r", "after the restart").then(() => true, () => false), 10_000);
  await waitFor("the pod to be ready", async () => (await pod.readyz()) === 200, 10_000);
  await waitFor("recovered false on the topic", () => topic.recovered.includes(false), 10_000);
  await waitFor("subscribed again", () => sub.state === "subscribed", 5_000);

  // The gateway's `unsubscribed` with `insufficient_state` is no end for the application:
  // the client subscribes again with its position and reports the outcome.
  assert.deepEqual(topic.recovered, [false]);
  assert.deepEqual(topic.unsubscribed, [], "no unsubscribed event for insufficient_state");
  assert.deepEqual(states, ["subscribed", "subscribing", "subscribed"]);
  assert.equal(atReload, 3, "no push of the new epoch before the reload");
  assert.deepEqual(record.disconnected, [], "the session stays");
  assert.equal(client.sessionInfo?.sessionId, session);
  assert.notEqual(sub.position!.epoch, before.epoch);

  const N = 20;
  await new Publisher(N, (text) => pod.publish("chat.r", text, { json: true })).done;
  await waitFor("the pushes after", () => topic.ns.length >= N, 5_000);
  await sleep(200);
  assert.deepEqual(topic.ns, range(0, N));
});

e2e("a subscribe while Redis is down: unavailable, retried, made once Redis is back", 30_000, async (scene) => {
  const redis = await scene.redis();
  const pod = await scene.pod("a", { redisUrl: redis.url });
  const [client] = scene.client(pod.wsUrl("max"));
  client.connect();
  await waitFor("the welcome", () => client.state === "connected", 5_000);
  await redis.stop();
  const sub = client.subscribe("news");
  const topic = scene.record(sub);
  let settled = false;
  sub.ready.then(() => (settled = true));
  await waitFor("the gateway's unavailable", () => topic.errors.length > 0, 10_000);
  assert.equal(topic.errors[0]!.code, "unavailable");
  assert.equal(settled, false, "ready waits for the retry");
  assert.equal(sub.state, "subscribing");

  await redis.restartEmpty();
  await sub.ready;
  assert.ok(topic.errors.every((e) => e.code === "unavailable"), topic.log.join("\n"));
  assert.deepEqual(topic.unsubscribed, []);
  await waitFor("the pod to be ready", async () => (await pod.readyz()) === 200, 10_000);
  await waitFor("a publish", () => pod.publish("news", "back").then(() => true, () => false), 10_000);
  await waitFor("the push", () => topic.messages.length === 1, 5_000);
  assert.deepEqual(topic.messages, [{ data: "back", topic: "news" }]);
});
