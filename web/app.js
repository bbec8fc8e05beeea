// The jobwire web UI: a list of your jobs with live progress, a form to
// start a job, and a job page with the live event log; for an admin token,
// the operations pages (queues with throughput, workers, failed jobs,
// schedules), refreshed every 2 s. Plain ES modules, no build step; live updates come from jobwire.js (exact resume across
// reconnects). The token comes from the URL fragment (#token=…, as
// `jobwire dev` prints it) or the sign-in box, and stays in sessionStorage.

import { JobwireClient } from "/jobwire.js";

const PAGE_SIZE = 50;
// Failed jobs per page on the Failed page ("More" loads the next).
const FAILED_PAGE = 50;
const LOG_ROWS = 1000; // events kept on the job page; older rows are dropped
const TERMINAL = new Set(["completed", "failed", "cancelled"]);
const TOKEN_KEY = "jobwire.token";

const $ = (selector, root = document) => root.querySelector(selector);
const el = (tag, attrs = {}, ...children) => {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v;
    else if (k.startsWith("data-") || k === "href" || k === "title") node.setAttribute(k, v);
    else node[k] = v;
  }
  node.append(...children);
  return node;
};

let client = null;
let watch = null; // the watch of the current view
let view = null;

// ---- token -------------------------------------------------------------

