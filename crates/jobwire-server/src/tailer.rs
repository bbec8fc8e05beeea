//! The live tailer: reads the backend's live feed and hands each batch to the
//! Hub. It keeps going through outages: on errors it backs off and retries
//! (the tail keeps its position).
//!
//! Whenever live events may have been missed (a reported gap, or a tail
//! opened anew) it recovers them before reading on: it reads each watched
//! job's log once, from the position the Hub keeps for it, and dispatches
//! what it finds like live events. Connections then catch up from their
//! outboxes instead of each re-reading every job it watches, which after a
//! Redis blip would be one read per connection and job, all at once (see
//! `hub.rs` for why the Hub's positions are safe to read from). Jobs the
//! Hub cannot recover for everyone (a resume point trimmed away, a deleted
//! job, watchers still subscribing) are handed to their watchers with a
//! per-job recheck. A recovery that fails is retried, with the same backoff,
//! before any further live event is read: nothing is lost and each job's
//! events stay in order. Live events that the recovery already delivered
//! arrive again afterwards and are dropped by the sessions as duplicates.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use jobwire_core::{
    BackendError, Backoff, EventsAfter, JobId, JobStore, LiveBatch, LiveFeed, TailFrom,
};
use tokio_util::sync::CancellationToken;

use crate::hub::{Hub, Position};

/// Whether the tailer is currently reading (for `/readyz`), how often
/// reading failed, and what recoveries cost.
#[derive(Debug, Default)]
pub struct TailerHealth {
    up: AtomicBool,
    errors: AtomicU64,
    reconnects: AtomicU64,
    recoveries: AtomicU64,
    recovery_reads: AtomicU64,
    recovery_rechecks: AtomicU64,
}

impl TailerHealth {
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    pub fn errors(&self) -> u64 {
        self.errors.load(Ordering::Relaxed)
    }

    /// Times the feed was read again after failing.
    pub fn reconnects(&self) -> u64 {
        self.reconnects.load(Ordering::Relaxed)
    }

    /// Recoveries that read job logs (after a gap or a tail opened anew).
    pub fn recoveries(&self) -> u64 {
        self.recoveries.load(Ordering::Relaxed)
    }

    /// Job log reads made by recoveries (one page each).
    pub fn recovery_reads(&self) -> u64 {
        self.recovery_reads.load(Ordering::Relaxed)
    }

    /// Jobs a recovery handed to their watchers to re-read by themselves.
    pub fn recovery_rechecks(&self) -> u64 {
        self.recovery_rechecks.load(Ordering::Relaxed)
    }

    fn set(&self, up: bool) {
        if up && !self.up.swap(true, Ordering::Relaxed) && self.errors() > 0 {
            self.reconnects.fetch_add(1, Ordering::Relaxed);
        }
        if !up {
            self.up.store(false, Ordering::Relaxed);
        }
    }

    fn failed(&self) {
        self.set(false);
        self.errors.fetch_add(1, Ordering::Relaxed);
    }
}

const MIN_BACKOFF: Duration = Duration::from_millis(100);
/// At most a second between attempts: live delivery resumes within about a
/// second of Redis coming back (a restart, a Sentinel failover), not after
/// a backoff that grew through the outage. One connection attempt per
/// gateway per second is nothing for Redis.
const MAX_BACKOFF: Duration = Duration::from_secs(1);
/// Job logs a recovery reads at the same time: enough to recover thousands
/// of jobs in a few round trips, few enough not to flood the store.
const RECOVERY_CONCURRENCY: usize = 16;
/// Events per recovery read (as sessions read when catching up).
const RECOVERY_PAGE: usize = 500;

/// Runs until `shutdown` is cancelled.
pub async fn run(
    live: Arc<dyn LiveFeed>,
    store: Arc<dyn JobStore>,
    hub: Arc<Hub>,
    health: Arc<TailerHealth>,
    shutdown: CancellationToken,
) {
    let mut backoff = Backoff::new(MIN_BACKOFF, MAX_BACKOFF);
    loop {
        let opened = tokio::select! {
            () = shutdown.cancelled() => return,
            opened = live.tail(TailFrom::Now) => opened,
        };
        let mut tail = match opened {
            Ok(tail) => tail,
            Err(e) => {
                health.failed();
                tracing::warn!(error = %e, retry_in = ?backoff.peek(), "cannot open the live feed");
                if back_off(&mut backoff, &shutdown).await {
                    return;
                }
                continue;
            }
        };
        // Anything published before this tail opened was not seen by it. The
        // tail is opened first, so that nothing falls between the two.
        let mut recovery = Some(Recovery::All);
        loop {
            if let Some(pending) = recovery.take() {
                let recovered = tokio::select! {
                    () = shutdown.cancelled() => return,
                    recovered = recover(&*store, &hub, &health, pending) => recovered,
                };
                if let Err((left, e)) = recovered {
                    health.failed();
                    tracing::warn!(error = %e, jobs = left.len(), retry_in = ?backoff.peek(),
                        "cannot re-read job logs after a live-feed gap");
                    recovery = Some(Recovery::Jobs(left));
                    if back_off(&mut backoff, &shutdown).await {
                        return;
                    }
                    continue;
                }
                mark_up(&health, &mut backoff);
            }
            let next = tokio::select! {
                () = shutdown.cancelled() => return,
                next = tail.next() => next,
            };
            match next {
                Ok(LiveBatch::Events(records)) => {
                    mark_up(&health, &mut backoff);
                    hub.dispatch(&records);
                }
                Ok(LiveBatch::Deleted(jobs)) => {
                    mark_up(&health, &mut backoff);
                    // Their watchers re-read the log, find nothing, and say
                    // `gone`.
                    for job in &jobs {
                        hub.recheck(job);
                    }
                }
                Ok(LiveBatch::Gap) => {
                    // Up again once the recovery has gone through.
                    tracing::warn!("live feed gap: re-reading the watched jobs' logs");
                    recovery = Some(Recovery::All);
                }
                Err(e) => {
                    health.failed();
                    tracing::warn!(error = %e, retry_in = ?backoff.peek(), "live feed read failed");
                    if back_off(&mut backoff, &shutdown).await {
                        return;
                    }
                }
            }
        }
    }
}

