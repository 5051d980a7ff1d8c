import assert from "node:assert/strict";
import { afterEach, beforeEach, mock, test } from "node:test";
import { Client, type ClientOptions, type DisconnectInfo, type Push, WsgateError } from "../../src/index.js";
import { FakeSocket } from "./fake.js";

const URL_BASE = "ws://gw.test/ws?user=alice";

beforeEach(() => {
  FakeSocket.reset();
  mock.timers.enable({ apis: ["setTimeout", "Date"], now: 1_800_000_000_000 });
  mock.method(Math, "random", () => 1);
});
afterEach(() => {
  mock.timers.reset();
  mock.restoreAll();
});

function client(options: ClientOptions = {}): Client {
  return new Client(URL_BASE, { websocket: FakeSocket, ...options });
}

/** Lets promise callbacks (an async getToken) run. */
const settle = () => new Promise((resolve) => setImmediate(resolve));

function recorder<T>(): [T[], (value: T) => void] {
  const seen: T[] = [];
  return [seen, (value) => seen.push(value)];
}

function jwt(exp: number): string {
  const part = (o: object) => Buffer.from(JSON.stringify(o)).toString("base64url");
  return `${part({ alg: "HS256" })}.${part({ sub: "alice", exp })}.sig`;
}

test("connects with the subprotocol, is welcomed, subscribes", async () => {
  const c = client();
  const [states, onState] = recorder<string>();
  c.on("state", onState);
  assert.equal(c.state, "closed");
  c.connect();
  const ws = FakeSocket.last();
  assert.equal(ws.protocols, "wsgate.v1");
  assert.equal(ws.url.searchParams.get("user"), "alice");
  assert.equal(ws.url.searchParams.get("since"), null);
  assert.equal(ws.binaryType, "arraybuffer");
  const sub = c.subscribe("news");
  assert.equal(ws.sent.length, 0, "nothing is sent before the welcome");
  ws.welcome();
  assert.deepEqual(states, ["connecting", "connected"]);
  assert.equal(c.sessionInfo?.userId, "alice");
  const [subscribe] = ws.ops("subscribe");
  assert.equal(subscribe.topic, "news");
  assert.equal(subscribe.since, undefined);
  assert.equal(typeof subscribe.id, "number");
  assert.equal(c.subscribe("news"), sub, "one subscription per topic");
  ws.subscribed("news");
  await sub.ready;
  assert.equal(sub.state, "subscribed");
  const later = c.subscribe("later");
  assert.equal(ws.ops("subscribe").at(-1).topic, "later", "sent at once when connected");
  assert.equal(later.state, "subscribing");
});

test("the token goes in access_token", () => {
  const c = client({ token: "t0k" });
  c.connect();
  assert.equal(FakeSocket.last().url.searchParams.get("access_token"), "t0k");
});

test("reconnect codes back off with full jitter; the welcome resets the attempt", () => {
  const c = client();
  const [closes, onClose] = recorder<DisconnectInfo>();
  c.on("disconnected", onClose);
  c.connect();
  FakeSocket.last().drop(1006); // refused handshake
  FakeSocket.last().drop; // still the same socket until the timer fires
  assert.equal(FakeSocket.all.length, 1);
  assert.equal(c.state, "disconnected");
  assert.deepEqual(closes.at(-1), { code: 1006, reason: "", reconnect: true, delayMs: 500 });
  mock.timers.tick(499);
  assert.equal(FakeSocket.all.length, 1);
  mock.timers.tick(1);
  assert.equal(FakeSocket.all.length, 2);
  FakeSocket.last().drop(1006);
  assert.equal(closes.at(-1)!.delayMs, 1000);
  mock.timers.tick(1000);
  FakeSocket.last().drop(1006);
  assert.equal(closes.at(-1)!.delayMs, 2000);
  mock.timers.tick(2000);
  FakeSocket.last().welcome();
  FakeSocket.last().drop(1001, "server shutting down; reconnect");
  assert.deepEqual(closes.at(-1), { code: 1001, reason: "server shutting down; reconnect", reconnect: true, delayMs: 500 });
  for (const code of [1011, 3001, 3008, 3010, 1012]) {
    mock.timers.tick(500);
    FakeSocket.last().welcome();
    FakeSocket.last().drop(code);
    assert.equal(c.state, "disconnected", `${code}`);
    assert.equal(closes.at(-1)!.reconnect, true);
  }
});

