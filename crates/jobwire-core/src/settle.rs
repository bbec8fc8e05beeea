//! Follow-up steps written once on top of the backend traits, so the
//! backends cannot drift apart: what happens to a queue entry whose lease
//! lapsed (the worker runtime calls it after [`JobQueue::take_over_idle`]),
//! and how a cancel request finishes ([`JobStore::cancel`]'s default).

use serde_json::json;

use crate::backend::{BackendError, CancelOutcome, Claim, JobQueue, JobStore, Reclaimed, Result};
use crate::event::{EventType, NewEvent};
use crate::job::{JobState, JobStatus};

/// Decides the fate of a queue entry that `consumer` just took over because
/// its previous worker went silent: retry it (publishing `job_retrying`, which
/// bumps the attempt and so fences the old worker), dead-letter it once
/// `max_attempts` attempts were made, or drop it if the job is gone or done.
///
/// # Errors
/// Backend errors other than "not found" and "rejected" (which mean the job
/// moved on concurrently and are settled as `Dropped`).
pub async fn settle_reclaimed(
    store: &dyn JobStore,
    queue: &dyn JobQueue,
    claim: Claim,
    max_attempts: u32,
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
    if state.status.is_terminal() {
        queue.ack(&claim.entry).await?;
        return Ok(Reclaimed::Dropped { job_id });
    }
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
    max_attempts: u32,
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
        JobStatus::Queued => {
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
