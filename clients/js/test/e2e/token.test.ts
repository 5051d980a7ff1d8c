import assert from "node:assert/strict";
import { Publisher } from "../support/publisher.js";
import { range } from "../support/record.js";
import { e2e } from "../support/scene.js";
import { token } from "../support/token.js";
import { sleep, waitFor } from "../support/wait.js";

// No leeway: the gateway closes a session with 3005 exactly at its token's `exp`.
const ENV = {
  WSGATE__AUTH__JWT__LEEWAY: "0s",
  WSGATE__HISTORY__TOPICS: "chat.*=200/10m",
  WSGATE__HISTORY__USER__SIZE: "200",
};
const TTL_S = 3;

e2e("short-lived tokens from getToken are renewed on the live session without losing or repeating a message", 30_000, async (scene) => {
  const pod = await scene.pod("a", { jwt: true, env: ENV });
  const issued: number[] = [];
  const [client, record] = scene.client(pod.wsUrl(), {
    getToken: () => {
      issued.push(Date.now());
      return token("frank", { topics: ["chat.*"], ttlS: TTL_S });
    },
  });
  const sub = client.subscribe("chat.t");
  const topic = scene.record(sub);
  client.connect();
  await sub.ready;

  // Publish for about 2.5 token lifetimes, both to the topic and to the user.
  const topicPub = new Publisher(10_000, (text) => pod.publish("chat.t", text, { json: true }), 50);
  const userPub = new Publisher(10_000, (text) => pod.send("frank", text, { json: true }), 50);
  await sleep(2.5 * TTL_S * 1000);
  await Promise.all([topicPub.stop(), userPub.stop()]);
  const sent = { topic: topicPub.sent, user: userPub.sent };
  await waitFor(
    `${sent.topic} topic and ${sent.user} user pushes`,
    () => topic.ns.length >= sent.topic && record.ns.length >= sent.user,
    5_000,
  );
  await sleep(200);

  assert.deepEqual(topic.ns, range(0, sent.topic), "the topic: every message exactly once, in order");
  assert.deepEqual(record.ns, range(0, sent.user), "the user stream: every message exactly once, in order");
  assert.ok(sent.topic > 20 && sent.user > 20, `enough traffic: ${JSON.stringify(sent)}`);

  // Renewed on the live session with the refresh op: several tokens, one session, no
  // close, no recovery needed.
  assert.ok(issued.length >= 3, `getToken called ${issued.length} times`);
  assert.equal(record.connected.length, 1, "one session throughout");
  assert.deepEqual(record.disconnected, []);
  assert.deepEqual(record.states, ["connecting", "connected"]);
  assert.deepEqual(record.errors, [], "no error for the application");
  assert.equal(client.state, "connected");
});

e2e("a static token that expires: 3005, then the client stays closed", 15_000, async (scene) => {
  const pod = await scene.pod("a", { jwt: true, env: ENV });
  const [client, record] = scene.client(pod.wsUrl(), { token: token("gus", { topics: ["news"], ttlS: 2 }) });
  const news = client.subscribe("news");
  client.connect();
  await news.ready;
  await waitFor("the client to close", () => client.state === "closed", 5_000);
  assert.deepEqual(record.disconnected, [
    { code: 3005, reason: "token expired; reconnect with a new token", reconnect: false },
  ]);
  await sleep(1_000);
  assert.equal(client.state, "closed", "no reconnect loop with a token that cannot be renewed");
  assert.equal(record.connected.length, 1);
  assert.deepEqual(record.states, ["connecting", "connected", "closed"]);
});

e2e("a renewal that fails: 3005, a new token, reconnect, and still no message lost", 20_000, async (scene) => {
  const pod = await scene.pod("a", { jwt: true, env: ENV });
  let calls = 0;
  const [client, record] = scene.client(pod.wsUrl(), {
    getToken: () => {
      calls++;
      if (calls === 2) throw new Error("the auth service is down"); // the renewal before exp
      return token("hal", { topics: ["chat.*"], ttlS: calls === 1 ? 2 : 3600 });
    },
  });
  const sub = client.subscribe("chat.e");
  const topic = scene.record(sub);
  client.connect();
  await sub.ready;
  const topicPub = new Publisher(10_000, (text) => pod.publish("chat.e", text, { json: true }), 50);
  const userPub = new Publisher(10_000, (text) => pod.send("hal", text, { json: true }), 50);
  await waitFor("the 3005 and the reconnect", () => record.connected.length === 2, 6_000);
  await sleep(500);
  await Promise.all([topicPub.stop(), userPub.stop()]);
  const sent = { topic: topicPub.sent, user: userPub.sent };
  await waitFor("every push", () => topic.ns.length >= sent.topic && record.ns.length >= sent.user, 5_000);
  await sleep(200);

  assert.deepEqual(topic.ns, range(0, sent.topic));
  assert.deepEqual(record.ns, range(0, sent.user));
  assert.equal(calls, 3);
  assert.deepEqual(record.errors.map((e) => e.code), ["token"]);
  assert.deepEqual(
    record.disconnected.map((d) => [d.code, d.reason, d.reconnect]),
    [[3005, "token expired; reconnect with a new token", true]],
  );
  assert.deepEqual(record.recovered, [true]);
  assert.deepEqual(topic.recovered, [true]);
});
