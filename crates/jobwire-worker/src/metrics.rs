//! A worker's counters in the Prometheus (OpenMetrics) text format, rendered
//! by `prometheus-client`. `jobwire worker
//! --metrics-bind` serves them; a program embedding a [`crate::Worker`] can
//! serve [`crate::Worker::render_metrics`] from its own endpoint.

use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::runtime::StatsSnapshot;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: String,
}

/// 5 ms to about 12 minutes, ×2.5 a bucket.
fn seconds() -> Histogram {
    Histogram::new(exponential_buckets(0.005, 2.5, 14))
}

/// How long jobs waited before they started here, and how long they ran
/// (per kind), as histograms. Clones share the same counts.
#[derive(Debug, Clone)]
pub struct Timings {
    wait: Histogram,
    run: Family<KindLabel, Histogram, fn() -> Histogram>,
}

impl Default for Timings {
    fn default() -> Timings {
        Timings {
            wait: seconds(),
            run: Family::new_with_constructor(seconds),
        }
    }
}

impl Timings {
    /// A job started here after waiting `d` since it became runnable.
    pub(crate) fn waited(&self, d: Duration) {
        self.wait.observe(d.as_secs_f64());
    }

    /// An attempt of `kind` ran `d` and ended here.
    pub(crate) fn ran(&self, kind: &str, d: Duration) {
        self.run
            .get_or_create(&KindLabel {
                kind: kind.to_owned(),
            })
            .observe(d.as_secs_f64());
    }
}

/// The worker's figures at one moment, encoded by `prometheus-client`.
#[derive(Debug)]
struct Figures {
    stats: StatsSnapshot,
    running: usize,
    concurrency: usize,
    /// Claims held back by a queue's limit, per queue.
    held_back: std::collections::BTreeMap<String, u64>,
}

impl Collector for Figures {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let s = &self.stats;
        let mut family = |name: &str, help: &str, label: &str, samples: &[(&str, u64)]| {
            let mut described = encoder.encode_descriptor(
                name,
                help,
                None,
                ConstCounter::new(0u64).metric_type(),
            )?;
            for (value, n) in samples {
                let labels = [(label.to_owned(), (*value).to_owned())];
                ConstCounter::new(*n).encode(described.encode_family(&labels)?)?;
            }
            Ok::<_, std::fmt::Error>(())
        };
        family(
            "jobwire_worker_claims",
            "Jobs this worker took: from the queue, or taken over from unresponsive workers (reclaimed)",
            "source",
            &[("queue", s.claimed), ("reclaimed", s.reclaimed)],
        )?;
        family(
            "jobwire_worker_jobs",
            "Jobs by how they ended here: completed; failed; cancelled while running; lost = taken over by another worker, or deleted, while running here; released = handed back to the queue at shutdown; dead_lettered = failed by this worker's reaper after too many attempts; retried = failed and scheduled for another attempt after a backoff",
            "outcome",
            &[
                ("completed", s.completed),
                ("failed", s.failed),
                ("cancelled", s.cancelled),
                ("lost", s.lost),
                ("released", s.released),
                ("dead_lettered", s.dead_lettered),
                ("retried", s.retried),
            ],
        )?;
        let events = ConstCounter::new(s.events);
        events.encode(encoder.encode_descriptor(
            "jobwire_worker_events_published",
            "Events published by this worker's jobs",
            None,
            events.metric_type(),
        )?)?;
        let promoted = ConstCounter::new(s.promoted);
        promoted.encode(encoder.encode_descriptor(
            "jobwire_worker_scheduled_promoted",
            "Scheduled jobs (delayed, or retries after a backoff) this worker queued when their time came",
            None,
            promoted.metric_type(),
        )?)?;
        let fires = ConstCounter::new(s.schedule_fires);
        fires.encode(encoder.encode_descriptor(
            "jobwire_worker_schedule_fires",
            "Jobs this worker created for cron schedules' ticks",
            None,
            fires.metric_type(),
        )?)?;
        let mut held = encoder.encode_descriptor(
            "jobwire_worker_limit_waits",
            "Claims of this worker that found a limited queue at its limit (no slot or no start to spare), per queue: the limit's rejections",
            None,
            ConstCounter::new(0u64).metric_type(),
        )?;
        for (queue, n) in &self.held_back {
            ConstCounter::new(*n).encode(held.encode_family(&[("queue", queue.as_str())])?)?;
        }
        for (name, help, value) in [
            (
                "jobwire_worker_running_jobs",
                "Jobs running now",
                self.running,
            ),
            (
                "jobwire_worker_concurrency",
                "Jobs this worker runs at once at most",
                self.concurrency,
            ),
        ] {
            let gauge = ConstGauge::new(i64::try_from(value).unwrap_or(i64::MAX));
            gauge.encode(encoder.encode_descriptor(name, help, None, gauge.metric_type())?)?;
        }
        Ok(())
    }
}

pub(crate) fn render(
    stats: &StatsSnapshot,
    timings: &Timings,
    held_back: std::collections::BTreeMap<String, u64>,
    running: usize,
    concurrency: usize,
) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(Figures {
        stats: *stats,
        running,
        concurrency,
        held_back,
    }));
    registry.register(
        "jobwire_worker_wait_seconds",
        "How long jobs waited from when they became runnable (created, or their run_at) to their start here",
        timings.wait.clone(),
    );
    registry.register(
        "jobwire_worker_run_seconds",
        "How long attempts ran here, by kind (those that completed, failed or were cancelled)",
        timings.run.clone(),
    );
    let mut out = String::new();
    if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &registry) {
        tracing::error!(error = %e, "cannot render the worker's metrics");
    }
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
        let timings = Timings::default();
        timings.waited(Duration::from_millis(30));
        timings.ran("scan", Duration::from_secs(2));
        let held = std::collections::BTreeMap::from([("scan".to_owned(), 3)]);
        let text = render(&stats, &timings, held, 2, 8);
        for line in [
            "jobwire_worker_claims_total{source=\"queue\"} 7",
            "jobwire_worker_claims_total{source=\"reclaimed\"} 0",
            "jobwire_worker_jobs_total{outcome=\"completed\"} 5",
            "jobwire_worker_jobs_total{outcome=\"failed\"} 1",
            "jobwire_worker_jobs_total{outcome=\"dead_lettered\"} 0",
            "jobwire_worker_events_published_total 42",
            "jobwire_worker_running_jobs 2",
            "jobwire_worker_concurrency 8",
            "jobwire_worker_wait_seconds_count 1",
            "jobwire_worker_wait_seconds_bucket{le=\"0.03125\"} 1",
            "jobwire_worker_run_seconds_count{kind=\"scan\"} 1",
            "jobwire_worker_limit_waits_total{queue=\"scan\"} 3",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
    }
}
