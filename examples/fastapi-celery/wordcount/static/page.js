// The page: starts word counts (POST /api/jobs, which sends the Celery task)
// and watches each job live from the jobwire gateways with jobwire.js, which
// reconnects to the other gateway when one goes away and resumes exactly
// where it was: no event lost, none twice.
import { JobwireClient } from "/jobwire.js";

const $ = (selector, root = document) => root.querySelector(selector);

const config = await (await fetch("/api/config")).json();
$("#gateways").textContent = config.gateways.join(" and ");
for (const folder of config.folders) {
  $("#folder").append(new Option(folder === "." ? "all documents" : folder, folder));
}

// What the page has seen, per job (for people reading the console, and for
// the example's test): the event ids in order, the gateways it was on.
const seen = (window.wordcount = { jobs: {} });

const client = new JobwireClient({
  urls: config.gateways,
  // WebSockets are allowed across origins (the gateways list this page's
  // origin in JOBWIRE_ALLOWED_ORIGINS); SSE would need CORS.
  transport: "websocket",
  // A short read-only token, fetched again before it expires.
  tokenProvider: async () => (await (await fetch("/api/token")).json()).token,
});

function problem(text) {
  $("#problem").textContent = text;
}

function card(jobId, title) {
  let el = document.getElementById("job-" + jobId);
  if (el) return el;
  el = document.createElement("section");
  el.className = "job";
  el.id = "job-" + jobId;
  el.dataset.jobId = jobId;
  el.innerHTML = `
    <header><strong class="title"></strong><span class="status"></span></header>
    <progress max="100" value="0"></progress>
    <div class="line"><span><span class="processed">0</span> / <span class="total">?</span> documents</span>
      <span class="current muted"></span></div>
    <div class="line"><span class="connection muted"></span><button class="cancel" hidden>Cancel</button></div>
    <div class="result"></div>`;
  $(".title", el).textContent = title;
  $(".cancel", el).addEventListener("click", async () => {
    const answer = await fetch(`/api/jobs/${jobId}/cancel`, { method: "POST" });
    if (!answer.ok) problem(`cancel: ${answer.status}`);
  });
  $("#jobs").prepend(el);
  return el;
}

// `job` is a job (a state) or an event's data: both carry the counters.
function render(el, job) {
  const status = $(".status", el);
  status.textContent = job.status;
  status.dataset.status = job.status;
  el.dataset.status = job.status;
  $("progress", el).value = job.progress ?? 0;
  $(".processed", el).textContent = job.processed_files;
  $(".total", el).textContent = job.total_files || "?";
  $(".current", el).textContent = job.current_file || "";
  $(".cancel", el).hidden = !["queued", "running"].includes(job.status);
  if (job.status === "failed") $(".result", el).textContent = job.error || "failed";
}

function showResult(el, result) {
  if (!result) return;
  el.dataset.words = result.words;
  const summary = document.createElement("p");
  const words = document.createElement("span");
  words.className = "words";
  words.textContent = result.words;
  summary.append(words, ` words in ${result.documents} documents.`);
  const table = document.createElement("table");
  for (const [word, n] of result.top) {
    const row = table.insertRow();
    row.insertCell().textContent = word;
    row.insertCell().textContent = n;
  }
  $(".result", el).replaceChildren(summary, table);
}

function watch(jobId, title) {
  const el = card(jobId, title);
  const mine = (seen.jobs[jobId] = { firstId: null, ids: [], holes: 0, resyncs: 0, gateways: [] });
  client.watch(jobId, {
    onState(job, { resync }) {
      // The job as of event job.last_event_id; every later event follows.
      if (resync) mine.resyncs += 1;
      if (mine.firstId === null || resync) {
        mine.firstId = job.last_event_id;
        mine.ids = [];
      }
      render(el, job);
      if (job.status === "completed") showResult(el, job.result);
    },
    onEvent(event) {
      const last = mine.ids.length ? mine.ids[mine.ids.length - 1] : mine.firstId;
      if (event.id !== last + 1) mine.holes += 1; // never happens: ids are consecutive
      mine.ids.push(event.id);
      render(el, event.data);
      if (event.type === "job_completed") showResult(el, event.data.result);
    },
    onStatus(s) {
      if (s.state === "connected") mine.gateways.push(s.url);
      $(".connection", el).textContent =
        s.state === "connected" ? `live from ${s.url}` : s.state === "stopped" ? "" : `${s.state}…`;
    },
    onRefused(_id, refusal) {
      problem(`${title}: ${refusal.message}`);
    },
    onError(error) {
      problem(error.message);
    },
  });
}

$("#start").addEventListener("submit", async (e) => {
  e.preventDefault();
  const folder = $("#folder").value;
  const answer = await fetch("/api/jobs", {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ folder }),
  });
  if (!answer.ok) return problem(`could not start: ${answer.status} ${await answer.text()}`);
  const { job_id } = await answer.json();
  watch(job_id, folder === "." ? "all documents" : folder);
});

// The user's latest jobs, oldest first (each card goes on top).
for (const job of (await (await fetch("/api/jobs")).json()).reverse()) {
  const folder = job.params.args ? job.params.args[0] : job.kind;
  watch(job.id, folder === "." ? "all documents" : folder);
}
