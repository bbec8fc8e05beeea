//! The run's report: faults injected by kind, jobs, events delivered,
//! reconnects, resyncs, violations by kind with an example each, and the
//! time from each fault being lifted to the next event any client got.
//! [`Report::text`] for people, serde for `--json`.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

use crate::checker::Summary;
use crate::faults::FaultRecord;

/// Everything a run measured and found.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub seed: u64,
    pub schedule: String,
    /// Seconds of load and faults (`--duration`).
    pub duration_s: u64,
    /// Seconds the whole run took, drain and checks included.
    pub wall_s: f64,
    pub gateways: usize,
    pub workers: usize,
    pub jobs: Jobs,
    /// Watchers (client, job) by client kind.
    pub watchers: BTreeMap<String, usize>,
    /// Events received, by client kind.
    pub events: BTreeMap<String, usize>,
    pub events_total: usize,
    pub reconnects: usize,
    /// Reconnects by cause (close code, storm, expired token, …).
    pub reconnect_causes: BTreeMap<String, usize>,
    pub resyncs: usize,
    pub gone_notices: usize,
    /// Faults injected without error, by kind.
    pub faults: BTreeMap<String, usize>,
    pub fault_log: Vec<FaultRecord>,
    /// From a fault being lifted to the next event delivered to any client.
    pub recovery_ms: Recovery,
    pub violations: BTreeMap<String, Summary>,
    pub violation_count: usize,
    /// Where the processes' logs are.
    pub log_dir: String,
}

/// What became of the jobs.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Jobs {
    pub submitted: usize,
    pub create_failures: usize,
    pub completed: usize,
    pub failed: usize,
    pub cancelled: usize,
    /// 404 at the end: lost to a wipe or a rollback of their creation.
    pub gone: usize,
    pub unfinished: usize,
    /// Jobs whose final epoch is not the one they were created with.
    pub epoch_changed: usize,
}

/// Percentiles of recovery times.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Recovery {
    pub count: usize,
    pub p50: u64,
    pub p99: u64,
    pub max: u64,
    /// Faults after which no event was delivered at all.
    pub no_event_after: usize,
}

impl Recovery {
    /// From fault-lifted times and sorted delivery times (seconds).
    pub fn measure(faults: &[FaultRecord], deliveries: &[f64]) -> Recovery {
        let mut h = hdrhistogram::Histogram::<u64>::new(3).ok();
        let mut out = Recovery::default();
        for f in faults.iter().filter(|f| f.error.is_none()) {
            let at = deliveries.partition_point(|d| *d < f.lifted);
            match deliveries.get(at) {
                Some(d) => {
                    let ms = ((d - f.lifted) * 1000.0).round() as u64;
                    if let Some(h) = h.as_mut() {
                        let _ = h.record(ms);
                    }
                    out.count += 1;
                    out.max = out.max.max(ms);
                }
                None => out.no_event_after += 1,
            }
        }
        if let Some(h) = h.filter(|h| !h.is_empty()) {
            out.p50 = h.value_at_quantile(0.5);
            out.p99 = h.value_at_quantile(0.99);
        }
        out
    }
}

impl Report {
    /// The report for people.
    pub fn text(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "jobwire chaos: schedule {} seed {} duration {} s (wall {:.1} s), {} gateways, {} workers",
            self.schedule, self.seed, self.duration_s, self.wall_s, self.gateways, self.workers
        );
        let j = &self.jobs;
        let _ = writeln!(
            s,
            "jobs: {} submitted ({} creates failed): {} completed, {} failed, {} cancelled, {} gone, {} unfinished; {} changed epoch",
            j.submitted, j.create_failures, j.completed, j.failed, j.cancelled, j.gone, j.unfinished, j.epoch_changed
        );
        let _ = writeln!(s, "watchers: {}", join(&self.watchers));
        let _ = writeln!(
            s,
            "events delivered: {} ({}); reconnects {}, resyncs {}, gone notices {}",
            self.events_total,
            join(&self.events),
            self.reconnects,
            self.resyncs,
            self.gone_notices
        );
        let _ = writeln!(s, "reconnect causes: {}", join(&self.reconnect_causes));
        let _ = writeln!(s, "faults: {}", join(&self.faults));
        for f in self.fault_log.iter().filter(|f| f.error.is_some()) {
            let _ = writeln!(
                s,
                "  fault {} at {:.1} s FAILED: {}",
                f.kind.name(),
                f.at,
                f.error.as_deref().unwrap_or_default()
            );
        }
        let r = &self.recovery_ms;
        let _ = writeln!(
            s,
            "fault lifted -> next event delivered: p50 {} ms, p99 {} ms, max {} ms over {} faults ({} with no event after)",
            r.p50, r.p99, r.max, r.count, r.no_event_after
        );
        if self.violations.is_empty() {
            let _ = writeln!(s, "violations: none");
        } else {
            let _ = writeln!(s, "violations: {}", self.violation_count);
            for (kind, v) in &self.violations {
                let e = &v.example;
                let _ = writeln!(
                    s,
                    "  {kind}: {} (e.g. job {} client {}: {})",
                    v.count,
                    e.job,
                    e.client.as_deref().unwrap_or("-"),
                    e.detail
                );
            }
        }
        let _ = writeln!(s, "process logs: {}", self.log_dir);
        s
    }
}

/// A reconnect's reason, as a short cause for counting.
pub fn cause(reason: &str) -> String {
    let has = |s: &str| reason.contains(s);
    let cause = if reason == "storm" {
        "storm"
    } else if has("1013") {
        "1013 slow/overloaded"
    } else if has("4401") || has("token") {
        "token expired"
    } else if has("1001") {
        "1001 going away"
    } else if has("1011") {
        "1011 server error"
    } else if has("silent") {
        "silent connection"
    } else if has("unavailable") {
        "store unavailable"
    } else if has("hole") {
        "hole (Rust client)"
    } else {
        "connection lost"
    };
    cause.to_owned()
}

fn join(map: &BTreeMap<String, usize>) -> String {
    if map.is_empty() {
        return "none".to_owned();
    }
    map.iter()
        .map(|(k, v)| format!("{k} {v}"))
        .collect::<Vec<_>>()
        .join(", ")
}
