//! The worker: claims jobs from the queue, runs up to `concurrency` of them
//! at once, reaps jobs of workers that died, and shuts down gracefully.
//!
//! A semaphore of `concurrency` permits bounds the jobs running at once. One
//! loop takes work for the free permits:
//! - every half visibility timeout it **reaps**: it takes over entries idle
//!   past the visibility timeout (their worker stopped renewing its lease:
//!   it died or hangs), which publishes `job_retrying` and bumps the attempt
//!   — fencing the old worker — or dead-letters the job after
//!   `max_attempts`;
//! - otherwise it **claims** new queue entries, waiting up to a second for
//!   the first.
//!
//! Beside it, a **promoter** queues scheduled jobs whose time came (delayed
//! jobs, retries after a backoff); every worker and gateway runs one, and
//! each job is promoted once ([`jobwire_core::settle::keep_promoting`]).
//!
//! Each job renews its lease every third of the visibility timeout while it
//! runs (see `execute`).
//!
//! Shutdown: on the caller's token the worker stops claiming and lets its
//! jobs finish for up to `shutdown_timeout`. Jobs still running then are
//! stopped and *released*: `job_retrying` is published and the entry goes
//! back to the queue, where another worker takes it at once.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use jobwire_core::settle::{keep_promoting, settle_all};
use jobwire_core::{
    Backend, JobId, JobQueue, JobStore, Reclaimed, RetryPolicy, ScheduleStore, Timestamp,
    WorkerInfo,
};
use serde::Serialize;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::execute;
use crate::handler::Handler;
use crate::reporter::DEFAULT_BUFFER;

/// How long one claim waits for a queue entry; also bounds how late the
/// claimer notices a shutdown.
const CLAIM_WAIT: Duration = Duration::from_secs(1);

/// After stopping its jobs at the shutdown deadline, how long the worker
/// waits for them to publish their release before it gives up on them
/// (their entries are then reclaimed by other workers' reapers).
const RELEASE_GRACE: Duration = Duration::from_secs(10);

/// How a worker runs. Every field has a flag and environment twin in the
/// `jobwire worker` command.
#[derive(Clone, Debug, PartialEq)]
pub struct WorkerConfig {
    /// The consumer name in the queue's consumer group; unique per process.
    pub consumer: String,
    /// Jobs run at once (`JOBWIRE_WORKER_CONCURRENCY`).
    pub concurrency: usize,
    /// A job whose lease was not renewed for this long is taken over by
    /// another worker (`JOBWIRE_VISIBILITY_TIMEOUT`).
    pub visibility_timeout: Duration,
    /// Attempts a job gets when neither it nor its kind says otherwise:
    /// the cap for jobs whose workers keep dying, and for retries a handler
    /// asks for (`JOBWIRE_MAX_ATTEMPTS`).
    pub max_attempts: u32,
    /// How long running jobs may take to finish after a shutdown request
    /// before they are released back to the queue.
    pub shutdown_timeout: Duration,
    /// Events a job may buffer while the store is unreachable before its
    /// report calls wait.
    pub report_buffer: usize,
    /// The queues to claim from, the first first (`JOBWIRE_QUEUES`). Empty:
    /// the queues of the kinds it has handlers for (each kind's jobs wait
    /// in the queue named after it unless created for another), so it
    /// never claims a job it cannot run.
    pub queues: Vec<String>,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        WorkerConfig {
            consumer: default_consumer(),
            concurrency: 4,
            visibility_timeout: Duration::from_secs(30),
            max_attempts: 3,
            shutdown_timeout: Duration::from_secs(30),
            report_buffer: DEFAULT_BUFFER,
            queues: Vec::new(),
        }
    }
}

/// `worker-<pid>-<random>`: unique per process, so that a restarted worker
/// does not inherit (and stall on) the entries its previous life held.
pub fn default_consumer() -> String {
    format!("worker-{}-{:04x}", std::process::id(), rand_u16())
}

fn rand_u16() -> u16 {
    // A clock-seeded value is enough to tell processes with reused pids apart.
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or_default();
    (nanos ^ (nanos >> 16)) as u16
}

