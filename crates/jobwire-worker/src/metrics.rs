//! A worker's counters in the Prometheus text format. `jobwire worker
//! --metrics-bind` serves them; a program embedding a [`crate::Worker`] can
//! serve [`crate::Worker::render_metrics`] from its own endpoint.

use std::fmt::Write as _;

use crate::runtime::StatsSnapshot;

pub(crate) fn render(stats: &StatsSnapshot, running: usize, concurrency: usize) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# HELP jobwire_worker_claims_total Jobs this worker took: from the queue, or taken over from unresponsive workers (reclaimed).\n\
         # TYPE jobwire_worker_claims_total counter\n\
         jobwire_worker_claims_total{{source=\"queue\"}} {}\n\
         jobwire_worker_claims_total{{source=\"reclaimed\"}} {}",
        stats.claimed, stats.reclaimed
    );
    let outcomes = [
        ("completed", stats.completed, "completed"),
        ("failed", stats.failed, "failed"),
        ("cancelled", stats.cancelled, "cancelled while running"),
        (
            "lost",
            stats.lost,
            "taken over by another worker, or deleted, while running here",
        ),
        (
            "released",
            stats.released,
            "handed back to the queue at shutdown",
        ),
        (
            "dead_lettered",
            stats.dead_lettered,
            "failed by this worker's reaper after too many attempts",
        ),
    ];
    let _ = writeln!(
        out,
        "# HELP jobwire_worker_jobs_total Jobs by how they ended here: {}.",
        outcomes
            .iter()
            .map(|(name, _, help)| format!("{name} = {help}"))
            .collect::<Vec<_>>()
            .join("; ")
    );
    let _ = writeln!(out, "# TYPE jobwire_worker_jobs_total counter");
    for (name, value, _) in outcomes {
        let _ = writeln!(
            out,
            "jobwire_worker_jobs_total{{outcome=\"{name}\"}} {value}"
        );
    }
    let _ = writeln!(
        out,
        "# HELP jobwire_worker_events_published_total Events published by this worker's jobs.\n\
         # TYPE jobwire_worker_events_published_total counter\n\
         jobwire_worker_events_published_total {}",
        stats.events
    );
    let _ = writeln!(
        out,
        "# HELP jobwire_worker_running_jobs Jobs running now.\n\
         # TYPE jobwire_worker_running_jobs gauge\n\
         jobwire_worker_running_jobs {running}"
    );
    let _ = writeln!(
        out,
        "# HELP jobwire_worker_concurrency Jobs this worker runs at once at most.\n\
         # TYPE jobwire_worker_concurrency gauge\n\
         jobwire_worker_concurrency {concurrency}"
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_series_is_rendered_with_its_value() {
        let stats = StatsSnapshot {
            claimed: 7,
            completed: 5,
            failed: 1,
            events: 42,
            ..StatsSnapshot::default()
        };
        let text = render(&stats, 2, 8);
        for line in [
            "jobwire_worker_claims_total{source=\"queue\"} 7",
            "jobwire_worker_claims_total{source=\"reclaimed\"} 0",
            "jobwire_worker_jobs_total{outcome=\"completed\"} 5",
            "jobwire_worker_jobs_total{outcome=\"failed\"} 1",
            "jobwire_worker_jobs_total{outcome=\"dead_lettered\"} 0",
            "jobwire_worker_events_published_total 42",
            "jobwire_worker_running_jobs 2",
            "jobwire_worker_concurrency 8",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
    }
}
