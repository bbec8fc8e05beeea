// jobwire.js — the JavaScript client of jobwire: REST calls, and live
// watching of jobs with exact resume across reconnects, server restarts and
// instance switches. One dependency-free ES module, for browsers and
// Node >= 20 (run Node 20 with --experimental-websocket, or pass a
// WebSocket implementation). Served by jobwire at /jobwire.js.
//
// The reconnect rules are the same as the Rust client's (docs/clients.md):
// - per job a cursor {epoch, id} is advanced *before* onEvent is called, so
//   whatever the callback does, a reconnect neither replays nor skips;
// - after a disconnect, each job is resubscribed with since/epoch: the server
//   answers "resumed" (nothing missed) or a fresh state with resync: true;
// - an event at or below the cursor is dropped, one past cursor + 1 (a hole)
//   forces a reconnect and resume: ids handed out are consecutive;
// - reconnects wait a random time up to a delay doubling from 200 ms to 10 s,
//   trying each base URL in turn, starting with the last that worked;
// - with a tokenProvider, a fresh token is sent ("refresh") before the
//   current one expires and fetched again when the server refuses one (4401);
//   with a fixed token a refusal stops the watch with onError;
// - WebSocket first; when it cannot be opened (blocked by a proxy) the watch
//   falls back to SSE, one stream per job, with the same rules.

const BACKOFF_FIRST = 200;
const BACKOFF_MAX = 10000;
const SILENCE_MS = 75000;

/** An error answer from the server, or a failure to reach it. */
export class JobwireError extends Error {
  constructor(message, { status = 0, code = "unreachable" } = {}) {
    super(message);
    this.name = "JobwireError";
    this.status = status;
    this.code = code;
  }
}

/** The `exp` of a JWT in milliseconds since the epoch, or null. */
export function tokenExpiry(token) {
  try {
    const part = token.split(".")[1];
    const b64 = part.replace(/-/g, "+").replace(/_/g, "/");
    const json = JSON.parse(atob(b64 + "===".slice((b64.length + 3) % 4)));
    return typeof json.exp === "number" ? json.exp * 1000 : null;
  } catch {
    return null;
  }
}

/** The `{code, message}` of an error answer (jobwire's JSON shape, or the HTTP status). */
async function errorOf(response) {
  try {
    const { code, message } = (await response.json()).error;
    return { code, message };
  } catch {
    return { code: "error", message: response.statusText };
  }
}

const TERMINAL = new Set(["completed", "failed", "cancelled"]);
const TERMINAL_EVENTS = new Set(["job_completed", "job_failed", "job_cancelled"]);

export class JobwireClient {
  /**
   * @param {object} options
   * @param {string} [options.url] base URL, e.g. "http://127.0.0.1:8080"
   *   (default: the page's origin in a browser)
   * @param {string[]} [options.urls] several base URLs, tried in turn
   * @param {string} [options.token] a fixed JWT
   * @param {() => Promise<string>} [options.tokenProvider] fetches fresh JWTs
   * @param {"auto"|"websocket"|"sse"} [options.transport] default "auto"
   * @param {typeof WebSocket} [options.WebSocket] an implementation to use
   * @param {typeof fetch} [options.fetch] an implementation to use
   */
  constructor(options = {}) {
    const origin = globalThis.location ? globalThis.location.origin : undefined;
    this.urls = (options.urls || [options.url || origin]).filter(Boolean).map((u) => u.replace(/\/+$/, ""));
    if (this.urls.length === 0) throw new JobwireError("no server URL given", { code: "config" });
    if (!options.token && !options.tokenProvider) throw new JobwireError("no token given", { code: "config" });
    this.current = 0;
    this.token = options.token || null;
    this.tokenProvider = options.tokenProvider || null;
    this.transport = options.transport || "auto";
    this.WebSocket = options.WebSocket || globalThis.WebSocket;
    this.fetch = options.fetch || globalThis.fetch.bind(globalThis);
  }

  /** The token to use now (fetched from the provider when missing or expiring). */
  async currentToken() {
    if (this.tokenProvider) {
      const exp = this.token && tokenExpiry(this.token);
      if (!this.token || (exp !== null && exp - Date.now() < 5000)) {
        this.token = await this.tokenProvider();
      }
    }
    return this.token;
  }

  async freshToken() {
    if (this.tokenProvider) this.token = await this.tokenProvider();
    return this.token;
  }

  /** The base URLs, starting with the one that last worked. */
  urlsInOrder() {
    const n = this.urls.length;
    return Array.from({ length: n }, (_, i) => {
      const at = (this.current + i) % n;
      return [at, this.urls[at]];
    });
  }

