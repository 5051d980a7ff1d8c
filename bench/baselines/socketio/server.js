// Baseline for wsgate's fan-out benchmark: Socket.IO 4 with @socket.io/redis-adapter.
// Run two of these on one Redis; a client emits `join` (with an ack) to enter a room,
// `publish` {topic, data} to emit `message` to a room across both nodes, and `broadcast`
// {data} to emit to everyone.
//
//   PORT=9401 REDIS_URL=redis://127.0.0.1:6390 node server.js
"use strict";
const { createServer } = require("http");
const { Server } = require("socket.io");
const { createAdapter } = require("@socket.io/redis-adapter");
const { createClient } = require("redis");

const port = Number(process.env.PORT || 9401);
const redisUrl = process.env.REDIS_URL || "redis://127.0.0.1:6379";

async function main() {
  const pub = createClient({ url: redisUrl });
  const sub = pub.duplicate();
  await Promise.all([pub.connect(), sub.connect()]);
  const httpServer = createServer();
  const io = new Server(httpServer, {
    adapter: createAdapter(pub, sub),
    transports: ["websocket"],
    serveClient: false,
  });
  io.on("connection", (socket) => {
    socket.on("join", (room, ack) => {
      socket.join(String(room));
      if (typeof ack === "function") ack("ok");
    });
    socket.on("publish", (m) => {
      if (m && m.topic) io.to(String(m.topic)).emit("message", m.data);
    });
    socket.on("broadcast", (m) => io.emit("message", m && m.data));
  });
  httpServer.listen(port, "127.0.0.1", () => console.log(`socket.io listening on ${port}`));
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
