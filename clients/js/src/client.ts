import { Emitter } from "./emitter.js";
import { WsgateError } from "./errors.js";
import { backoffDelay, closeAction } from "./reconnect.js";
import { Stream, type StreamPosition } from "./stream.js";
import { type Channel, type Push, type SubscribeOptions, Subscription } from "./subscription.js";
import { refreshLead, tokenExpiry } from "./token.js";

/** The subprotocol the client offers. */
export const SUBPROTOCOL = "wsgate.v1";

/**
 * - `connecting`: opening a connection, until the gateway's welcome;
 * - `connected`: welcomed; subscriptions are made and pushes arrive;
 * - `disconnected`: the connection was lost and the client waits to reconnect;
 * - `closed`: not connected and not trying (before `connect()`, after `close()`, and
 *   after a close code that does not reconnect).
 */
export type ClientState = "connecting" | "connected" | "disconnected" | "closed";

/** The parts of the WebSocket API the client uses (browsers' and the `ws` package's). */
export interface WebSocketLike {
  readonly readyState: number;
  binaryType: string;
  send(data: string): void;
  close(code?: number, reason?: string): void;
  onopen: ((event: any) => void) | null;
  onmessage: ((event: any) => void) | null;
  onclose: ((event: any) => void) | null;
  onerror: ((event: any) => void) | null;
}

export type WebSocketConstructor = new (url: string, protocols?: string | string[]) => WebSocketLike;

export interface ClientOptions {
  /** A token for the whole client's life. */
  token?: string;
  /** Called for a token before connecting, before the current one expires, and after 3005. */
  getToken?: () => Promise<string> | string;
  /** The WebSocket implementation; default `globalThis.WebSocket`. In Node: the `ws` package. */
  websocket?: WebSocketConstructor;
  /** Recover the user stream from this position on the first connect. */
  since?: StreamPosition;
  /** Backoff between attempts: `random(0, min(capMs, baseMs * 2^attempt))`. Default 500 / 30 000. */
  backoff?: { baseMs?: number; capMs?: number };
  /** How long an attempt may take from opening the socket to the welcome. Default 10 000. */
  connectTimeoutMs?: number;
  /** Silence beyond `heartbeat_s` after which the client pings. Default 5 000. */
  pingMarginMs?: number;
  /** How long to wait for any frame after a ping before giving the connection up. Default 5 000. */
  pongTimeoutMs?: number;
}

/** The session a `connected` event reports. */
export interface SessionInfo {
  sessionId: string;
  userId: string;
  heartbeatS: number;
}

/** Every close of a connection, and what the client does next. */
export interface DisconnectInfo {
  code: number;
  reason: string;
  /** True when the client reconnects by itself, after `delayMs`. */
  reconnect: boolean;
  delayMs?: number;
}

export interface ClientEvents {
  state: ClientState;
  connected: SessionInfo;
  disconnected: DisconnectInfo;
  /** User, session and broadcast pushes (topic pushes go to their `Subscription`). */
  message: Push;
  /** After a reconnect with the user stream's position: true = the missed pushes follow; false = reload. */
  recovered: boolean;
  error: WsgateError;
}

/** The close code the client reports when it gives a connection up itself. */
const ABNORMAL = 1006;

/**
 * A connection to a wsgate gateway that stays up: it reconnects with backoff, subscribes
 * again, recovers every stream with history from its last offset, renews its token before
 * it expires and notices a dead connection by itself.
 */
export class Client extends Emitter<ClientEvents> {
  private _state: ClientState = "closed";
  private ws: WebSocketLike | undefined;
  private subs = new Map<string, Subscription>();
  private user: Stream;
  private pending = new Map<number, (e?: WsgateError, frame?: any) => void>();
  private seq = 0;
  private attempt = 0;
  private generation = 0;
  private timers: Record<"retry" | "live" | "refresh", ReturnType<typeof setTimeout> | undefined> = {
    retry: undefined,
    live: undefined,
    refresh: undefined,
  };
  private token: string | undefined;
  private needToken = false;
  private refreshOp = true;
  private session: SessionInfo | undefined;
  private sentSince = false;
  private lastFrame = 0;
  private pinged = false;
  private heartbeatMs = 0;
  /** The announcement of the binary frame that comes next. */
  private binary: { topic?: string; offset: number } | undefined;
  private channel: Channel;