  async request(method, path, body) {
    let refreshed = false;
    for (;;) {
      const token = await this.currentToken();
      let lastError = null;
      let response = null;
      for (const [at, base] of this.urlsInOrder()) {
        try {
          response = await this.fetch(base + path, {
            method,
            headers: {
              Authorization: "Bearer " + token,
              ...(body === undefined ? {} : { "Content-Type": "application/json" }),
            },
            body: body === undefined ? undefined : JSON.stringify(body),
          });
          this.current = at;
          break;
        } catch (e) {
          lastError = new JobwireError(`cannot reach jobwire at ${base}: ${e.message}`);
        }
      }
      if (!response) throw lastError;
      if (response.ok) return response.status === 204 ? null : response.json();
      const { code, message } = await errorOf(response);
      if (response.status === 401 && this.tokenProvider && !refreshed) {
        refreshed = true;
        await this.freshToken();
        continue;
      }
      throw new JobwireError(message, { status: response.status, code });
    }
  }

  createJob(kind, params = {}) {
    return this.request("POST", "/api/jobs", { kind, params });
  }

  createExternalJob(kind, params = {}) {
    return this.request("POST", "/api/jobs", { kind, params, external: true });
  }

  job(id) {
    return this.request("GET", `/api/jobs/${encodeURIComponent(id)}`);
  }

  listJobs({ status, kind, queue, finishedAfter, limit, cursor } = {}) {
    const q = new URLSearchParams();
    if (status) q.set("status", status);
    if (kind) q.set("kind", kind);
    if (queue) q.set("queue", queue);
    if (finishedAfter) q.set("finished_after", finishedAfter instanceof Date ? finishedAfter.toISOString() : finishedAfter);
    if (limit) q.set("limit", String(limit));
    if (cursor) q.set("cursor", cursor);
    const qs = q.toString();
    return this.request("GET", "/api/jobs" + (qs ? "?" + qs : ""));
  }

  cancel(id) {
    return this.request("POST", `/api/jobs/${encodeURIComponent(id)}/cancel`);
  }

  deleteJob(id) {
    return this.request("DELETE", `/api/jobs/${encodeURIComponent(id)}`);
  }

  history(id, { since = 0, epoch, limit = 100 } = {}) {
    const q = new URLSearchParams({ since: String(since), limit: String(limit) });
    if (epoch) q.set("epoch", epoch);
    return this.request("GET", `/api/jobs/${encodeURIComponent(id)}/events?${q}`);
  }

  /** Publishes events (objects {type, data, attempt?, n?}) to an external job. */
  publish(id, events) {
    return this.request("POST", `/api/jobs/${encodeURIComponent(id)}/events`, events);
  }

  // ---- operations (scope `admin`; docs/operations.md) ----

  /** The queues at a glance: waiting, running, oldest wait, workers, paused. */
  queues() {
    return this.request("GET", "/api/queues").then((r) => r.queues);
  }

  /** Jobs started and finished per minute over the last hour (minutes that had any). */
  throughput() {
    return this.request("GET", "/api/throughput").then((r) => r.minutes);
  }

  /** Pauses (`paused` true) or resumes a queue. */
  setQueuePaused(queue, paused) {
    return this.request("POST", `/api/queues/${encodeURIComponent(queue)}/${paused ? "pause" : "resume"}`);
  }

  /** The worker registry, live and gone. */
  workers() {
    return this.request("GET", "/api/workers").then((r) => r.workers);
  }

  /** A new attempt for a failed job. */
  retry(id) {
    return this.request("POST", `/api/jobs/${encodeURIComponent(id)}/retry`);
  }

  /** The cron schedules. */
  schedules() {
    return this.request("GET", "/api/schedules").then((r) => r.schedules);
  }

  /** Creates a schedule, or replaces the one of that name. */
  putSchedule(schedule) {
    return this.request("POST", "/api/schedules", schedule);
  }

  deleteSchedule(name) {
    return this.request("DELETE", `/api/schedules/${encodeURIComponent(name)}`);
  }

  /** Pauses (`paused` true) or resumes a schedule. */
  setSchedulePaused(name, paused) {
    return this.request("POST", `/api/schedules/${encodeURIComponent(name)}/${paused ? "pause" : "resume"}`);
  }

  /**
   * Watches jobs live. Callbacks: onState(job, {resync}), onEvent(event),
   * onResumed(jobId, id), onStatus({state, url?, reason?, retryIn?, transport}),
   * onRefused(jobId, {code, message}) (the server ended the job's subscription:
   * not found, gone, not yours), onError(error) (the watch stopped). A job's
   * own "error" events come to onEvent like every other event.
   * @param {string|string[]} jobIds
   * @returns {Watch}
   */
  watch(jobIds, handlers = {}) {
    const ids = Array.isArray(jobIds) ? jobIds : [jobIds];
    return new Watch(this, ids, handlers);
  }
}

