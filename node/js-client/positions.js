/**
 * The last id processed on each channel: what the client gives back as
 * `since` to resume. Kept in memory, and optionally in a store that outlives
 * the page (sessionStorage, localStorage, or your own), so a reload resumes.
 */
export class Positions {
    store;
    prefix;
    #ids = new Map();
    constructor(store, prefix = "fanline:") {
        this.store = store;
        this.prefix = prefix;
    }
    get(channel) {
        let id = this.#ids.get(channel);
        if (id === undefined) {
            id = attempt(() => this.store?.getItem(this.prefix + channel)) || undefined;
            if (id)
                this.#ids.set(channel, id);
        }
        return id;
    }
    set(channel, id) {
        this.#ids.set(channel, id);
        attempt(() => this.store?.setItem(this.prefix + channel, id));
    }
    delete(channel) {
        this.#ids.delete(channel);
        attempt(() => this.store?.removeItem(this.prefix + channel));
    }
}
// A full or disabled store (quota exceeded, private browsing) must not stop
// delivery: the position in memory is still right for this page's lifetime.
function attempt(action) {
    try {
        return action();
    }
    catch {
        return undefined;
    }
}