  constructor(
    readonly url: string,
    private options: ClientOptions = {},
  ) {
    super();
    this.token = options.token;
    this.user = new Stream(options.since);
    this.channel = {
      request: (op, onError) => this.request(op, (e) => e && onError(e)),
      connected: () => this._state === "connected",
      forget: (sub) => this.subs.get(sub.topic) === sub && this.subs.delete(sub.topic),
      backoff: (attempt) => this.backoff(attempt),
    };
  }

  get state(): ClientState {
    return this._state;
  }

  /** The current session, while connected. */
  get sessionInfo(): SessionInfo | undefined {
    return this.session;
  }

  /** The user stream's last delivered position, when user history is on. */
  get position(): StreamPosition | undefined {
    return this.user.position && { ...this.user.position };
  }

  /** Starts connecting (and reconnecting) until `close()`. */
  connect(): void {
    if (this._state !== "closed") return;
    this.attempt = 0;
    void this.open();
  }

  /** Closes the connection with 1000 and stops reconnecting; subscriptions are kept for a later `connect()`. */
  close(): void {
    this.stop(1000, "closed by the client");
  }

  /** The subscription to `topic`, made (once per topic) and kept across reconnects. */
  subscribe(topic: string, options?: SubscribeOptions): Subscription {
    let sub = this.subs.get(topic);
    if (!sub) {
      this.subs.set(topic, (sub = new Subscription(topic, this.channel, options)));
      if (this._state === "connected") sub._subscribe();
    }
    return sub;
  }

  /**
   * Sends the protocol's `ping` and resolves with the round trip in milliseconds when the
   * `pong` arrives. Rejects with `closed` when not connected, or when the connection ends
   * first. (The client pings by itself to notice a dead connection: this is for display.)
   */
  ping(): Promise<number> {
    const start = performance.now();
    return this.call({ op: "ping" }).then(() => performance.now() - start);
  }

  /**
   * Publishes `data` (any JSON value) to `topic`, when the token's `publish` claim allows
   * it. Resolves with the message's `epoch` and `offset` on a topic with history (else
   * `{}`); rejects with `forbidden_topic`, `rate_limited`, `unavailable`, or `closed` when
   * not connected or when the connection ends before the answer. Not retried: a publish
   * whose answer was lost may have gone out.
   */
  publish(topic: string, data: unknown): Promise<{ epoch?: string; offset?: number }> {
    return this.call({ op: "publish", topic, data }).then(({ epoch, offset }) => ({ epoch, offset }));
  }

  /**
   * Calls `method` on the application's backend through the gateway (`rpc.url`) and
   * resolves with the JSON its backend answered. Rejects with `rpc_failed` (the
   * backend's error message), `rpc_timeout`, `rpc_busy` (too many calls in flight on this
   * session), or `closed`. Not retried: the backend may have acted on a lost call.
   */
  rpc(method: string, data?: unknown): Promise<unknown> {
    return this.call({ op: "rpc", method, data: data ?? null }).then((answer) => answer.data);
  }

  /** Sends an op and resolves with its answer; rejects with its error, or with `closed`. */
  private call(op: object): Promise<any> {
    return new Promise((resolve, reject) => {
      const closed = () => (off(), reject(new WsgateError("closed", "not connected")));
      const off = this.on("state", closed);
      if (!this.request(op, (e, frame) => (off(), e ? reject(e) : resolve(frame)))) closed();
    });
  }

  /** The subscription to `topic`, if there is one. */
  subscription(topic: string): Subscription | undefined {
    return this.subs.get(topic);
  }

  private backoff(attempt: number): number {
    const b = this.options.backoff;
    return backoffDelay(attempt, b?.baseMs ?? 500, b?.capMs ?? 30_000);
  }

  private set(state: ClientState): void {
    if (this._state !== state) this.emit("state", (this._state = state));
  }

  private clear(timer: keyof Client["timers"]): void {
    clearTimeout(this.timers[timer]);
    this.timers[timer] = undefined;
  }

  /** Sends an op with an id; `reply` gets the error or the answer to it. */
  private request(op: object, reply: (e?: WsgateError, frame?: any) => void): boolean {
    const ws = this.ws;
    if (this._state !== "connected" || !ws || ws.readyState !== 1) return false;
    const id = ++this.seq;
    this.pending.set(id, reply);
    ws.send(JSON.stringify({ ...op, id }));
    return true;
  }