/// Why a worker cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("concurrency must be at least 1")]
    Concurrency,
    #[error("the visibility timeout must be at least 1s (got {0:?})")]
    VisibilityTimeout(Duration),
    #[error("max attempts must be at least 1")]
    MaxAttempts,
    #[error("no handlers are registered")]
    NoHandlers,
    #[error("retry policy of kind {0:?}: {1}")]
    Retry(String, String),
    #[error("invalid consumer name {0:?}: use 1-128 printable characters without spaces")]
    Consumer(String),
}

/// Builds a [`Worker`].
pub struct WorkerBuilder {
    backend: Arc<dyn Backend>,
    config: WorkerConfig,
    handlers: HashMap<String, Arc<dyn Handler>>,
    timeouts: HashMap<String, Duration>,
    retries: HashMap<String, RetryPolicy>,
}

impl fmt::Debug for WorkerBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WorkerBuilder")
            .field("config", &self.config)
            .field("kinds", &self.handlers.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl WorkerBuilder {
    /// Runs jobs of `kind` with `handler` (replacing an earlier one).
    pub fn handler(mut self, kind: impl Into<String>, handler: impl Handler) -> WorkerBuilder {
        self.handlers.insert(kind.into(), Arc::new(handler));
        self
    }

    /// How long one attempt of `kind` may run when its job sets no timeout
    /// of its own: then the handler is stopped (it sees it as a cancel)
    /// and the job fails.
    pub fn timeout(mut self, kind: impl Into<String>, limit: Duration) -> WorkerBuilder {
        self.timeouts.insert(kind.into(), limit);
        self
    }

    /// How failed attempts of `kind` are retried when its job has no
    /// policy of its own (field by field): with a policy, a failing
    /// handler's job is retried after a backoff until `max_attempts`.
    pub fn retry(mut self, kind: impl Into<String>, policy: RetryPolicy) -> WorkerBuilder {
        self.retries.insert(kind.into(), policy);
        self
    }

    pub fn config(mut self, config: WorkerConfig) -> WorkerBuilder {
        self.config = config;
        self
    }

    /// # Errors
    /// A [`ConfigError`] for settings the worker cannot run with.
    pub fn build(self) -> Result<Worker, ConfigError> {
        let c = &self.config;
        if c.concurrency == 0 {
            return Err(ConfigError::Concurrency);
        }
        if c.visibility_timeout < Duration::from_secs(1) {
            return Err(ConfigError::VisibilityTimeout(c.visibility_timeout));
        }
        if c.max_attempts == 0 {
            return Err(ConfigError::MaxAttempts);
        }
        if self.handlers.is_empty() {
            return Err(ConfigError::NoHandlers);
        }
        let name_ok = (1..=128).contains(&c.consumer.len())
            && c.consumer.chars().all(|ch| ch.is_ascii_graphic());
        if !name_ok {
            return Err(ConfigError::Consumer(c.consumer.clone()));
        }
        if let Some((kind, e)) = self
            .retries
            .iter()
            .find_map(|(kind, p)| p.check().err().map(|e| (kind, e)))
        {
            return Err(ConfigError::Retry(kind.clone(), e));
        }
        Ok(Worker {
            shared: Arc::new(WorkerShared {
                timeouts: self.timeouts,
                retries: self.retries,
                queues: if self.config.queues.is_empty() {
                    let mut kinds: Vec<String> = self.handlers.keys().cloned().collect();
                    kinds.sort();
                    kinds
                } else {
                    self.config.queues.clone()
                },
                permits: Arc::new(Semaphore::new(self.config.concurrency)),
                store: Arc::clone(&self.backend) as Arc<dyn JobStore>,
                schedules: Arc::clone(&self.backend) as Arc<dyn ScheduleStore>,
                queue: self.backend,
                config: self.config,
                handlers: self.handlers,
                stats: WorkerStats::default(),
                release: CancellationToken::new(),
                give_up: CancellationToken::new(),
                jobs: TaskTracker::new(),
                running: Mutex::new(HashMap::new()),
                started_at: Timestamp::now(),
            }),
        })
    }
}

/// A job worker. See the module docs.
#[derive(Clone)]
pub struct Worker {
    shared: Arc<WorkerShared>,
}

impl fmt::Debug for Worker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Worker")
            .field("consumer", &self.shared.config.consumer)
            .finish_non_exhaustive()
    }
}

