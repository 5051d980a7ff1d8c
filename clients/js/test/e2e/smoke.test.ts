import assert from "node:assert/strict";
import { test } from "node:test";
import WebSocket from "ws";
import { Client, type Push } from "../../src/index.js";
import { Pod } from "../support/pod.js";
import { waitFor } from "../support/wait.js";

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
