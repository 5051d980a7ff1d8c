/**
 * What a client (or one of its subscriptions) did, in the order it happened: every event
 * is kept so that a test can assert on the whole story, not only on its end.
 */
import type { Client, DisconnectInfo, Push, SessionInfo, Subscription, WsgateError } from "../../src/index.js";

/** Every event of a client, from the moment it is made. */
export class ClientRecord {
  readonly states: string[] = [];
  readonly connected: SessionInfo[] = [];
  readonly disconnected: DisconnectInfo[] = [];
  readonly messages: Push[] = [];
  readonly recovered: boolean[] = [];
  readonly errors: WsgateError[] = [];
  /** Every event by name, in order (`connected`, `disconnected 1001`, `recovered true`, …). */
  readonly log: string[] = [];

  constructor(client: Client) {
    client.on("state", (s) => (this.states.push(s), this.log.push(`state ${s}`)));
    client.on("connected", (s) => (this.connected.push(s), this.log.push(`connected ${s.sessionId}`)));
    client.on("disconnected", (d) => {
      this.disconnected.push(d);
      this.log.push(`disconnected ${d.code} ${d.reason} reconnect=${d.reconnect}`);
    });
    client.on("message", (m) => this.messages.push(m));
    client.on("recovered", (r) => (this.recovered.push(r), this.log.push(`recovered ${r}`)));
    client.on("error", (e) => (this.errors.push(e), this.log.push(`error ${e.code} ${e.message}`)));
  }

  /** The `n` of every `{"n":…}` user push, in arrival order. */
  get ns(): number[] {
    return numbers(this.messages);
  }
}

/** Every event of a subscription, from the moment it is made. */
export class SubscriptionRecord {
  readonly messages: Push[] = [];
  readonly recovered: boolean[] = [];
  readonly subscribed: { epoch?: string; offset?: number; recovered?: boolean }[] = [];
  readonly unsubscribed: string[] = [];
  readonly errors: WsgateError[] = [];
  readonly log: string[] = [];

  constructor(sub: Subscription) {
    sub.on("message", (m) => this.messages.push(m));
    sub.on("recovered", (r) => (this.recovered.push(r), this.log.push(`recovered ${r}`)));
    sub.on("subscribed", (s) => (this.subscribed.push(s), this.log.push(`subscribed ${JSON.stringify(s)}`)));
    sub.on("unsubscribed", (u) => (this.unsubscribed.push(u.reason), this.log.push(`unsubscribed ${u.reason}`)));
    sub.on("error", (e) => (this.errors.push(e), this.log.push(`error ${e.code}`)));
  }

  /** The `n` of every `{"n":…}` push, in arrival order. */
  get ns(): number[] {
    return numbers(this.messages);
  }
}

/** The `n` of every push whose data is `{"n":…}`; other pushes are left out. */
export function numbers(pushes: Push[]): number[] {
  return pushes.flatMap((p) => {
    const n = (p.data as { n?: unknown } | null)?.n;
    return typeof n === "number" ? [n] : [];
  });
}

/** `[from, from + 1, …, to - 1]`. */
export function range(from: number, to: number): number[] {
  return Array.from({ length: Math.max(0, to - from) }, (_, i) => from + i);
}
