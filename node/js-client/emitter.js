/** A minimal typed event emitter: `on` returns the function that removes the listener. */
export class Emitter {
    #listeners = {};
    on(type, listener) {
        (this.#listeners[type] ??= []).push(listener);
        return () => this.off(type, listener);
    }
    off(type, listener) {
        this.#listeners[type] = this.#listeners[type]?.filter((l) => l != listener);
    }
    /** @internal */
    emit(type, value) {
        for (const listener of this.#listeners[type] ?? []) {
            try {
                listener(value);
            }
            catch (error) {
                // A listener's bug must not stop delivery to the others or the
                // bookkeeping after it: report it the way an uncaught error is reported.
                setTimeout(() => {
                    throw error;
                });
            }
        }
    }
}
