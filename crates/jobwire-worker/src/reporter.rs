//! The progress reporter: a handler's progress calls become events,
//! published in order, exactly once, through the backend's atomic publish.
//!
//! A report call only puts its event in a bounded buffer and returns; one
//! publisher task per job takes whatever has accumulated (up to
//! [`MAX_BATCH`]) and publishes it as one batch. So a busy job costs one
//! round trip per batch, not per event, and a handler is never slowed down
//! by the store's latency until the buffer is full.
//!
//! Exactly once: the publisher numbers the events `n = 1, 2, 3 …` within the
//! attempt and sends each with its fence `(attempt, n)`. When a publish fails
//! because the store is unreachable — even if it did apply the batch before
//! the connection broke — the same batch is sent again with the same
//! numbers, and the store skips the ones it already has. While the store is
//! unreachable events wait in the buffer, in order; when the buffer is full,
//! report calls wait. Nothing is dropped or reordered.
//!
//! Stopping: the publish answer carries the job's cancel flag. Once it is
//! set, or the job is lost to another worker, every report call returns
//! [`Stopped`], so a handler using `?` stops at its next report.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use jobwire_core::{BackendError, Backoff, EventType, Fence, JobId, JobStore, NewEvent};
use serde_json::{json, Map, Value};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::handler::{JobError, StopReason, Stopped};

/// The most events published in one call.
pub const MAX_BATCH: usize = 256;

/// Default size of a job's event buffer.
pub const DEFAULT_BUFFER: usize = 10_000;

/// How long the publisher waits before retrying an unreachable store, at
/// first and at most.
const RETRY_FIRST: Duration = Duration::from_millis(50);
const RETRY_MAX: Duration = Duration::from_secs(2);

/// Whether a job should go on, shared by its reporter, its lease keeper and
/// the runtime. The first reason to stop wins.
#[derive(Debug, Default)]
pub(crate) struct Control {
    stopped: CancellationToken,
    reason: OnceLock<StopReason>,
}

impl Control {
    pub(crate) fn stop(&self, reason: StopReason) {
        if self.reason.set(reason.clone()).is_ok() {
            tracing::debug!(%reason, "job stopping");
        }
        self.stopped.cancel();
    }

    pub(crate) fn reason(&self) -> Option<&StopReason> {
        self.reason.get()
    }

    pub(crate) async fn stopped(&self) {
        self.stopped.cancelled().await;
    }
}

/// Publishes one attempt's progress. Cheap to clone; clones share the
/// buffer and keep the order of calls.
#[derive(Clone)]
pub struct Reporter {
    tx: mpsc::Sender<NewEvent>,
    shared: Arc<Shared>,
}

struct Shared {
    job: JobId,
    control: Arc<Control>,
    /// Events accepted into the buffer.
    sent: AtomicU64,
    /// Events published (or skipped by the store as already published), as
    /// counted by the publisher task. Closed when that task ends.
    published: watch::Receiver<u64>,
}

impl fmt::Debug for Reporter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Reporter")
            .field("job", &self.shared.job)
            .field("sent", &self.shared.sent.load(Ordering::Relaxed))
            .field("published", &*self.shared.published.borrow())
            .field("stopped", &self.shared.control.reason())
            .finish()
    }
}

impl Reporter {
    /// A reporter for `attempt` of `job`, with its publisher task. Its fences
    /// count from `n = 1`, so there must be one reporter per attempt.
    ///
    /// The worker runtime makes one per job it runs; a program driving a
    /// job by other means (say, an external job) can make its own.
    pub fn new(store: Arc<dyn JobStore>, job: JobId, attempt: u32, buffer: usize) -> Reporter {
        Reporter::with_control(store, job, attempt, buffer, Arc::default())
    }

    pub(crate) fn with_control(
        store: Arc<dyn JobStore>,
        job: JobId,
        attempt: u32,
        buffer: usize,
        control: Arc<Control>,
    ) -> Reporter {
        let (tx, rx) = mpsc::channel(buffer.max(1));
        let (published_tx, published) = watch::channel(0);
        let publisher = Publisher {
            store,
            job: job.clone(),
            attempt,
            control: Arc::clone(&control),
            published: published_tx,
        };
        tokio::spawn(publisher.run(rx));
        Reporter {
            tx,
            shared: Arc::new(Shared {
                job,
                control,
                sent: AtomicU64::new(0),
                published,
            }),
        }
    }

