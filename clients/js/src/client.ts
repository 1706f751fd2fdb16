/**
 * The Fanline client: one connection to one node at a time, over WebSocket or
 * SSE, that keeps every subscribed channel's position and resumes all of them
 * after any reconnect. What it does on each close code and error is
 * docs/clients.md; the wire protocol is docs/protocol.md.
 */

import { Emitter } from "./emitter.js";
import { backoff, closeCodeOfStatus, retryAfterClose } from "./policy.js";
import { type PositionStore, Positions } from "./positions.js";
import { type StreamEvent, StreamParser } from "./sse.js";

export type Transport = "websocket" | "sse";
export type State = "disconnected" | "connecting" | "connected" | "failed" | "closed";

/** A token (a JWT), or a single-use ticket; `exp` (Unix seconds) when the client cannot read it from a token. */
export type Credential = string | { token?: string; ticket?: string; exp?: number };

export interface Options {
  /** Node base URLs (`https://rt.example.com`, `ws://127.0.0.1:8000`), tried in turn. Default: the page's origin. */
  url?: string | string[];
  /** `auto` (default): WebSocket, and SSE if WebSocket cannot connect twice in a row before any success. */
  transport?: "auto" | Transport;
  /** A fixed token. */
  token?: string;
  /** A fixed ticket (single-use: prefer `credential` for tickets). */
  ticket?: string;
  /** Called before every (re)connect for a fresh token or ticket; also used for `refresh` unless that is given. */
  credential?: () => Credential | Promise<Credential>;
  /** Called before the credential expires, for one to send in a `refresh` message (WebSocket only). */
  refresh?: () => Credential | Promise<Credential>;
  /** Send a token in an `auth` first frame (default) rather than in the URL. */
  authFrame?: boolean;
  /** Keep positions here too (sessionStorage, localStorage or your own), so a page reload resumes. */
  store?: PositionStore;
  /** Prefix of the keys in `store`. Default `fanline:`. */
  storePrefix?: string;
  /** First backoff step and cap, in ms. Defaults 500 and 30000. */
  backoffBase?: number;
  backoffMax?: number;
  /** The node's heartbeat interval in seconds, until the node says (SSE never says). Default 25. */
  heartbeat?: number;
  /** Milliseconds to open a connection and to get a reply to a request. Default 10000. */
  timeout?: number;
  /** SSE: send cookies to another origin (the `fanline_token` cookie). */
  withCredentials?: boolean;
  /** Implementations to use where there is no global one (Node 20: `--experimental-websocket`). */
  WebSocket?: typeof WebSocket;
  fetch?: typeof fetch;
}

/** An event of a channel: `data` as published, `event` the publisher's event type if it gave one. */
export interface Publication {
  channel: string;
  id: string;
  data: unknown;
  event?: string;
}

/** The node's confirmation; `recovered` only when the client resumed (`replayed`: how many missed events follow). */
export interface Subscribed {
  channel: string;
  id: string;
  recovered?: boolean;
  replayed?: number;
}

/**
 * Events between `previous` and `id` cannot be delivered, for `reason`
 * (`epoch_changed`, `history_trimmed`, `too_far_behind`, `position_ahead`,
 * `slow_consumer`). Rebuild this channel's state from your application's
 * source of truth; events after this one are newer than the reset.
 */
export interface Reset {
  channel: string;
  id: string;
  reason: string;
  previous?: string;
}

/** A subscribe the node refused. `retryIn` (ms) when the client retries by itself (`broker_unavailable`). */
export interface SubscriptionError {
  channel: string;
  code: string;
  message: string;
  retryIn?: number;
}

/** Why a connection ended (`code`: the WebSocket close code, or on SSE the HTTP status of a refusal). */
export interface Disconnect {
  code: number;
  reason: string;
  /** Milliseconds until the next attempt; absent when the client stopped. */
  delay?: number;
}

export interface SubscriptionEvents {
  publication: Publication;
  subscribed: Subscribed;
  reset: Reset;
  error: SubscriptionError;
}

