//! The storage contract every backend honours.
//!
//! A backend is three capabilities, each a trait that consumers take alone:
//! - [`JobStore`]: per job, a **state** and an **event log** that change
//!   together, atomically: after any successful [`JobStore::publish`] the
//!   state's `last_event_id` equals the id of the log's last event, and ids
//!   are the consecutive integers 1, 2, 3 …
//! - [`LiveFeed`]: every event of every job, for the gateways' fan-out.
//! - [`JobQueue`]: at-least-once delivery to workers with leases that are
//!   taken over when they lapse.
//!
//! [`Backend`] is all three (one store holds them all; a job's creation
//! writes its state, log, live entry and queue entry together).
//!
//! Implementations: `MemoryBackend` (this crate; one process) and
//! `RedisBackend` (crate `jobwire-redis`). Both pass the one conformance suite
//! in [`crate::testsuite`].

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use thiserror::Error;

use crate::event::{EventRecord, NewEvent};
use crate::ids::{Epoch, EventId, JobId, Timestamp};
use crate::job::{JobState, JobStatus, NewJob};
use crate::publish::PlanError;
use crate::reducer::ReduceError;
use crate::schedule::Schedule;

/// Limits shared by every backend; all come from configuration.
#[derive(Clone, Debug, PartialEq)]
pub struct BackendConfig {
    /// Events kept per job log (`JOBWIRE_STREAM_MAXLEN`); older ones are trimmed.
    pub stream_maxlen: usize,
    /// How long a finished job and its events stay (`JOBWIRE_RETENTION`).
    pub retention: Duration,
    /// Entries kept in each live partition feed. It is a delivery path only
    /// (gateways read it within milliseconds; a reader that falls further
    /// behind re-reads job logs), and one entry holds a whole publish batch.
    pub live_maxlen: usize,
    /// Number of partitions (Redis hash tags / live streams).
    pub partitions: u16,
    /// Jobs a listing reads at most for one page. A filter that matches
    /// few of very many jobs then gets a short page (possibly empty) with a
    /// `next_cursor` to go on from, instead of one request reading the
    /// whole index.
    pub list_scan_budget: usize,
}

impl Default for BackendConfig {
    fn default() -> Self {
        BackendConfig {
            stream_maxlen: 1000,
            retention: Duration::from_secs(24 * 3600),
            live_maxlen: 500,
            partitions: 16,
            list_scan_budget: 5_000,
        }
    }
}

/// A backend failure. Expected outcomes (duplicates, a trimmed resume point,
/// an empty queue) are values, not errors.
#[derive(Debug, Error)]
pub enum BackendError {
    /// No such job (never existed, deleted, or expired).
    #[error("job {0} not found")]
    NotFound(JobId),
    /// A job with this id already exists.
    #[error("job {0} already exists")]
    AlreadyExists(JobId),
    /// A publish carried an attempt that is no longer the job's.
    #[error("job {job}: stale attempt {sent}, the job is on attempt {current}")]
    Fenced { job: JobId, sent: u32, current: u32 },
    /// An event is illegal in the job's status, out of order or malformed.
    #[error("job {job}: {source}")]
    Rejected {
        job: JobId,
        #[source]
        source: ReduceError,
    },
    /// The store cannot be reached; retrying later may succeed.
    #[error("backend unavailable: {0}")]
    Unavailable(String),
    /// The stored data was written by an incompatible layout or is corrupt.
    #[error("backend data error: {0}")]
    Data(String),
    /// The call asks for something the store cannot do (a caller's
    /// mistake, such as an idempotency key and a unique key together).
    #[error("{0}")]
    Invalid(String),
}

impl BackendError {
    /// Whether retrying the same call later may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, BackendError::Unavailable(_))
    }

    /// Maps a planning error for `job` onto a backend error.
    pub fn from_plan(job: &JobId, e: PlanError) -> BackendError {
        match e {
            PlanError::Fenced { sent, current } => BackendError::Fenced {
                job: job.clone(),
                sent,
                current,
            },
            PlanError::Reduce(source) => BackendError::Rejected {
                job: job.clone(),
                source,
            },
        }
    }
}

/// Shorthand for backend results.
pub type Result<T, E = BackendError> = std::result::Result<T, E>;

