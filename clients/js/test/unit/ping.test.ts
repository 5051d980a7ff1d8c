import assert from "node:assert/strict";
import { test } from "node:test";
import { Client, type WebSocketLike, WsgateError } from "../../src/index.js";

/** A WebSocket the test plays the gateway for. */
class FakeSocket implements WebSocketLike {
  static last: FakeSocket | undefined;
  readyState = 1;
  binaryType = "blob";
  sent: any[] = [];
  onopen: ((event: any) => void) | null = null;
  onmessage: ((event: any) => void) | null = null;
  onclose: ((event: any) => void) | null = null;
  onerror: ((event: any) => void) | null = null;
  constructor(readonly url: string) {
    FakeSocket.last = this;
  }
  send(data: string): void {
    this.sent.push(JSON.parse(data));
  }
  close(): void {
    this.readyState = 3;
  }
  frame(frame: object): void {
    this.onmessage?.({ data: JSON.stringify(frame) });
  }
}

function connected(): { client: Client; ws: FakeSocket } {
  const client = new Client("ws://gateway.test/ws?user=alice", { websocket: FakeSocket });
  client.connect();
  const ws = FakeSocket.last!;
  ws.frame({ op: "welcome", session_id: "s1", user_id: "alice", heartbeat_s: 25 });
  assert.equal(client.state, "connected");
  return { client, ws };
}

test("ping resolves with the round trip when the pong arrives", async (t) => {
  const { client, ws } = connected();
  t.after(() => client.close());
  const rtt = client.ping();
  const ping = ws.sent.at(-1);
  assert.equal(ping.op, "ping");
  assert.ok(ping.id !== undefined, "the ping carries an id for its pong");
  ws.frame({ op: "pong", id: ping.id });
  const ms = await rtt;
  assert.ok(typeof ms === "number" && ms >= 0, String(ms));
});

test("ping rejects with closed when not connected, or when the connection ends first", async (t) => {
  const idle = new Client("ws://gateway.test/ws?user=alice", { websocket: FakeSocket });
  await assert.rejects(idle.ping(), (e: unknown) => e instanceof WsgateError && e.code === "closed");

  const { client, ws } = connected();
  t.after(() => client.close());
  const rtt = client.ping();
  ws.onclose?.({ code: 1001, reason: "server shutting down; reconnect" });
  await assert.rejects(rtt, (e: unknown) => e instanceof WsgateError && e.code === "closed");
});
