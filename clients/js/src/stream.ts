/**
 * Offset bookkeeping for one stream with history (a topic or the user's own stream): the
 * last position the application has seen, used as `since` on every resubscribe and
 * reconnect, and to drop a push whose offset was already delivered.
 */

/** A position in a stream: an offset means something only with its epoch. */
export interface StreamPosition {
  epoch: string;
  offset: number;
}

/** The stream part of a `subscribed` reply or a `welcome` frame. */
export interface StreamAnswer {
  epoch?: string;
  offset?: number;
  recovered?: boolean;
}

export class Stream {
  /** Where the application is; undefined until the stream's position is known. */
  position: StreamPosition | undefined;

  constructor(since?: StreamPosition) {
    this.position = since && { ...since };
  }

  /**
   * Takes the gateway's answer to a subscribe or a connect. Returns `recovered` when the
   * request carried a `since`, else undefined.
   *
   * Recovered: the missed pushes follow, so the position stays where the application is
   * (they move it). Not recovered, or a fresh start: the application starts from the
   * stream's newest offset.
   */
  answer(a: StreamAnswer): boolean | undefined {
    if (a.epoch === undefined || a.offset === undefined) return undefined;
    if (a.recovered === true && this.position) {
      this.position.epoch = a.epoch;
      return true;
    }
    // A push may overtake the reply of a plain subscribe: never move back then. After
    // `recovered: false` the stream may have gone back (Redis lost writes): follow it.
    const p = this.position;
    if (a.recovered === false || !p || p.epoch !== a.epoch || p.offset < a.offset) {
      this.position = { epoch: a.epoch, offset: a.offset };
    }
    return a.recovered;
  }

  /** Whether a push with this offset is new; it then becomes the stream's position. */
  accept(offset: number | undefined): boolean {
    if (offset === undefined) return true;
    if (this.position) {
      if (offset <= this.position.offset) return false;
      this.position.offset = offset;
    }
    return true;
  }
}