    /// `file_processing`: work on `file` starts.
    ///
    /// # Errors
    /// [`Stopped`] once the job must stop.
    pub async fn file_processing(&self, file: &str) -> Result<(), Stopped> {
        self.report(EventType::FileProcessing, json!({ "file": file }))
            .await
    }

    /// `file_completed`: `file` is done. `details` (an object, e.g. its hash
    /// and size; `Value::Null` for none) travel in the event's data.
    ///
    /// # Errors
    /// [`Stopped`] once the job must stop.
    pub async fn file_completed(&self, file: &str, details: Value) -> Result<(), Stopped> {
        let mut data = object(details);
        data.insert("file".to_owned(), file.into());
        self.push(EventType::FileCompleted, data).await
    }

    /// `error` about one file: it failed, the job goes on. Counts in
    /// `failed_files`.
    ///
    /// # Errors
    /// [`Stopped`] once the job must stop.
    pub async fn file_error(&self, file: &str, message: impl fmt::Display) -> Result<(), Stopped> {
        self.report(
            EventType::Error,
            json!({ "file": file, "message": message.to_string() }),
        )
        .await
    }

    /// `error` not about a file: something went wrong, the job goes on.
    ///
    /// # Errors
    /// [`Stopped`] once the job must stop.
    pub async fn error(&self, message: impl fmt::Display) -> Result<(), Stopped> {
        self.report(EventType::Error, json!({ "message": message.to_string() }))
            .await
    }

    /// `progress`: `current` of `total` done (the job's `progress` becomes
    /// the percentage), with an optional message (empty for none).
    ///
    /// # Errors
    /// [`Stopped`] once the job must stop.
    pub async fn progress(&self, current: u64, total: u64, message: &str) -> Result<(), Stopped> {
        let mut data = Map::new();
        data.insert("current".to_owned(), current.into());
        data.insert("total".to_owned(), total.into());
        if !message.is_empty() {
            data.insert("message".to_owned(), message.into());
        }
        self.push(EventType::Progress, data).await
    }

    /// A `progress` event announcing how many files the job will process.
    ///
    /// # Errors
    /// [`Stopped`] once the job must stop.
    pub async fn total_files(&self, total: u64, message: &str) -> Result<(), Stopped> {
        self.report(
            EventType::Progress,
            json!({ "total_files": total, "message": message }),
        )
        .await
    }

    /// An event of a type of the application's own (`[a-z0-9_.]`, 1–64
    /// characters); clients pass unknown types through. `data` must be an
    /// object (or null).
    ///
    /// # Errors
    /// A [`JobError`] for an invalid or built-in type, or data that is
    /// not an object; [`Stopped`] once the job must stop.
    pub async fn custom(&self, kind: &str, data: Value) -> Result<(), JobError> {
        let kind = EventType::parse(kind).map_err(JobError::msg)?;
        if !matches!(kind, EventType::Custom(_)) {
            return Err(JobError::msg(format!(
                "{kind} is a built-in event type; use the reporter's method for it"
            )));
        }
        if !(data.is_object() || data.is_null()) {
            return Err(JobError::msg("custom event data must be a JSON object"));
        }
        Ok(self.report(kind, data).await?)
    }

    /// Whether the job must stop (cancelled, lost or shutting down).
    pub fn is_stopped(&self) -> bool {
        self.shared.control.reason().is_some()
    }

    /// Whether cancellation of the job was requested.
    pub fn is_cancelled(&self) -> bool {
        self.shared.control.reason() == Some(&StopReason::Cancelled)
    }

    /// `Ok` while the job may go on: for handlers that work a long time
    /// between reports.
    ///
    /// # Errors
    /// [`Stopped`] once the job must stop.
    pub fn check(&self) -> Result<(), Stopped> {
        match self.shared.control.reason() {
            Some(reason) => Err(Stopped(reason.clone())),
            None => Ok(()),
        }
    }

    /// Resolves when the job must stop; for `tokio::select!` around work that
    /// does not report.
    pub async fn stopped(&self) {
        self.shared.control.stopped().await;
    }

