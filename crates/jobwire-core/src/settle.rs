//! Follow-up steps written once on top of the backend traits, so the
//! backends cannot drift apart: what happens to a queue entry whose lease
//! lapsed (the worker runtime calls it after [`JobQueue::take_over_idle`]),
//! how a cancel request finishes ([`JobStore::cancel`]'s default), and how
//! scheduled jobs whose time came are queued ([`promote_due`]).

use serde_json::json;

use crate::backend::{
    BackendError, CancelOutcome, Claim, JobQueue, JobStore, Promotion, Reclaimed, Result,
    ScheduleStore,
};
use crate::event::{EventType, NewEvent};
use crate::ids::{JobId, Timestamp};
use crate::job::{JobState, JobStatus};

/// Decides the fate of a queue entry that `consumer` just took over because
/// its previous worker went silent: retry it (publishing `job_retrying`, which
/// bumps the attempt and so fences the old worker), dead-letter it once
/// its attempts are used up (the job's `max_attempts`, else
/// `max_attempts(kind)`: the worker's for the kind), or drop it if the job
/// is gone, done or waiting on the schedule.
///
/// # Errors
/// Backend errors other than "not found" and "rejected" (which mean the job
/// moved on concurrently and are settled as `Dropped`).
pub async fn settle_reclaimed(
    store: &dyn JobStore,
    queue: &dyn JobQueue,
    claim: Claim,
    max_attempts: &(dyn Fn(&str) -> u32 + Sync),
) -> Result<Reclaimed> {
    let job_id = claim.job_id.clone();
    let state = match store.job(&job_id).await {
        Ok(state) => state,
        Err(BackendError::NotFound(_)) => {
            queue.ack(&claim.entry).await?;
            return Ok(Reclaimed::Dropped { job_id });
        }
        Err(e) => return Err(e),
    };
    // A job that ended, or that waits for a retry on the schedule (its
    // worker published `job_retrying` and died before acking), does not
    // need this entry.
    if state.status.is_terminal() || state.status == JobStatus::Scheduled {
        queue.ack(&claim.entry).await?;
        return Ok(Reclaimed::Dropped { job_id });
    }
    let max_attempts = state
        .retry
        .max_attempts
        .unwrap_or_else(|| max_attempts(&state.kind));
    if state.attempt >= max_attempts {
        let attempts = state.attempt;
        let failed = NewEvent::new(
            EventType::JobFailed,
            json!({
                "error": format!(
                    "gave up after {attempts} attempt{}: the worker stopped responding",
                    if attempts == 1 { "" } else { "s" }
                ),
                "dead_letter": true,
            }),
        );
        let outcome = store.publish(&job_id, &[failed]).await;
        queue.ack(&claim.entry).await?;
        return match outcome {
            Ok(_) => Ok(Reclaimed::DeadLettered { job_id, attempts }),
            Err(BackendError::NotFound(_) | BackendError::Rejected { .. }) => {
                Ok(Reclaimed::Dropped { job_id })
            }
            Err(e) => Err(e),
        };
    }
    let retry = NewEvent::new(
        EventType::JobRetrying,
        json!({
            "reason": format!("attempt {} stopped responding", state.attempt),
            "previous_attempt": state.attempt,
        }),
    );
    match store.publish(&job_id, &[retry]).await {
        Ok(_) => Ok(Reclaimed::Retry {
            claim,
            attempt: state.attempt + 1,
        }),
        Err(BackendError::NotFound(_) | BackendError::Rejected { .. }) => {
            queue.ack(&claim.entry).await?;
            Ok(Reclaimed::Dropped { job_id })
        }
        Err(e) => Err(e),
    }
}

/// [`settle_reclaimed`] for each claim, in order.
///
/// # Errors
/// The first backend error.
pub async fn settle_all(
    store: &dyn JobStore,
    queue: &dyn JobQueue,
    claims: Vec<Claim>,
    max_attempts: &(dyn Fn(&str) -> u32 + Sync),
) -> Result<Vec<Reclaimed>> {
    let mut settled = Vec::with_capacity(claims.len());
    for claim in claims {
        settled.push(settle_reclaimed(store, queue, claim, max_attempts).await?);
    }
    Ok(settled)
}

/// Finishes a cancel once the backend has set the job's cancel flag and read
/// its state: a queued job is cancelled at once; a running one will see the
/// flag at its next publish.
///
/// # Errors
/// Backend errors from publishing `job_cancelled`.
pub async fn finish_cancel<S: JobStore + ?Sized>(
    store: &S,
    state: JobState,
) -> Result<CancelOutcome> {
    match state.status {
        JobStatus::Queued | JobStatus::Scheduled => {
            let cancelled = NewEvent::new(
                EventType::JobCancelled,
                json!({"reason": "cancelled before it started"}),
            );
            match store.publish(&state.id, &[cancelled]).await {
                Ok(_) => Ok(CancelOutcome::Cancelled),
                // It started (or finished) in the meantime: the flag set by
                // the caller stops it at its next report.
                Err(BackendError::Rejected { .. }) => match store.job(&state.id).await? {
                    s if s.status.is_terminal() => Ok(CancelOutcome::AlreadyFinished(s.status)),
                    _ => Ok(CancelOutcome::Requested),
                },
                Err(e) => Err(e),
            }
        }
        JobStatus::Running => Ok(CancelOutcome::Requested),
        done => Ok(CancelOutcome::AlreadyFinished(done)),
    }
}