  private async open(): Promise<void> {
    const generation = ++this.generation;
    this.set("connecting");
    const { getToken } = this.options;
    const expiresAt = this.token && tokenExpiry(this.token);
    if (getToken && (this.needToken || !this.token || (expiresAt && expiresAt - Date.now() < 1_000))) {
      try {
        this.token = await getToken();
        this.needToken = false;
      } catch (e) {
        if (generation !== this.generation) return;
        this.emit("error", new WsgateError("token", `getToken failed: ${e}`));
        return this.retryLater(ABNORMAL, "no token");
      }
      if (generation !== this.generation) return;
    }
    let ws: WebSocketLike;
    try {
      const url = new URL(this.url);
      if (this.token) url.searchParams.set("access_token", this.token);
      const since = this.user.position;
      this.sentSince = !!since;
      if (since) url.searchParams.set("since", `${since.epoch}:${since.offset}`);
      const WebSocketImpl = this.options.websocket ?? (globalThis as any).WebSocket;
      if (!WebSocketImpl) throw new Error("no WebSocket implementation: pass options.websocket");
      ws = new WebSocketImpl(url.toString(), SUBPROTOCOL);
    } catch (e) {
      this.emit("error", new WsgateError("bad_request", `cannot open a WebSocket: ${e}`));
      return this.stop(ABNORMAL, String(e));
    }
    this.ws = ws;
    ws.binaryType = "arraybuffer";
    ws.onmessage = (event) => this.onFrame(event.data);
    ws.onclose = (event) => this.onClose(event.code ?? ABNORMAL, event.reason ?? "");
    ws.onerror = () => {};
    this.timers.live = setTimeout(
      () => this.giveUp("no welcome in time"),
      this.options.connectTimeoutMs ?? 10_000,
    );
  }

  /** Gives a connection up without waiting for the close handshake of a dead socket. */
  private giveUp(reason: string): void {
    const ws: any = this.detach();
    // Node's `ws` can drop the connection at once; a browser's socket can only close().
    if (ws?.terminate) ws.terminate();
    else ws?.close();
    this.onClose(ABNORMAL, reason);
  }

  private detach(): WebSocketLike | undefined {
    const ws = this.ws;
    if (ws) {
      ws.onopen = ws.onmessage = ws.onclose = null;
      // Closing a socket whose handshake is still pending makes it report an error, which
      // the `ws` package throws (an uncaught exception) when no listener is left.
      ws.onerror = () => {};
    }
    this.ws = undefined;
    return ws;
  }

  /** The end of a connection: reconnect, get a new token first, or stop. */
  private onClose(code: number, reason: string): void {
    const welcomed = !!this.session;
    this.reset();
    let action = closeAction(code);
    // A refused handshake may be an expired or revoked token: the browser hides the
    // status, so ask for a new one before the next attempt.
    if (action === "token" || (!welcomed && action === "reconnect")) this.needToken = true;
    if (action === "token" && !this.options.getToken) action = "stop";
    if (action === "stop") return this.stop(code, reason);
    this.retryLater(code, reason);
  }

  private retryLater(code: number, reason: string): void {
    const delayMs = this.backoff(this.attempt++);
    this.set("disconnected");
    this.emit("disconnected", { code, reason, reconnect: true, delayMs });
    this.timers.retry = setTimeout(() => this.open(), delayMs);
  }

  /** Forgets the connection and its timers (subscriptions and stream positions stay). */
  private reset(): void {
    this.detach();
    this.clear("live");
    this.clear("refresh");
    this.clear("retry");
    this.pending.clear();
    this.session = undefined;
    this.binary = undefined;
  }

  private stop(code: number, reason: string): void {
    if (this._state === "closed") return;
    this.generation++;
    const ws = this.detach();
    ws?.close(code === 1000 ? 1000 : undefined, code === 1000 ? reason : undefined);
    this.reset();
    this.set("closed");
    this.emit("disconnected", { code, reason, reconnect: false });
    for (const sub of this.subs.values()) sub._closed();
  }

