import assert from "node:assert/strict";
import type { Push, WsgateError } from "../../src/index.js";
import { e2e } from "../support/scene.js";
import { token } from "../support/token.js";
import { waitFor } from "../support/wait.js";

e2e("client.publish reaches a subscriber on the other pod, within the token's publish claim", 20_000, async (scene) => {
  const redis = await scene.redis();
  const env = { WSGATE__HISTORY__TOPICS: "chat.*=100/10m" };
  const a = await scene.pod("a", { redisUrl: redis.url, jwt: true, env });
  const b = await scene.pod("b", { redisUrl: redis.url, jwt: true, env });

  const [reader] = scene.client(b.wsUrl(), { token: token("bob", { topics: ["chat.*"] }) });
  const chat = reader.subscribe("chat.1");
  const got: Push[] = [];
  chat.on("message", (m) => got.push(m));
  reader.connect();
  await chat.ready;

  const [writer] = scene.client(a.wsUrl(), { token: token("alice", { publish: ["chat.*"] }) });
  writer.connect();
  await waitFor("the writer's welcome", () => writer.state === "connected");
  const first = await writer.publish("chat.1", { text: "hi" });
  const second = await writer.publish("chat.1", [1, 2]);
  assert.equal(typeof first.epoch, "string");
  assert.deepEqual([first.offset, second.offset], [1, 2]);
  await waitFor("both pushes on pod b", () => got.length === 2);
  assert.deepEqual(got, [
    { data: { text: "hi" }, offset: 1, topic: "chat.1" },
    { data: [1, 2], offset: 2, topic: "chat.1" },
  ]);

  await assert.rejects(writer.publish("news", 1), (e: WsgateError) => e.code === "forbidden_topic");
  await assert.rejects(reader.publish("chat.1", 1), (e: WsgateError) => e.code === "forbidden_topic", "no publish claim");
  assert.equal(writer.state, "connected", "a refusal leaves the session up");
});