export interface ClientEvents {
  state: State;
  connected: { transport: Transport; url: string; node?: string };
  disconnected: Disconnect;
  /** A permanent failure (1008, 4001, 4003, or 4011 without a credential callback): the client stopped. */
  failed: Disconnect;
  drain: { reconnectAfter: number };
  refreshed: { user?: string; exp?: number };
  error: { code: string; message: string };
}

/** The error a `publish` or `ping` rejects with: a Fanline error code, or `timeout`, `disconnected`, `receive_only`, `closed`. */
export class FanlineError extends Error {
  constructor(
    readonly code: string,
    message = code,
  ) {
    super(message);
  }
}

/** One channel's subscription: its events, and its position. */
export class Subscription extends Emitter<SubscriptionEvents> {
  state: "subscribing" | "subscribed" | "unsubscribed" | "failed" = "subscribing";
  /** @internal Opened on SSE with a placeholder position: its reset is its start, not a loss. */
  fresh = false;
  /** @internal */
  tries = 0;
  /** @internal */
  timer?: ReturnType<typeof setTimeout>;

  constructor(
    readonly client: Fanline,
    readonly channel: string,
  ) {
    super();
  }

  /** The id of the last message processed on this channel: give it as `since` to resume anywhere. */
  get position(): string | undefined {
    return this.client.position(this.channel);
  }

  unsubscribe(): void {
    this.client.unsubscribe(this.channel);
  }
}

type Reply = { [field: string]: any };
interface Pending {
  resolve(reply: Reply): void;
  reject(error: FanlineError): void;
}
type Credentials = { token?: string; ticket?: string; exp?: number };

// Milliseconds without a frame, per second of heartbeat, after which the
// connection counts as dead: 2 × heartbeat (docs/protocol.md, "Heartbeats").
const WATCHDOG = 2000;
// A subscribe refused with broker_unavailable is retried after 0.5 s doubling to 5 s.
const SUBSCRIBE_RETRY = [500, 5000] as const;

export class Fanline extends Emitter<ClientEvents> {
  state: State = "disconnected";
  /** The transport in use, or the one the next attempt will use. */
  transport: Transport;

  readonly #options: Options;
  readonly #urls: string[];
  readonly #subs = new Map<string, Subscription>();
  readonly #positions: Positions;
  // rid -> the channel of a subscribe, or a waiting publish/ping/refresh
  readonly #pending = new Map<number, string | Pending>();
  #waiters: Pending[] = [];
  #rid = 0;
  // Every connection attempt gets a generation; callbacks of older ones are ignored.
  #gen = 0;
  #running = false;
  #attempt = 0;
  #url = 0;
  #wsFailures = 0;
  #settled = false; // a transport has connected: keep it
  #opened = false; // the current attempt reached the node
  #reopening = false;
  #ws?: WebSocket;
  #abort?: AbortController;
  #credentials: Credentials = {};
  #heartbeat: number;
  #hint?: number; // the node's reconnect hint (drain, or SSE's retry at the end of a stream)
  #timer?: ReturnType<typeof setTimeout>;
  #watchdog?: ReturnType<typeof setTimeout>;
  #refresher?: ReturnType<typeof setTimeout>;

  constructor(options: Options = {}) {
    super();
    this.#options = options;
    const urls = [options.url ?? globalThis.location?.origin ?? ""].flat();
    this.#urls = urls.map((url) => url.replace(/\/+$/, ""));
    this.#url = Math.floor(Math.random() * urls.length);
    this.#positions = new Positions(options.store, options.storePrefix);
    this.#heartbeat = options.heartbeat ?? 25;
    this.transport = options.transport == "sse" ? "sse" : "websocket";
  }

  /** Start connecting (and keep reconnecting until `close()` or a permanent failure). */
  connect(): this {
    if (!this.#running) {
      this.#running = true;
      this.#attempt = 0;
      this.#start();
    }
    return this;
  }