fn mark_up(health: &TailerHealth, backoff: &mut Backoff) {
    if !health.is_up() {
        health.set(true);
        backoff.reset();
    }
}

/// The jobs a recovery still has to read.
#[derive(Debug)]
enum Recovery {
    /// Every watched job.
    All,
    /// These, left over by a recovery that failed part-way.
    Jobs(HashSet<JobId>),
}

/// Reads each job of `pending` from its Hub position and dispatches what
/// follows. Stops at the first store error: the jobs not yet done are
/// returned, to retry after a backoff (their positions have moved past
/// whatever was dispatched meanwhile).
async fn recover(
    store: &dyn JobStore,
    hub: &Hub,
    health: &TailerHealth,
    pending: Recovery,
) -> Result<(), (HashSet<JobId>, BackendError)> {
    let started = Instant::now();
    let reads_before = health.recovery_reads();
    let plan = match &pending {
        Recovery::All => hub.plan_recovery(None),
        Recovery::Jobs(jobs) => hub.plan_recovery(Some(jobs)),
    };
    let jobs = plan.len();
    let mut left: HashSet<JobId> = plan.iter().map(|(job, _)| job.clone()).collect();
    let mut reads = futures_util::stream::iter(plan)
        .map(|(job, from)| async move {
            let read = recover_job(store, hub, health, &job, from).await;
            (job, read)
        })
        .buffer_unordered(RECOVERY_CONCURRENCY);
    while let Some((job, read)) = reads.next().await {
        match read {
            Ok(()) => {
                left.remove(&job);
            }
            // Dropping `reads` abandons the reads in flight; they are
            // repeated from the positions they reached.
            Err(e) => return Err((left, e)),
        }
    }
    // A tail opened with nothing watched (at start-up) recovered nothing.
    if jobs > 0 {
        health.recoveries.fetch_add(1, Ordering::Relaxed);
        tracing::info!(
            jobs,
            reads = health.recovery_reads() - reads_before,
            took = ?started.elapsed(),
            "recovered live events from the job logs"
        );
    }
    Ok(())
}

/// Reads one job's log after `from`, page by page, dispatching each page.
///
/// # Errors
/// Retryable store errors; anything else is settled with a per-job recheck.
async fn recover_job(
    store: &dyn JobStore,
    hub: &Hub,
    health: &TailerHealth,
    job: &JobId,
    from: Position,
) -> Result<(), BackendError> {
    let mut after = from.id;
    loop {
        health.recovery_reads.fetch_add(1, Ordering::Relaxed);
        let page = store
            .events_after(job, after, Some(&from.epoch), RECOVERY_PAGE)
            .await;
        let why = match page {
            Ok(EventsAfter::Events(records)) => {
                let full = records.len() == RECOVERY_PAGE;
                if let Some(last) = records.last() {
                    after = last.id;
                }
                hub.dispatch(&records);
                if !full {
                    return Ok(());
                }
                continue;
            }
            Err(e) if e.is_retryable() => return Err(e),
            // Each watcher resyncs by itself, from its own position.
            Ok(EventsAfter::Resync(reason)) => format!("{reason:?}"),
            // Deleted or expired: each watcher tells its client so. Any
            // other error is the watcher's to meet and report.
            Err(e) => e.to_string(),
        };
        tracing::debug!(job = %job, why, "recovery left to the job's watchers");
        health.recovery_rechecks.fetch_add(1, Ordering::Relaxed);
        hub.recheck(job);
        return Ok(());
    }
}

/// Sleeps for the backoff's next wait; `true` when shutdown came first.
async fn back_off(backoff: &mut Backoff, shutdown: &CancellationToken) -> bool {
    let wait = backoff.failed();
    tokio::select! {
        () = shutdown.cancelled() => true,
        () = tokio::time::sleep(wait) => false,
    }
}
