/**
 * An incremental parser of `text/event-stream`, the part of the WHATWG rules
 * a Fanline stream uses: `data`, `event`, `retry` and comments. The `id` field
 * is not needed: every event's data names its channel and its own id.
 *
 * The client reads the stream with `fetch` rather than `EventSource` because
 * EventSource drops every event whose type has no listener (publishers choose
 * the types), hides the HTTP status and `Retry-After` of a refusal, hides the
 * `: keepalive` comments a dead-connection watchdog needs, and cannot send an
 * `Authorization` header.
 */
export class StreamParser {
    /** The last `retry:` field, in milliseconds. */
    retry;
    #rest = "";
    #data = [];
    #type = "";
    /** Feed the next piece of decoded text; returns the events it completed. */
    feed(text) {
        const events = [];
        const lines = (this.#rest + text).split("\n");
        this.#rest = lines.pop();
        for (let line of lines) {
            if (line.endsWith("\r"))
                line = line.slice(0, -1);
            if (!line) {
                if (this.#data.length)
                    events.push({ type: this.#type || "message", data: this.#data.join("\n") });
                this.#data = [];
                this.#type = "";
                continue;
            }
            const colon = line.indexOf(":");
            if (colon == 0)
                continue; // a comment: ": keepalive"
            const field = colon < 0 ? line : line.slice(0, colon);
            const value = colon < 0 ? "" : line.slice(line[colon + 1] == " " ? colon + 2 : colon + 1);
            if (field == "data")
                this.#data.push(value);
            else if (field == "event")
                this.#type = value;
            else if (field == "retry" && /^\d+$/.test(value))
                this.retry = +value;
        }
        return events;
    }
}