for (const code of [1000, 1002, 1008, 1009, 3003, 4001]) {
  test(`no reconnect after ${code}; a pending ready rejects with closed`, async () => {
    const c = client();
    const [closes, onClose] = recorder<DisconnectInfo>();
    c.on("disconnected", onClose);
    c.connect();
    const sub = c.subscribe("news");
    const ready = sub.ready;
    FakeSocket.last().welcome();
    FakeSocket.last().drop(code, "bye");
    assert.equal(c.state, "closed");
    assert.deepEqual(closes, [{ code, reason: "bye", reconnect: false }]);
    await assert.rejects(ready, (e: WsgateError) => e.code === "closed");
    mock.timers.tick(60_000);
    assert.equal(FakeSocket.all.length, 1, "no further attempt");
    // A later connect() subscribes again, with a fresh ready.
    c.connect();
    FakeSocket.last().welcome();
    FakeSocket.last().subscribed("news");
    await sub.ready;
  });
}

test("close() sends 1000 and stops every timer", () => {
  const c = client();
  c.connect();
  const ws = FakeSocket.last();
  ws.welcome();
  c.close();
  assert.deepEqual(ws.closedWith, { code: 1000, reason: "closed by the client" });
  assert.equal(c.state, "closed");
  mock.timers.tick(3_600_000);
  assert.equal(FakeSocket.all.length, 1);
  assert.equal(ws.ops("ping").length, 0, "no liveness pings after close");
});

test("topic recovery: since on resubscribe, recovered event, every offset once", () => {
  const c = client();
  c.connect();
  const sub = c.subscribe("chat.1");
  const [got, onMessage] = recorder<Push>();
  const [recovered, onRecovered] = recorder<boolean>();
  sub.on("message", onMessage);
  sub.on("recovered", onRecovered);
  let ws = FakeSocket.last();
  ws.welcome();
  ws.subscribed("chat.1", { epoch: "E", offset: 5 });
  assert.deepEqual(recovered, [], "a first subscribe recovers nothing");
  ws.frame({ op: "message", topic: "chat.1", data: "six", offset: 6 });
  ws.frame({ op: "message", topic: "chat.1", data: { n: 7 }, offset: 7 });
  ws.drop(1001);
  mock.timers.tick(500);
  ws = FakeSocket.last();
  ws.welcome();
  assert.deepEqual(ws.ops("subscribe")[0].since, { epoch: "E", offset: 7 });
  ws.subscribed("chat.1", { epoch: "E", offset: 9, recovered: true });
  for (const offset of [6, 7, 8, 9]) ws.frame({ op: "message", topic: "chat.1", data: offset, offset });
  ws.frame({ op: "message", topic: "chat.1", data: 9, offset: 9 });
  ws.frame({ op: "message", topic: "chat.1", data: 10, offset: 10 });
  assert.deepEqual(recovered, [true]);
  assert.deepEqual(
    got.map((m) => m.offset),
    [6, 7, 8, 9, 10],
  );
  assert.deepEqual(got[0], { data: "six", offset: 6, topic: "chat.1" });
  assert.deepEqual(got[1], { data: { n: 7 }, offset: 7, topic: "chat.1" });
  assert.deepEqual(sub.position, { epoch: "E", offset: 10 });
});

test("recovered:false tells the application to reload and starts from the answer", () => {
  const c = client();
  c.connect();
  const sub = c.subscribe("chat.1", { since: { epoch: "old", offset: 40 } });
  const [recovered, onRecovered] = recorder<boolean>();
  const [got, onMessage] = recorder<Push>();
  sub.on("recovered", onRecovered);
  sub.on("message", onMessage);
  const ws = FakeSocket.last();
  ws.welcome();
  assert.deepEqual(ws.ops("subscribe")[0].since, { epoch: "old", offset: 40 });
  ws.subscribed("chat.1", { epoch: "new", offset: 3, recovered: false });
  assert.deepEqual(recovered, [false]);
  ws.frame({ op: "message", topic: "chat.1", data: "x", offset: 4 });
  assert.deepEqual(got.map((m) => m.offset), [4]);
});