/// What a publish did.
#[derive(Clone, Debug, PartialEq)]
pub struct PublishOutcome {
    /// Ids of the events appended, in order (fenced duplicates excluded).
    pub ids: Vec<EventId>,
    /// Fenced events skipped because their `n` had already been applied.
    pub duplicates: usize,
    /// Cancellation has been requested: the publisher should stop.
    pub cancel_requested: bool,
    /// The job's state after this publish.
    pub last_event_id: EventId,
}

/// The answer to "which events follow `after`?".
#[derive(Clone, Debug, PartialEq)]
pub enum EventsAfter {
    /// Every retained event after the position, up to the limit, in order;
    /// the first has id `after + 1` (empty when nothing newer exists).
    Events(Vec<EventRecord>),
    /// The position cannot be resumed from; the client must resync from a
    /// fresh snapshot.
    Resync(ResyncReason),
}

/// Why a resume position is unusable.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ResyncReason {
    /// Events after the position were trimmed; the oldest retained is given.
    Trimmed { oldest: EventId },
    /// The job's log was rebuilt since the position was taken.
    EpochChanged { current: Epoch },
    /// The position is beyond the log's end (it came from elsewhere).
    Ahead { last: EventId },
}

/// What `cancel` did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CancelOutcome {
    /// The job was queued (or scheduled) and is now cancelled.
    Cancelled,
    /// The job is running; it stops at its next progress report.
    Requested,
    /// The job had already finished; nothing changed.
    AlreadyFinished(JobStatus),
}

/// Which jobs to list.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ListQuery {
    /// Only this user's jobs; `None` lists everyone's (admin).
    pub owner: Option<String>,
    pub status: Option<JobStatus>,
    /// Only jobs of this kind.
    pub kind: Option<String>,
    /// Only jobs of this queue (a job's queue is its kind's unless another
    /// was given).
    pub queue: Option<String>,
    /// Only jobs that finished at or after this time (unfinished jobs do
    /// not match).
    pub finished_after: Option<Timestamp>,
    /// Page size (at least 1).
    pub limit: usize,
    /// Continue after this job (the previous page's `next_cursor`).
    pub cursor: Option<JobId>,
}

impl ListQuery {
    /// Whether a job passes the filters (the owner is the index's to
    /// match, and the cursor the page's).
    pub fn admits(&self, job: &JobState) -> bool {
        self.status.is_none_or(|s| s == job.status)
            && self.kind.as_deref().is_none_or(|k| k == job.kind)
            && self.queue.as_deref().is_none_or(|q| q == job.queue())
            && self
                .finished_after
                .is_none_or(|after| job.finished_at.is_some_and(|at| at >= after))
    }
}

/// One page of jobs, newest first. A page holds fewer than the asked number
/// of jobs (possibly none) while `next_cursor` is set when a filter passed
/// over more than [`BackendConfig::list_scan_budget`] jobs: the listing goes
/// on from the cursor.
#[derive(Clone, Debug, PartialEq)]
pub struct JobPage {
    pub jobs: Vec<JobState>,
    /// Pass as `cursor` to get the next page; `None` on the last page.
    pub next_cursor: Option<JobId>,
}

/// A queue entry handed to a worker; it stays leased to that worker until
/// acked, or until it sits idle past the visibility timeout and is reclaimed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Claim {
    /// The queue entry's id (opaque).
    pub entry: String,
    pub job_id: JobId,
    pub kind: String,
}

/// A create to make at most once (`Idempotency-Key`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Idempotency {
    /// The key, scoped by its caller (the server uses `<sub>\n<key>`).
    pub key: String,
    /// A digest of the request: the same key with another request is a
    /// conflict, not a replay.
    pub fingerprint: String,
    /// How long the key is remembered.
    pub window: Duration,
}

/// The refusal of an idempotency key and a unique key on one create.
pub fn both_keys() -> BackendError {
    BackendError::Invalid(
        "an Idempotency-Key and a unique_key cannot be combined: a unique_key already returns \
         the unfinished job it names"
            .to_owned(),
    )
}

/// What [`JobStore::create_job_once`] did.
#[derive(Clone, Debug, PartialEq)]
pub enum Created {
    /// A new job.
    New(JobState),
    /// The key named a job already: that job, and whether it was made by
    /// the same request (else the caller reused a key for another).
    Existing { job: JobState, same_request: bool },
    /// The unique key names an unfinished job: that one.
    Unique(JobState),
}