/** A live watch of jobs; see JobwireClient.watch. */
export class Watch {
  constructor(client, ids, handlers) {
    this.client = client;
    this.handlers = handlers;
    /** @type {Map<string, {cursor: {epoch: string, id: number}|null, done: boolean}>} */
    this.jobs = new Map();
    for (const id of ids) this.jobs.set(id, { cursor: null, done: false });
    this.closed = false;
    this.delay = BACKOFF_FIRST;
    this.refusedOnce = false;
    this.wsFailures = 0;
    this.useSse = client.transport === "sse" || (client.transport === "auto" && !client.WebSocket);
    this.conn = null;
    this.timers = new Set();
    this.connect();
  }

  /** Where a job's stream stands: {epoch, id}, or null before its state. */
  cursor(jobId) {
    const w = this.jobs.get(jobId);
    return w && w.cursor ? { ...w.cursor } : null;
  }

  /** Starts watching another job (optionally from a saved cursor). */
  add(jobId, cursor = null) {
    if (this.jobs.has(jobId)) return;
    this.jobs.set(jobId, { cursor, done: false });
    if (this.conn) this.conn.subscribe(jobId, cursor);
  }

  /** Stops watching a job. */
  remove(jobId) {
    if (!this.jobs.delete(jobId)) return;
    if (this.conn) this.conn.unsubscribe(jobId);
  }

  close() {
    this.closed = true;
    for (const t of this.timers) clearTimeout(t);
    this.timers.clear();
    if (this.conn) this.conn.close();
    this.conn = null;
  }

  emit(name, ...args) {
    const f = this.handlers[name];
    if (!f) return;
    try {
      f(...args);
    } catch (e) {
      // A throwing callback must not break the stream; the cursor has
      // already moved past the event.
      setTimeout(() => {
        throw e;
      });
    }
  }

  status(state, extra = {}) {
    this.emit("onStatus", { state, transport: this.useSse ? "sse" : "websocket", ...extra });
  }

  later(ms, f) {
    const t = setTimeout(() => {
      this.timers.delete(t);
      f();
    }, ms);
    this.timers.add(t);
    return t;
  }

  async connect() {
    if (this.closed) return;
    let token;
    try {
      token = await this.client.currentToken();
    } catch (e) {
      return this.fail(new JobwireError("the token provider failed: " + e.message, { code: "token" }));
    }
    const urls = this.client.urlsInOrder();
    this.tryUrl(urls, 0, token);
  }

  tryUrl(urls, i, token) {
    if (this.closed) return;
    if (i >= urls.length) return this.retry("no server reachable");
    const [at, base] = urls[i];
    this.status("connecting", { url: base });
    const Conn = this.useSse ? SseConnection : WsConnection;
    this.conn = new Conn(this, base, token, {
      opened: () => {
        this.client.current = at;
        this.wsFailures = 0;
        this.openedAt = Date.now();
        this.status("connected", { url: base });
        for (const [id, w] of this.jobs) if (!w.done) this.conn.subscribe(id, w.cursor);
        this.scheduleRefresh(token);
      },
      failedToOpen: async () => {
        this.conn = null;
        if (!this.useSse && this.client.transport === "auto" && (await this.serverUp(base))) {
          // The server answers HTTP but the WebSocket did not open: maybe a
          // proxy blocks WebSockets. After two such failures, use SSE,
          // which is plain HTTP.
          if (++this.wsFailures >= 2) {
            this.useSse = true;
            this.wsFailures = 0;
            return this.tryUrl(urls, i, token);
          }
        }
        this.tryUrl(urls, i + 1, token);
      },
      lost: (reason, { unauthorized = false, slowDown = false } = {}) => {
        this.conn = null;
        if (unauthorized) return this.refused(reason);
        if (this.openedAt && Date.now() - this.openedAt > 5000) this.delay = BACKOFF_FIRST;
        this.retry(reason, slowDown);
      },
    });
  }

  async serverUp(base) {
    try {
      return (await this.client.fetch(base + "/healthz")).ok;
    } catch {
      return false;
    }
  }

  async refused(reason) {
    if (this.client.tokenProvider && !this.refusedOnce) {
      this.refusedOnce = true;
      try {
        await this.client.freshToken();
      } catch (e) {
        return this.fail(new JobwireError("the token provider failed: " + e.message, { code: "token" }));
      }
      return this.retry("the token was refused; trying a fresh one");
    }
    this.fail(new JobwireError("the token was refused: " + reason, { status: 401, code: "unauthorized" }));
  }