test("insufficient_state: resubscribes at once with the last position", () => {
  const c = client();
  c.connect();
  const sub = c.subscribe("chat.1");
  const ws = FakeSocket.last();
  ws.welcome();
  ws.subscribed("chat.1", { epoch: "E", offset: 2 });
  ws.frame({ op: "message", topic: "chat.1", data: 3, offset: 3 });
  ws.frame({ op: "unsubscribed", topic: "chat.1", reason: "insufficient_state" });
  assert.equal(sub.state, "subscribing");
  assert.deepEqual(ws.ops("subscribe").at(-1).since, { epoch: "E", offset: 3 });
});

test("user stream: since in the URL, recovered event, duplicates dropped", () => {
  const c = client();
  const [got, onMessage] = recorder<Push>();
  const [recovered, onRecovered] = recorder<boolean>();
  c.on("message", onMessage);
  c.on("recovered", onRecovered);
  c.connect();
  let ws = FakeSocket.last();
  ws.welcome({ user_stream: { epoch: "U", offset: 10 } });
  assert.deepEqual(recovered, []);
  ws.frame({ op: "message", data: "a", offset: 11 });
  ws.frame({ op: "message", data: "no offset: a session push" });
  ws.drop(3010, "insufficient state; reconnect with since to recover");
  mock.timers.tick(500);
  ws = FakeSocket.last();
  assert.equal(ws.url.searchParams.get("since"), "U:11");
  ws.welcome({ user_stream: { epoch: "U", offset: 13 }, recovered: true });
  for (const offset of [11, 12, 13]) ws.frame({ op: "message", data: offset, offset });
  assert.deepEqual(recovered, [true]);
  assert.deepEqual(got, [
    { data: "a", offset: 11 },
    { data: "no offset: a session push" },
    { data: 12, offset: 12 },
    { data: 13, offset: 13 },
  ]);
  assert.deepEqual(c.position, { epoch: "U", offset: 13 });
});

test("forbidden_topic rejects ready and ends the subscription; the session stays", async () => {
  const c = client();
  c.connect();
  const sub = c.subscribe("secret");
  const [errors, onError] = recorder<WsgateError>();
  sub.on("error", onError);
  const ws = FakeSocket.last();
  ws.welcome();
  const { id } = ws.ops("subscribe")[0];
  ws.frame({ op: "error", code: "forbidden_topic", message: "not in your token", id });
  await assert.rejects(sub.ready, (e: WsgateError) => e instanceof WsgateError && e.code === "forbidden_topic");
  assert.equal(errors[0]!.message, "not in your token");
  assert.equal(sub.state, "unsubscribed");
  assert.equal(c.subscription("secret"), undefined);
  assert.equal(c.state, "connected");
  ws.drop(1001);
  mock.timers.tick(500);
  FakeSocket.last().welcome();
  assert.equal(FakeSocket.last().ops("subscribe").length, 0, "not subscribed again");
});

test("unavailable is retried with backoff and does not reject ready", async () => {
  const c = client();
  c.connect();
  const sub = c.subscribe("news");
  const [errors, onError] = recorder<WsgateError>();
  sub.on("error", onError);
  const ws = FakeSocket.last();
  ws.welcome();
  ws.frame({ op: "error", code: "unavailable", message: "backend", id: ws.ops("subscribe")[0].id });
  assert.equal(errors[0]!.code, "unavailable");
  assert.equal(sub.state, "subscribing");
  mock.timers.tick(499);
  assert.equal(ws.ops("subscribe").length, 1);
  mock.timers.tick(1);
  assert.equal(ws.ops("subscribe").length, 2);
  ws.subscribed("news");
  await sub.ready;
});

