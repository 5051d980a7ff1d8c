/** A real `redis-server` on a free loopback port, without persistence, for one test. */
import { type ChildProcess, spawn } from "node:child_process";
import { createConnection } from "node:net";
import { freePort, killAndWait, sleep, waitFor } from "./wait.js";

export class Redis {
  private child: ChildProcess | undefined;
  private constructor(readonly port: number) {}

  get url(): string {
    return `redis://127.0.0.1:${this.port}`;
  }

  /** Starts a server (on `port`, or a free one) and waits until it answers PING. */
  static async start(port?: number): Promise<Redis> {
    const redis = new Redis(port ?? (await freePort()));
    await redis.spawn();
    return redis;
  }

  private async spawn(): Promise<void> {
    const child = spawn(
      "redis-server",
      ["--port", String(this.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
      { stdio: "ignore" },
    );
    child.on("error", (e) => {
      throw new Error(`cannot run redis-server (scripts/test installs it): ${e.message}`);
    });
    this.child = child;
    await waitFor(`redis-server on port ${this.port}`, () => this.ping(), 10_000);
  }

  /** Whether the server answers PING. */
  ping(): Promise<boolean> {
    return new Promise((resolve) => {
      const socket = createConnection({ host: "127.0.0.1", port: this.port });
      socket.setTimeout(1000, () => (socket.destroy(), resolve(false)));
      socket.on("error", () => resolve(false));
      socket.on("connect", () => socket.write("PING\r\n"));
      socket.on("data", (d) => (socket.destroy(), resolve(d.toString().startsWith("+PONG"))));
    });
  }

  /** SIGKILLs the server (it keeps nothing) and waits for the process to end. */
  async stop(): Promise<void> {
    const child = this.child;
    this.child = undefined;
    await killAndWait(child);
  }

  /** Stops the server and starts an empty one on the same port. */
  async restartEmpty(): Promise<void> {
    await this.stop();
    await sleep(50);
    await this.spawn();
  }
}
