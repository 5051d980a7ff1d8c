import assert from "node:assert/strict";
import { range } from "../support/record.js";
import { e2e } from "../support/scene.js";
import { sleep, waitFor } from "../support/wait.js";

e2e("a silently dead connection: the client's own ping finds it, it reconnects and recovers", 20_000, async (scene) => {
  const pod = await scene.pod("a", {
    env: {
      WSGATE__SESSION__HEARTBEAT_INTERVAL: "1s",
      WSGATE__SESSION__HEARTBEAT_TIMEOUT: "1s",
      WSGATE__HISTORY__TOPICS: "chat.*=100/10m",
    },
  });
  const proxy = await scene.proxy([pod.http]);
  const [client, record] = scene.client(proxy.wsUrl("?user=jo"), { pingMarginMs: 300, pongTimeoutMs: 500 });
  const sub = client.subscribe("chat.l");
  const topic = scene.record(sub);
  client.connect();
  await sub.ready;
  assert.equal(client.sessionInfo!.heartbeatS, 1);

  // Idle but alive: the pings (the gateway's and the client's) keep the session.
  await sleep(2_500);
  assert.equal(record.disconnected.length, 0, "an idle live connection is kept");
  await pod.publish("chat.l", `{"n":0}`, { json: true });
  await waitFor("a push on the live connection", () => topic.ns.length === 1, 5_000);

  // The link dies without a close: nothing reaches the client any more.
  proxy.freeze();
  const frozenAt = Date.now();
  for (const n of [1, 2, 3]) await pod.publish("chat.l", JSON.stringify({ n }), { json: true });
  await waitFor("the client to give the connection up", () => record.disconnected.length > 0, 5_000);
  const noticedMs = Date.now() - frozenAt;
  assert.deepEqual(
    [record.disconnected[0]!.code, record.disconnected[0]!.reason, record.disconnected[0]!.reconnect],
    [1006, "no pong", true],
  );
  // heartbeat_s + pingMarginMs of silence, then pongTimeoutMs: about 1.8 s.
  assert.ok(noticedMs < 3_500, `noticed after ${noticedMs} ms`);

  await waitFor("the reconnect", () => record.connected.length === 2, 5_000);
  await waitFor("the missed pushes", () => topic.ns.length >= 4, 5_000);
  await pod.publish("chat.l", `{"n":4}`, { json: true });
  await waitFor("a live push", () => topic.ns.length >= 5, 5_000);
  await sleep(200);
  assert.deepEqual(topic.ns, range(0, 5));
  assert.deepEqual(topic.recovered, [true]);
});