test("unsubscribe sends the op, rejects a pending ready and is not resubscribed", async () => {
  const c = client();
  c.connect();
  const sub = c.subscribe("news");
  const ws = FakeSocket.last();
  ws.welcome();
  sub.unsubscribe();
  await assert.rejects(sub.ready, (e: WsgateError) => e.code === "unsubscribed");
  assert.equal(ws.ops("unsubscribe")[0].topic, "news");
  ws.frame({ op: "message", topic: "news", data: "late" });
  assert.equal(c.subscription("news"), undefined);
  assert.notEqual(c.subscribe("news"), sub, "a new subscribe makes a new subscription");
});

test("binary pushes are Uint8Array; an announced one carries its stream's offset", () => {
  const c = client();
  c.connect();
  const sub = c.subscribe("bin");
  const [topicPushes, onTopic] = recorder<Push>();
  const [userPushes, onUser] = recorder<Push>();
  sub.on("message", onTopic);
  c.on("message", onUser);
  const ws = FakeSocket.last();
  ws.welcome({ user_stream: { epoch: "U", offset: 0 } });
  ws.subscribed("bin", { epoch: "T", offset: 0 });
  ws.frame({ op: "binary", topic: "bin", offset: 1 });
  ws.binary([1, 2, 3]);
  ws.frame({ op: "binary", offset: 1 });
  ws.binary([4]);
  ws.binary([5, 6]); // not announced: a push without history
  ws.frame({ op: "binary", topic: "bin", offset: 1 }); // a duplicate after recovery
  ws.binary([1, 2, 3]);
  assert.equal(topicPushes.length, 1);
  assert.ok(topicPushes[0]!.data instanceof Uint8Array);
  assert.deepEqual([...(topicPushes[0]!.data as Uint8Array)], [1, 2, 3]);
  assert.equal(topicPushes[0]!.offset, 1);
  assert.deepEqual(
    userPushes.map((p) => [[...(p.data as Uint8Array)], p.offset]),
    [
      [[4], 1],
      [[5, 6], undefined],
    ],
  );
});

test("liveness: pings after heartbeat_s + margin of silence, gives up without an answer", () => {
  const c = client();
  const [closes, onClose] = recorder<DisconnectInfo>();
  c.on("disconnected", onClose);
  c.connect();
  const ws = FakeSocket.last();
  ws.welcome({}, 20);
  mock.timers.tick(24_999);
  assert.equal(ws.ops("ping").length, 0);
  mock.timers.tick(1);
  assert.equal(ws.ops("ping").length, 1);
  ws.frame({ op: "pong", id: ws.ops("ping")[0].id });
  mock.timers.tick(20_000);
  ws.frame({ op: "message", data: "traffic counts as life" });
  mock.timers.tick(24_999);
  assert.equal(ws.ops("ping").length, 1);
  mock.timers.tick(1);
  assert.equal(ws.ops("ping").length, 2);
  mock.timers.tick(4_999);
  assert.equal(c.state, "connected");
  mock.timers.tick(1);
  assert.deepEqual(closes, [{ code: 1006, reason: "no pong", reconnect: true, delayMs: 500 }]);
  assert.ok(ws.closedWith, "the dead socket is closed");
  mock.timers.tick(500);
  assert.equal(FakeSocket.all.length, 2);
});

test("an attempt without a welcome in time is given up", () => {
  const c = client({ connectTimeoutMs: 3000 });
  const [closes, onClose] = recorder<DisconnectInfo>();
  c.on("disconnected", onClose);
  c.connect();
  mock.timers.tick(3000);
  assert.deepEqual(closes, [{ code: 1006, reason: "no welcome in time", reconnect: true, delayMs: 500 }]);
});

