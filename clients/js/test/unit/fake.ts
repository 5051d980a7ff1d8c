/**
 * A scripted WebSocket for unit tests: the test plays the gateway (open, frames, close)
 * and reads what the client sent.
 */
import type { WebSocketLike } from "../../src/index.js";

export class FakeSocket implements WebSocketLike {
  /** Every socket made since the last `reset`, the newest last. */
  static all: FakeSocket[] = [];
  static reset(): void {
    FakeSocket.all = [];
  }
  static last(): FakeSocket {
    const socket = FakeSocket.all.at(-1);
    if (!socket) throw new Error("no socket was opened");
    return socket;
  }

  readyState = 0;
  binaryType = "blob";
  /** The frames the client sent, parsed. */
  sent: any[] = [];
  /** How the client closed this socket, if it did. */
  closedWith: { code: number | undefined; reason: string | undefined } | undefined;
  onopen: ((event: any) => void) | null = null;
  onmessage: ((event: any) => void) | null = null;
  onclose: ((event: any) => void) | null = null;
  onerror: ((event: any) => void) | null = null;
  readonly url: URL;

  constructor(
    url: string,
    readonly protocols?: string | string[],
  ) {
    this.url = new URL(url);
    FakeSocket.all.push(this);
  }

  send(data: string): void {
    if (this.readyState !== 1) throw new Error("send on a socket that is not open");
    this.sent.push(JSON.parse(data));
  }

  close(code?: number, reason?: string): void {
    this.closedWith = { code, reason };
    this.readyState = 2;
  }

  // --- the gateway's side ---

  /** Opens the socket and sends the welcome frame. */
  welcome(extra: object = {}, heartbeatS = 25): void {
    this.readyState = 1;
    this.onopen?.({});
    this.frame({ op: "welcome", session_id: `s${FakeSocket.all.length}`, user_id: "alice", heartbeat_s: heartbeatS, ...extra });
  }

  frame(frame: object): void {
    this.onmessage?.({ data: JSON.stringify(frame) });
  }

  text(data: string): void {
    this.onmessage?.({ data });
  }

  binary(bytes: number[]): void {
    this.onmessage?.({ data: new Uint8Array(bytes).buffer });
  }

  /** The connection ends with `code` (a refused handshake: 1006 before any open). */
  drop(code: number, reason = ""): void {
    this.readyState = 3;
    this.onerror?.({});
    this.onclose?.({ code, reason });
  }

  /** The frames sent with this op. */
  ops(op: string): any[] {
    return this.sent.filter((f) => f.op === op);
  }

  /** Answers the last subscribe to `topic` with `subscribed` (echoing its id). */
  subscribed(topic: string, extra: object = {}): void {
    const request = this.ops("subscribe").filter((f) => f.topic === topic).at(-1);
    if (!request) throw new Error(`no subscribe to ${topic} was sent`);
    this.frame({ op: "subscribed", topic, id: request.id, ...extra });
  }
}
