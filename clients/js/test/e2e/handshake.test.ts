import assert from "node:assert/strict";
import { type Socket, createServer } from "node:net";
import { e2e } from "../support/scene.js";
import { sleep, waitFor } from "../support/wait.js";

/** A server that takes TCP connections and never answers: a handshake that hangs. */
async function blackHole(scene: import("../support/scene.js").Scene): Promise<{ port: number; accepted: () => number }> {
  const sockets = new Set<Socket>();
  let accepted = 0;
  const server = createServer((socket) => {
    accepted++;
    sockets.add(socket);
    socket.on("error", () => {});
    socket.on("close", () => sockets.delete(socket));
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  scene.defer(async () => {
    for (const socket of sockets) socket.destroy();
    await new Promise<void>((resolve) => server.close(() => resolve()));
  });
  return { port: (server.address() as { port: number }).port, accepted: () => accepted };
}

e2e("a handshake that never answers: the connect timeout gives it up and the client tries again", 10_000, async (scene) => {
  const hole = await blackHole(scene);
  const [client, record] = scene.client(`ws://127.0.0.1:${hole.port}/ws?user=ned`, { connectTimeoutMs: 300 });
  client.connect();
  await waitFor("two attempts given up", () => record.disconnected.length >= 2, 5_000);
  assert.deepEqual(
    record.disconnected.slice(0, 2).map((d) => [d.code, d.reason, d.reconnect]),
    [
      [1006, "no welcome in time", true],
      [1006, "no welcome in time", true],
    ],
  );
  assert.ok(hole.accepted() >= 2);
  client.close();
  assert.equal(client.state, "closed");
});

e2e("close() while the handshake is pending: closed at once, nothing more", 10_000, async (scene) => {
  const hole = await blackHole(scene);
  const [client, record] = scene.client(`ws://127.0.0.1:${hole.port}/ws?user=ned`);
  const sub = client.subscribe("news");
  const ready = sub.ready;
  client.connect();
  await waitFor("the connection to be accepted", () => hole.accepted() === 1, 5_000);
  client.close();
  assert.equal(client.state, "closed");
  await assert.rejects(ready, (e: any) => e.code === "closed");
  await sleep(300);
  assert.deepEqual(record.disconnected, [{ code: 1000, reason: "closed by the client", reconnect: false }]);
  assert.equal(hole.accepted(), 1, "no new attempt");
});