/// Queues up to `max` scheduled jobs whose time came (`now` or earlier):
/// [`JobStore::promote`] publishes `job_queued` for each, which takes it off
/// the schedule and into its queue in one atomic step. Any number of
/// processes may run this at once: the first publish wins, and the others'
/// are refused (the job is no longer `scheduled`); their schedule entries,
/// and those of jobs gone meanwhile, are dropped. Each starts at a random
/// place in the due list, so that racing promoters mostly take different
/// jobs. Returns how many this call promoted.
///
/// # Errors
/// Backend errors.
pub async fn promote_due(
    store: &dyn JobStore,
    queue: &dyn JobQueue,
    now: Timestamp,
    max: usize,
) -> Result<usize> {
    let mut due = queue.claim_due(now, max).await?;
    if due.len() > 1 {
        let start = rand::random::<u64>() as usize % due.len();
        due.rotate_left(start);
    }
    let promotion = store.promote(&due).await?;
    for job in &promotion.stale {
        queue.drop_due(job).await?;
    }
    Ok(promotion.promoted)
}

/// The event that queues a scheduled job whose time came.
pub fn promotion_event() -> NewEvent {
    NewEvent::new(EventType::JobQueued, json!({"reason": "its time came"}))
}

/// [`JobStore::promote`] one [`JobStore::publish`] at a time per job,
/// [`PROMOTE_IN_FLIGHT`] in flight: the default, and the Redis backend's
/// way for jobs its batch could not promote as planned.
///
/// # Errors
/// Backend errors other than "not found" and "rejected" (a job deleted or
/// promoted meanwhile: stale).
pub async fn promote_each<S: JobStore + ?Sized>(store: &S, jobs: &[JobId]) -> Result<Promotion> {
    use futures_util::{StreamExt, TryStreamExt};

    futures_util::stream::iter(jobs.iter().cloned())
        .map(|job| async move {
            match store.publish(&job, &[promotion_event()]).await {
                Ok(_) => Ok(None),
                Err(BackendError::NotFound(_) | BackendError::Rejected { .. }) => Ok(Some(job)),
                Err(e) => Err(e),
            }
        })
        .buffer_unordered(PROMOTE_IN_FLIGHT)
        .try_fold(Promotion::default(), |mut sum, stale| async move {
            match stale {
                Some(job) => sum.stale.push(job),
                None => sum.promoted += 1,
            }
            Ok(sum)
        })
        .await
}

/// Promotions [`promote_due`] keeps in flight.
pub const PROMOTE_IN_FLIGHT: usize = 32;

/// An operator's retry of a failed job: a new attempt on the same job (its
/// ids continue), through the schedule: `job_retrying` now, then
/// `job_queued` from the promoter. `by` says who asked (it is in the
/// event's `reason`).
///
/// # Errors
/// [`BackendError::Invalid`] when the job has not failed (or was retried
/// meanwhile); backend errors.
pub async fn retry_failed(store: &dyn JobStore, job: &JobId, by: &str) -> Result<JobState> {
    let state = store.job(job).await?;
    if state.status != JobStatus::Failed {
        return Err(BackendError::Invalid(format!(
            "only a failed job can be retried; job {job} is {}",
            state.status
        )));
    }
    let retry = NewEvent::new(
        EventType::JobRetrying,
        json!({
            "reason": format!("retried by {by} after it failed"),
            "retry_at": Timestamp::now().to_string(),
            "previous_attempt": state.attempt,
        }),
    );
    match store.publish(job, &[retry]).await {
        Ok(_) => store.job(job).await,
        Err(BackendError::Rejected { .. }) => Err(BackendError::Invalid(format!(
            "job {job} was retried or changed meanwhile"
        ))),
        Err(e) => Err(e),
    }
}

/// How often [`keep_promoting`] looks for scheduled jobs whose time came: a
/// delayed job is queued at most about this long after its time.
pub const PROMOTE_EVERY: std::time::Duration = std::time::Duration::from_millis(250);
/// Scheduled jobs promoted per round at most.
pub const PROMOTE_BATCH: usize = 1_000;

/// What one round of [`keep_promoting`] did.
#[derive(Debug, Default, Clone, Copy)]
pub struct Round {
    /// Scheduled jobs queued.
    pub promoted: usize,
    /// Cron ticks fired or passed over.
    pub fired: crate::schedule::Fired,
}

/// Fires the cron schedules whose tick came ([`crate::schedule::fire_due`])
/// and runs [`promote_due`], every [`PROMOTE_EVERY`] (at once again after a
/// round that promoted something: more may be due), until the future is
/// dropped; store outages are waited out with the one backoff, logged at
/// their start and every doubling. Every worker and gateway runs one.
/// `report` hears what each round did.
pub async fn keep_promoting(
    store: &dyn JobStore,
    queue: &dyn JobQueue,
    schedules: &dyn ScheduleStore,
    report: impl Fn(Round) + Send,
) {
    let mut backoff = crate::Backoff::new(
        std::time::Duration::from_millis(100),
        std::time::Duration::from_secs(5),
    );
    loop {
        let now = Timestamp::now();
        let round = async {
            let fired = crate::schedule::fire_due(store, schedules, now).await?;
            let promoted = promote_due(store, queue, now, PROMOTE_BATCH).await?;
            Ok::<_, BackendError>(Round { promoted, fired })
        };
        let wait = match round.await {
            Ok(round) => {
                let failures = backoff.reset();
                if failures > 0 {
                    tracing::info!(failures, "queueing scheduled jobs again");
                }
                report(round);
                if round.promoted > 0 {
                    continue;
                }
                PROMOTE_EVERY
            }
            Err(e) => {
                let wait = backoff.failed();
                if backoff.worth_logging() {
                    tracing::warn!(failures = backoff.failures(), error = %e,
                        "cannot queue scheduled jobs or fire schedules; retrying");
                }
                wait
            }
        };
        tokio::time::sleep(wait).await;
    }
}