  /** Subscribe to a channel, resuming from `since`, else from the stored position, if any. */
  subscribe(channel: string, options: { since?: string | null } = {}): Subscription {
    let sub = this.#subs.get(channel);
    if (!sub) {
      sub = new Subscription(this, channel);
      this.#subs.set(channel, sub);
      if (options.since) this.#positions.set(channel, options.since);
      else if (options.since !== undefined) this.#positions.delete(channel);
      if (this.transport == "sse") this.#reopen();
      else if (this.#opened) this.#subscribe(sub);
    }
    return sub;
  }

  /** Stop receiving a channel and forget its position. */
  unsubscribe(channel: string): void {
    const sub = this.#subs.get(channel);
    if (!sub) return;
    this.#subs.delete(channel);
    clearTimeout(sub.timer);
    sub.state = "unsubscribed";
    this.#positions.delete(channel);
    if (this.transport == "sse") this.#reopen();
    else if (this.#opened) this.#send({ type: "unsubscribe", channel });
  }

  subscription(channel: string): Subscription | undefined {
    return this.#subs.get(channel);
  }

  /** The last id processed on a channel. */
  position(channel: string): string | undefined {
    return this.#positions.get(channel);
  }

  /**
   * Publish through the connection (nodes started with `--client-publish`;
   * WebSocket only). Resolves to the new event's id. Waits for a connection up
   * to `timeout`. Not retried: after `disconnected` or `timeout` the
   * publication may or may not have happened.
   */
  async publish(channel: string, data: unknown, event?: string): Promise<string> {
    return (await this.#request({ type: "publish", channel, data, event })).id;
  }

  /** The round trip to the node, in ms (WebSocket only). */
  async ping(): Promise<number> {
    const start = Date.now();
    await this.#request({ type: "ping" });
    return Date.now() - start;
  }

  /** Drop the connection now and resume, as after any loss (with backoff, on the next URL). */
  reconnect(): void {
    if (this.#running) this.#lost(this.#gen, 1000, "reconnect() called");
  }

  /** Stop everything: the connection, the timers, the retries. `connect()` starts again, resuming. */
  close(): void {
    this.#running = false;
    this.#gen++;
    this.#teardown();
    this.#fail(new FanlineError("closed"));
    this.#setState("closed");
  }

  // -- connections -------------------------------------------------------------------

  async #start(): Promise<void> {
    const gen = ++this.#gen;
    this.#opened = false;
    this.#setState("connecting");
    try {
      this.#credentials = await this.#credential(this.#options.credential);
    } catch (error) {
      return this.#lost(gen, 1013, "credential: " + error);
    }
    if (gen != this.#gen) return;
    const base = this.#urls[this.#url % this.#urls.length];
    this.#arm(gen, this.#options.timeout ?? 10000);
    try {
      if (this.transport == "sse") this.#stream(gen, base.replace(/^ws/, "http"));
      else this.#socket(gen, base.replace(/^http/, "ws"));
    } catch (error) {
      // No WebSocket implementation, or a URL it cannot use: say so with every attempt.
      this.#lost(gen, 1006, String(error));
    }
  }

  async #credential(get?: () => Credential | Promise<Credential>): Promise<Credentials> {
    const value = get ? await get() : this.#options;
    const credentials: Credentials = typeof value == "string" ? { token: value } : value;
    return { token: credentials.token, ticket: credentials.ticket, exp: credentials.exp ?? expiry(credentials.token) };
  }

  #socket(gen: number, base: string): void {
    const { token, ticket } = this.#credentials;
    const frame = token && this.#options.authFrame != false;
    const query = ticket ? "?ticket=" + encodeURIComponent(ticket) : token && !frame ? "?token=" + encodeURIComponent(token) : "";
    const ws = (this.#ws = new (this.#options.WebSocket ?? WebSocket)(base + "/ws" + query));
    ws.onopen = () => {
      if (gen != this.#gen) return;
      this.#opened = true;
      if (frame) this.#send({ type: "auth", token });
      for (const sub of this.#subs.values()) this.#subscribe(sub);
    };
    ws.onmessage = (frame) => {
      if (gen != this.#gen) return;
      try {
        // A frame holds one or more messages, one JSON object per line.
        for (const line of String(frame.data).split("\n")) if (gen == this.#gen) this.#message(JSON.parse(line));
      } catch (error) {
        return this.#lost(gen, 1007, "unreadable frame: " + error);
      }
      // After the messages: `connected` says how long the heartbeat is.
      if (gen == this.#gen) this.#arm(gen, this.#heartbeat * WATCHDOG);
    };
    ws.onclose = (close) => this.#lost(gen, close.code, close.reason);
    // Browsers follow an error with a close (1006); Node 20's WebSocket may not.
    ws.onerror = () => this.#lost(gen, 1006, "connection failed");
  }

  async #stream(gen: number, base: string): Promise<void> {
    const subs = [...this.#subs.values()];
    // A stream names its channels in its URL: the first subscribe opens it.
    if (!subs.length) return clearTimeout(this.#watchdog);
    const { token, ticket } = this.#credentials;
    const ids = subs.map((sub) => this.#positions.get(sub.channel));
    let url = base + "/sse?" + subs.map((sub) => "channel=" + encodeURIComponent(sub.channel)).join("&");
    // The composite id resumes every channel; one without a position gets a
    // placeholder whose reset merely tells it where the stream is now.
    if (ids.some((id) => id)) url += "&last_event_id=" + encodeURIComponent(ids.map((id) => id ?? "0-0").join("."));
    subs.forEach((sub, i) => (sub.fresh = !ids[i]));
    if (ticket) url += "&ticket=" + encodeURIComponent(ticket);
    const abort = (this.#abort = new AbortController());
    try {
      const response = await (this.#options.fetch ?? fetch)(url, {
        headers: token ? { authorization: "Bearer " + token } : {},
        credentials: this.#options.withCredentials ? "include" : "same-origin",
        cache: "no-store",
        signal: abort.signal,
      });
      if (gen != this.#gen) return;
      if (!response.ok || !response.body) {
        const body = await response.json().catch(() => ({}));
        const retryAfter = Number(response.headers.get("retry-after")) * 1000;
        this.#hint = retryAfter ? retryAfter + this.#backoff() : undefined;
        return this.#lost(gen, closeCodeOfStatus(response.status, body.error), body.error ?? "HTTP " + response.status);
      }
      this.#opened = true;
      const parser = new StreamParser();
      const reader = response.body.getReader();
      const decoder = new TextDecoder();
      for (;;) {
        const { done, value } = await reader.read();
        if (gen != this.#gen) return;
        if (done) break;
        this.#arm(gen, this.#heartbeat * WATCHDOG);
        for (const event of parser.feed(decoder.decode(value, { stream: true }))) {
          if (gen == this.#gen) this.#streamEvent(event, parser);
        }
      }
      // The node ends a stream with a `retry:` field: its reconnect hint.
      this.#hint = parser.retry;
      this.#lost(gen, 1000, "stream ended");
    } catch (error) {
      this.#lost(gen, 1006, String(error));
    }
  }

  #streamEvent({ type, data }: StreamEvent, parser: StreamParser): void {
    const message = JSON.parse(data);
    if (type == "fanline.subscribed") {
      parser.retry = undefined; // the stream's first retry: is a suggestion, not a hint
      this.#connected();
      for (const channel in message.channels) this.#message({ ...message.channels[channel], type: "subscribed", channel });
    } else this.#message(message); // resets and events carry their type in their data, as on WebSocket
  }

  #connected(node?: string): void {
    this.#settled = true;
    this.#setState("connected");
    this.emit("connected", { transport: this.transport, url: this.#urls[this.#url % this.#urls.length], node });
    for (const waiter of this.#waiters.splice(0)) waiter.resolve({});
    if (!this.#subs.size) this.#attempt = 0;
    this.#scheduleRefresh();
  }

  #lost(gen: number, code: number, reason: string): void {
    if (gen != this.#gen) return;
    const opened = this.#opened;
    this.#gen++;
    this.#teardown();
    const extra = retryAfterClose(code, !!this.#options.credential);
    if (extra === false) {
      this.#running = false;
      this.#fail(new FanlineError("disconnected", reason));
      this.#setState("failed");
      this.emit("failed", { code, reason });
      return;
    }
    if (this.#options.transport != "sse" && this.#options.transport != "websocket" && !this.#settled) {
      // auto: WebSocket until it has failed to connect twice in a row, then
      // alternate with SSE until one of them connects; that one stays.
      if (this.transport == "sse") this.transport = "websocket";
      else if (!opened && ++this.#wsFailures > 1) this.transport = "sse";
    }
    this.#url++;
    const delay = this.#hint ?? this.#backoff(extra);
    this.#hint = undefined;
    this.#setState("disconnected");
    this.emit("disconnected", { code, reason, delay });
    this.#timer = setTimeout(() => this.#start(), delay);
  }

  #backoff(extra = 0): number {
    return backoff(this.#attempt++ + extra, this.#options.backoffBase ?? 500, this.#options.backoffMax ?? 30000);
  }

  #teardown(): void {
    clearTimeout(this.#timer);
    clearTimeout(this.#watchdog);
    clearTimeout(this.#refresher);
    this.#opened = false;
    this.#abort?.abort();
    const ws = this.#ws;
    this.#ws = this.#abort = undefined;
    if (ws) {
      ws.onclose = ws.onerror = ws.onmessage = ws.onopen = null;
      try {
        ws.close();
      } catch {
        // closing a socket that is still connecting may throw; it is gone either way
      }
    }
    const lost = new FanlineError("disconnected", "the connection closed before the reply: a publish may or may not have happened");
    for (const pending of this.#pending.values()) if (typeof pending == "object") pending.reject(lost);
    this.#pending.clear();
    for (const sub of this.#subs.values()) {
      clearTimeout(sub.timer);
      sub.state = "subscribing";
    }
  }

  #fail(error: FanlineError): void {
    for (const waiter of this.#waiters.splice(0)) waiter.reject(error);
  }

  /** No frame for 2 × heartbeat (or no connection within `timeout`): the connection is dead. */
  #arm(gen: number, ms: number): void {
    clearTimeout(this.#watchdog);
    this.#watchdog = setTimeout(() => this.#lost(gen, 1006, "no heartbeat"), ms);
  }

  /** SSE: the channel list is in the URL, so a new list means a new stream that resumes the others. */
  #reopen(): void {
    if (this.#reopening || !this.#running || this.state == "disconnected") return;
    this.#reopening = true;
    queueMicrotask(() => {
      this.#reopening = false;
      if (!this.#running || this.state == "disconnected") return;
      this.#gen++;
      this.#teardown();
      this.#start();
    });
  }

  #setState(state: State): void {
    if (state != this.state) this.emit("state", (this.state = state));
  }

  // -- messages ----------------------------------------------------------------------

  #send(message: object): void {
    this.#ws!.send(JSON.stringify(message));
  }

  #subscribe(sub: Subscription): void {
    clearTimeout(sub.timer);
    const rid = ++this.#rid;
    this.#pending.set(rid, sub.channel);
    sub.state = "subscribing";
    this.#send({ type: "subscribe", channel: sub.channel, since: this.#positions.get(sub.channel), rid });
  }

  async #request(message: object): Promise<Reply> {
    if (this.transport == "sse") throw new FanlineError("receive_only", "an SSE connection only receives");
    const timeout = this.#options.timeout ?? 10000;
    if (this.state != "connected") {
      if (!this.#running) throw new FanlineError("closed");
      await new Promise((resolve, reject) => {
        this.#waiters.push({ resolve, reject });
        setTimeout(() => reject(new FanlineError("timeout")), timeout);
      });
    }
    return new Promise((resolve, reject) => {
      const rid = ++this.#rid;
      const timer = setTimeout(() => {
        this.#pending.delete(rid);
        reject(new FanlineError("timeout"));
      }, timeout);
      const settle = (action: () => void) => {
        clearTimeout(timer);
        action();
      };
      this.#pending.set(rid, {
        resolve: (reply) => settle(() => resolve(reply)),
        reject: (error) => settle(() => reject(error)),
      });
      this.#send({ ...message, rid });
    });
  }

  #message(message: Reply): void {
    const { type, channel, rid } = message;
    const sub = this.#subs.get(channel);
    const pending = this.#pending.get(rid);
    this.#pending.delete(rid);
    if (type == "connected") {
      this.#heartbeat = message.heartbeat;
      this.#connected(message.node);
    } else if (type == "subscribed") {
      if (sub) this.#subscribed(sub, message);
    } else if (type == "event") {
      if (sub?.state == "subscribed") {
        sub.emit("publication", message as Publication);
        // Stored once processed: a reload during the listener replays this event rather than skip it.
        this.#positions.set(channel, message.id);
      }
    } else if (type == "reset") {
      if (sub) this.#reset(sub, message);
    } else if (type == "error") {
      this.#error(message, pending);
    } else if (type == "drain") {
      this.#hint = message.reconnect_after;
      this.emit("drain", { reconnectAfter: message.reconnect_after });
    } else if (typeof pending == "object") {
      pending.resolve(message); // published, pong, refreshed
    }
  }

  #subscribed(sub: Subscription, { channel, id, recovered, replayed }: Reply): void {
    // SSE placeholder position: the reset that follows carries the real one.
    if (sub.fresh && recovered === false) return;
    sub.fresh = false;
    sub.tries = 0;
    sub.state = "subscribed";
    this.#attempt = 0;
    sub.emit("subscribed", recovered == null ? { channel, id } : { channel, id, recovered, replayed });
    // A failed resume keeps the position at `since` until the reset that
    // follows moves it: a connection lost in between gets the reset again.
    if (recovered !== false) this.#positions.set(channel, id);
  }

  #reset(sub: Subscription, { channel, id, reason }: Reply): void {
    if (sub.fresh) return this.#subscribed(sub, { channel, id });
    sub.emit("reset", { channel, id, reason, previous: this.#positions.get(channel) });
    this.#positions.set(channel, id);
  }

  #error({ code, message, channel }: Reply, pending?: string | Pending): void {
    if (typeof pending == "object") return pending.reject(new FanlineError(code, message));
    const sub = pending && this.#subs.get(pending);
    if (sub) {
      // The first of two subscribes (see rate_limited below) is the one that counts.
      if (code == "already_subscribed") return;
      let retryIn: number | undefined;
      // Both are passing: the broker, or the subscribe hook's backend (hooks.md).
      if (code == "broker_unavailable" || code == "backend_unavailable") {
        const gen = this.#gen;
        retryIn = backoff(sub.tries++, ...SUBSCRIBE_RETRY);
        sub.timer = setTimeout(() => gen == this.#gen && this.#subscribe(sub), retryIn);
      } else {
        sub.state = "failed";
        this.#subs.delete(sub.channel);
      }
      return sub.emit("error", { channel: sub.channel, code, message, retryIn });
    }
    if (code == "rate_limited") {
      // The node dropped a message without a reply; a subscribe still
      // unanswered a second later may be it: send it again.
      const gen = this.#gen;
      setTimeout(() => {
        for (const [rid, pending] of this.#pending) {
          const sub = typeof pending == "string" && gen == this.#gen && this.#subs.get(pending);
          if (sub && sub.state == "subscribing") {
            this.#pending.delete(rid);
            this.#subscribe(sub);
          }
        }
      }, 1000);
    }
    if (code != "not_subscribed") this.emit("error", { code, message: channel ? channel + ": " + message : message });
  }

  #scheduleRefresh(): void {
    clearTimeout(this.#refresher);
    const get = this.#options.refresh ?? this.#options.credential;
    const exp = this.#credentials.exp;
    if (!get || !exp || this.transport == "sse") return;
    const gen = this.#gen;
    // At 80% of the time left, and again (sooner each time) if it fails.
    this.#refresher = setTimeout(
      async () => {
        try {
          const fresh = await this.#credential(get);
          if (gen != this.#gen) return;
          const reply = await this.#request({ type: "refresh", token: fresh.token, ticket: fresh.ticket });
          this.#credentials.exp = reply.exp ?? fresh.exp;
          this.emit("refreshed", { user: reply.user, exp: reply.exp });
        } catch (error: any) {
          this.emit("error", { code: error.code ?? "refresh_failed", message: String(error.message ?? error) });
        }
        if (gen == this.#gen) this.#scheduleRefresh();
      },
      Math.max(1000, (exp * 1000 - Date.now()) * 0.8),
    );
  }
}

/** A JWT's `exp` claim, if the token is a JWT. */
function expiry(token?: string): number | undefined {
  try {
    return JSON.parse(atob(token!.split(".")[1].replace(/-/g, "+").replace(/_/g, "/"))).exp;
  } catch {
    return undefined;
  }
}
