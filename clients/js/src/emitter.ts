/** A minimal typed event emitter: `on` returns the function that removes the listener. */
export class Emitter<Events extends object> {
  private listeners: { [K in keyof Events]?: Set<(value: Events[K]) => void> } = {};

  /** Calls `listener` for every `event` until the returned function is called. */
  on<K extends keyof Events>(event: K, listener: (value: Events[K]) => void): () => void {
    (this.listeners[event] ??= new Set()).add(listener);
    return () => this.off(event, listener);
  }

  /** Removes a listener added with `on`. */
  off<K extends keyof Events>(event: K, listener: (value: Events[K]) => void): void {
    this.listeners[event]?.delete(listener);
  }

  /**
   * Calls every listener of `event`. A listener that throws does not stop the others or
   * the client: its error is rethrown on its own, outside the client's code.
   */
  protected emit<K extends keyof Events>(event: K, value: Events[K]): void {
    for (const listener of [...(this.listeners[event] ?? [])]) {
      try {
        listener(value);
      } catch (e) {
        setTimeout(() => {
          throw e;
        }, 0);
      }
    }
  }
}