/// The queues a worker serves (each a name checked by
/// [`crate::job::check_queue_name`]), in the order it prefers them: a claim
/// takes what the first has before it looks at the next.
pub type Queues = [String];

/// What reclaiming an idle (abandoned) queue entry led to.
#[derive(Clone, Debug, PartialEq)]
pub enum Reclaimed {
    /// `job_retrying` was published (attempt + 1); the claim is now the
    /// reclaiming consumer's to run.
    Retry { claim: Claim, attempt: u32 },
    /// Past the maximum attempts: `job_failed` was published and the entry acked.
    DeadLettered { job_id: JobId, attempts: u32 },
    /// The job is gone or already finished; the entry was acked.
    Dropped { job_id: JobId },
}

/// Queue gauges.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QueueStats {
    /// Entries not yet delivered to any worker.
    pub waiting: u64,
    /// Entries delivered and not yet acknowledged.
    pub pending: u64,
    /// Jobs waiting for their time (`scheduled`).
    pub scheduled: u64,
}

/// One queue at a glance (`GET /api/queues`).
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct QueueOverview {
    pub name: String,
    /// Entries waiting for a worker (all priorities).
    pub waiting: u64,
    /// Entries claimed and not yet acked: jobs running, or abandoned by a
    /// dead worker until they are taken over.
    pub running: u64,
    /// When the oldest waiting entry was queued.
    pub oldest_waiting: Option<Timestamp>,
    pub paused: bool,
    /// Its fleet-wide limits, if any.
    pub limits: QueueLimits,
    /// Jobs `scheduled` (delayed, or waiting out a retry's backoff).
    pub scheduled: u64,
    /// Jobs that finished (completed, failed or were cancelled) in the
    /// last whole minute, and in the last 15 whole minutes (the current,
    /// partial minute not included): the queue's throughput.
    pub finished_1m: u64,
    pub finished_15m: u64,
    /// Jobs that failed in the last 60 minutes (the current one included).
    pub failed_1h: u64,
}

impl QueueOverview {
    /// Adds a minute's finished and failed jobs, `ago` whole minutes
    /// before the current one.
    pub fn count_minute(&mut self, ago: i64, finished: u64, failed: u64) {
        if !(0..THROUGHPUT_MINUTES).contains(&ago) {
            return;
        }
        if ago == 1 {
            self.finished_1m += finished;
        }
        if (1..=15).contains(&ago) {
            self.finished_15m += finished;
        }
        self.failed_1h += failed;
    }
}

/// Fleet-wide limits of one queue, enforced at claim time across every
/// worker (`PUT /api/queues/{queue}/limits`).
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueueLimits {
    /// At most this many of the queue's jobs run at once. A worker that
    /// dies holds its slots until its lease lapses (its visibility
    /// timeout).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<u32>,
    /// At most `max` of the queue's jobs start in any window of `per`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate: Option<RateLimit>,
}

/// `max` starts per `per` (a sliding window).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    pub max: u32,
    #[serde(with = "crate::retry::human")]
    pub per: Duration,
}

impl QueueLimits {
    /// No limit at all.
    pub fn is_none(&self) -> bool {
        self.concurrency.is_none() && self.rate.is_none()
    }

    /// Checks the figures: a cap of at least 1, a rate of at least 1 per
    /// 1 ms to 1 day.
    ///
    /// # Errors
    /// What is wrong.
    pub fn check(&self) -> std::result::Result<(), String> {
        if self.concurrency == Some(0) {
            return Err("concurrency must be at least 1 (leave it out for no cap)".into());
        }
        if let Some(rate) = self.rate {
            if rate.max == 0 {
                return Err("rate.max must be at least 1 (leave out rate for no limit)".into());
            }
            if rate.per < Duration::from_millis(1) || rate.per > Duration::from_secs(86_400) {
                return Err("rate.per must be from 1ms to 1 day".into());
            }
        }
        Ok(())
    }
}

/// How long a claim's limit slot lasts unless renewed, when the claimer
/// does not say ([`JobQueue::claim`]): the worker's default visibility
/// timeout.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(30);

