// Test harness for jobwire.js: starts a private redis-server and `jobwire
// serve` processes on free ports, mints tokens with `jobwire token`, and
// publishes events through the HTTP API.
import { spawn, execFileSync } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";

export const SECRET = "js-client-test-secret-0123456789";
export const BIN = process.env.JOBWIRE_BIN || resolve(import.meta.dirname, "../../../target/debug/jobwire");

export function freePort() {
  return new Promise((res, rej) => {
    const srv = createServer();
    srv.listen(0, "127.0.0.1", () => {
      const { port } = srv.address();
      srv.close(() => res(port));
    });
    srv.on("error", rej);
  });
}

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function waitFor(check, what, ms = 10000) {
  const deadline = Date.now() + ms;
  while (Date.now() < deadline) {
    if (await check().catch(() => false)) return;
    await sleep(50);
  }
  throw new Error("timed out waiting for " + what);
}

export class Redis {
  static async start() {
    const r = new Redis();
    r.port = await freePort();
    r.dir = mkdtempSync(join(tmpdir(), "jobwire-js-redis-"));
    r.proc = spawn("redis-server", ["--port", String(r.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", r.dir], { stdio: "ignore" });
    await waitFor(async () => {
      execFileSync("redis-cli", ["-p", String(r.port), "ping"], { stdio: "ignore" });
      return true;
    }, "redis-server");
    return r;
  }
  get url() {
    return `redis://127.0.0.1:${this.port}`;
  }
  stop() {
    this.proc.kill("SIGKILL");
    rmSync(this.dir, { recursive: true, force: true });
  }
}

/** Every `jobwire` process still running, for `Server.killAll`. */
const running = new Set();

export class Server {
  /** Starts `jobwire ARGS…`; waits for /readyz unless `ready` is false (a worker serves no HTTP). */
  static async start(args, env = {}, port, { ready = true } = {}) {
    const s = new Server();
    s.port = port || (await freePort());
    s.proc = spawn(BIN, args, {
      env: { PATH: process.env.PATH, JOBWIRE_BIND: `127.0.0.1:${s.port}`, JOBWIRE_JWT_SECRET: SECRET, JOBWIRE_PARTITIONS: "4", RUST_LOG: "warn", ...env },
      stdio: "ignore",
    });
    running.add(s);
    s.exited = new Promise((r) =>
      s.proc.on("exit", (code) => {
        running.delete(s);
        r(code);
      }),
    );
    if (ready) await waitFor(async () => (await fetch(s.url + "/readyz")).ok, "jobwire " + args.join(" "));
    return s;
  }
  get url() {
    return `http://127.0.0.1:${this.port}`;
  }
  kill(signal = "SIGKILL") {
    this.proc.kill(signal);
    return this.exited;
  }
  /** Kills what a failed test left running (call it from an `after` hook). */
  static killAll() {
    for (const s of running) s.proc.kill("SIGKILL");
  }
}

export function token({ sub = "alice", scopes = ["jobs:read", "jobs:write"], ttl = "10m" } = {}) {
  const args = ["token", "--sub", sub, "--ttl", ttl];
  for (const s of scopes) args.push("--scope", s);
  return execFileSync(BIN, args, { env: { JOBWIRE_JWT_SECRET: SECRET } }).toString().trim();
}

/**
 * Creates an external job and publishes `total` events to it, one every
 * `every` ms, then completes it: progress events, and an `error` event every
 * `errorEvery`-th one when given.
 */
// `startWhen` holds the job's events back until it settles (a watch that must
// see every event, not a snapshot of the first ones, is subscribed by then).
export async function feed(url, { total, every, errorEvery = 0, startWhen = Promise.resolve() }) {
  const worker = token({ scopes: ["jobs:read", "jobs:write", "worker"] });
  let stopped = false;
  const post = async (path, body) => {
    while (!stopped) {
      try {
        const r = await fetch(url() + path, { method: "POST", headers: { Authorization: "Bearer " + worker, "Content-Type": "application/json" }, body: JSON.stringify(body) });
        if (r.ok) return r.json();
        if (r.status < 500) throw new Error(`${path}: ${r.status} ${await r.text()}`);
      } catch (e) {
        if (e.message.startsWith(path)) throw e;
      }
      await sleep(20); // the instance is down: try again (the fence dedupes)
    }
  };
  const job = await post("/api/jobs", { kind: "feed", params: {}, external: true });
  let n = 0;
  const event = (type, data) => ({ type, data, attempt: 1, n: ++n });
  await post(`/api/jobs/${job.id}/events`, [event("job_started", {})]);
  const done = (async () => {
    await startWhen;
    for (let i = 1; i <= total && !stopped; i++) {
      // A job's own per-file "error" events, which it survives.
      const next = errorEvery && i % errorEvery === 0 ? event("error", { file: `f${i}`, message: "unreadable" }) : event("progress", { current: i, total });
      await post(`/api/jobs/${job.id}/events`, [next]);
      await sleep(every);
    }
    if (!stopped) await post(`/api/jobs/${job.id}/events`, [event("job_completed", {})]);
  })();
  // stop() ends the feed early (its server may be gone for good).
  return { id: job.id, done, stop: () => (stopped = true) };
}
