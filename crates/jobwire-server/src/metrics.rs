//! `GET /metrics` in the Prometheus (OpenMetrics) text format, rendered by
//! `prometheus-client` from a registry of this instance, and the request
//! counter middleware.
//!
//! Series: connections by transport, messages sent, the end-to-end delivery
//! latency histogram (publish → written to a socket), slow-consumer
//! disconnects, live-feed errors and recoveries (with the log reads they
//! made), events published through the API by type, HTTP requests by route
//! and status, watched jobs, queue depth and pending entries, jobs by
//! status, and the store's memory and live-feed length.
//!
//! A registry per instance, not the `metrics` crate's process-global
//! recorder: tests run several servers in one process and check each one's
//! figures. Figures that other parts already count (the tailer's health,
//! the Hub, the listener) or that live in the store are sampled at each
//! scrape by a collector; the delivery histogram is lock-free atomics (it is
//! observed for every message written), encoded through the registry.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use axum::extract::{MatchedPath, Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use jobwire_core::{QueueStats, StoreHealth};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    DescriptorEncoder, EncodeLabelSet, EncodeLabelValue, EncodeMetric, MetricEncoder, NoLabelSet,
};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::Registry;

use crate::state::AppState;

/// Upper bounds of the latency buckets, in seconds.
const BUCKETS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// A Prometheus histogram with fixed buckets, on atomics: observed for
/// every message written, so no lock (`prometheus-client`'s own histogram
/// takes one per observation).
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
}