/// A worker process as it describes itself in its heartbeats (the worker
/// registry: which queues are served, and by whom).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct WorkerInfo {
    /// Its consumer name (unique per process).
    pub name: String,
    pub host: String,
    pub pid: u32,
    /// The jobwire version it runs.
    pub version: String,
    /// The queues it claims from, the first first.
    pub queues: Vec<String>,
    pub concurrency: usize,
    /// The jobs it runs now.
    pub running: Vec<JobId>,
    pub started_at: Timestamp,
    /// Its last heartbeat.
    pub last_seen: Timestamp,
    /// Its lease (visibility timeout) in ms: missing for longer than this,
    /// it is gone.
    pub lease_ms: u64,
}

impl WorkerInfo {
    /// Whether it was seen within its lease at `now`.
    pub fn is_live(&self, now: Timestamp) -> bool {
        now.unix_millis() - self.last_seen.unix_millis()
            <= i64::try_from(self.lease_ms).unwrap_or(i64::MAX)
    }
}

/// How long the registry keeps a worker that stopped heartbeating (shown
/// as gone meanwhile).
pub const FORGET_WORKERS_AFTER: Duration = Duration::from_secs(3600);

/// Figures about the store itself, sampled for `/metrics`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StoreHealth {
    /// Memory the store uses, when it reports it (Redis `used_memory`).
    pub used_memory_bytes: Option<u64>,
    /// Entries in the live feed, over all partitions.
    pub live_entries: u64,
    /// Jobs by status.
    pub jobs: JobCounts,
}

/// Jobs by status. `scheduled`, `queued` and `running` are current counts; the finished
/// statuses count the jobs that reached them (finished jobs expire, so those
/// counts only grow).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct JobCounts {
    pub scheduled: u64,
    pub queued: u64,
    pub running: u64,
    pub completed: u64,
    pub failed: u64,
    pub cancelled: u64,
}

impl JobCounts {
    /// The count of one status.
    pub fn get(&self, status: JobStatus) -> u64 {
        match status {
            JobStatus::Scheduled => self.scheduled,
            JobStatus::Queued => self.queued,
            JobStatus::Running => self.running,
            JobStatus::Completed => self.completed,
            JobStatus::Failed => self.failed,
            JobStatus::Cancelled => self.cancelled,
        }
    }

    /// Adds `delta` to one status (saturating at zero).
    pub fn add(&mut self, status: JobStatus, delta: i64) {
        let slot = match status {
            JobStatus::Scheduled => &mut self.scheduled,
            JobStatus::Queued => &mut self.queued,
            JobStatus::Running => &mut self.running,
            JobStatus::Completed => &mut self.completed,
            JobStatus::Failed => &mut self.failed,
            JobStatus::Cancelled => &mut self.cancelled,
        };
        *slot = slot.saturating_add_signed(delta);
    }
}

/// An opaque position in the live feed, so a tail can continue where another
/// left off.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LivePosition(pub String);

/// Where a live tail starts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TailFrom {
    /// Only events published after the tail is opened.
    Now,
    /// Events after a position taken from an earlier tail.
    After(LivePosition),
}

/// What one read of the live feed returned.
#[derive(Clone, Debug, PartialEq)]
pub enum LiveBatch {
    /// Events in publication order per job (possibly none, after a timeout).
    Events(Vec<EventRecord>),
    /// Some events may have been missed (the feed was trimmed past this
    /// tail's position, e.g. during an outage): readers must re-read the logs
    /// of the jobs they serve after the last id they delivered.
    Gap,
    /// These jobs were deleted (on any instance): their watchers must be
    /// told. The memory backend has one process, whose server tells them
    /// itself, and never returns this.
    Deleted(Vec<JobId>),
}

/// A reader of the live feed of every partition. It owns its connection
/// (blocking reads never share one) and its position: after an error, calling
/// [`LiveTail::next`] again reconnects and continues where it stopped.
#[async_trait]
pub trait LiveTail: Send + fmt::Debug {
    /// Waits up to about a second for events.
    ///
    /// # Errors
    /// [`BackendError::Unavailable`] when the store cannot be reached; call
    /// again (with a backoff) to reconnect.
    async fn next(&mut self) -> Result<LiveBatch>;

    /// The position after the last event returned.
    fn position(&self) -> LivePosition;
}

