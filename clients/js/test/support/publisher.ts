/** A publisher loop: numbered JSON messages `{"n":0}`, `{"n":1}`, … one after the other. */
import { sleep } from "./wait.js";

export class Publisher {
  /** How many were published (the call returned). */
  sent = 0;
  /** Resolves when all were published (or after `stop()`); rejects when a publish failed. */
  readonly done: Promise<void>;
  private stopped = false;

  /**
   * Publishes `count` messages with `publish(text)`, waiting for each, with `everyMs`
   * between the starts of two (when a publish takes longer, the next starts at once).
   */
  constructor(count: number, publish: (text: string) => Promise<unknown>, everyMs = 0) {
    this.done = (async () => {
      for (let n = 0; n < count && !this.stopped; n++) {
        const started = Date.now();
        await publish(JSON.stringify({ n }));
        this.sent = n + 1;
        const rest = everyMs - (Date.now() - started);
        if (rest > 0) await sleep(rest);
      }
    })();
    this.done.catch(() => {});
  }

  /** Publishes nothing after the current one; returns `done`. */
  stop(): Promise<void> {
    this.stopped = true;
    return this.done;
  }
}
