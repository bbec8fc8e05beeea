// The web UI in headless Chromium (playwright-core, Debian's chromium),
// against real jobwire processes: a demo job runs to 100% live; the page
// rides out a server restart mid-job (Redis mode) with every event id
// consecutive; a scan with unreadable files shows its error events and its
// result; the log follows new events unless scrolled up; a job page opens
// from a link that carries the token; nothing overflows a phone's width; a
// bad token gets a clear message; an admin drives the operations pages
// (pause a queue, see the chart and the workers, filter and retry a failed
// job, pause, resume and delete a schedule) and a non-admin is refused them. Screenshots go to
// target/test-output/web/ (not committed).
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { mkdirSync, mkdtempSync, rmSync, symlinkSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";

import { chromium } from "playwright-core";

import { Redis, Server, sleep, token } from "../../clients/js/test/harness.mjs";

const SHOTS = resolve(import.meta.dirname, "../../target/test-output/web");
const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";

let browser;
before(async () => {
  mkdirSync(SHOTS, { recursive: true });
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: ["--no-sandbox", "--headless", "--disable-gpu", "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run"],
  });
});
after(async () => {
  Server.killAll();
  if (browser) await browser.close();
});

async function page(url, viewport = { width: 1200, height: 900 }) {
  const p = await browser.newPage({ viewport });
  const errors = [];
  p.on("pageerror", (e) => errors.push(e.message));
  // Whatever the page asks for must exist (the favicon too).
  const missing = [];
  p.on("response", (r) => r.status() === 404 && missing.push(r.url()));
  await p.goto(url);
  return { p, errors, missing };
}