/// What [`JobStore::promote`] did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Promotion {
    /// Jobs queued.
    pub promoted: usize,
    /// Jobs that were not `scheduled` any more (or are gone): their
    /// schedule entries are stale.
    pub stale: Vec<JobId>,
}

/// Jobs: each job's state and event log, changed together by one atomic
/// publish; listing, cancel, delete; and the store's own health.
#[async_trait]
pub trait JobStore: Send + Sync + fmt::Debug + 'static {
    /// Creates a job with its `job_queued` event (id 1) and, unless it is
    /// external, enqueues it for workers (in the same store: see
    /// [`JobQueue`]).
    async fn create_job(&self, new: NewJob) -> Result<JobState>;

    /// [`JobStore::create_job`] honouring the create's keys, atomically
    /// (also while concurrent creates race):
    /// - at most once per `once.key` within `once.window`: a second create
    ///   under the key returns the job the first made, flagged with whether
    ///   it was the same request; a key whose job is gone is free again;
    /// - at most one unfinished job of its kind per `new.unique_key`: while
    ///   one is scheduled, queued or running, that one is returned.
    ///
    /// Both at once are refused ([`BackendError::Invalid`]): a unique key
    /// already makes the create idempotent while its job runs.
    async fn create_job_once(&self, new: NewJob, once: Option<&Idempotency>) -> Result<Created>;

    /// Appends events to a job's log atomically with the state change, in
    /// order, with consecutive ids. Fenced events with an already-applied `n`
    /// are skipped; a stale attempt refuses the whole batch. An empty batch
    /// only reports the cancel flag.
    async fn publish(&self, job: &JobId, events: &[NewEvent]) -> Result<PublishOutcome>;

    /// Queues scheduled jobs whose time came ([`crate::settle::promote_due`]):
    /// publishes `job_queued` to each of `jobs` and says which were no
    /// longer `scheduled` (promoted by another promoter, cancelled, gone),
    /// so their schedule entries are stale. By default one
    /// [`JobStore::publish`] each ([`crate::settle::promote_each`]); the
    /// Redis backend promotes a partition's batch in one script call.
    async fn promote(&self, jobs: &[JobId]) -> Result<Promotion> {
        crate::settle::promote_each(self, jobs).await
    }

    /// The job's state as of its last event.
    async fn job(&self, job: &JobId) -> Result<JobState>;

    /// Up to `limit` events after `after`. When `epoch` is given and differs
    /// from the job's, or when events after `after` were trimmed, the answer is
    /// [`EventsAfter::Resync`].
    async fn events_after(
        &self,
        job: &JobId,
        after: EventId,
        epoch: Option<&Epoch>,
        limit: usize,
    ) -> Result<EventsAfter>;

    /// Lists jobs, newest first.
    async fn list_jobs(&self, query: &ListQuery) -> Result<JobPage>;

    /// Sets the job's cancel flag unless it has finished, and returns its
    /// state (the primitive [`JobStore::cancel`] is built on).
    async fn request_cancel(&self, job: &JobId) -> Result<JobState>;

    /// Cancels a queued job at once, or asks a running one to stop (it sees
    /// the flag in the answer to its next publish). Written once, on top of
    /// [`JobStore::request_cancel`] and [`JobStore::publish`].
    async fn cancel(&self, job: &JobId) -> Result<CancelOutcome> {
        let state = self.request_cancel(job).await?;
        crate::settle::finish_cancel(self, state).await
    }

    /// Removes a job, its log and its listing entry.
    async fn delete(&self, job: &JobId) -> Result<()>;

    /// Jobs of `owner` not finished yet (scheduled, queued or running), for the
    /// per-user quota. Kept as a counter beside the jobs, so it is cheap;
    /// it may lag a concurrent create by a moment.
    async fn unfinished_jobs(&self, owner: &str) -> Result<u64>;

    /// Checks that the store is reachable.
    async fn ping(&self) -> Result<()>;

    /// Samples the store's own figures (memory, live feed length, jobs by
    /// status).
    async fn health(&self) -> Result<StoreHealth>;

    /// Jobs started and finished per minute, store-wide, over the
    /// [`THROUGHPUT_MINUTES`] minutes up to `now`: the minutes that had any,
    /// oldest first.
    async fn throughput(&self, now: Timestamp) -> Result<Vec<MinuteCounts>>;
}