test("getToken: before connecting, again after 3005 and after a refused handshake", async () => {
  let calls = 0;
  const c = client({ getToken: async () => `tok${++calls}` });
  c.connect();
  await settle();
  assert.equal(FakeSocket.last().url.searchParams.get("access_token"), "tok1");
  FakeSocket.last().welcome();
  FakeSocket.last().drop(1001);
  mock.timers.tick(500);
  await settle();
  assert.equal(FakeSocket.last().url.searchParams.get("access_token"), "tok1", "a good token is kept");
  FakeSocket.last().drop(1006); // refused: maybe the token
  mock.timers.tick(1000);
  await settle();
  assert.equal(FakeSocket.last().url.searchParams.get("access_token"), "tok2");
  FakeSocket.last().welcome();
  FakeSocket.last().drop(3005, "token expired");
  assert.equal(c.state, "disconnected");
  mock.timers.tick(500);
  await settle();
  assert.equal(FakeSocket.last().url.searchParams.get("access_token"), "tok3");
});

test("a failing getToken is an error event and a retry, not a crash", async () => {
  let calls = 0;
  const c = client({
    getToken: async () => {
      if (++calls === 1) throw new Error("auth server down");
      return "ok";
    },
  });
  const [errors, onError] = recorder<WsgateError>();
  c.on("error", onError);
  c.connect();
  await settle();
  assert.equal(errors[0]!.code, "token");
  assert.match(errors[0]!.message, /auth server down/);
  assert.equal(c.state, "disconnected");
  mock.timers.tick(500);
  await settle();
  assert.equal(FakeSocket.last().url.searchParams.get("access_token"), "ok");
});

test("a static token that expires ends in closed, without a reconnect loop", () => {
  const c = client({ token: "static" });
  c.connect();
  FakeSocket.last().welcome();
  FakeSocket.last().drop(3005, "token expired");
  assert.equal(c.state, "closed");
  mock.timers.tick(60_000);
  assert.equal(FakeSocket.all.length, 1);
});

test("renewal before exp: the refresh op, and a reconnect where the gateway lacks it", async () => {
  const now = Date.now();
  const tokens = [jwt(now / 1000 + 100), jwt(now / 1000 + 200), jwt(now / 1000 + 300)];
  let calls = 0;
  const c = client({ getToken: () => tokens[calls++]! });
  const [closes, onClose] = recorder<DisconnectInfo>();
  c.on("disconnected", onClose);
  c.connect();
  await settle();
  let ws = FakeSocket.last();
  ws.welcome();
  // A fifth of the 100 s left: renew 20 s before exp.
  mock.timers.tick(79_999);
  await settle();
  assert.equal(calls, 1);
  mock.timers.tick(1);
  await settle();
  assert.equal(calls, 2);
  const [refresh] = ws.ops("refresh");
  assert.equal(refresh.token, tokens[1]);
  ws.frame({ op: "refreshed", id: refresh.id, expires_at: now + 200_000 });
  assert.equal(c.state, "connected");
  assert.deepEqual(closes, []);
  // Next renewal: 200 s - 80 s = 120 s left, 24 s lead.
  mock.timers.tick(96_000);
  await settle();
  assert.equal(calls, 3);
  const second = ws.ops("refresh")[1];
  ws.frame({ op: "error", code: "bad_request", message: "unknown op", id: second.id });
  assert.deepEqual(ws.closedWith, { code: 1000, reason: "token refresh" });
  assert.deepEqual(closes, [{ code: 1000, reason: "token refresh", reconnect: true, delayMs: 0 }]);
  ws = FakeSocket.last();
  assert.equal(FakeSocket.all.length, 2);
  assert.equal(ws.url.searchParams.get("access_token"), tokens[2]);
});

test("an invalid_token answer to refresh is reported and changes nothing", async () => {
  const now = Date.now();
  const c = client({ getToken: () => jwt(now / 1000 + 10) });
  const [errors, onError] = recorder<WsgateError>();
  c.on("error", onError);
  c.connect();
  await settle();
  const ws = FakeSocket.last();
  ws.welcome();
  mock.timers.tick(8_000);
  await settle();
  ws.frame({ op: "error", code: "invalid_token", message: "bad", id: ws.ops("refresh")[0].id });
  assert.equal(errors[0]!.code, "invalid_token");
  assert.equal(c.state, "connected");
  assert.equal(FakeSocket.all.length, 1);
});