/// What the worker's tasks share.
pub(crate) struct WorkerShared {
    /// Jobs: reading them, publishing their events.
    pub(crate) store: Arc<dyn JobStore>,
    /// Queue entries: claims, leases, acks.
    pub(crate) queue: Arc<dyn JobQueue>,
    /// Cron schedules, fired by every worker and gateway.
    schedules: Arc<dyn ScheduleStore>,
    pub(crate) config: WorkerConfig,
    pub(crate) handlers: HashMap<String, Arc<dyn Handler>>,
    pub(crate) stats: WorkerStats,
    permits: Arc<Semaphore>,
    /// Fired at the shutdown deadline: running jobs stop and are released.
    pub(crate) release: CancellationToken,
    /// Fired when the worker stops waiting for its jobs: their retries of
    /// an unreachable store end.
    pub(crate) give_up: CancellationToken,
    jobs: TaskTracker,
    /// Queue entries this worker runs now; any other entry leased to it is
    /// an orphan (see `reap`).
    running: Mutex<HashMap<String, JobId>>,
    /// When it started (the registry shows it).
    started_at: Timestamp,
    /// The queues it claims from (see [`WorkerConfig::queues`]).
    queues: Vec<String>,
    /// Per-kind attempt timeouts ([`WorkerBuilder::timeout`]).
    pub(crate) timeouts: HashMap<String, Duration>,
    /// Per-kind retry policies ([`WorkerBuilder::retry`]).
    pub(crate) retries: HashMap<String, RetryPolicy>,
}

impl WorkerShared {
    /// The retry policy of `kind` on this worker (unset when none).
    pub(crate) fn kind_retry(&self, kind: &str) -> RetryPolicy {
        self.retries.get(kind).cloned().unwrap_or_default()
    }