  fail(error) {
    this.close();
    this.status("stopped", { reason: error.message });
    this.emit("onError", error);
  }

  retry(reason, slowDown = false) {
    if (this.closed) return;
    if ([...this.jobs.values()].every((w) => w.done)) return;
    const ceiling = slowDown ? Math.max(this.delay, 5000) : this.delay;
    const wait = Math.floor(Math.random() * ceiling);
    this.delay = Math.min(this.delay * 2, BACKOFF_MAX);
    this.status("disconnected", { reason, retryIn: wait });
    this.later(wait, () => this.connect());
  }

  scheduleRefresh(token) {
    if (!this.client.tokenProvider) return;
    const exp = tokenExpiry(token);
    if (exp === null) return;
    const left = Math.max(0, exp - Date.now());
    const early = Math.min(60000, Math.max(2000, left / 10));
    const conn = this.conn;
    this.later(Math.max(0, left - early), async () => {
      if (this.conn !== conn || this.closed) return;
      try {
        const fresh = await this.client.freshToken();
        if (this.conn === conn && conn.refresh(fresh)) this.scheduleRefresh(fresh);
      } catch {
        /* the connection will end at expiry and reconnect with a new token */
      }
    });
  }

  /** Handles one message from the server; returns false to drop the connection. */
  onMessage(msg) {
    const id = msg.job_id;
    const w = id === undefined ? undefined : this.jobs.get(id);
    switch (msg.type) {
      case "current_state": {
        if (!w) return true;
        w.cursor = { epoch: msg.epoch, id: msg.id };
        w.done = TERMINAL.has(msg.data.status);
        this.emit("onState", msg.data, { resync: msg.resync === true });
        if (msg.resync) this.emit("onResync", msg.data);
        return true;
      }
      case "resumed": {
        if (!w) return true;
        if (!w.cursor || w.cursor.id !== msg.id) return false;
        this.emit("onResumed", id, msg.id);
        return true;
      }
      // The server ended a job's subscription: refused (not found, not
      // yours, …) or gone (deleted, expired, its data lost). A job's own
      // "error" events are events, below: control messages never share a
      // type with an event type.
      case "refused":
      case "gone": {
        if (!w) return true; // a refused frame of no job's
        // The server could not read the job just now (its store was
        // unavailable): not an answer about the job. Drop the connection;
        // the reconnect subscribes again from the cursor.
        if (msg.type === "refused" && msg.code === "unavailable") return false;
        w.done = true;
        this.emit("onRefused", id, { code: msg.code || "not_found", message: msg.message });
        return true;
      }
      case "pong":
      case "refreshed":
      case "unsubscribed":
        return true;
      default: {
        if (!w || typeof msg.id !== "number") return true;
        if (!w.cursor) return false; // an event before its state
        if (msg.id <= w.cursor.id) return true; // a duplicate
        if (msg.id !== w.cursor.id + 1) return false; // a hole: resume
        w.cursor.id = msg.id;
        if (TERMINAL_EVENTS.has(msg.type)) w.done = true;
        this.emit("onEvent", msg);
        return true;
      }
    }
  }
}

/** One multiplexed WebSocket (/ws/jobs). */
class WsConnection {
  constructor(watch, base, token, on) {
    this.watch = watch;
    this.on = on;
    this.open = false;
    const url = base.replace(/^http/, "ws") + "/ws/jobs";
    try {
      this.ws = new watch.client.WebSocket(url, ["access_token." + token]);
    } catch (e) {
      queueMicrotask(() => on.failedToOpen(e.message));
      return;
    }
    this.silence = null;
    this.ws.onopen = () => {
      this.open = true;
      this.touch();
      on.opened();
    };
    this.ws.onmessage = (m) => {
      this.touch();
      let msg;
      try {
        msg = JSON.parse(m.data);
      } catch {
        return this.drop("the server sent a frame that is not JSON");
      }
      if (!watch.onMessage(msg)) this.drop("out of order; resuming");
    };
    this.ws.onclose = (e) => {
      clearTimeout(this.silence);
      if (this.ended) return;
      this.ended = true;
      if (!this.open) return on.failedToOpen(`closed ${e.code}`);
      const reason = `closed by the server: ${e.code} ${e.reason || ""}`.trim();
      on.lost(reason, { unauthorized: e.code === 4401, slowDown: e.code === 1008 });
    };
    // Some implementations (Node 20's) report a failed connection with an
    // error and no close event.
    this.ws.onerror = () => {
      if (this.ended) return;
      if (!this.open) {
        this.ended = true;
        clearTimeout(this.silence);
        return on.failedToOpen("cannot connect");
      }
      setTimeout(() => this.drop("connection error"), 1000);
    };
  }