/// The live feed: every event of every job, in publication order per job,
/// for the gateways' fan-out. A delivery path only; the job logs are the
/// source of truth.
#[async_trait]
pub trait LiveFeed: Send + Sync + fmt::Debug + 'static {
    /// Opens a reader of the live feed.
    async fn tail(&self, from: TailFrom) -> Result<Box<dyn LiveTail>>;
}

/// The job queue: at-least-once delivery of queue entries to workers, with
/// leases that are renewed while a job runs and taken over when they lapse.
/// What happens to a job whose lease lapsed (retry, dead letter) is decided
/// on top of this and [`JobStore`], in [`crate::settle`].
#[async_trait]
pub trait JobQueue: Send + Sync + fmt::Debug + 'static {
    /// Takes up to `max` entries of `queues` for `consumer` (the first
    /// queue's first), waiting up to `wait` for the first. Never an entry
    /// of another queue, nor more than a queue's [`QueueLimits`] allow:
    /// each entry of a limited queue holds a slot for `lease`, renewed by
    /// [`JobQueue::renew`] and given back by [`JobQueue::ack`] and
    /// [`JobQueue::release`] (so a dead worker's slots lapse with its
    /// lease).
    async fn claim_for(
        &self,
        consumer: &str,
        queues: &Queues,
        max: usize,
        wait: Duration,
        lease: Duration,
    ) -> Result<Vec<Claim>>;

    /// [`JobQueue::claim_for`] with the [`DEFAULT_LEASE`].
    async fn claim(
        &self,
        consumer: &str,
        queues: &Queues,
        max: usize,
        wait: Duration,
    ) -> Result<Vec<Claim>> {
        self.claim_for(consumer, queues, max, wait, DEFAULT_LEASE)
            .await
    }

    /// Sets a queue's limits (all `None`: no limits). Claims see the change
    /// within about a second.
    async fn set_limits(&self, queue: &str, limits: &QueueLimits) -> Result<()>;

    /// Every queue's limits, by name.
    async fn limits(&self) -> Result<std::collections::BTreeMap<String, QueueLimits>>;

    /// How often this process's claims found a limited queue at its limit
    /// (no slot or no start to spare), per queue, since it started: the
    /// limit's rejections. Backends without limits have none.
    fn held_back(&self) -> std::collections::BTreeMap<String, u64> {
        std::collections::BTreeMap::new()
    }

    /// Extends `consumer`'s lease on an entry. `false` when the entry is no
    /// longer this consumer's (it was taken over or acked): stop working on it.
    async fn renew(&self, consumer: &str, entry: &str) -> Result<bool>;

    /// Acknowledges (and removes) a queue entry.
    async fn ack(&self, entry: &str) -> Result<()>;

    /// Puts an entry leased to `consumer` back at the end of the queue, for
    /// any worker to take at once (this worker is shutting down). `false` when
    /// the entry is no longer `consumer`'s.
    async fn release(&self, consumer: &str, entry: &str) -> Result<bool>;

    /// Leases to `consumer` up to `max` entries of `queues` idle for at
    /// least `min_idle` (their worker died or hangs). The caller settles
    /// them ([`crate::settle::settle_all`]) and may run the retried ones:
    /// hence only the queues it serves.
    async fn take_over_idle(
        &self,
        consumer: &str,
        queues: &Queues,
        min_idle: Duration,
        max: usize,
    ) -> Result<Vec<Claim>>;

    /// Up to `max` entries leased to `consumer`, oldest first. A worker
    /// compares them with what it runs: one it does not run was lost track
    /// of (its ack was among writes the store lost), and is settled like a
    /// taken-over entry at once rather than after the visibility timeout.
    async fn pending_of(&self, consumer: &str, max: usize) -> Result<Vec<Claim>>;

    /// Queue depth and pending (claimed, unacknowledged) entries.
    async fn queue_stats(&self) -> Result<QueueStats>;

    /// Up to `max` scheduled jobs whose time is `now` or earlier, for this
    /// caller to promote. Backends may give concurrent callers disjoint
    /// shares (the Redis backend leases each partition's promotion to one
    /// process at a time). The caller promotes each by publishing `job_queued`
    /// ([`crate::settle::promote_due`]): a publish that moves a job out of
    /// `scheduled` takes it off the schedule (and puts it in its queue)
    /// in the same atomic step, so a job is promoted once however many
    /// processes try.
    async fn due(&self, now: Timestamp, max: usize) -> Result<Vec<JobId>>;

    /// As [`JobQueue::due`], for a promoter about to promote what it gets
    /// ([`crate::settle::promote_due`]): a backend whose promoters share
    /// one instance (the memory backend: a process's server and workers)
    /// hands each a share no other got within a moment, so that they do
    /// not all publish the same batch. By default, [`JobQueue::due`].
    async fn claim_due(&self, now: Timestamp, max: usize) -> Result<Vec<JobId>> {
        self.due(now, max).await
    }

    /// Takes `job` off the schedule unless it is still `scheduled`: for an
    /// entry that outlived its job's schedule (the job was deleted, or its
    /// state lost in a Redis data loss).
    async fn drop_due(&self, job: &JobId) -> Result<()>;

    /// Pauses (or resumes) a queue: while paused, claims and take-overs
    /// pass it by (jobs already running finish); creates still queue into
    /// it. Claims see the change within about a second.
    async fn set_paused(&self, queue: &str, paused: bool) -> Result<()>;

    /// The paused queues, sorted.
    async fn paused_queues(&self) -> Result<Vec<String>>;

    /// Every queue that has held entries, or is paused, by name.
    async fn queue_overview(&self) -> Result<Vec<QueueOverview>>;

    /// Records a worker's heartbeat in the worker registry.
    async fn heartbeat(&self, worker: &WorkerInfo) -> Result<()>;

    /// The registry: every worker seen within [`FORGET_WORKERS_AFTER`]
    /// (live or gone: see [`WorkerInfo::is_live`]), by name.
    async fn workers(&self) -> Result<Vec<WorkerInfo>>;
}