    /// What the worker registry shows of this worker now.
    fn info(&self) -> WorkerInfo {
        let mut running: Vec<JobId> = self.running_entries().values().cloned().collect();
        running.sort();
        WorkerInfo {
            name: self.config.consumer.clone(),
            host: hostname(),
            pid: std::process::id(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            queues: self.queues.clone(),
            concurrency: self.config.concurrency,
            running,
            started_at: self.started_at,
            last_seen: Timestamp::now(),
            lease_ms: u64::try_from(self.config.visibility_timeout.as_millis()).unwrap_or(u64::MAX),
        }
    }

    /// The attempts a job of `kind` gets when it sets none itself.
    pub(crate) fn max_attempts_of(&self, kind: &str) -> u32 {
        self.retries
            .get(kind)
            .and_then(|p| p.max_attempts)
            .unwrap_or(self.config.max_attempts)
    }

    fn running_entries(&self) -> std::sync::MutexGuard<'_, HashMap<String, JobId>> {
        self.running
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Worker {
    /// A worker on `backend`, with no handlers yet.
    pub fn builder(backend: Arc<dyn Backend>) -> WorkerBuilder {
        WorkerBuilder {
            backend,
            config: WorkerConfig::default(),
            handlers: HashMap::new(),
            timeouts: HashMap::new(),
            retries: HashMap::new(),
        }
    }

    pub fn config(&self) -> &WorkerConfig {
        &self.shared.config
    }

    /// Counters of what this worker did.
    pub fn stats(&self) -> &WorkerStats {
        &self.shared.stats
    }

    /// Jobs running right now.
    pub fn running(&self) -> usize {
        self.shared.jobs.len()
    }

    /// The counters, running jobs and concurrency in the Prometheus text
    /// format, for a worker process's `/metrics`.
    pub fn render_metrics(&self) -> String {
        crate::metrics::render(
            &self.stats().snapshot(),
            &self.stats().timings,
            self.shared.queue.held_back(),
            self.running(),
            self.shared.config.concurrency,
        )
    }

    /// The kinds this worker runs, sorted.
    pub fn kinds(&self) -> Vec<String> {
        let mut kinds: Vec<String> = self.shared.handlers.keys().cloned().collect();
        kinds.sort();
        kinds
    }

    /// The queues this worker claims from, the first first.
    pub fn queues(&self) -> &[String] {
        &self.shared.queues
    }

    /// Runs until `shutdown` fires, then shuts down gracefully (see the
    /// module docs). Store outages are waited out, never fatal.
    pub async fn run(&self, shutdown: CancellationToken) {
        let shared = &self.shared;
        tracing::info!(consumer = %shared.config.consumer, concurrency = shared.config.concurrency,
            kinds = ?self.kinds(), queues = ?shared.queues, "worker started");
        let promoting = Arc::clone(shared);
        let promoter = tokio::spawn(async move {
            let w = &promoting;
            keep_promoting(
                w.store.as_ref(),
                w.queue.as_ref(),
                w.schedules.as_ref(),
                |round| {
                    w.stats
                        .promoted
                        .fetch_add(round.promoted as u64, Ordering::Relaxed);
                    w.stats
                        .schedule_fires
                        .fetch_add(round.fired.created as u64, Ordering::Relaxed);
                },
            )
            .await;
        });
        let heart = tokio::spawn(heartbeats(Arc::clone(shared)));
        take_jobs(Arc::clone(shared), shutdown).await;
        promoter.abort();

        shared.jobs.close();
        let running = shared.jobs.len();
        if running > 0 {
            tracing::info!(running, timeout = ?shared.config.shutdown_timeout,
                "shutting down: waiting for running jobs");
        }
        if tokio::time::timeout(shared.config.shutdown_timeout, shared.jobs.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                running = shared.jobs.len(),
                "shutdown timeout: releasing running jobs to the queue"
            );
            shared.release.cancel();
            if tokio::time::timeout(RELEASE_GRACE, shared.jobs.wait())
                .await
                .is_err()
            {
                tracing::warn!(running = shared.jobs.len(),
                    "jobs could not be released; other workers will reclaim them after the visibility timeout");
                shared.give_up.cancel();
                shared.jobs.wait().await;
            }
        }
        heart.abort();
        // Gone at once from the registry, rather than after its lease.
        let mut last = shared.info();
        last.lease_ms = 0;
        if let Err(e) = shared.queue.heartbeat(&last).await {
            tracing::debug!(error = %e, "could not leave the worker registry");
        }
        tracing::info!(stats = ?shared.stats.snapshot(), "worker stopped");
    }
}

/// Beats every third of the visibility timeout (1 to 10 s) in the worker
/// registry, until aborted; a missed beat is only logged (the registry
/// is for operators and for "no worker serves queue X").
async fn heartbeats(shared: Arc<WorkerShared>) {
    let every = (shared.config.visibility_timeout / 3)
        .clamp(Duration::from_secs(1), Duration::from_secs(10));
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if let Err(e) = shared.queue.heartbeat(&shared.info()).await {
            tracing::debug!(error = %e, "missed a heartbeat");
        }
    }
}

/// Takes entries while there are free permits, until shutdown: reclaims
/// abandoned ones when a reap is due, then claims new ones. One loop does
/// both so that neither starves the other of permits.
async fn take_jobs(shared: Arc<WorkerShared>, shutdown: CancellationToken) {
    let vt = shared.config.visibility_timeout;
    let reap_every = (vt / 2).clamp(Duration::from_millis(200), Duration::from_secs(10));
    let mut next_reap = tokio::time::Instant::now();
    let (mut claim_backoff, mut reap_backoff) = (Retries::default(), Retries::default());
    loop {
        let first = tokio::select! {
            biased;
            () = shutdown.cancelled() => return,
            permit = Arc::clone(&shared.permits).acquire_owned() => match permit {
                Ok(p) => p,
                Err(_) => return, // the semaphore is never closed
            },
        };
        let mut permits = vec![first];
        while let Ok(p) = Arc::clone(&shared.permits).try_acquire_owned() {
            permits.push(p);
        }
        if tokio::time::Instant::now() >= next_reap {
            next_reap = tokio::time::Instant::now() + reap_every;
            reap(&shared, &mut permits, &mut reap_backoff).await;
            if permits.is_empty() {
                continue;
            }
        }
        let claims = match shared
            .queue
            .claim_for(
                &shared.config.consumer,
                &shared.queues,
                permits.len(),
                CLAIM_WAIT,
                // A limited queue's slot lasts as long as the entry's lease.
                shared.config.visibility_timeout,
            )
            .await
        {
            Ok(claims) => {
                claim_backoff.reset();
                claims
            }
            Err(e) => {
                claim_backoff.failed("claim jobs", &e);
                drop(permits);
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = claim_backoff.wait() => continue,
                }
            }
        };
        if shutdown.is_cancelled() {
            // Claimed while shutting down: hand them straight back.
            for claim in claims {
                if let Err(e) = shared
                    .queue
                    .release(&shared.config.consumer, &claim.entry)
                    .await
                {
                    tracing::warn!(job = %claim.job_id, error = %e, "cannot release a job claimed during shutdown; it will be reclaimed");
                }
            }
            return;
        }
        for (claim, permit) in claims.into_iter().zip(permits.drain(..)) {
            shared.stats.claimed.fetch_add(1, Ordering::Relaxed);
            spawn_job(&shared, claim, permit);
        }
    }
}

