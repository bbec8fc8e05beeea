// The web UI in headless Chromium (playwright-core, Debian's chromium),
// against real jobwire processes: a demo job runs to 100% live; the page
// rides out a server restart mid-job (Redis mode) with every event id
// consecutive; a bad token gets a clear message. Screenshots go to
// target/test-output/web/ (not committed).
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { mkdirSync } from "node:fs";
import { resolve } from "node:path";

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
after(async () => browser && (await browser.close()));

async function page(url) {
  const p = await browser.newPage({ viewport: { width: 1200, height: 900 } });
  const errors = [];
  p.on("pageerror", (e) => errors.push(e.message));
  await p.goto(url);
  return { p, errors };
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
  const { p, errors } = await page(`${server.url}/#token=${token()}`);
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
