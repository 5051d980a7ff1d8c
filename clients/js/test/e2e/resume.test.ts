import assert from "node:assert/strict";
import { range } from "../support/record.js";
import { e2e } from "../support/scene.js";
import { sleep, waitFor } from "../support/wait.js";

const HISTORY = { WSGATE__HISTORY__TOPICS: "chat.*=100/10m", WSGATE__HISTORY__USER__SIZE: "100" };

e2e("positions kept by the application (a page reload): a new client recovers exactly what it missed", 15_000, async (scene) => {
  const pod = await scene.pod("a", { env: HISTORY });
  const [first, firstRecord] = scene.client(pod.wsUrl("kim"));
  const firstSub = first.subscribe("chat.p");
  const firstTopic = scene.record(firstSub);
  first.connect();
  await firstSub.ready;
  for (const n of [0, 1, 2]) {
    await pod.publish("chat.p", JSON.stringify({ n }), { json: true });
    await pod.send("kim", JSON.stringify({ n }), { json: true });
  }
  await waitFor("the first pushes", () => firstTopic.ns.length === 3 && firstRecord.ns.length === 3, 5_000);
  const userSince = first.position!;
  const topicSince = firstSub.position!;
  first.close();

  for (const n of [3, 4, 5]) {
    await pod.publish("chat.p", JSON.stringify({ n }), { json: true });
    await pod.send("kim", JSON.stringify({ n }), { json: true });
  }

  const [second, record] = scene.client(pod.wsUrl("kim"), { since: userSince });
  const sub = second.subscribe("chat.p", { since: topicSince });
  const topic = scene.record(sub);
  // A subscription without `since` on the same client: it starts from now.
  const fresh = second.subscribe("chat.q");
  const freshTopic = scene.record(fresh);
  await pod.publish("chat.q", "before the client");
  second.connect();
  await Promise.all([sub.ready, fresh.ready]);
  await waitFor("the missed pushes", () => topic.ns.length === 3 && record.ns.length === 3, 5_000);
  await pod.publish("chat.p", `{"n":6}`, { json: true });
  await pod.send("kim", `{"n":6}`, { json: true });
  await pod.publish("chat.q", "after");
  await waitFor("the live pushes", () => topic.ns.length === 4 && record.ns.length === 4, 5_000);
  await waitFor("the fresh topic's push", () => freshTopic.messages.length === 1, 5_000);
  await sleep(200);

  assert.deepEqual(topic.ns, range(3, 7), "the topic from its since, then live");
  assert.deepEqual(record.ns, range(3, 7), "the user stream from its since, then live");
  assert.deepEqual(topic.recovered, [true]);
  assert.deepEqual(record.recovered, [true]);
  assert.deepEqual(freshTopic.recovered, [], "no since, no recovery outcome");
  assert.deepEqual(freshTopic.messages.map((m) => m.data), ["after"]);
});

e2e("a stale position (unknown epoch): recovered false, then the client follows the stream", 15_000, async (scene) => {
  const pod = await scene.pod("a", { env: HISTORY });
  await pod.publish("chat.s", "old 1");
  await pod.publish("chat.s", "old 2");
  await pod.send("lea", "old");
  const stale = { epoch: "notanepoch", offset: 1 };
  const [client, record] = scene.client(pod.wsUrl("lea"), { since: stale });
  const sub = client.subscribe("chat.s", { since: stale });
  const topic = scene.record(sub);
  client.connect();
  await sub.ready;
  assert.deepEqual(topic.recovered, [false]);
  assert.deepEqual(record.recovered, [false]);
  assert.equal(sub.position!.offset, 2, "the reload starts at the stream's newest offset");
  assert.notEqual(sub.position!.epoch, stale.epoch);
  assert.equal(client.position!.offset, 1);

  await pod.publish("chat.s", `{"n":0}`, { json: true });
  await pod.send("lea", `{"n":0}`, { json: true });
  await waitFor("the live pushes", () => topic.messages.length === 1 && record.messages.length === 1, 5_000);
  await sleep(200);
  assert.deepEqual(topic.messages.map((m) => [m.data, m.offset]), [[{ n: 0 }, 3]], "nothing old replayed");
  assert.deepEqual(record.messages, [{ data: { n: 0 }, offset: 2 }]);
});