  private onFrame(data: unknown): void {
    this.lastFrame = Date.now();
    this.pinged = false;
    if (typeof data !== "string") {
      const bytes = ArrayBuffer.isView(data)
        ? new Uint8Array(data.buffer, data.byteOffset, data.byteLength)
        : new Uint8Array(data as ArrayBuffer);
      const announced = this.binary;
      this.binary = undefined;
      return this.push(bytes, announced?.topic, announced?.offset);
    }
    let frame: any;
    try {
      frame = JSON.parse(data);
    } catch {
      return this.emit("error", new WsgateError("protocol", "a frame that is not JSON"));
    }
    const sub = typeof frame.topic === "string" ? this.subs.get(frame.topic) : undefined;
    switch (frame.op) {
      case "welcome":
        return this.welcome(frame);
      case "message":
        return this.push(frame.data, frame.topic, frame.offset);
      case "binary":
        this.binary = { topic: frame.topic, offset: frame.offset };
        return;
      case "subscribed":
        this.pending.delete(frame.id);
        return sub?._subscribed(frame);
      case "unsubscribed":
        this.pending.delete(frame.id);
        return sub?._unsubscribed(frame.reason);
      default: {
        // Answers to requests (pong, published, refreshed, errors) go to their caller.
        const reply = this.pending.get(frame.id);
        this.pending.delete(frame.id);
        const error = frame.op === "error" ? new WsgateError(frame.code, frame.message) : undefined;
        if (reply) return reply(error, frame);
        if (error) this.emit("error", error);
      }
    }
  }

  private push(data: unknown, topic: string | undefined, offset: number | undefined): void {
    if (topic !== undefined) return this.subs.get(topic)?._push(data, offset);
    if (this.user.accept(offset)) this.emit("message", offset === undefined ? { data } : { data, offset });
  }

  private welcome(frame: any): void {
    this.clear("live");
    this.attempt = 0;
    this.session = { sessionId: frame.session_id, userId: frame.user_id, heartbeatS: frame.heartbeat_s };
    this.heartbeatMs = (frame.heartbeat_s || 25) * 1000;
    // Subscriptions made by the listeners below are sent by `subscribe` itself.
    const subs = [...this.subs.values()];
    this.set("connected");
    this.emit("connected", this.session);
    const answer = { ...frame.user_stream, recovered: this.sentSince ? frame.recovered : undefined };
    const recovered = this.user.answer(answer);
    if (recovered !== undefined) this.emit("recovered", recovered);
    for (const sub of subs) sub._subscribe();
    this.watch();
    this.scheduleRefresh();
  }

  /**
   * Liveness: browsers cannot see the gateway's WebSocket pings, so after `heartbeat_s`
   * plus a margin of silence the client pings itself; no frame within the pong timeout
   * means the connection is dead.
   */
  private watch(): void {
    const idleMs = this.heartbeatMs + (this.options.pingMarginMs ?? 5_000);
    const silent = Date.now() - this.lastFrame;
    if (silent < idleMs) {
      this.timers.live = setTimeout(() => this.watch(), idleMs - silent);
    } else if (!this.pinged) {
      this.pinged = true;
      this.request({ op: "ping" }, () => {});
      this.timers.live = setTimeout(() => this.watch(), this.options.pongTimeoutMs ?? 5_000);
    } else {
      this.giveUp("no pong");
    }
  }

  /** Renews the token before `exp`: the `refresh` op where the gateway has it, else a reconnect. */
  private scheduleRefresh(): void {
    const expiresAt = this.token && tokenExpiry(this.token);
    const { getToken } = this.options;
    if (!getToken || !expiresAt) return;
    const delay = Math.min(2 ** 31 - 1, Math.max(0, expiresAt - refreshLead(expiresAt, Date.now()) - Date.now()));
    this.timers.refresh = setTimeout(async () => {
      const generation = this.generation;
      let token: string;
      try {
        token = await getToken();
      } catch (e) {
        this.emit("error", new WsgateError("token", `getToken failed: ${e}`));
        return;
      }
      if (generation !== this.generation || this._state !== "connected") return;
      const reconnect = () => {
        this.token = token;
        const old = this.ws;
        this.reset();
        old?.close(1000, "token refresh");
        this.emit("disconnected", { code: 1000, reason: "token refresh", reconnect: true, delayMs: 0 });
        void this.open();
      };
      const sent =
        this.refreshOp &&
        this.request({ op: "refresh", token }, (e) => {
          if (e?.code === "bad_request") {
            // A gateway without the refresh op: reconnect with the new token instead.
            this.refreshOp = false;
            reconnect();
          } else if (e) {
            this.emit("error", e);
          } else {
            this.token = token;
            this.scheduleRefresh();
          }
        });
      if (!sent) reconnect();
    }, delay);
  }
}
