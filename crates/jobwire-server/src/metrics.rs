//! `GET /metrics` in the Prometheus text format.
//!
//! A first set of series: connections by transport, messages sent,
//! slow-consumer disconnects, watched jobs, queue depth and pending entries.
//! (The full SPEC §8 list, with the delivery-latency histogram, is still to
//! come.)

use std::fmt::Write;
use std::sync::atomic::Ordering;

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};

use crate::state::AppState;

/// `GET /metrics`.
pub async fn render(State(state): State<AppState>) -> Response {
    let stats = &state.stats;
    let mut out = String::with_capacity(1024);
    let mut series = |name: &str, kind: &str, help: &str, samples: &[(&str, u64)]| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (labels, value) in samples {
            let _ = writeln!(out, "{name}{labels} {value}");
        }
    };
    series(
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
        ],
    );
    series(
        "jobwire_messages_sent_total",
        "counter",
        "Messages written to client connections.",
        &[("", stats.messages_sent.load(Ordering::Relaxed))],
    );
    series(
        "jobwire_slow_consumer_disconnects_total",
        "counter",
        "Connections closed because their outbound queue overflowed.",
        &[("", stats.slow_disconnects.load(Ordering::Relaxed))],
    );
    series(
        "jobwire_watched_jobs",
        "gauge",
        "Jobs with at least one watcher on this instance.",
        &[("", state.hub.watched_jobs() as u64)],
    );
    series(
        "jobwire_live_feed_up",
        "gauge",
        "1 while the live feed is being read.",
        &[("", u64::from(state.tailer.is_up()))],
    );
    if let Ok(queue) = state.backend.queue_stats().await {
        series(
            "jobwire_queue_waiting",
            "gauge",
            "Queued jobs not yet claimed by a worker.",
            &[("", queue.waiting)],
        );
        series(
            "jobwire_queue_pending",
            "gauge",
            "Claimed, unacknowledged queue entries.",
            &[("", queue.pending)],
        );
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out).into_response()
}