/// How many minutes of throughput the stores keep.
pub const THROUGHPUT_MINUTES: i64 = 60;

/// Jobs that started (moved to `running`) and finished (completed, failed
/// or cancelled) in one minute.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct MinuteCounts {
    /// The minute's start.
    pub minute: Timestamp,
    pub started: u64,
    pub finished: u64,
}

impl MinuteCounts {
    /// The minutes of `counts` ((minute index since the Unix epoch,
    /// started, finished)) within [`THROUGHPUT_MINUTES`] of `now`, oldest
    /// first.
    pub fn recent(
        counts: impl IntoIterator<Item = (i64, u64, u64)>,
        now: Timestamp,
    ) -> Vec<MinuteCounts> {
        let current = now.unix_millis().div_euclid(60_000);
        let mut minutes: Vec<MinuteCounts> = counts
            .into_iter()
            .filter(|(m, ..)| *m > current - THROUGHPUT_MINUTES && *m <= current)
            .map(|(m, started, finished)| MinuteCounts {
                minute: Timestamp::from_unix_millis(m * 60_000),
                started,
                finished,
            })
            .collect();
        minutes.sort_by_key(|m| m.minute);
        minutes
    }
}

/// Where cron schedules are kept ([`crate::schedule`]): each whole, under
/// its name.
#[async_trait]
pub trait ScheduleStore: Send + Sync + fmt::Debug + 'static {
    /// Every schedule, by name.
    async fn schedules(&self) -> Result<Vec<Schedule>>;

    /// Stores `schedule` under its name: unconditionally when `expected` is
    /// `None`; otherwise only if the stored one is still `expected` (a
    /// compare-and-set). Whether it was stored.
    async fn put_schedule(&self, schedule: &Schedule, expected: Option<&Schedule>) -> Result<bool>;

    /// Removes a schedule; whether there was one.
    async fn delete_schedule(&self, name: &str) -> Result<bool>;
}

/// A whole backend: jobs, the live feed, the queue and the schedules in one
/// store. Each consumer takes the part it needs (`Arc<dyn Backend>`
/// coerces to `Arc<dyn JobStore>` and the others).
pub trait Backend: JobStore + LiveFeed + JobQueue + ScheduleStore {}

impl<T: JobStore + LiveFeed + JobQueue + ScheduleStore + ?Sized> Backend for T {}