    /// Waits until every event reported so far is published.
    ///
    /// # Errors
    /// [`Stopped`] when the publisher gave up (the job was lost or
    /// deleted); the events not yet published never will be.
    pub async fn flush(&self) -> Result<(), Stopped> {
        let target = self.shared.sent.load(Ordering::Acquire);
        let mut published = self.shared.published.clone();
        let reached = published.wait_for(|&n| n >= target).await.is_ok();
        if reached {
            Ok(())
        } else {
            Err(self.stopped_error())
        }
    }

    /// Events accepted so far.
    pub fn reported(&self) -> u64 {
        self.shared.sent.load(Ordering::Relaxed)
    }

    async fn report(&self, kind: EventType, data: Value) -> Result<(), Stopped> {
        self.push(kind, object(data)).await
    }

    async fn push(&self, kind: EventType, data: Map<String, Value>) -> Result<(), Stopped> {
        self.check()?;
        self.enqueue(kind, data).await
    }

    /// Enqueues an event even though the job is stopping: the runtime's
    /// closing event (`job_cancelled`, `job_retrying` on shutdown, …).
    pub(crate) async fn push_final(&self, kind: EventType, data: Value) -> Result<(), Stopped> {
        self.enqueue(kind, object(data)).await
    }

    async fn enqueue(&self, kind: EventType, data: Map<String, Value>) -> Result<(), Stopped> {
        let event = NewEvent {
            kind,
            data,
            fence: None,
        };
        self.tx
            .send(event)
            .await
            .map_err(|_| self.stopped_error())?;
        self.shared.sent.fetch_add(1, Ordering::AcqRel);
        Ok(())
    }

    fn stopped_error(&self) -> Stopped {
        Stopped(
            self.shared
                .control
                .reason()
                .cloned()
                .unwrap_or_else(|| StopReason::Lost("the reporter stopped".to_owned())),
        )
    }
}

/// Payload objects: an object as is, null as empty, anything else under
/// `value`.
fn object(data: Value) -> Map<String, Value> {
    match data {
        Value::Object(map) => map,
        Value::Null => Map::new(),
        other => Map::from_iter([("value".to_owned(), other)]),
    }
}

/// The task that publishes a reporter's buffer.
struct Publisher {
    store: Arc<dyn JobStore>,
    job: JobId,
    attempt: u32,
    control: Arc<Control>,
    published: watch::Sender<u64>,
}

impl Publisher {
    async fn run(self, mut rx: mpsc::Receiver<NewEvent>) {
        let mut n = 0u64;
        let mut batch = Vec::with_capacity(MAX_BATCH);
        let mut backoff = Backoff::new(RETRY_FIRST, RETRY_MAX);
        loop {
            if batch.is_empty() {
                if rx.recv_many(&mut batch, MAX_BATCH).await == 0 {
                    return; // every reporter is gone and the buffer is empty
                }
                for event in &mut batch {
                    n += 1;
                    event.fence = Some(Fence {
                        attempt: self.attempt,
                        n,
                    });
                }
            }
            // The batch is kept until it is known to be published: a retry
            // sends the same fences, so nothing is applied twice.
            match self.store.publish(&self.job, &batch).await {
                Ok(outcome) => {
                    let failures = backoff.reset();
                    if failures > 0 {
                        tracing::info!(job = %self.job, failures, "publishing again after an outage");
                    }
                    let count = batch.len() as u64;
                    batch.clear();
                    self.published.send_modify(|p| *p += count);
                    if outcome.cancel_requested {
                        self.control.stop(StopReason::Cancelled);
                    }
                }
                Err(e) if e.is_retryable() => {
                    let wait = backoff.failed();
                    if backoff.worth_logging() {
                        tracing::warn!(job = %self.job, failures = backoff.failures(), error = %e,
                            buffered = batch.len() + rx.len(),
                            "cannot publish progress; keeping it and retrying");
                    }
                    tokio::time::sleep(wait).await;
                }
                Err(e) => {
                    let reason = match &e {
                        BackendError::NotFound(_) => StopReason::Gone,
                        BackendError::Fenced { current, .. } => StopReason::Lost(format!(
                            "attempt {} was superseded by attempt {current}",
                            self.attempt
                        )),
                        other => StopReason::Lost(format!("the store refused an event: {other}")),
                    };
                    tracing::warn!(job = %self.job, attempt = self.attempt, %reason, "progress publisher stopped");
                    self.control.stop(reason);
                    // Dropping the receiver and the counter wakes every
                    // caller waiting on them with the stop reason.
                    return;
                }
            }
        }
    }
}
