//! `GET /metrics` in the Prometheus text format, and the request counter
//! middleware.
//!
//! Series: connections by transport, messages sent, the end-to-end delivery
//! latency histogram (publish → written to a socket), slow-consumer
//! disconnects, live-feed errors and recoveries (with the log reads they
//! made), events published through the API by type, HTTP requests by route
//! and status, watched jobs, queue depth and pending entries.
//!
//! Why not the `metrics` crate: its recorder is process-global, and the
//! tests run several servers in one process and check each one's figures.
//! Per-instance atomics in `AppState` keep them apart, and the text format
//! is a few lines to write.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use axum::extract::{MatchedPath, Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::state::AppState;

/// Upper bounds of the latency buckets, in seconds.
const BUCKETS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// A Prometheus histogram with fixed buckets.
#[derive(Debug, Default)]
pub struct Histogram {
    /// Observations per bucket (not cumulative), the last one for +Inf.
    counts: [AtomicU64; BUCKETS.len() + 1],
    /// Sum of observations, in microseconds.
    sum_micros: AtomicU64,
}

impl Histogram {
    pub fn observe(&self, seconds: f64) {
        let slot = BUCKETS
            .iter()
            .position(|b| seconds <= *b)
            .unwrap_or(BUCKETS.len());
        self.counts[slot].fetch_add(1, Ordering::Relaxed);
        self.sum_micros
            .fetch_add((seconds * 1e6).max(0.0) as u64, Ordering::Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut cumulative = 0;
        for (i, bound) in BUCKETS.iter().enumerate() {
            cumulative += self.counts[i].load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {cumulative}");
        }
        cumulative += self.counts[BUCKETS.len()].load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {cumulative}");
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum {sum}\n{name}_count {cumulative}");
    }
}

/// Counts every request by its route (the pattern, not the path) and status.
pub async fn count_requests(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let response = next.run(request).await;
    let status = response.status().as_u16();
    *lock(&state.stats.http_requests)
        .entry((route, status))
        .or_default() += 1;
    response
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// `GET /metrics`.
pub async fn render(State(state): State<AppState>) -> Response {
    let stats = &state.stats;
    let mut out = String::with_capacity(4096);
    let series = |out: &mut String, name: &str, kind: &str, help: &str, samples: &[(&str, u64)]| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (labels, value) in samples {
            let _ = writeln!(out, "{name}{labels} {value}");
        }
    };
    series(
        &mut out,
        "jobwire_connections",
        "gauge",
        "Open client connections, by transport.",
        &[
            (
                r#"{transport="websocket"}"#,
                stats.ws_connections.load(Ordering::Relaxed),
            ),
            (
                r#"{transport="sse"}"#,
                stats.sse_connections.load(Ordering::Relaxed),
            ),
            (r#"{transport="http"}"#, state.http.open() as u64),
        ],
    );
    series(
        &mut out,
        "jobwire_messages_sent_total",
        "counter",
        "Messages written to client connections.",
        &[("", stats.messages_sent.load(Ordering::Relaxed))],
    );
    series(
        &mut out,
        "jobwire_slow_consumer_disconnects_total",
        "counter",
        "Connections closed because their outbound queue overflowed.",
        &[("", stats.slow_disconnects.load(Ordering::Relaxed))],
    );
    series(
        &mut out,
        "jobwire_live_feed_errors_total",
        "counter",
        "Failed reads of the live feed (Redis errors; each is retried).",
        &[("", state.tailer.errors())],
    );
    series(
        &mut out,
        "jobwire_live_feed_reconnects_total",
        "counter",
        "Times the live feed was read again after failing (Redis came back).",
        &[("", state.tailer.reconnects())],
    );
    series(
        &mut out,
        "jobwire_live_feed_recoveries_total",
        "counter",
        "Times live events that may have been missed (a feed gap, a reopened feed) were re-read from the watched jobs' logs.",
        &[("", state.tailer.recoveries())],
    );
    series(
        &mut out,
        "jobwire_recovery_log_reads_total",
        "counter",
        "Job log reads made by those recoveries: about one per watched job, whatever the number of connections.",
        &[("", state.tailer.recovery_reads())],
    );
    series(
        &mut out,
        "jobwire_recovery_rechecks_total",
        "counter",
        "Jobs a recovery could not read for all of their watchers (resume point trimmed, job deleted), so each watcher re-read it by itself.",
        &[("", state.tailer.recovery_rechecks())],
    );
    series(
        &mut out,
        "jobwire_watched_jobs",
        "gauge",
        "Jobs with at least one watcher on this instance.",
        &[("", state.hub.watched_jobs() as u64)],
    );
    series(
        &mut out,
        "jobwire_live_feed_up",
        "gauge",
        "1 while the live feed is being read.",
        &[("", u64::from(state.tailer.is_up()))],
    );
    if let Ok(queue) = state.queue.queue_stats().await {
        series(
            &mut out,
            "jobwire_queue_waiting",
            "gauge",
            "Queued jobs not yet claimed by a worker.",
            &[("", queue.waiting)],
        );
        series(
            &mut out,
            "jobwire_queue_pending",
            "gauge",
            "Claimed, unacknowledged queue entries.",
            &[("", queue.pending)],
        );
    }
    if let Ok(health) = state.store.health().await {
        if let Some(bytes) = health.used_memory_bytes {
            series(
                &mut out,
                "jobwire_store_used_memory_bytes",
                "gauge",
                "Memory the store reports using (Redis used_memory), sampled at each scrape.",
                &[("", bytes)],
            );
        }
        let jobs = health.jobs;
        series(
            &mut out,
            "jobwire_jobs",
            "gauge",
            "Unfinished jobs, by status.",
            &[
                (r#"{status="queued"}"#, jobs.queued),
                (r#"{status="running"}"#, jobs.running),
            ],
        );
        series(
            &mut out,
            "jobwire_jobs_finished_total",
            "counter",
            "Jobs that finished, by status.",
            &[
                (r#"{status="completed"}"#, jobs.completed),
                (r#"{status="failed"}"#, jobs.failed),
                (r#"{status="cancelled"}"#, jobs.cancelled),
            ],
        );
        series(
            &mut out,
            "jobwire_live_feed_entries",
            "gauge",
            "Entries in the live feed over all partitions, sampled at each scrape.",
            &[("", health.live_entries)],
        );
    }
    stats.delivery_latency.render(
        &mut out,
        "jobwire_delivery_latency_seconds",
        "From publish to written to a client socket.",
    );
    labelled(
        &mut out,
        "jobwire_events_published_total",
        "Events published through the HTTP API, by type.",
        lock(&stats.published)
            .iter()
            .map(|(kind, n)| (format!("type=\"{kind}\""), *n)),
    );
    labelled(
        &mut out,
        "jobwire_http_requests_total",
        "HTTP requests by route and status.",
        lock(&stats.http_requests)
            .iter()
            .map(|((route, status), n)| (format!("route=\"{route}\",status=\"{status}\""), *n)),
    );
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out).into_response()
}

/// A counter with one sample per label set.
fn labelled(
    out: &mut String,
    name: &str,
    help: &str,
    samples: impl Iterator<Item = (String, u64)>,
) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
    for (labels, n) in samples {
        let _ = writeln!(out, "{name}{{{labels}}} {n}");
    }
}
