/**
 * The last id processed on each channel: what the client gives back as
 * `since` to resume. Kept in memory, and optionally in a store that outlives
 * the page (sessionStorage, localStorage, or your own), so a reload resumes.
 */

/** sessionStorage and localStorage have this shape; so can your own store. */
export interface PositionStore {
  getItem(key: string): string | null;
  setItem(key: string, value: string): void;
  removeItem(key: string): void;
}

export class Positions {
  readonly #ids = new Map<string, string>();

  constructor(readonly store?: PositionStore, readonly prefix = "fanline:") {}

  get(channel: string): string | undefined {
    let id = this.#ids.get(channel);
    if (id === undefined) {
      id = attempt(() => this.store?.getItem(this.prefix + channel)) || undefined;
      if (id) this.#ids.set(channel, id);
    }
    return id;
  }

  set(channel: string, id: string): void {
    this.#ids.set(channel, id);
    attempt(() => this.store?.setItem(this.prefix + channel, id));
  }

  delete(channel: string): void {
    this.#ids.delete(channel);
    attempt(() => this.store?.removeItem(this.prefix + channel));
  }
}

// A full or disabled store (quota exceeded, private browsing) must not stop
// delivery: the position in memory is still right for this page's lifetime.
function attempt<T>(action: () => T): T | undefined {
  try {
    return action();
  } catch {
    return undefined;
  }
}