// The token may come with a page to open: #token=T, #/jobs/ID&token=T or
// #token=T&/jobs/ID all sign in, and the last two open the job.
function takeTokenFromUrl() {
  const m = location.hash.match(/(?:^#|&)token=([^&]+)/);
  if (!m) return;
  sessionStorage.setItem(TOKEN_KEY, decodeURIComponent(m[1]));
  client = null; // a new token: a new client
  let rest = location.hash.replace(m[0], "").replace(/^#?&?/, "#");
  if (rest === "#") rest = "#/";
  // Keep the token out of the address bar and history.
  history.replaceState(null, "", location.pathname + location.search + rest);
}

function signOut(message) {
  sessionStorage.removeItem(TOKEN_KEY);
  client = null;
  stopWatch();
  show("signin");
  $("#signin-message").textContent = message || "Paste a token to see your jobs.";
  $("#signin-message").classList.toggle("error", Boolean(message));
  $("#signout").hidden = true;
}

$("#signin-form").addEventListener("submit", (e) => {
  e.preventDefault();
  const token = new FormData(e.target).get("token").trim();
  if (!token) return;
  sessionStorage.setItem(TOKEN_KEY, token);
  e.target.reset();
  route();
});
$("#signout").addEventListener("click", () => signOut());

/** Handles an API error: a refused token sends the user to sign in. */
function apiFailed(error, where) {
  if (error.status === 401 || error.code === "unauthorized") {
    signOut(`Your token was refused (${error.message}). It may have expired: paste a new one.`);
    return true;
  }
  where.textContent = error.message;
  return false;
}

// ---- connection indicator ------------------------------------------------

let resumedTimer = null;
function connection(state, text) {
  const c = $("#conn");
  c.dataset.state = state;
  $(".label", c).textContent = text || state;
}

function onStatus(s) {
  if (s.state === "connecting") connection("connecting", "connecting…");
  else if (s.state === "connected") connection("live", s.transport === "sse" ? "live (SSE)" : "live");
  else if (s.state === "disconnected") connection("reconnecting", `reconnecting in ${(s.retryIn / 1000).toFixed(1)} s`);
  else if (s.state === "stopped") connection("stopped", "stopped");
}

function onResumed() {
  connection("resumed", "resumed");
  clearTimeout(resumedTimer);
  resumedTimer = setTimeout(() => {
    if ($("#conn").dataset.state === "resumed") connection("live", "live");
  }, 3000);
}

function stopWatch() {
  if (watch) watch.close();
  watch = null;
  connection("idle", "idle");
}

// ---- routing -------------------------------------------------------------

function show(id) {
  for (const s of document.querySelectorAll("main > section")) s.hidden = s.id !== id;
  view = id;
}

/** Whether the token carries the admin scope (the server decides; this
 *  only shows the operations pages' links). */
function isAdmin(token) {
  try {
    const payload = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    const scope = JSON.parse(atob(payload)).scope || "";
    return (Array.isArray(scope) ? scope : String(scope).split(" ")).includes("admin");
  } catch {
    return false;
  }
}

const OPS_PAGES = { queues: openQueues, workers: openWorkers, failed: openFailed, schedules: openSchedules };

function route() {
  takeTokenFromUrl();
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (!token) return signOut();
  if (!client) client = new JobwireClient({ token });
  $("#signout").hidden = false;
  $("#ops-nav").hidden = !isAdmin(token);
  stopWatch();
  stopPolling();
  const m = location.hash.match(/^#\/jobs\/([0-9A-Za-z]+)/);
  const ops = location.hash.match(/^#\/(queues|workers|failed|schedules)\b/);
  const page = m ? "job" : ops ? ops[1] : "list";
  for (const a of document.querySelectorAll("#ops-nav a")) a.classList.toggle("current", a.dataset.page === page);
  if (m) return openJob(m[1]);
  if (ops) return OPS_PAGES[ops[1]]();
  openList();
}

window.addEventListener("hashchange", route);

// ---- job list --------------------------------------------------------------

const cursors = [null]; // page start cursors; the last is the current page
let rows = new Map();

async function openList() {
  show("list");
  let page;
  try {
    page = await client.listJobs({ limit: PAGE_SIZE, cursor: cursors.at(-1) || undefined });
  } catch (e) {
    return apiFailed(e, $("#new-job-error"));
  }
  if (view !== "list") return;
  const tbody = $("#jobs");
  tbody.replaceChildren();
  rows = new Map();
  for (const job of page.jobs) {
    const row = jobRow(job);
    rows.set(job.id, row);
    tbody.append(row.tr);
  }
  // An admin lists everyone's jobs: then say so, and whose each one is.
  const severalOwners = new Set(page.jobs.map((j) => j.owner)).size > 1;
  tbody.closest("table").classList.toggle("several-owners", severalOwners);
  $("#jobs-title").textContent = severalOwners ? "All users' jobs" : "Your jobs";
  $("#empty").hidden = page.jobs.length > 0;
  $("#newer").disabled = cursors.length <= 1;
  $("#older").disabled = !page.next_cursor;
  $("#older").onclick = () => {
    cursors.push(page.next_cursor);
    openList();
  };
  // One socket for every unfinished job on this page.
  const live = page.jobs.filter((j) => !TERMINAL.has(j.status)).map((j) => j.id);
  stopWatch();
  if (live.length) {
    watch = client.watch(live, {
      onStatus,
      onResumed,
      onState: (job) => rows.get(job.id)?.update(job),
      onEvent: (e) => rows.get(e.job_id)?.update(e.data),
      onError: (e) => apiFailed(e, $("#new-job-error")),
    });
  }
}

$("#newer").addEventListener("click", () => {
  if (cursors.length > 1) cursors.pop();
  openList();
});
$("#refresh").addEventListener("click", () => openList());

function jobRow(job) {
  const status = el("span", { class: "badge", "data-testid": "row-status" });
  const bar = el("div", { class: "bar" }, el("div"));
  const sub = el("div", { class: "sub" });
  const tr = el(
    "tr",
    { "data-job-id": job.id },
    el("td", {}, el("a", { href: `#/jobs/${job.id}` }, el("code", {}, job.id.slice(-8)))),
    el("td", { class: "kind" }, job.kind),
    el("td", { class: "owner", "data-testid": "row-owner" }, job.owner),
    el("td", {}, status),
    el("td", { class: "wide" }, bar, sub),
    el("td", { class: "sub created", title: job.created_at }, new Date(job.created_at).toLocaleString()),
  );
  // "no worker serves queue X", from the listing, while the job waits.
  let waiting = job.waiting || "";
  const update = (s) => {
    status.textContent = s.status;
    status.className = "badge " + s.status;
    bar.className = "bar " + s.status;
    bar.firstChild.style.width = `${s.progress ?? 0}%`;
    if (s.status !== "queued") waiting = "";
    const files = s.total_files ? `${s.processed_files}/${s.total_files} files` : `${Math.round(s.progress ?? 0)}%`;
    sub.textContent = [files, waiting || s.current_file || s.error || s.message || ""].filter(Boolean).join(" · ");
  };
  update(job);
  return { tr, update };
}

// ---- start a job -------------------------------------------------------------

const form = $("#new-job");
form.kind.addEventListener("change", () => {
  for (const row of form.querySelectorAll("[data-kind]")) row.hidden = row.dataset.kind !== form.kind.value;
});
form.addEventListener("submit", async (e) => {
  e.preventDefault();
  const f = new FormData(form);
  const kind = f.get("kind");
  const number = (k) => (f.get(k) === "" ? undefined : Number(f.get(k)));
  const params =
    kind === "scan"
      ? { path: f.get("path"), ...(f.get("glob") ? { glob: f.get("glob") } : {}) }
      : { steps: number("steps"), delay_ms: number("delay_ms"), ...(number("fail_at") ? { fail_at: number("fail_at") } : {}) };
  $("#new-job-error").textContent = "";
  try {
    const job = await client.createJob(kind, params);
    location.hash = `#/jobs/${job.id}`;
  } catch (err) {
    apiFailed(err, $("#new-job-error"));
  }
});

// ---- operations pages (admin) -----------------------------------------------

let poller = null;
function stopPolling() {
  clearInterval(poller);
  poller = null;
}

/** Shows page `id`, and loads it now and every 2 s while it is shown. */
function polled(id, load) {
  show(id);
  const errorAt = $(`[data-testid=${id}-error]`);
  const tick = async () => {
    try {
      await load();
      errorAt.textContent = "";
    } catch (e) {
      if (view === id) apiFailed(e, errorAt);
    }
  };
  tick();
  poller = setInterval(() => view === id && tick(), 2000);
}

const ago = (ms) => {
  if (ms === null || ms === undefined) return "–";
  const s = Math.round(ms / 1000);
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min ${s % 60} s`;
  return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
};
const when = (t) => (t ? new Date(t).toLocaleString() : "–");
const jobLink = (id) => el("a", { href: `#/jobs/${id}` }, el("code", {}, id.slice(-8)));
const badge = (text) => el("span", { class: `badge ${text}` }, text);
/** A button that runs `action`, then reloads the page's data. */
const actionButton = (text, cls, testid, action, reload) =>
  el("button", {
    class: cls,
    "data-testid": testid,
    onclick: async (e) => {
      e.target.disabled = true;
      try {
        await action();
      } catch (err) {
        apiFailed(err, $(`[data-testid=${view}-error]`));
      }
      await reload();
    },
  }, text);

function openQueues() {
  const load = async () => {
    const [queues, minutes] = await Promise.all([client.queues(), client.throughput()]);
    if (view !== "queues") return;
    $("[data-testid=queues]").replaceChildren(
      ...queues.map((q) =>
        el("tr", { "data-queue": q.name },
          el("td", {}, el("code", {}, q.name)),
          el("td", { class: "num", "data-testid": "waiting" }, String(q.waiting)),
          el("td", { class: "num", "data-testid": "scheduled" }, String(q.scheduled ?? 0)),
          el("td", { class: "num", "data-testid": "running" }, String(q.running)),
          el("td", { class: "num" }, `${q.finished_1m ?? 0} / ${Math.round((q.finished_15m ?? 0) / 15)}`),
          el("td", { class: "num", "data-testid": "failed-1h" }, String(q.failed_1h ?? 0)),
          el("td", { class: "num" }, ago(q.oldest_waiting_age_ms)),
          el("td", { title: q.workers.join(", ") }, q.workers.length ? String(q.workers.length) : "none"),
          el("td", { class: "sub", "data-testid": "limits" }, limitsText(q.limits)),
          el("td", { "data-testid": "state" }, badge(q.paused ? "paused" : "active")),
          el("td", {}, q.paused
            ? actionButton("Resume", "quiet", "resume", () => client.setQueuePaused(q.name, false), load)
            : actionButton("Pause", "danger", "pause", () => client.setQueuePaused(q.name, true), load)),
        )),
    );
    $("#queues-empty").hidden = queues.length > 0;
    drawThroughput($("[data-testid=throughput]"), minutes);
  };
  polled("queues", load);
}

/** A queue's fleet-wide limits in a few characters. */
const limitsText = (limits = {}) =>
  [limits.concurrency ? `≤${limits.concurrency} running` : "", limits.rate ? `≤${limits.rate.max}/${limits.rate.per}` : ""]
    .filter(Boolean)
    .join(" · ") || "–";

/** Bars of jobs started and finished per minute (the server keeps an hour). */
function drawThroughput(box, minutes) {
  const NS = "http://www.w3.org/2000/svg";
  const svg = (tag, attrs) => {
    const node = document.createElementNS(NS, tag);
    for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
    return node;
  };
  const W = 720, H = 180, pad = 28, n = 60;
  const peak = Math.max(1, ...minutes.flatMap((m) => [m.started, m.finished]));
  const chart = svg("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": "jobs started and finished per minute" });
  const slot = (W - pad) / n;
  const now = Math.floor(Date.now() / 60000) * 60000;
  for (const m of minutes) {
    const i = n - 1 - Math.round((now - Date.parse(m.minute)) / 60000);
    if (i < 0) continue;
    const x = pad + i * slot;
    for (const [k, j] of [["started", 0], ["finished", 1]]) {
      const h = ((H - 20) * m[k]) / peak;
      chart.append(svg("rect", { class: k, x: x + j * slot * 0.45, y: H - 16 - h, width: slot * 0.42, height: h, "data-minute": m.minute, "data-count": m[k] }));
    }
  }
  const label = (y, text) => chart.append(Object.assign(svg("text", { x: 0, y }), { textContent: text }));
  label(10, String(peak));
  label(H - 16, "0");
  chart.append(Object.assign(svg("text", { x: pad, y: H - 2 }), { textContent: "60 min ago" }));
  chart.append(Object.assign(svg("text", { x: W - 30, y: H - 2 }), { textContent: "now" }));
  const total = (k) => minutes.reduce((sum, m) => sum + m[k], 0);
  const legend = el("div", { class: "legend" },
    el("span", {}, el("i", { style: "background: var(--accent)" }), `started (${total("started")})`),
    el("span", {}, el("i", { style: "background: var(--ok)" }), `finished (${total("finished")})`));
  box.replaceChildren(chart, legend);
}

function openWorkers() {
  polled("workers", async () => {
    const workers = await client.workers();
    if (view !== "workers") return;
    $("[data-testid=workers]").replaceChildren(
      ...workers.map((w) =>
        el("tr", { "data-worker": w.name },
          el("td", {}, el("code", {}, w.name), el("div", { class: "sub" }, `v${w.version}`)),
          el("td", {}, `${w.host} · ${w.pid}`),
          el("td", {}, w.queues.join(", ")),
          el("td", { "data-testid": "worker-running" },
            `${w.running.length} of ${w.concurrency}`,
            ...(w.running.length ? [el("div", { class: "sub" }, ...w.running.slice(0, 5).flatMap((id) => [jobLink(id), " "]))] : [])),
          el("td", { class: "sub" }, when(w.started_at)),
          el("td", { class: "sub" }, when(w.last_seen)),
          el("td", { "data-testid": "worker-state" }, badge(w.live ? "live" : "gone")),
        )),
    );
    $("#workers-empty").hidden = workers.length > 0;
  });
}

function openFailed() {
  const filters = $("#failed-filters");
  let shown = [];
  let cursor = null;
  // The filter menus offer every kind and queue seen in failed jobs, and
  // every queue the server knows.
  const offer = (name, values) => {
    const select = filters[name];
    const have = new Set([...select.options].map((o) => o.value));
    for (const v of [...new Set(values)].sort()) if (v && !have.has(v)) select.append(el("option", { value: v }, v));
  };
  const row = (j) =>
    el("tr", { "data-job-id": j.id },
      el("td", {}, jobLink(j.id)),
      el("td", { class: "kind" }, j.kind),
      el("td", {}, j.queue || j.kind),
      el("td", {}, j.owner),
      el("td", { class: "num" }, String(j.attempt)),
      el("td", { class: "wide" }, el("div", { class: "sub error", title: j.error || "" }, j.error || "–")),
      el("td", { class: "sub created" }, when(j.finished_at)),
      el("td", {}, actionButton("Retry", "quiet", "retry", () => client.retry(j.id), () => load(true))),
    );
  // The server filters and pages, so every failed job can be reached however
  // many there are; "More" appends the next page to what is shown.
  const load = async (fresh) => {
    const f = new FormData(filters);
    const within = Number(f.get("within") || 0);
    // The server reads a bounded number of jobs per request, so a filter
    // that matches few may answer a short page with a cursor: go on until
    // the page is full or the list ends (at most 20 requests per click).
    let jobs = [];
    let next = fresh ? undefined : cursor;
    for (let asked = 0; asked < 20; asked++) {
      const page = await client.listJobs({
        status: "failed",
        kind: f.get("kind") || undefined,
        queue: f.get("queue") || undefined,
        finishedAfter: within ? new Date(Date.now() - within) : undefined,
        limit: FAILED_PAGE - jobs.length,
        cursor: next,
      });
      if (view !== "failed") return;
      jobs = jobs.concat(page.jobs);
      next = page.next_cursor;
      if (!next || jobs.length >= FAILED_PAGE) break;
    }
    shown = fresh ? jobs : shown.concat(jobs);
    cursor = next;
    offer("kind", jobs.map((j) => j.kind));
    offer("queue", jobs.map((j) => j.queue || j.kind));
    const rows = jobs.map(row);
    if (fresh) $("[data-testid=failed]").replaceChildren(...rows);
    else $("[data-testid=failed]").append(...rows);
    $("#failed-empty").hidden = shown.length > 0 || Boolean(cursor);
    $("#failed-more").hidden = !cursor;
    $("#retry-all").disabled = shown.length === 0;
  };
  const fail = (e) => apiFailed(e, $("[data-testid=failed-error]"));
  filters.onchange = () => load(true).catch(fail);
  $("#failed-more").onclick = () => load(false).catch(fail);
  $("#retry-all").onclick = async () => {
    $("#retry-all").disabled = true;
    for (const j of shown) {
      try {
        await client.retry(j.id);
      } catch (err) {
        // Retried meanwhile (409): the next load drops it.
        if (err.status !== 409) fail(err);
      }
    }
    await load(true);
  };
  show("failed");
  client.queues().then((queues) => offer("queue", queues.map((q) => q.name)), () => {});
  load(true).catch(fail);
}

function openSchedules() {
  const load = async () => {
    const schedules = await client.schedules();
    if (view !== "schedules") return;
    $("[data-testid=schedules]").replaceChildren(
      ...schedules.map((s) =>
        el("tr", { "data-schedule": s.name },
          el("td", {}, el("code", {}, s.name)),
          el("td", {}, el("code", {}, s.cron), el("div", { class: "sub" }, s.tz || "UTC")),
          el("td", { class: "kind" }, s.kind),
          el("td", { "data-testid": "next-fire" }, s.paused ? "–" : when(s.next_fire)),
          el("td", {}, ...(s.last_job ? [when(s.last_fire), " ", jobLink(s.last_job)] : ["never"])),
          el("td", { "data-testid": "state" }, badge(s.paused ? "paused" : "active")),
          el("td", {},
            s.paused
              ? actionButton("Resume", "quiet", "resume", () => client.setSchedulePaused(s.name, false), load)
              : actionButton("Pause", "quiet", "pause", () => client.setSchedulePaused(s.name, true), load),
            " ",
            actionButton("Delete", "danger", "delete", async () => {
              if (confirm(`Delete schedule ${s.name}? The jobs it made stay.`)) await client.deleteSchedule(s.name);
            }, load)),
        )),
    );
    $("#schedules-empty").hidden = schedules.length > 0;
  };
  polled("schedules", load);
}

// ---- job page ------------------------------------------------------------------

function openJob(id) {
  show("job");
  const log = $("#log");
  log.replaceChildren();
  $("#job-notice").hidden = true;
  $("#job-waiting").hidden = true;
  $("#result-card").hidden = true;
  $("[data-testid=job-id]").textContent = id;
  $("[data-testid=job-error]").textContent = "";
  let backfilled = false;
  // The log follows new events unless the reader has scrolled up ("stick
  // to bottom"): whether it was at the end is read *before* rows are added,
  // so neither the new rows nor a scroll event still on its way can change
  // the answer; scrolling back down to the end sticks it again.
  const atBottom = () => log.scrollHeight - log.scrollTop - log.clientHeight < 32;
  const adding = (add) => {
    const stick = atBottom();
    add();
    if (stick) log.scrollTop = log.scrollHeight;
  };
  const updateCount = () => {
    const shown = log.querySelectorAll("[data-event-id]").length;
    const first = log.querySelector("[data-event-id]");
    const from = first ? Number(first.dataset.eventId) : 0;
    $("#log-count").textContent =
      shown === 0 ? "" : from > 1 ? `${shown} latest events (from #${from})` : `${shown} event${shown === 1 ? "" : "s"}`;
  };
  const logRow = (e) => {
    const detail = e.data.file || e.data.message || e.data.reason || e.data.error || "";
    const cls = e.type === "error" || e.type === "job_failed" ? "error" : e.type.startsWith("job_") ? "job" : "";
    return el("li", { class: cls, "data-event-id": String(e.id), "data-type": e.type },
      el("span", { class: "id" }, String(e.id)),
      el("span", {}, new Date(e.timestamp).toLocaleTimeString()),
      el("span", {}, e.type),
      el("span", {}, String(detail)),
    );
  };
  const trim = () => {
    while (log.childElementCount > LOG_ROWS) log.firstElementChild.remove();
  };
  // The events before the live stream's starting point, for context.
  const backfill = async (upTo, epoch) => {
    try {
      const since = Math.max(0, upTo - 200);
      const page = await client.history(id, { since, epoch, limit: 200 });
      const rows = page.events.filter((e) => e.id <= upTo).map(logRow);
      adding(() => {
        log.prepend(...rows);
        trim();
      });
      updateCount();
    } catch {
      /* trimmed or gone: the live log is still exact */
    }
  };
  const showResult = (result) => {
    if (result === undefined || result === null) return;
    $("[data-testid=job-result]").textContent = JSON.stringify(result, null, 2);
    $("#result-card").hidden = false;
  };
  const render = (s) => {
    const status = $("[data-testid=job-status]");
    status.textContent = s.status;
    status.className = "badge " + s.status;
    const bar = $("[data-testid=job-progress]");
    bar.className = "bar " + s.status;
    bar.firstChild.style.width = `${s.progress}%`;
    bar.setAttribute("aria-valuenow", String(Math.round(s.progress)));
    $("[data-testid=job-files]").textContent = s.total_files ? `${s.processed_files} of ${s.total_files}` : "–";
    $("[data-testid=job-failed]").textContent = String(s.failed_files);
    $("[data-testid=job-attempt]").textContent = String(s.attempt);
    // A scheduled job (delayed, or a retry after a backoff) says when it runs.
    $("#run-at").hidden = s.status !== "scheduled" || !s.run_at;
    if (s.run_at) $("[data-testid=job-run-at]").textContent = new Date(s.run_at).toLocaleString();
    $("[data-testid=job-current]").textContent = s.current_file || "–";
    if (s.message !== undefined) $("[data-testid=job-message]").textContent = s.message || "–";
    if (s.error) $("[data-testid=job-error]").textContent = s.error;
    $("#cancel").hidden = TERMINAL.has(s.status);
    if (s.status !== "queued") $("#job-waiting").hidden = true;
  };
  // A queued job no live worker serves says so (the server reads the
  // worker registry); asked again while the job stays queued.
  const checkWaiting = () => {
    client.job(id).then((j) => {
      const w = $("#job-waiting");
      w.textContent = j.waiting || "";
      w.hidden = !(j.status === "queued" && j.waiting);
      if (j.status === "queued" && location.hash === `#/jobs/${id}`) setTimeout(checkWaiting, 5000);
    }, () => {});
  };
  const notice = (text) => {
    const n = $("#job-notice");
    n.textContent = text;
    n.hidden = false;
  };
  watch = client.watch(id, {
    onStatus,
    onResumed,
    onState: (job, { resync }) => {
      $("[data-testid=job-kind]").textContent = job.kind;
      render(job);
      if (job.status === "queued") checkWaiting();
      showResult(job.result);
      if (!backfilled && !resync) {
        backfilled = true;
        backfill(job.last_event_id, job.epoch);
      }
      if (resync) {
        notice("Some events could not be replayed (they were trimmed, or the job's log was rebuilt): showing the job's current state.");
        adding(() => log.append(el("li", { class: "job", "data-resync": "true" }, el("span", { class: "id" }, "…"), el("span", {}, ""), el("span", {}, "resync"), el("span", {}, "events before this point were skipped"))));
      }
    },
    onEvent: (e) => {
      render(e.data);
      if (e.type === "job_failed") $("[data-testid=job-error]").textContent = e.data.error || e.data.message || "failed";
      if (e.type === "job_completed") showResult(e.data.result);
      adding(() => {
        log.append(logRow(e));
        trim();
      });
      updateCount();
    },
    // The server ended the subscription (a job's own "error" events are
    // ordinary events, above).
    onRefused: (_, refusal) => {
      $("[data-testid=job-status]").textContent = "unavailable";
      notice(refusal.code === "not_found" ? "This job does not exist, or no longer (deleted or expired), or is not yours." : refusal.message);
    },
    onError: (e) => apiFailed(e, $("[data-testid=job-error]")),
  });
  $("#cancel").onclick = async () => {
    try {
      await client.cancel(id);
    } catch (err) {
      apiFailed(err, $("[data-testid=job-error]"));
    }
  };
}

route();