test("bad frames and throwing listeners do not break the client", async () => {
  const c = client();
  const [errors, onError] = recorder<WsgateError>();
  c.on("error", onError);
  const sub = c.subscribe("news");
  sub.on("message", () => {
    throw new Error("application bug");
  });
  const [got, onMessage] = recorder<Push>();
  sub.on("message", onMessage);
  c.connect();
  const ws = FakeSocket.last();
  ws.welcome();
  ws.text("not json");
  ws.frame({ op: "message", topic: "news", data: 1 });
  ws.frame({ op: "something_new" });
  ws.frame({ op: "error", code: "bad_request", message: "no id" });
  assert.deepEqual(errors.map((e) => e.code), ["protocol", "bad_request"]);
  assert.equal(got.length, 1, "the second listener still ran");
  // The listener's error is rethrown on its own (a timer), outside the client.
  assert.throws(() => mock.timers.tick(1), /application bug/);
  assert.equal(c.state, "connected");
});

test("a bad URL is a clear error", () => {
  const c = new Client("not a url", { websocket: FakeSocket });
  const [errors, onError] = recorder<WsgateError>();
  c.on("error", onError);
  c.connect();
  assert.equal(c.state, "closed");
  assert.match(errors[0]!.message, /cannot open a WebSocket/);
});

test("a dead socket that can be terminated (Node's ws) is terminated, not closed", () => {
  class Terminable extends FakeSocket {
    terminated = false;
    terminate(): void {
      this.terminated = true;
    }
  }
  const c = new Client(URL_BASE, { websocket: Terminable, connectTimeoutMs: 1000 });
  c.connect();
  const ws = FakeSocket.last() as Terminable;
  mock.timers.tick(1000);
  assert.equal(ws.terminated, true);
  assert.equal(ws.closedWith, undefined);
  assert.equal(c.state, "disconnected");
});

test("publish resolves with the answer's position and rejects with its error", async () => {
  const c = client();
  await assert.rejects(c.publish("chat.1", 1), (e: WsgateError) => e.code === "closed", "not connected");
  c.connect();
  const ws = FakeSocket.last();
  ws.welcome();
  const first = c.publish("chat.1", { text: "hi" });
  const [sent] = ws.ops("publish");
  assert.deepEqual({ ...sent, id: undefined }, { op: "publish", topic: "chat.1", data: { text: "hi" }, id: undefined });
  ws.frame({ op: "published", topic: "chat.1", epoch: "E", offset: 4, id: sent.id });
  assert.deepEqual(await first, { epoch: "E", offset: 4 });

  const plain = c.publish("news", "x");
  ws.frame({ op: "published", topic: "news", id: ws.ops("publish")[1].id });
  assert.deepEqual(await plain, { epoch: undefined, offset: undefined });

  const refused = c.publish("secret", 0);
  ws.frame({ op: "error", code: "forbidden_topic", message: "no", id: ws.ops("publish")[2].id });
  await assert.rejects(refused, (e: WsgateError) => e.code === "forbidden_topic");

  const lost = c.publish("chat.1", 2);
  ws.drop(1001);
  await assert.rejects(lost, (e: WsgateError) => e.code === "closed", "the connection ended first");
});

test("rpc resolves with the backend's data and rejects with its error code", async () => {
  const c = client();
  c.connect();
  const ws = FakeSocket.last();
  ws.welcome();
  const call = c.rpc("cart.add", { sku: 7 });
  const [sent] = ws.ops("rpc");
  assert.equal(sent.method, "cart.add");
  assert.deepEqual(sent.data, { sku: 7 });
  ws.frame({ op: "rpc_result", id: sent.id, data: { items: 3 } });
  assert.deepEqual(await call, { items: 3 });

  const failed = c.rpc("cart.pay");
  assert.equal(ws.ops("rpc")[1].data, null, "no data is null");
  ws.frame({ op: "error", code: "rpc_failed", message: "card declined", id: ws.ops("rpc")[1].id });
  await assert.rejects(failed, (e: WsgateError) => e.code === "rpc_failed" && e.message === "card declined");
});
