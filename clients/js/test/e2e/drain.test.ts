import assert from "node:assert/strict";
import { Publisher } from "../support/publisher.js";
import { range } from "../support/record.js";
import { type Scene, e2e } from "../support/scene.js";
import { sleep, waitFor } from "../support/wait.js";

const HISTORY = { WSGATE__HISTORY__TOPICS: "chat.*=100/10m", WSGATE__HISTORY__USER__SIZE: "100" };

e2e("a drained pod's client, kept away a while, comes back on the other pod with every missed message exactly once", 30_000, (scene) =>
  drain(scene, { away: true, N: 100 }),
);

e2e("a drained pod's client, back on the other pod at once, gets every message exactly once", 30_000, (scene) =>
  drain(scene, { away: false, N: 60 }),
);

/**
 * Pods A and B behind a balancer, the client on A, publishers on B to a topic and to the
 * user; SIGTERM A. `away`: the balancer knows only A until A is gone, so the client is
 * refused and misses messages for a while; else it knows both, and the client goes to B
 * while A is still draining.
 */
async function drain(scene: Scene, { away, N }: { away: boolean; N: number }): Promise<void> {
  const redis = await scene.redis();
  const [a, b] = await Promise.all([
    scene.pod("a", { redisUrl: redis.url, env: HISTORY }),
    scene.pod("b", { redisUrl: redis.url, env: HISTORY }),
  ]);
  // The balancer knows only A at first, so the client lands there.
  const proxy = await scene.proxy([a.http]);
  const [client, record] = scene.client(proxy.wsUrl("?user=alice"));
  const sub = client.subscribe("chat.drain");
  const topic = scene.record(sub);
  client.connect();
  await sub.ready;
  const first = client.sessionInfo!;
  if (!away) proxy.upstreams = [a.http, b.http]; // the next connection goes to B
  assert.deepEqual(
    (await b.presence("alice")).map((l) => l.split(/\s+/).slice(0, 2).join(" ")),
    [`${first.sessionId} pod=a`],
  );

  // What the client had when it was sent away, and what had been published when it was back.
  let receivedWhenAway = { topic: -1, user: -1 };
  let sentWhenBack = { topic: -1, user: -1 };
  client.on("disconnected", () => {
    if (receivedWhenAway.topic < 0) receivedWhenAway = { topic: topic.ns.length, user: record.ns.length };
  });
  const topicPub = new Publisher(N, (text) => b.publish("chat.drain", text, { json: true }));
  const userPub = new Publisher(N, (text) => b.send("alice", text, { json: true }));
  client.on("connected", () => (sentWhenBack = { topic: topicPub.sent, user: userPub.sent }));

  await waitFor("the first 25 messages of each stream", () => topic.ns.length >= 25 && record.ns.length >= 25, 10_000);
  const exited = a.term();
  await waitFor("the drain's close", () => record.disconnected.length > 0, 5_000);
  if (away) {
    // A stays the only upstream until it is gone: the client is refused (503 `draining`,
    // then connection refused) and stays away while the publishers go on.
    assert.equal(await exited, 0, "pod A drains and exits cleanly");
    await waitFor(
      "15 more messages of each stream while the client is away",
      () => topicPub.sent >= receivedWhenAway.topic + 15 && userPub.sent >= receivedWhenAway.user + 15,
      5_000,
    );
    assert.equal(record.connected.length, 1, "no pod took the client yet");
    proxy.upstreams = [a.http, b.http];
  }

  await waitFor("the reconnect", () => record.connected.length === 2, 5_000);
  await Promise.all([topicPub.done, userPub.done]);
  await waitFor(
    `all ${N} messages of both streams`,
    () => topic.ns.length >= N && record.ns.length >= N,
    10_000,
  );
  await sleep(200); // and nothing more

  assert.deepEqual(topic.ns, range(0, N), "the topic: every message exactly once, in order");
  assert.deepEqual(record.ns, range(0, N), "the user stream: every message exactly once, in order");

  const [drain, ...refused] = record.disconnected;
  assert.equal(drain!.code, 1001);
  assert.equal(drain!.reason, "server shutting down; reconnect");
  assert.equal(drain!.reconnect, true);
  for (const d of refused) {
    assert.equal(d.code, 1006, "a refused handshake while no pod takes the client");
    assert.equal(d.reconnect, true);
  }
  assert.ok(!record.states.includes("closed"), "never gave up");

  assert.equal(await exited, 0, "pod A drains and exits cleanly");
  const second = record.connected[1]!;
  assert.notEqual(second.sessionId, first.sessionId);
  assert.equal(second.userId, "alice");
  assert.deepEqual(
    (await b.presence("alice")).map((l) => l.split(/\s+/).slice(0, 2).join(" ")),
    [`${second.sessionId} pod=b`],
  );
  assert.deepEqual(topic.recovered, [true], "the topic was recovered");
  assert.deepEqual(record.recovered, [true], "the user stream was recovered");
  assert.deepEqual(topic.unsubscribed, []);
  assert.equal(sub.state, "subscribed");
  assert.deepEqual(
    topic.messages.map((m) => m.offset),
    range(1, N + 1),
    "offsets 1..N: nothing repeated was passed on",
  );
  if (!away) return;
  // The recovery mattered: messages were published while the client was away.
  assert.ok(sentWhenBack.topic >= receivedWhenAway.topic + 15, `topic: ${JSON.stringify([receivedWhenAway, sentWhenBack])}`);
  assert.ok(sentWhenBack.user >= receivedWhenAway.user + 15, `user: ${JSON.stringify([receivedWhenAway, sentWhenBack])}`);
}