  touch() {
    clearTimeout(this.silence);
    this.silence = setTimeout(() => this.drop("the server went silent"), SILENCE_MS);
  }

  send(frame) {
    if (this.open && this.ws.readyState === 1) {
      this.ws.send(JSON.stringify(frame));
      return true;
    }
    return false;
  }

  subscribe(jobId, cursor) {
    this.send(cursor ? { type: "subscribe", job_id: jobId, since: cursor.id, epoch: cursor.epoch } : { type: "subscribe", job_id: jobId });
  }

  unsubscribe(jobId) {
    this.send({ type: "unsubscribe", job_id: jobId });
  }

  refresh(token) {
    return this.send({ type: "refresh", token });
  }

  drop(reason) {
    if (this.ended) return;
    this.ended = true;
    clearTimeout(this.silence);
    try {
      this.ws.close();
    } catch {
      /* already closing */
    }
    this.on.lost(reason);
  }

  close() {
    this.ended = true;
    clearTimeout(this.silence);
    try {
      this.ws.close();
    } catch {
      /* already closed */
    }
  }
}

/**
 * SSE: one stream per job (/api/jobs/{id}/stream), read with fetch so that
 * it works in Node too and carries the token in a header. The connection
 * counts as open once every stream has answered.
 */
class SseConnection {
  constructor(watch, base, token, on) {
    this.watch = watch;
    this.base = base;
    this.token = token;
    this.on = on;
    this.streams = new Map();
    this.ended = false;
    // Probe the server first: failing to reach it is "failed to open".
    watch.client
      .fetch(base + "/healthz")
      .then((r) => {
        if (this.ended) return;
        if (!r.ok) return on.failedToOpen(`healthz ${r.status}`);
        this.opened = true;
        on.opened();
      })
      .catch((e) => {
        if (!this.ended) on.failedToOpen(e.message);
      });
  }

  subscribe(jobId, cursor) {
    if (this.ended || this.streams.has(jobId)) return;
    const abort = new AbortController();
    this.streams.set(jobId, abort);
    const q = cursor ? `?since=${cursor.id}&epoch=${encodeURIComponent(cursor.epoch)}` : "";
    const url = `${this.base}/api/jobs/${encodeURIComponent(jobId)}/stream${q}`;
    this.read(jobId, url, abort).catch((e) => {
      if (!abort.signal.aborted) this.drop(e.message);
    });
  }

  async read(jobId, url, abort) {
    const response = await this.watch.client.fetch(url, {
      headers: { Authorization: "Bearer " + this.token, Accept: "text/event-stream" },
      signal: abort.signal,
    });
    if (response.status === 401) return this.drop("401", { unauthorized: true });
    if (!response.ok) {
      const { code, message } = await errorOf(response);
      // Unavailable (503): try again later, as for a refused subscribe.
      if (response.status === 503 || code === "unavailable") return this.drop(`${response.status} ${message || code}`);
      this.streams.delete(jobId);
      this.watch.onMessage({ type: "refused", job_id: jobId, code, message });
      return;
    }
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    let data = [];
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      let nl;
      while ((nl = buffer.indexOf("\n")) >= 0) {
        const line = buffer.slice(0, nl).replace(/\r$/, "");
        buffer = buffer.slice(nl + 1);
        if (line === "") {
          if (data.length) {
            let msg = null;
            try {
              msg = JSON.parse(data.join("\n"));
            } catch {
              return this.drop("the server sent data that is not JSON");
            }
            data = [];
            if (!this.watch.onMessage(msg)) return this.drop("out of order; resuming");
            if (this.watch.jobs.get(jobId)?.done) {
              abort.abort();
              this.streams.delete(jobId);
              return;
            }
          }
        } else if (line.startsWith("data:")) {
          data.push(line.slice(5).replace(/^ /, ""));
        }
      }
    }
    if (!abort.signal.aborted) this.drop("the stream ended");
  }

  unsubscribe(jobId) {
    const abort = this.streams.get(jobId);
    if (abort) abort.abort();
    this.streams.delete(jobId);
  }

  refresh(token) {
    // A stream's token is checked when it opens; new streams use this one.
    this.token = token;
    return true;
  }

  drop(reason, flags = {}) {
    if (this.ended) return;
    this.close();
    this.on.lost(reason, flags);
  }

  close() {
    this.ended = true;
    for (const abort of this.streams.values()) abort.abort();
    this.streams.clear();
  }
}