async function startDemo(p, { steps, delay }) {
  await p.selectOption("[data-testid=kind]", "demo");
  await p.fill("input[name=steps]", String(steps));
  await p.fill("input[name=delay_ms]", String(delay));
  await p.click("[data-testid=start]");
  await p.waitForURL(/#\/jobs\//);
  return p.url().split("#/jobs/")[1];
}

async function loggedIds(p) {
  return p.$$eval("[data-event-id]", (rows) => rows.map((r) => Number(r.dataset.eventId)));
}

function assertConsecutive(ids) {
  assert.ok(ids.length > 0, "no events in the log");
  ids.forEach((id, i) => i > 0 && assert.equal(id, ids[i - 1] + 1, `ids not consecutive at ${i}: ${ids.slice(Math.max(0, i - 3), i + 2)}`));
}

test("a demo job started from the page runs to 100% live", async () => {
  const server = await Server.start(["dev"]);
  const { p, errors, missing } = await page(`${server.url}/#token=${token()}`);
  await p.waitForSelector("[data-testid=new-job]");
  assert.ok(!p.url().includes("token="), "the token stayed in the URL");
  const id = await startDemo(p, { steps: 20, delay: 50 });
  await p.waitForFunction(() => document.querySelector("[data-testid=job-status]").textContent === "completed", null, { timeout: 30000 });
  assert.equal(await p.getAttribute("[data-testid=job-progress]", "aria-valuenow"), "100");
  const ids = await loggedIds(p);
  assertConsecutive(ids);
  const job = await (await fetch(`${server.url}/api/jobs/${id}`, { headers: { Authorization: "Bearer " + token() } })).json();
  assert.equal(ids.at(-1), job.last_event_id);
  await p.screenshot({ path: `${SHOTS}/job-completed.png`, fullPage: true });

  // The list shows it, finished.
  await p.click("text=← All jobs");
  await p.waitForSelector(`tr[data-job-id="${id}"] [data-testid=row-status].completed`);
  await p.screenshot({ path: `${SHOTS}/job-list.png`, fullPage: true });
  assert.deepEqual(errors, []);
  assert.deepEqual(missing, []);
  // The icon the page names, and the one browsers ask for unprompted.
  for (const icon of [await p.getAttribute("link[rel=icon]", "href"), "/favicon.ico"]) {
    const r = await fetch(server.url + icon);
    assert.equal(r.status, 200, icon);
    assert.equal(r.headers.get("content-type"), "image/svg+xml");
  }
  await p.close();
  await server.kill();
});

test("the page reconnects after a server restart mid-job and misses nothing", async () => {
  const redis = await Redis.start();
  const env = { REDIS_URL: redis.url };
  let server = await Server.start(["serve"], env);
  const worker = await Server.start(["worker"], { ...env, JOBWIRE_WORKER_CONCURRENCY: "2" }, undefined, { ready: false });
  const { p, errors } = await page(`${server.url}/#token=${token()}`);
  await p.waitForSelector("[data-testid=new-job]");
  const id = await startDemo(p, { steps: 60, delay: 80 });
  await p.waitForFunction(() => Number(document.querySelector("[data-testid=job-progress]").getAttribute("aria-valuenow")) >= 15, null, { timeout: 30000 });
  const port = server.port;
  await server.kill("SIGKILL");
  await p.waitForSelector("[data-testid=connection][data-state=reconnecting]", { timeout: 10000 });
  await p.screenshot({ path: `${SHOTS}/reconnecting.png`, fullPage: true });
  await sleep(1000);
  server = await Server.start(["serve"], env, port);
  await p.waitForFunction(() => document.querySelector("[data-testid=job-status]").textContent === "completed", null, { timeout: 60000 });
  const ids = await loggedIds(p);
  assertConsecutive(ids);
  const job = await (await fetch(`${server.url}/api/jobs/${id}`, { headers: { Authorization: "Bearer " + token() } })).json();
  assert.equal(ids.at(-1), job.last_event_id);
  assert.equal(job.attempt, 1, "the job was retried");
  await p.screenshot({ path: `${SHOTS}/after-restart.png`, fullPage: true });
  assert.deepEqual(errors, []);
  await p.close();
  await server.kill();
  await worker.kill();
  redis.stop();
});

test("a bad token gets a clear message", async () => {
  const server = await Server.start(["dev"]);
  const { p } = await page(`${server.url}/#token=not-a-token`);
  await p.waitForSelector("[data-testid=signin-message].error");
  const message = await p.textContent("[data-testid=signin-message]");
  assert.match(message, /token was refused/);
  await p.screenshot({ path: `${SHOTS}/bad-token.png`, fullPage: true });
  await p.close();
  await server.kill();
});

/** A folder to scan: readable files and dangling symlinks (per-file errors, even for root). */
function scanTree() {
  const dir = mkdtempSync(join(tmpdir(), "jobwire-ui-scan-"));
  for (let i = 0; i < 6; i++) writeFileSync(join(dir, `file${i}.txt`), `line one\nline two ${i}\n`);
  symlinkSync("/nonexistent/target", join(dir, "dangling-a"));
  symlinkSync("/nonexistent/other", join(dir, "dangling-b"));
  return dir;
}

test("a scan with unreadable files shows its error events and its result, and completes", async () => {
  const dir = scanTree();
  const server = await Server.start(["dev"], { JOBWIRE_SCAN_ROOT: dir });
  const { p, errors } = await page(`${server.url}/#token=${token()}`);
  await p.waitForSelector("[data-testid=new-job]");
  await p.selectOption("[data-testid=kind]", "scan");
  await p.fill("input[name=path]", dir);
  await p.click("[data-testid=start]");
  await p.waitForURL(/#\/jobs\//);
  await p.waitForFunction(() => document.querySelector("[data-testid=job-status]").textContent === "completed", null, { timeout: 30000 });
  // A scan this small may finish before the page subscribes: its events then
  // arrive by the history backfill, just after the state that says completed.
  await p.waitForSelector("[data-type=job_completed]", { timeout: 10000 });
  const types = await p.$$eval("[data-event-id]", (rows) => rows.map((r) => r.dataset.type));
  assert.equal(types.filter((t) => t === "error").length, 2, types.join());
  assert.equal(types.at(-1), "job_completed");
  assertConsecutive(await loggedIds(p));
  assert.equal(await p.isHidden("[data-testid=job-notice]"), true, "a notice was shown");
  assert.equal(await p.textContent("[data-testid=job-failed]"), "2");
  const result = JSON.parse(await p.textContent("[data-testid=job-result]"));
  assert.equal(result.files, 6);
  assert.equal(result.failed, 2);
  const count = await p.textContent("#log-count");
  assert.equal(count, `${types.length} events`);
  await p.screenshot({ path: `${SHOTS}/scan-with-errors.png`, fullPage: true });
  assert.deepEqual(errors, []);
  await p.close();
  await server.kill();
  rmSync(dir, { recursive: true, force: true });
});

test("the event log follows new events unless scrolled up", async () => {
  const server = await Server.start(["dev"]);
  const { p, errors } = await page(`${server.url}/#token=${token()}`);
  await p.waitForSelector("[data-testid=new-job]");
  await startDemo(p, { steps: 400, delay: 15 });
  const scroll = () => p.$eval("#log", (l) => ({ top: l.scrollTop, bottom: l.scrollHeight - l.clientHeight, rows: l.childElementCount }));
  await p.waitForFunction(() => document.querySelector("#log").childElementCount > 60, null, { timeout: 30000 });
  let s = await scroll();
  assert.ok(s.bottom > 0, "the log does not scroll");
  assert.ok(s.bottom - s.top < 30, `not at the tail: ${JSON.stringify(s)}`);
  // Scrolled up: new rows arrive, the view stays put.
  await p.$eval("#log", (l) => (l.scrollTop = 0));
  const before = (await scroll()).rows;
  await p.waitForFunction((n) => document.querySelector("#log").childElementCount > n + 30, before, { timeout: 30000 });
  s = await scroll();
  assert.equal(s.top, 0, "the log jumped to the tail while scrolled up");
  // Back at the bottom: it follows again.
  await p.$eval("#log", (l) => (l.scrollTop = l.scrollHeight));
  const again = (await scroll()).rows;
  await p.waitForFunction((n) => document.querySelector("#log").childElementCount > n + 30, again, { timeout: 30000 });
  s = await scroll();
  assert.ok(s.bottom - s.top < 30, `stopped following: ${JSON.stringify(s)}`);
  assert.deepEqual(errors, []);
  await p.close();
  await server.kill();
});

test("a link with the token opens the job page directly", async () => {
  const server = await Server.start(["dev"]);
  const t = token();
  const job = await (
    await fetch(`${server.url}/api/jobs`, {
      method: "POST",
      headers: { Authorization: "Bearer " + t, "Content-Type": "application/json" },
      body: JSON.stringify({ kind: "demo", params: { steps: 5, delay_ms: 10 } }),
    })
  ).json();
  for (const link of [`#/jobs/${job.id}&token=${t}`, `#token=${t}&/jobs/${job.id}`]) {
    const { p, errors } = await page(`${server.url}/${link}`);
    await p.waitForFunction(() => document.querySelector("[data-testid=job-status]").textContent === "completed", null, { timeout: 30000 });
    assert.equal(await p.textContent("[data-testid=job-id]"), job.id);
    assert.ok(!p.url().includes("token="), "the token stayed in the URL");
    assert.ok(p.url().endsWith(`#/jobs/${job.id}`), p.url());
    assert.deepEqual(errors, []);
    await p.close();
  }
  await server.kill();
});

test("at 420 px wide nothing overflows sideways", async () => {
  const server = await Server.start(["dev"]);
  const t = token();
  for (let i = 0; i < 3; i++) {
    await fetch(`${server.url}/api/jobs`, {
      method: "POST",
      headers: { Authorization: "Bearer " + t, "Content-Type": "application/json" },
      body: JSON.stringify({ kind: "demo", params: { steps: 3, delay_ms: 10 } }),
    });
  }
  const { p, errors } = await page(`${server.url}/#token=${t}`, { width: 420, height: 860 });
  await p.waitForSelector("[data-testid=jobs] tr");
  const width = () => p.evaluate(() => document.documentElement.scrollWidth);
  assert.ok((await width()) <= 420, `the job list is ${await width()} px wide`);
  await p.screenshot({ path: `${SHOTS}/narrow-list.png`, fullPage: true });
  await p.click("[data-testid=jobs] tr a");
  await p.waitForFunction(() => document.querySelector("[data-testid=job-status]").textContent === "completed", null, { timeout: 30000 });
  assert.ok((await width()) <= 420, `the job page is ${await width()} px wide`);
  await p.screenshot({ path: `${SHOTS}/narrow-job.png`, fullPage: true });
  assert.deepEqual(errors, []);
  await p.close();
  await server.kill();
});

test("a job no worker serves says so, and a delayed one shows when it runs", async () => {
  const server = await Server.start(["dev"]);
  const t = token();
  const create = async (body) =>
    (
      await fetch(`${server.url}/api/jobs`, {
        method: "POST",
        headers: { Authorization: "Bearer " + t, "Content-Type": "application/json" },
        body: JSON.stringify(body),
      })
    ).json();
  // `dev`'s worker serves the queues `demo` and `scan`, not `nightly`.
  const parked = await create({ kind: "demo", params: { steps: 1 }, queue: "nightly" });
  const { p, errors } = await page(`${server.url}/#/jobs/${parked.id}&token=${t}`);
  await p.waitForSelector("[data-testid=job-waiting]:not([hidden])", { timeout: 10000 });
  assert.match(await p.textContent("[data-testid=job-waiting]"), /no worker serves queue "nightly"/);
  assert.equal(await p.textContent("[data-testid=job-status]"), "queued");
  await p.screenshot({ path: join(SHOTS, "waiting.png") });

  const later = await create({ kind: "demo", params: { steps: 1 }, delay: "1h", priority: 9 });
  await p.goto(`${server.url}/#/jobs/${later.id}`);
  await p.waitForFunction(() => document.querySelector("[data-testid=job-status]").textContent === "scheduled", null, { timeout: 10000 });
  assert.ok(await p.isVisible("[data-testid=job-run-at]"), "no run time shown");
  assert.equal(await p.isVisible("[data-testid=job-waiting]"), false);

  // The list says it too.
  await p.goto(`${server.url}/#/`);
  await p.waitForSelector(`tr[data-job-id="${parked.id}"]`, { timeout: 10000 });
  assert.match(await p.textContent(`tr[data-job-id="${parked.id}"] .sub`), /no worker serves queue "nightly"/);
  assert.deepEqual(errors, []);
  await p.close();
  await server.kill();
});

test("an admin drives the operations pages: queues, workers, failed jobs, schedules", async () => {
  const server = await Server.start(["dev"]);
  const alice = token();
  const admin = token({ sub: "root", scopes: ["jobs:read", "jobs:write", "admin"] });
  const api = async (method, path, body, t = admin) => {
    const r = await fetch(server.url + path, {
      method,
      headers: { Authorization: "Bearer " + t, ...(body ? { "Content-Type": "application/json" } : {}) },
      body: body ? JSON.stringify(body) : undefined,
    });
    return r.status === 204 ? null : r.json();
  };
  const waitJob = async (id, test) => {
    for (let i = 0; i < 200; i++) {
      const job = await api("GET", `/api/jobs/${id}`);
      if (test(job)) return job;
      await sleep(50);
    }
    throw new Error(`job ${id} never got there`);
  };
  // Some history for the chart, a failure to retry, a queue no worker
  // serves, and a schedule.
  for (let i = 0; i < 3; i++) await api("POST", "/api/jobs", { kind: "demo", params: { steps: 2, delay_ms: 0 } }, alice);
  const failing = await api("POST", "/api/jobs", { kind: "demo", params: { steps: 3, delay_ms: 0, fail_at: 1 }, max_attempts: 1 }, alice);
  await waitJob(failing.id, (j) => j.status === "failed");
  // More failures than a page holds, of another kind and queue (scans of
  // a folder that does not exist).
  const batch = [];
  for (let i = 0; i < 50; i++) {
    batch.push(await api("POST", "/api/jobs", { kind: "scan", params: { path: "no-such-folder" }, max_attempts: 1 }, alice));
  }
  for (const j of batch) await waitJob(j.id, (j) => j.status === "failed");
  await api("POST", "/api/jobs", { kind: "demo", params: { steps: 1 }, queue: "reports" }, alice);
  await api("PUT", "/api/queues/reports/limits", { concurrency: 2, rate: { max: 10, per: "1m" } });
  const made = await api("POST", "/api/schedules", { name: "nightly-scan", cron: "0 3 * * *", tz: "Europe/Berlin", kind: "scan", params: { path: "." } });
  assert.equal(made.name, "nightly-scan");

  const { p, errors } = await page(`${server.url}/#/queues&token=${admin}`);
  p.on("dialog", (d) => d.accept());
  await p.waitForSelector("[data-testid=ops-nav]:not([hidden])");
  // Queues: live figures, pause and resume, the throughput chart.
  const reports = 'tr[data-queue="reports"]';
  await p.waitForSelector(reports, { timeout: 10000 });
  assert.equal(await p.textContent(`${reports} [data-testid=waiting]`), "1");
  assert.equal(await p.textContent(`${reports} [data-testid=limits]`), "≤2 running · ≤10/1m");
  await p.click(`${reports} [data-testid=pause]`);
  await p.waitForSelector(`${reports} [data-testid=state] .badge.paused`, { timeout: 10000 });
  assert.deepEqual((await api("GET", "/api/queues")).queues.find((q) => q.name === "reports").paused, true);
  await p.waitForSelector(".chart rect.started[data-count]", { timeout: 10000 });
  const started = await p.$$eval(".chart rect.started", (rs) => rs.reduce((n, r) => n + Number(r.dataset.count), 0));
  assert.ok(started >= 4, `the chart shows ${started} starts`);
  await p.screenshot({ path: join(SHOTS, "ops-queues.png"), fullPage: true });
  await p.click(`${reports} [data-testid=resume]`);
  await p.waitForSelector(`${reports} [data-testid=state] .badge.active`, { timeout: 10000 });

  // Workers: dev's in-process workers, live.
  await p.click("#ops-nav >> text=Workers");
  await p.waitForSelector("[data-testid=workers] tr [data-testid=worker-state] .badge.live", { timeout: 10000 });
  await p.screenshot({ path: join(SHOTS, "ops-workers.png"), fullPage: true });

  // Failed: filtered, then retried (a new attempt on the same job).
  await p.click("#ops-nav >> text=Failed");
  const row = `[data-testid=failed] tr[data-job-id="${failing.id}"]`;
  const rows = () => p.$$eval("[data-testid=failed] tr", (rs) => rs.length);
  // A page of the newest 50; the oldest failure is on the next.
  await p.waitForSelector(`[data-testid=failed] tr[data-job-id="${batch[0].id}"]`, { timeout: 10000 });
  assert.equal(await rows(), 50);
  assert.equal(await p.isVisible(row), false);
  await p.click("[data-testid=failed-more]");
  await p.waitForSelector(row, { timeout: 10000 });
  assert.equal(await rows(), 51);
  await p.waitForSelector("[data-testid=failed-more]", { state: "hidden" });
  // Filtered by the server: the queue, then kind and time too.
  await p.selectOption("[data-testid=failed-queue]", "demo");
  await p.waitForFunction(() => document.querySelectorAll("[data-testid=failed] tr").length === 1, null, { timeout: 10000 });
  await p.selectOption("[data-testid=failed-kind]", "demo");
  await p.selectOption("[data-testid=failed-within]", "3600000");
  await p.waitForSelector(row);
  assert.equal(await rows(), 1);
  await p.screenshot({ path: join(SHOTS, "ops-failed.png"), fullPage: true });
  await p.click(`${row} [data-testid=retry]`);
  await waitJob(failing.id, (j) => j.attempt === 2);

  // Schedules: next tick, pause, resume, delete.
  await p.click("#ops-nav >> text=Schedules");
  const sched = 'tr[data-schedule="nightly-scan"]';
  await p.waitForSelector(sched, { timeout: 10000 });
  assert.notEqual(await p.textContent(`${sched} [data-testid=next-fire]`), "–");
  await p.screenshot({ path: join(SHOTS, "ops-schedules.png"), fullPage: true });
  await p.click(`${sched} [data-testid=pause]`);
  await p.waitForSelector(`${sched} [data-testid=state] .badge.paused`, { timeout: 10000 });
  await p.click(`${sched} [data-testid=resume]`);
  await p.waitForSelector(`${sched} [data-testid=state] .badge.active`, { timeout: 10000 });
  await p.click(`${sched} [data-testid=delete]`);
  await p.waitForSelector(sched, { state: "detached", timeout: 10000 });
  assert.deepEqual((await api("GET", "/api/schedules")).schedules, []);
  assert.deepEqual(errors, []);
  await p.close();

  // Someone without admin sees no operations links, and a clear refusal.
  const plain = await page(`${server.url}/#/queues&token=${alice}`);
  await plain.p.waitForSelector("[data-testid=queues-error]:not(:empty)", { timeout: 10000 });
  assert.match(await plain.p.textContent("[data-testid=queues-error]"), /admin/);
  assert.equal(await plain.p.isVisible("[data-testid=ops-nav]"), false);
  await plain.p.close();

  // The job list: an admin's holds everyone's jobs, and says whose each is;
  // alice's holds her own, with no owner column.
  await api("POST", "/api/jobs", { kind: "demo", params: { steps: 1, delay_ms: 0 } });
  const all = await page(`${server.url}/#token=${admin}`);
  await all.p.waitForFunction(() => document.querySelector("#jobs-title").textContent === "All users' jobs", null, { timeout: 10000 });
  const owners = await all.p.$$eval("[data-testid=row-owner]", (tds) => tds.filter((td) => td.offsetParent !== null).map((td) => td.textContent));
  assert.deepEqual([...new Set(owners)].sort(), ["alice", "root"]);
  assert.deepEqual(all.errors, []);
  await all.p.close();
  const mine = await page(`${server.url}/#token=${alice}`);
  await mine.p.waitForSelector("[data-testid=row-owner]", { state: "attached", timeout: 10000 });
  assert.equal(await mine.p.textContent("#jobs-title"), "Your jobs");
  assert.equal(await mine.p.isVisible("[data-testid=row-owner]"), false);
  await mine.p.close();
  await server.kill();
});
