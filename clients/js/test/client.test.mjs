// jobwire.js against real `jobwire serve` processes on a private Redis:
// the instance a watch is attached to is killed, restarted and shut down,
// tokens expire and are refreshed, WebSockets are blocked; the ids the
// client hands out stay consecutive with no duplicate.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";

import { JobwireClient, tokenExpiry } from "../jobwire.js";
import { Redis, Server, feed, sleep, token } from "./harness.mjs";

let redis;
before(async () => {
  redis = await Redis.start();
});
after(() => {
  Server.killAll();
  if (redis) redis.stop();
});

const serve = (port) => Server.start(["serve"], { REDIS_URL: redis.url }, port);

/** Watches `jobId` until its terminal event; resolves with what was seen. */
function collect(client, jobId, { timeout = 60000, onState = () => {} } = {}) {
  const seen = { ids: [], types: [], states: [], resumed: 0, disconnects: 0, transports: new Set(), error: null, refused: null };
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      watch.close();
      reject(new Error(`timed out; seen ${seen.ids.length} events, last ${seen.ids.at(-1)}`));
    }, timeout);
    const watch = client.watch(jobId, {
      onState: (job, { resync }) => {
        seen.states.push({ id: job.last_event_id, resync });
        onState();
      },
      onEvent: (e) => {
        seen.ids.push(e.id);
        seen.types.push(e.type);
        if (e.type === "job_completed") {
          clearTimeout(timer);
          watch.close();
          resolve(seen);
        }
      },
      onResumed: () => seen.resumed++,
      onStatus: (s) => {
        seen.transports.add(s.transport);
        if (s.state === "disconnected") seen.disconnects++;
      },
      onError: (e) => {
        clearTimeout(timer);
        seen.error = e;
        resolve(seen);
      },
      onRefused: (_, refusal) => {
        clearTimeout(timer);
        seen.refused = refusal;
        resolve(seen);
      },
    });
  });
}

function assertConsecutive(seen) {
  assert.equal(seen.error, null, String(seen.error));
  assert.equal(seen.refused, null, JSON.stringify(seen.refused));
  assert.ok(seen.states.length >= 1, "no current_state");
  assert.ok(seen.states.every((s) => !s.resync), "unexpected resync");
  const start = seen.states[0].id;
  seen.ids.forEach((id, i) => assert.equal(id, start + 1 + i, `ids not consecutive at ${i}`));
}

test("tokenExpiry reads a JWT's exp", () => {
  const t = token({ ttl: "1h" });
  const exp = tokenExpiry(t);
  assert.ok(exp > Date.now() + 3500 * 1000 && exp < Date.now() + 3700 * 1000);
  assert.equal(tokenExpiry("nonsense"), null);
});

test("WebSocket: kill, restart and switch instances, short tokens refreshed", async () => {
  const publisherSide = await serve();
  const a = await serve();
  const b = await serve();
  let minted = 0;
  const client = new JobwireClient({
    urls: [a.url, b.url],
    tokenProvider: async () => {
      minted++;
      return token({ ttl: "3s" });
    },
  });
  const job = await feed(() => publisherSide.url, { total: 1200, every: 4 });
  const watching = collect(client, job.id);
  await sleep(1500);
  await a.kill("SIGKILL"); // attached to A: switch to B
  await sleep(1500);
  const a2 = await serve(a.port); // A again, same port
  await sleep(1000);
  await b.kill("SIGTERM"); // 1001: back to A
  const seen = await watching;
  await job.done;
  assertConsecutive(seen);
  assert.ok(seen.resumed >= 2, `resumed ${seen.resumed}`);
  assert.ok(minted >= 3, `minted ${minted}`);
  const last = (await client.job(job.id)).last_event_id;
  assert.equal(seen.ids.at(-1), last);
  await a2.kill();
  await publisherSide.kill();
});

test("SSE: kill and restart the instance; same guarantees", async () => {
  const publisherSide = await serve();
  const a = await serve();
  const client = new JobwireClient({ url: a.url, token: token(), transport: "sse" });
  const job = await feed(() => publisherSide.url, { total: 600, every: 4 });
  const watching = collect(client, job.id);
  await sleep(1000);
  await a.kill("SIGKILL");
  await sleep(500);
  const a2 = await serve(a.port);
  const seen = await watching;
  await job.done;
  assertConsecutive(seen);
  assert.ok(seen.resumed >= 1, `resumed ${seen.resumed}`);
  assert.deepEqual([...seen.transports], ["sse"]);
  await a2.kill();
  await publisherSide.kill();
});

test("auto falls back to SSE when WebSockets are blocked", async () => {
  const a = await serve();
  class Blocked {
    constructor() {
      setTimeout(() => this.onclose && this.onclose({ code: 1006, reason: "" }));
    }
    close() {}
  }
  const client = new JobwireClient({ url: a.url, token: token(), WebSocket: Blocked });
  const job = await feed(() => a.url, { total: 50, every: 5 });
  const seen = await collect(client, job.id);
  assertConsecutive(seen);
  assert.ok(seen.transports.has("sse"), [...seen.transports].join());
  await a.kill();
});