impl TypedMetric for Histogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for Histogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        // Per bucket, not cumulative: the encoder sums them up; the last
        // bound is `f64::MAX`, which it writes as `+Inf`.
        let buckets: Vec<(f64, u64)> = BUCKETS
            .iter()
            .copied()
            .chain([f64::MAX])
            .zip(&self.counts)
            .map(|(bound, n)| (bound, n.load(Ordering::Relaxed)))
            .collect();
        let count = buckets.iter().map(|(_, n)| n).sum();
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        encoder.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
enum Transport {
    websocket,
    sse,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TransportLabel {
    transport: Transport,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    route: String,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TypeLabel {
    r#type: &'static str,
}

/// This instance's metrics.
#[derive(Debug)]
pub struct Stats {
    registry: Registry,
    connections: Family<TransportLabel, Gauge>,
    messages_sent: Counter,
    slow_disconnects: Counter,
    delivery_latency: Arc<Histogram>,
    http_requests: Family<RequestLabels, Counter>,
    published: Family<TypeLabel, Counter>,
    schedule_fires: Counter,
    schedule_skips: Counter,
    sampled: Arc<Sampled>,
}

impl Default for Stats {
    fn default() -> Stats {
        let mut registry = Registry::default();
        let connections = Family::<TransportLabel, Gauge>::default();
        let messages_sent = Counter::default();
        let slow_disconnects = Counter::default();
        let delivery_latency = Arc::<Histogram>::default();
        let http_requests = Family::<RequestLabels, Counter>::default();
        let published = Family::<TypeLabel, Counter>::default();
        let sampled = Arc::<Sampled>::default();
        let schedule_fires = Counter::default();
        let schedule_skips = Counter::default();
        registry.register(
            "jobwire_connections",
            "Open client connections, by transport",
            connections.clone(),
        );
        registry.register(
            "jobwire_messages_sent",
            "Messages written to client connections",
            messages_sent.clone(),
        );
        registry.register(
            "jobwire_slow_consumer_disconnects",
            "Connections closed because their outbound queue overflowed",
            slow_disconnects.clone(),
        );
        registry.register(
            "jobwire_delivery_latency_seconds",
            "From publish to written to a client socket",
            ArcMetric(Arc::clone(&delivery_latency)),
        );
        registry.register(
            "jobwire_http_requests",
            "HTTP requests by route and status",
            http_requests.clone(),
        );
        registry.register(
            "jobwire_events_published",
            "Events published through the HTTP API, by type (built-in types; every custom one counts as other)",
            published.clone(),
        );
        registry.register(
            "jobwire_schedule_fires",
            "Jobs this process created for cron schedules' ticks",
            schedule_fires.clone(),
        );
        registry.register(
            "jobwire_schedule_ticks_skipped",
            "Cron ticks this process passed over (missed = skip)",
            schedule_skips.clone(),
        );
        registry.register_collector(Box::new(Arc::clone(&sampled)));
        Stats {
            schedule_fires,
            schedule_skips,
            registry,
            connections,
            messages_sent,
            slow_disconnects,
            delivery_latency,
            http_requests,
            published,
            sampled,
        }
    }
}

/// An `Arc` of a metric, registered while the owner keeps observing it.
#[derive(Debug)]
struct ArcMetric<M>(Arc<M>);

impl<M: EncodeMetric> EncodeMetric for ArcMetric<M> {
    fn encode(&self, encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        self.0.encode(encoder)
    }

    fn metric_type(&self) -> MetricType {
        self.0.metric_type()
    }
}

/// Counts one open connection while it lives.
#[derive(Debug)]
pub struct ConnectionGauge(Gauge);

impl Drop for ConnectionGauge {
    fn drop(&mut self) {
        self.0.dec();
    }
}

impl Stats {
    /// A WebSocket connection, counted until the guard drops.
    pub fn websocket(&self) -> ConnectionGauge {
        self.connection(Transport::websocket)
    }

    /// An SSE stream, counted until the guard drops.
    pub fn sse(&self) -> ConnectionGauge {
        self.connection(Transport::sse)
    }

    fn connection(&self, transport: Transport) -> ConnectionGauge {
        let gauge = self
            .connections
            .get_or_create(&TransportLabel { transport })
            .clone();
        gauge.inc();
        ConnectionGauge(gauge)
    }

    /// `n` messages were written to a client.
    pub fn sent(&self, n: u64) {
        self.messages_sent.inc_by(n);
    }

    /// What a round of the promoter did (`settle::keep_promoting`).
    pub fn record_round(&self, round: jobwire_core::settle::Round) {
        self.schedule_fires.inc_by(round.fired.created as u64);
        self.schedule_skips.inc_by(round.fired.skipped as u64);
    }

    /// A slow consumer was cut off.
    pub fn slow_disconnect(&self) {
        self.slow_disconnects.inc();
    }

    /// An event published at `published` reached a socket now.
    pub fn delivered(&self, published: jobwire_core::Timestamp) {
        let now = jobwire_core::Timestamp::now().unix_millis();
        let ms = (now - published.unix_millis()).max(0) as f64;
        self.delivery_latency.observe(ms / 1000.0);
    }

    /// Events of `kind` (a built-in type's name, or `other`) were published.
    pub fn published(&self, kind: &'static str) {
        self.published
            .get_or_create(&TypeLabel { r#type: kind })
            .inc();
    }
}

/// Figures counted elsewhere or kept in the store, taken at each scrape.
#[derive(Debug, Default)]
struct Sampled {
    at_scrape: Mutex<Snapshot>,
}

#[derive(Debug, Default)]
struct Snapshot {
    http_connections: u64,
    tailer: [u64; 5],
    watched_jobs: u64,
    live_feed_up: bool,
    queue: Option<QueueStats>,
    store: Option<StoreHealth>,
    queues: Option<Vec<jobwire_core::QueueOverview>>,
}

impl Collector for Sampled {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        use MetricType::{Counter, Gauge};
        let s = self
            .at_scrape
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let e = &mut encoder;
        one(
            e,
            Gauge,
            "jobwire_http_connections",
            "Open plain HTTP connections (WebSocket and SSE ones are jobwire_connections)",
            s.http_connections,
        )?;
        one(
            e,
            Gauge,
            "jobwire_watched_jobs",
            "Jobs with at least one watcher on this instance",
            s.watched_jobs,
        )?;
        one(
            e,
            Gauge,
            "jobwire_live_feed_up",
            "1 while the live feed is being read",
            u64::from(s.live_feed_up),
        )?;
        if let Some(queue) = s.queue {
            one(
                e,
                Gauge,
                "jobwire_queue_waiting",
                "Queued jobs not yet claimed by a worker",
                queue.waiting,
            )?;
            one(
                e,
                Gauge,
                "jobwire_queue_pending",
                "Claimed, unacknowledged queue entries",
                queue.pending,
            )?;
        }
        if let Some(store) = &s.store {
            if let Some(bytes) = store.used_memory_bytes {
                one(
                    e,
                    Gauge,
                    "jobwire_store_used_memory_bytes",
                    "Memory the store reports using (Redis used_memory), sampled at each scrape",
                    bytes,
                )?;
            }
            one(
                e,
                Gauge,
                "jobwire_live_feed_entries",
                "Entries in the live feed over all partitions, sampled at each scrape",
                store.live_entries,
            )?;
            by_status(
                e,
                Gauge,
                "jobwire_jobs",
                "Unfinished jobs, by status",
                &[
                    ("queued", store.jobs.queued),
                    ("running", store.jobs.running),
                ],
            )?;
        }
        let [errors, reconnects, recoveries, reads, rechecks] = s.tailer;
        one(
            e,
            Counter,
            "jobwire_live_feed_errors",
            "Failed reads of the live feed (Redis errors; each is retried)",
            errors,
        )?;
        one(
            e,
            Counter,
            "jobwire_live_feed_reconnects",
            "Times the live feed was read again after failing (Redis came back)",
            reconnects,
        )?;
        one(
            e,
            Counter,
            "jobwire_live_feed_recoveries",
            "Times live events that may have been missed (a feed gap, a reopened feed) were re-read from the watched jobs' logs",
            recoveries,
        )?;
        one(
            e,
            Counter,
            "jobwire_recovery_log_reads",
            "Job log reads made by those recoveries: about one per watched job, whatever the number of connections",
            reads,
        )?;
        one(
            e,
            Counter,
            "jobwire_recovery_rechecks",
            "Jobs a recovery could not read for all of their watchers (resume point trimmed, job deleted), so each watcher re-read it by itself",
            rechecks,
        )?;
        if let Some(queues) = &s.queues {
            let mut jobs = e.encode_descriptor(
                "jobwire_queue_jobs",
                "Jobs per queue: waiting (queued, not yet taken), scheduled (waiting for their time), running (taken, not yet acknowledged); sampled at each scrape",
                None,
                Gauge,
            )?;
            for q in queues {
                for (state, n) in [
                    ("waiting", q.waiting),
                    ("scheduled", q.scheduled),
                    ("running", q.running),
                ] {
                    sample(
                        Gauge,
                        n,
                        jobs.encode_family(&[("queue", q.name.as_str()), ("state", state)])?,
                    )?;
                }
            }
            let mut paused = e.encode_descriptor(
                "jobwire_queue_paused",
                "1 while a queue is paused",
                None,
                Gauge,
            )?;
            for q in queues {
                sample(
                    Gauge,
                    u64::from(q.paused),
                    paused.encode_family(&[("queue", q.name.as_str())])?,
                )?;
            }
        }
        if let Some(store) = &s.store {
            by_status(
                e,
                Counter,
                "jobwire_jobs_finished",
                "Jobs that finished, by status",
                &[
                    ("completed", store.jobs.completed),
                    ("failed", store.jobs.failed),
                    ("cancelled", store.jobs.cancelled),
                ],
            )?;
        }
        Ok(())
    }
}

/// One sampled value as a gauge or a counter.
fn sample(kind: MetricType, value: u64, to: MetricEncoder) -> Result<(), std::fmt::Error> {
    match kind {
        MetricType::Counter => ConstCounter::new(value).encode(to),
        _ => ConstGauge::new(i64::try_from(value).unwrap_or(i64::MAX)).encode(to),
    }
}

/// A family with one unlabelled sample.
fn one(
    encoder: &mut DescriptorEncoder,
    kind: MetricType,
    name: &str,
    help: &str,
    value: u64,
) -> Result<(), std::fmt::Error> {
    sample(
        kind,
        value,
        encoder.encode_descriptor(name, help, None, kind)?,
    )
}

/// A family with a sample per status: described once (a second HELP/TYPE
/// for the same name would make the whole page invalid to Prometheus).
fn by_status(
    encoder: &mut DescriptorEncoder,
    kind: MetricType,
    name: &str,
    help: &str,
    samples: &[(&str, u64)],
) -> Result<(), std::fmt::Error> {
    let mut described = encoder.encode_descriptor(name, help, None, kind)?;
    for (status, value) in samples {
        sample(
            kind,
            *value,
            described.encode_family(&[("status", *status)])?,
        )?;
    }
    Ok(())
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
    state
        .stats
        .http_requests
        .get_or_create(&RequestLabels { route, status })
        .inc();
    response
}

/// `GET /metrics`.
pub async fn render(State(state): State<AppState>) -> Response {
    let tailer = &state.tailer;
    let snapshot = Snapshot {
        http_connections: state.http.open() as u64,
        tailer: [
            tailer.errors(),
            tailer.reconnects(),
            tailer.recoveries(),
            tailer.recovery_reads(),
            tailer.recovery_rechecks(),
        ],
        watched_jobs: state.hub.watched_jobs() as u64,
        live_feed_up: tailer.is_up(),
        queue: state.queue.queue_stats().await.ok(),
        store: state.store.health().await.ok(),
        queues: state.queue.queue_overview().await.ok(),
    };
    *state
        .stats
        .sampled
        .at_scrape
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner()) = snapshot;
    let mut out = String::with_capacity(8192);
    if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &state.stats.registry) {
        tracing::error!(error = %e, "cannot render the metrics");
    }
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        out,
    )
        .into_response()
}