fn spawn_job(shared: &Arc<WorkerShared>, claim: jobwire_core::Claim, permit: OwnedSemaphorePermit) {
    let shared_job = Arc::clone(shared);
    let entry = claim.entry.clone();
    shared
        .running_entries()
        .insert(entry.clone(), claim.job_id.clone());
    shared.jobs.spawn(async move {
        execute::run(&shared_job, claim).await;
        shared_job.running_entries().remove(&entry);
        drop(permit);
    });
}

/// Takes over up to `permits.len()` jobs whose workers stopped renewing
/// their leases, and starts them with those permits: a taken entry is this
/// worker's to run.
///
/// Then it settles its own orphans: entries leased to this worker that it
/// does not run. That happens when the store lost writes (an ack, and maybe
/// the job's end, were among them): the entry is this worker's again but
/// nothing renews it. Settled at once (a finished job's entry is acked; an
/// unfinished job gets `job_retrying` and runs here), instead of waiting a
/// visibility timeout for another worker's reaper.
async fn reap(
    shared: &Arc<WorkerShared>,
    permits: &mut Vec<OwnedSemaphorePermit>,
    backoff: &mut Retries,
) {
    let taken = shared
        .queue
        .take_over_idle(
            &shared.config.consumer,
            &shared.queues,
            shared.config.visibility_timeout,
            permits.len(),
        )
        .await;
    let settled = match taken {
        Ok(taken) => {
            settle_all(
                shared.store.as_ref(),
                shared.queue.as_ref(),
                taken,
                &|kind| shared.max_attempts_of(kind),
            )
            .await
        }
        Err(e) => Err(e),
    };
    let reclaimed = match settled {
        Ok(r) => {
            backoff.reset();
            r
        }
        Err(e) => {
            backoff.failed("reclaim abandoned jobs", &e);
            return;
        }
    };
    take_over(shared, permits, reclaimed);
    if permits.is_empty() {
        return;
    }
    let max = permits.len() + shared.running_entries().len();
    let orphans: Vec<_> = match shared.queue.pending_of(&shared.config.consumer, max).await {
        Ok(leased) => {
            let running = shared.running_entries();
            leased
                .into_iter()
                .filter(|claim| !running.contains_key(&claim.entry))
                .take(permits.len())
                .collect()
        }
        Err(e) => {
            backoff.failed("read this worker's leased entries", &e);
            return;
        }
    };
    if orphans.is_empty() {
        return;
    }
    tracing::warn!(
        entries = orphans.len(),
        "queue entries leased to this worker that it does not run (the store lost writes?): settling them"
    );
    let settled = settle_all(
        shared.store.as_ref(),
        shared.queue.as_ref(),
        orphans,
        &|kind| shared.max_attempts_of(kind),
    )
    .await;
    match settled {
        Ok(settled) => take_over(shared, permits, settled),
        Err(e) => backoff.failed("settle orphaned entries", &e),
    }
}

/// Starts what a reap took over, logs the rest.
fn take_over(
    shared: &Arc<WorkerShared>,
    permits: &mut Vec<OwnedSemaphorePermit>,
    reclaimed: Vec<Reclaimed>,
) {
    for outcome in reclaimed {
        match outcome {
            Reclaimed::Retry { claim, attempt } => {
                tracing::info!(job = %claim.job_id, attempt, "took over a job whose worker stopped responding");
                shared.stats.reclaimed.fetch_add(1, Ordering::Relaxed);
                let Some(permit) = permits.pop() else { break };
                spawn_job(shared, claim, permit);
            }
            Reclaimed::DeadLettered { job_id, attempts } => {
                tracing::warn!(job = %job_id, attempts, "job failed: its workers kept stopping (dead letter)");
                shared.stats.dead_lettered.fetch_add(1, Ordering::Relaxed);
            }
            Reclaimed::Dropped { job_id } => {
                tracing::debug!(job = %job_id, "dropped the queue entry of a finished or deleted job");
            }
        }
    }
}

