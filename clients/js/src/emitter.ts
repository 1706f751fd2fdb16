/** A minimal typed event emitter: `on` returns the function that removes the listener. */

export type Listener<T> = (value: T) => void;

export class Emitter<Events extends object> {
  #listeners: { [K in keyof Events]?: Listener<Events[K]>[] } = {};

  on<K extends keyof Events>(type: K, listener: Listener<Events[K]>): () => void {
    (this.#listeners[type] ??= []).push(listener);
    return () => this.off(type, listener);
  }

  off<K extends keyof Events>(type: K, listener: Listener<Events[K]>): void {
    this.#listeners[type] = this.#listeners[type]?.filter((l) => l != listener);
  }

  /** @internal */
  emit<K extends keyof Events>(type: K, value: Events[K]): void {
    for (const listener of this.#listeners[type] ?? []) {
      try {
        listener(value);
      } catch (error) {
        // A listener's bug must not stop delivery to the others or the
        // bookkeeping after it: report it the way an uncaught error is reported.
        setTimeout(() => {
          throw error;
        });
      }
    }
  }
}
