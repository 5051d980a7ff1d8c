import assert from "node:assert/strict";
import { createServer } from "node:http";
import type { WsgateError } from "../../src/index.js";
import { e2e } from "../support/scene.js";
import { waitFor } from "../support/wait.js";

e2e("client.rpc reaches the backend and brings back its answer or its error", 20_000, async (scene) => {
  // The application's backend: echoes who called what, fails "pay" with a message.
  const calls: any[] = [];
  const backend = createServer((req, res) => {
    let body = "";
    req.on("data", (chunk) => (body += chunk));
    req.on("end", () => {
      const call = JSON.parse(body);
      calls.push(call);
      if (call.method === "cart.pay") {
        res.writeHead(402, { "content-type": "application/json" });
        res.end(JSON.stringify({ message: "card declined" }));
        return;
      }
      res.writeHead(200, { "content-type": "application/json" });
      res.end(JSON.stringify({ user: call.user_id, got: call.data }));
    });
  });
  await new Promise<void>((resolve) => backend.listen(0, "127.0.0.1", resolve));
  scene.defer(() => new Promise((resolve) => backend.close(resolve)));
  const port = (backend.address() as { port: number }).port;

  const pod = await scene.pod("a", { env: { WSGATE__RPC__URL: `http://127.0.0.1:${port}/rpc` } });
  const [client] = scene.client(pod.wsUrl("alice"));
  client.connect();
  await waitFor("the welcome", () => client.state === "connected");

  assert.deepEqual(await client.rpc("cart.add", { sku: 7 }), { user: "alice", got: { sku: 7 } });
  await assert.rejects(
    client.rpc("cart.pay"),
    (e: WsgateError) => e.code === "rpc_failed" && e.message.includes("card declined"),
  );
  assert.equal(calls.length, 2);
  assert.equal(calls[0].session_id, client.sessionInfo?.sessionId);
  assert.equal(calls[1].data, null);
  assert.equal(client.state, "connected");
});