/// The worker's store retries: the one [`jobwire_core::Backoff`] (100 ms
/// doubling to 5 s), with a log line at the first failure and then at every
/// doubling, so an outage is visible but does not flood the log.
#[derive(Debug)]
pub(crate) struct Retries {
    backoff: jobwire_core::Backoff,
    /// The wait the last failure asked for.
    next: Duration,
}

impl Default for Retries {
    fn default() -> Self {
        Retries {
            backoff: jobwire_core::Backoff::new(Duration::from_millis(100), Duration::from_secs(5)),
            next: Duration::ZERO,
        }
    }
}

impl Retries {
    /// Counts a failure of `what`; [`Retries::wait`] then waits for it.
    pub(crate) fn failed(&mut self, what: &str, error: &dyn fmt::Display) {
        self.next = self.backoff.failed();
        if self.backoff.worth_logging() {
            tracing::warn!(failures = self.backoff.failures(), %error, "cannot {what}; retrying");
        }
    }

    pub(crate) fn reset(&mut self) {
        let failures = self.backoff.reset();
        if failures > 0 {
            tracing::info!(failures, "the store is reachable again");
        }
    }

    pub(crate) async fn wait(&mut self) {
        tokio::time::sleep(self.next).await;
    }
}

/// What a worker did, counted since it started.
#[derive(Debug, Default)]
pub struct WorkerStats {
    /// Queue entries taken by the claimer.
    pub claimed: AtomicU64,
    /// Jobs taken over from workers that stopped responding.
    pub reclaimed: AtomicU64,
    pub completed: AtomicU64,
    pub failed: AtomicU64,
    pub cancelled: AtomicU64,
    /// Jobs stopped because another worker took them over (this worker was
    /// a zombie) or they were deleted.
    pub lost: AtomicU64,
    /// Jobs handed back to the queue at shutdown.
    pub released: AtomicU64,
    /// Jobs failed by this worker's reaper after too many attempts.
    pub dead_lettered: AtomicU64,
    /// Failed attempts scheduled for a retry after a backoff.
    pub retried: AtomicU64,
    /// Scheduled jobs this worker queued when their time came.
    pub promoted: AtomicU64,
    /// Jobs this worker created for cron schedules' ticks.
    pub schedule_fires: AtomicU64,
    /// Events published by this worker's jobs (lifecycle events included).
    pub events: AtomicU64,
    /// Wait and run times.
    pub timings: crate::metrics::Timings,
}

/// A copy of [`WorkerStats`] at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct StatsSnapshot {
    pub claimed: u64,
    pub reclaimed: u64,
    pub completed: u64,
    pub failed: u64,
    pub cancelled: u64,
    pub lost: u64,
    pub released: u64,
    pub dead_lettered: u64,
    pub retried: u64,
    pub promoted: u64,
    pub schedule_fires: u64,
    pub events: u64,
}

impl WorkerStats {
    pub fn snapshot(&self) -> StatsSnapshot {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        StatsSnapshot {
            claimed: get(&self.claimed),
            reclaimed: get(&self.reclaimed),
            completed: get(&self.completed),
            failed: get(&self.failed),
            cancelled: get(&self.cancelled),
            lost: get(&self.lost),
            released: get(&self.released),
            dead_lettered: get(&self.dead_lettered),
            retried: get(&self.retried),
            promoted: get(&self.promoted),
            schedule_fires: get(&self.schedule_fires),
            events: get(&self.events),
        }
    }

    /// Jobs this worker brought to an end (completed, failed or cancelled).
    pub fn finished(&self) -> u64 {
        let s = self.snapshot();
        s.completed + s.failed + s.cancelled
    }
}

/// This machine's name, as the kernel has it (`HOSTNAME` elsewhere).
fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unknown".to_owned())
}