test("a subscribe refused as unavailable is subscribed again, not ended", async () => {
  // A scripted server: the first connection's subscribe is refused with
  // `unavailable` (its store could not be read); the next one answers.
  const job = "01ARZ3NDEKTSV4RRFFQ69G5FAV";
  let connections = 0;
  class Scripted {
    constructor() {
      this.n = ++connections;
      this.readyState = 0;
      setTimeout(() => {
        this.readyState = 1;
        this.onopen && this.onopen();
      });
    }
    reply(msg) {
      setTimeout(() => this.onmessage && this.onmessage({ data: JSON.stringify(msg) }));
    }
    send(text) {
      const frame = JSON.parse(text);
      if (frame.type !== "subscribe") return;
      if (this.n === 1) return this.reply({ type: "refused", job_id: job, code: "unavailable", message: "the job store is unavailable" });
      const data = { id: job, status: "running", last_event_id: 1, epoch: "e1" };
      this.reply({ type: "current_state", job_id: job, id: 1, epoch: "e1", data });
      this.reply({ id: 2, job_id: job, type: "job_completed", timestamp: new Date().toISOString(), data: { status: "completed" } });
    }
    close() {
      this.readyState = 3;
      setTimeout(() => this.onclose && this.onclose({ code: 1000, reason: "" }));
    }
  }
  const client = new JobwireClient({ url: "http://127.0.0.1:9", token: token(), WebSocket: Scripted, transport: "websocket" });
  const seen = await collect(client, job, { timeout: 20000 });
  assert.equal(seen.refused, null, JSON.stringify(seen.refused));
  assert.deepEqual(seen.types, ["job_completed"]);
  assert.ok(connections >= 2, `connections ${connections}`);
});

test("a fixed token that expires stops the watch with onError", async () => {
  const a = await serve();
  const client = new JobwireClient({ url: a.url, token: token({ ttl: "2s" }) });
  const job = await feed(() => a.url, { total: 2000, every: 5 });
  const seen = await collect(client, job.id, { timeout: 20000 });
  job.stop();
  await job.done;
  assert.equal(seen.error && seen.error.code, "unauthorized", String(seen.error));
  await a.kill();
});

test("REST calls map errors to JobwireError", async () => {
  const a = await serve();
  const client = new JobwireClient({ url: a.url, token: token() });
  const created = await client.createJob("demo", { steps: 3 });
  assert.equal(created.status, "queued");
  assert.equal((await client.job(created.id)).id, created.id);
  const page = await client.listJobs({ limit: 5 });
  assert.ok(page.jobs.some((j) => j.id === created.id));
  // Filters (the server applies them; other tests' jobs share the store).
  const demo = await client.listJobs({ kind: "demo", queue: "demo", status: "queued" });
  assert.ok(demo.jobs.some((j) => j.id === created.id));
  assert.ok(demo.jobs.every((j) => j.kind === "demo" && j.status === "queued"));
  assert.deepEqual((await client.listJobs({ kind: "no.such.kind" })).jobs, []);
  const later = await client.listJobs({ finishedAfter: new Date(Date.now() + 3600e3) });
  assert.deepEqual(later.jobs, []);
  await assert.rejects(client.listJobs({ finishedAfter: "soon" }), (e) => e.status === 422 && /finished_after/.test(e.message));
  const cancelled = await client.cancel(created.id);
  assert.equal(cancelled.outcome, "cancelled");
  await assert.rejects(client.job("01ARZ3NDEKTSV4RRFFQ69G5FAV"), (e) => e.status === 404 && e.code === "not_found");
  await assert.rejects(client.createJob("nope"), (e) => e.status === 422);
  const bad = new JobwireClient({ url: a.url, token: "nonsense" });
  await assert.rejects(bad.listJobs(), (e) => e.status === 401);
  await a.kill();
});

for (const transport of ["websocket", "sse"]) {
  test(`${transport}: a job's own error events are shown and do not end the watch`, async () => {
    const a = await serve();
    const client = new JobwireClient({ url: a.url, token: token(), transport });
    // The events start once the watch holds the job's state: every error must be seen live.
    let subscribed;
    const startWhen = new Promise((resolve) => (subscribed = resolve));
    const job = await feed(() => a.url, { total: 30, every: 2, errorEvery: 3, startWhen });
    const seen = await collect(client, job.id, { onState: () => subscribed() });
    await job.done;
    assertConsecutive(seen);
    assert.equal(seen.types.filter((t) => t === "error").length, 10, seen.types.join());
    assert.equal(seen.types.at(-1), "job_completed");
    await a.kill();
  });
}

test("an unknown job is refused with not_found, over WebSocket and SSE", async () => {
  const a = await serve();
  for (const transport of ["websocket", "sse"]) {
    const client = new JobwireClient({ url: a.url, token: token(), transport });
    const seen = await collect(client, "01ARZ3NDEKTSV4RRFFQ69G5FAV", { timeout: 10000 });
    assert.equal(seen.refused && seen.refused.code, "not_found", `${transport}: ${JSON.stringify(seen)}`);
  }
  await a.kill();
});
