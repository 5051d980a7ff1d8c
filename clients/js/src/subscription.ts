import { Emitter } from "./emitter.js";
import { WsgateError } from "./errors.js";
import { Stream, type StreamAnswer, type StreamPosition } from "./stream.js";

/** A push as the application receives it. */
export interface Push {
  /** A string (text pushes), a JSON value (JSON pushes) or the bytes of a binary push. */
  data: unknown;
  /** The push's offset in its stream, when the stream keeps history. */
  offset?: number;
  /** The topic it was published to (topic pushes only). */
  topic?: string;
}

export type SubscriptionState = "subscribing" | "subscribed" | "unsubscribed";

/** What a `subscribed` event tells: the stream's position, and the recovery outcome. */
export interface SubscribedInfo {
  epoch?: string;
  offset?: number;
  recovered?: boolean;
}

export interface SubscriptionEvents {
  state: SubscriptionState;
  subscribed: SubscribedInfo;
  message: Push;
  /** After a resubscribe with `since`: true = the missed pushes follow; false = reload. */
  recovered: boolean;
  unsubscribed: { reason: string };
  error: WsgateError;
}

export interface SubscribeOptions {
  /** Start from this position (kept by the application, e.g. across page loads). */
  since?: StreamPosition;
}

/** @internal What a subscription needs from its client. */
export interface Channel {
  /** Sends an op when connected; `onError` gets an error reply to it. */
  request(op: object, onError: (e: WsgateError) => void): boolean;
  connected(): boolean;
  forget(sub: Subscription): void;
  backoff(attempt: number): number;
}

/**
 * One topic the client keeps subscribed: across reconnects it subscribes again with the
 * last offset it delivered, so a stream with history misses nothing and repeats nothing.
 */
export class Subscription extends Emitter<SubscriptionEvents> {
  /** Resolves once the subscription is made; rejects when it ends before that. */
  ready!: Promise<void>;
  private _state: SubscriptionState = "subscribing";
  private settle: [() => void, (e: WsgateError) => void] | undefined;
  private stream: Stream;
  private sentSince = false;
  private retry: ReturnType<typeof setTimeout> | undefined;
  private attempt = 0;

  /** @internal Made by `Client.subscribe`. */
  constructor(
    readonly topic: string,
    private channel: Channel,
    options: SubscribeOptions = {},
  ) {
    super();
    this.stream = new Stream(options.since);
    this.arm();
  }

  get state(): SubscriptionState {
    return this._state;
  }

  /** The last position delivered to the application, when the topic keeps history. */
  get position(): StreamPosition | undefined {
    return this.stream.position && { ...this.stream.position };
  }

  /** Ends the subscription: no more pushes, no resubscribe. */
  unsubscribe(): void {
    if (this._state === "unsubscribed") return;
    this.channel.request({ op: "unsubscribe", topic: this.topic }, () => {});
    this.end("unsubscribe", "unsubscribed");
  }

  /** A fresh `ready` promise, marked handled: a rejection nobody awaits is not an unhandled one. */
  private arm(): void {
    this.ready = new Promise((resolve, reject) => (this.settle = [resolve, reject]));
    this.ready.catch(() => {});
  }

  private set(state: SubscriptionState): void {
    if (this._state !== state) this.emit("state", (this._state = state));
  }

  private end(reason: string, code: string, message?: string): void {
    clearTimeout(this.retry);
    this.channel.forget(this);
    this.settle?.[1](new WsgateError(code, message));
    this.settle = undefined;
    this.set("unsubscribed");
    this.emit("unsubscribed", { reason });
  }

  /** @internal Sends the subscribe op (after every welcome, and to recover). */
  _subscribe(): void {
    clearTimeout(this.retry);
    if (this._state === "unsubscribed") return;
    this.set("subscribing");
    const since = this.stream.position;
    this.sentSince = !!since;
    this.channel.request({ op: "subscribe", topic: this.topic, ...(since && { since }) }, (e) => this._error(e));
  }

  /** @internal The gateway's `subscribed` reply. */
  _subscribed(answer: StreamAnswer): void {
    if (this._state === "unsubscribed") return;
    this.attempt = 0;
    const recovered = this.stream.answer(this.sentSince ? answer : { ...answer, recovered: undefined });
    this.settle?.[0]();
    this.settle = undefined;
    this.set("subscribed");
    const { epoch, offset } = answer;
    this.emit("subscribed", { epoch, offset, recovered });
    if (recovered !== undefined) this.emit("recovered", recovered);
  }

  /** @internal A push on the topic; dropped when its offset was delivered already. */
  _push(data: unknown, offset: number | undefined): void {
    if (this._state !== "unsubscribed" && this.stream.accept(offset)) {
      this.emit("message", offset === undefined ? { data, topic: this.topic } : { data, offset, topic: this.topic });
    }
  }

  /** @internal The gateway ended the subscription (`unsubscribed` with a reason). */
  _unsubscribed(reason: string | undefined): void {
    if (reason === "insufficient_state") this._subscribe();
    else if (reason && this._state !== "unsubscribed") this.end(reason, reason);
  }

  /** @internal An error reply to the subscribe op. `unavailable` is retried with backoff. */
  _error(e: WsgateError): void {
    // The session is closing: the next connection's welcome subscribes again.
    if (e.code === "closing") return;
    this.emit("error", e);
    if (e.code === "unavailable") {
      this.retry = setTimeout(() => this.channel.connected() && this._subscribe(), this.channel.backoff(this.attempt++));
    } else {
      this.end(e.code, e.code, e.message);
    }
  }

  /** @internal The client stopped for good: a pending `ready` rejects with `closed`. */
  _closed(): void {
    clearTimeout(this.retry);
    if (this.settle) {
      this.settle[1](new WsgateError("closed", "the client closed before the subscription was made"));
      this.arm();
    }
  }
}
