/**
 * One end-to-end test's world: the Redis, pods, proxy and clients it starts are stopped
 * when the test ends (last made, first stopped), and when the test fails the pods' logs
 * and the clients' event logs are printed, so that a failure explains itself (with
 * `E2E_EXPLAIN=1` also when it passes).
 */
import { type TestContext, test } from "node:test";
import WebSocket from "ws";
import { Client, type ClientOptions, type Subscription } from "../../src/index.js";
import { Pod, type PodOptions } from "./pod.js";
import { Proxy } from "./proxy.js";
import { ClientRecord, SubscriptionRecord } from "./record.js";
import { Redis } from "./redis.js";

export class Scene {
  private cleanups: (() => unknown)[] = [];
  private pods: Pod[] = [];
  private records: [string, { log: string[] }][] = [];

  constructor(t: TestContext) {
    t.after(async () => {
      for (const cleanup of this.cleanups.reverse()) await cleanup();
    });
  }

  /** Runs `cleanup` when the test ends. */
  defer(cleanup: () => unknown): void {
    this.cleanups.push(cleanup);
  }

  async redis(): Promise<Redis> {
    const redis = await Redis.start();
    this.defer(() => redis.stop());
    return redis;
  }

  async pod(name: string, options: PodOptions = {}): Promise<Pod> {
    const pod = await Pod.start(name, options);
    this.pods.push(pod);
    this.defer(() => pod.kill());
    return pod;
  }

  async proxy(upstreams: number[]): Promise<Proxy> {
    const proxy = await Proxy.start(upstreams);
    this.defer(() => proxy.stop());
    return proxy;
  }

  /** A client on the `ws` package with a short backoff (not connected yet), and its record. */
  client(url: string, options: ClientOptions = {}): [Client, ClientRecord] {
    const client = new Client(url, { websocket: WebSocket, backoff: { baseMs: 100, capMs: 1_000 }, ...options });
    this.defer(() => client.close());
    const record = new ClientRecord(client);
    this.records.push([`client ${url}`, record]);
    return [client, record];
  }

  /** The record of a subscription's events. */
  record(sub: Subscription): SubscriptionRecord {
    const record = new SubscriptionRecord(sub);
    this.records.push([`subscription ${sub.topic}`, record]);
    return record;
  }

  /** Prints what happened: the event logs, then the tail of every pod's log. */
  explain(): void {
    for (const [name, record] of this.records) {
      console.error(`--- ${name}\n${record.log.join("\n")}`);
    }
    for (const pod of this.pods) {
      console.error(`--- pod ${pod.name} log (tail)\n${pod.log().split("\n").slice(-40).join("\n")}`);
    }
  }
}

/** A `node:test` test with its `Scene`; the test fails after `timeoutMs`. */
export function e2e(name: string, timeoutMs: number, body: (scene: Scene, t: TestContext) => Promise<void>): void {
  test(name, { timeout: timeoutMs }, async (t) => {
    const scene = new Scene(t);
    try {
      await body(scene, t);
      if (process.env.E2E_EXPLAIN) scene.explain();
    } catch (e) {
      scene.explain();
      throw e;
    }
  });
}
