//! The life of one claimed job: check its state, start an attempt, keep the
//! lease, run the handler, publish the ending and ack the queue entry.
//!
//! The attempt is read *before* the lease is confirmed (renewed): if another
//! worker took the entry over in between, the renewal fails and this worker
//! walks away; if it takes it over later, it bumps the attempt first, and
//! every publish of this worker is refused as stale. So a worker never runs
//! an attempt that is not its own.
//!
//! The entry is acked only once the job's terminal event is published (or
//! the job turns out finished or deleted): a worker that dies before that
//! leaves the entry pending, and the reaper of another worker retries it.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use jobwire_core::{
    BackendError, Claim, EventType, JobQueue, JobState, JobStatus, JobStore, NewEvent,
    RetryBackoff, RetryPolicy, Timestamp,
};
use serde_json::{json, Value};
use tokio::task::JoinError;
use tracing::Instrument;

use crate::handler::{JobContext, JobOutcome, RetryAsk, StopReason, Stopped};
use crate::reporter::{Control, Reporter};
use crate::runtime::{Retries, WorkerShared};

/// After the shutdown deadline, how long a handler has to notice that it must
/// stop before its task is aborted.
const STOP_GRACE: Duration = Duration::from_secs(5);

pub(crate) async fn run(worker: &Arc<WorkerShared>, claim: Claim) {
    let span = tracing::info_span!("job", job = %claim.job_id, kind = %claim.kind);
    Job {
        worker: Arc::clone(worker),
        claim,
    }
    .run()
    .instrument(span)
    .await;
}

struct Job {
    worker: Arc<WorkerShared>,
    claim: Claim,
}

/// How the handler's run ended, as far as the job's ending is concerned.
enum Ending {
    Completed(JobOutcome),
    /// Failed; retried or not as `ask` and the retry policy say.
    Failed {
        error: String,
        ask: RetryAsk,
    },
    Cancelled,
    /// Back to the queue for another worker (shutdown).
    Release,
    /// Not this worker's any more: publish nothing, do not ack.
    Lost(StopReason),
}

impl Job {
    fn store(&self) -> &dyn JobStore {
        self.worker.store.as_ref()
    }

    fn queue(&self) -> &dyn JobQueue {
        self.worker.queue.as_ref()
    }

    fn consumer(&self) -> &str {
        &self.worker.config.consumer
    }

    async fn run(self) {
        let Some(state) = self.prepare().await else {
            return;
        };
        let attempt = state.attempt;
        let policy = state.retry.or(&self.worker.kind_retry(&state.kind));
        tracing::debug!(attempt, "starting");
        let control = Arc::new(Control::default());
        let reporter = Reporter::with_control(
            Arc::clone(&self.worker.store),
            state.id.clone(),
            attempt,
            self.worker.config.report_buffer,
            Arc::clone(&control),
        );
        let lease = tokio::spawn(keep_lease(
            Arc::clone(&self.worker),
            self.claim.entry.clone(),
            Arc::clone(&control),
        ));
        let kind = state.kind.clone();
        let began = std::time::Instant::now();
        let ending = self.attempt(state, &reporter, &control).await;
        lease.abort();
        // Run time: attempts that ended here (not handed back, not lost).
        if matches!(
            ending,
            Ending::Completed(_) | Ending::Failed { .. } | Ending::Cancelled
        ) {
            self.worker.stats.timings.ran(&kind, began.elapsed());
        }
        self.finish(ending, &reporter, attempt, &policy).await;
    }

    /// Reads the job and confirms the lease. `None` when there is nothing to
    /// run (the job is finished, deleted, or no longer this worker's).
    async fn prepare(&self) -> Option<JobState> {
        let id = &self.claim.job_id;
        let state = match self.retrying("read the job", || self.store().job(id)).await {
            Ok(state) => state,
            Err(BackendError::NotFound(_)) => {
                tracing::info!("the job was deleted before it ran");
                self.ack().await;
                return None;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot read the job; leaving it to be reclaimed");
                return None;
            }
        };
        if state.status.is_terminal() || state.status == JobStatus::Scheduled {
            // Ended, or waiting for a retry on the schedule (its attempt's
            // worker published `job_retrying` and died before acking).
            tracing::debug!(status = %state.status, "nothing to run now");
            self.ack().await;
            return None;
        }
        let entry = &self.claim.entry;
        match self
            .retrying("renew the lease", || {
                self.queue().renew(self.consumer(), entry)
            })
            .await
        {
            Ok(true) => {}
            Ok(false) => {
                tracing::info!("another worker took the job over before it started here");
                return None;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot confirm the lease; leaving the job");
                return None;
            }
        }
        if state.status == JobStatus::Running {
            // Its previous attempt ended without a word (its entry was put
            // back by hand, say): start a new attempt, which fences the old.
            let retry = NewEvent::new(
                EventType::JobRetrying,
                json!({
                    "reason": format!("attempt {} was interrupted", state.attempt),
                    "previous_attempt": state.attempt,
                }),
            );
            match self
                .retrying("start a new attempt", || {
                    self.store().publish(id, std::slice::from_ref(&retry))
                })
                .await
            {
                Ok(_) => {
                    return self
                        .retrying("read the job", || self.store().job(id))
                        .await
                        .ok()
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot start a new attempt; leaving the job");
                    return None;
                }
            }
        }
        Some(state)
    }

    /// Runs one attempt and says how it ended.
    async fn attempt(
        &self,
        state: JobState,
        reporter: &Reporter,
        control: &Arc<Control>,
    ) -> Ending {
        let kind = state.kind.clone();
        let Some(handler) = self.worker.handlers.get(&kind).cloned() else {
            let mut known: Vec<&str> = self.worker.handlers.keys().map(String::as_str).collect();
            known.sort_unstable();
            return Ending::Failed {
                error: format!(
                    "no handler for kind {kind:?} on worker {} (it runs: {})",
                    self.consumer(),
                    known.join(", ")
                ),
                ask: RetryAsk::Never,
            };
        };
        let started = json!({"worker": self.consumer(), "attempt": state.attempt});
        if let Err(e) = reporter.push_final(EventType::JobStarted, started).await {
            return stopped(e);
        }
        if let Err(e) = reporter.flush().await {
            return stopped(e);
        }
        // Wait time: from when the job became runnable (created, or its
        // run_at: a delay or a retry's backoff) to its start here.
        let runnable = state.run_at.unwrap_or(state.created_at);
        let waited = Timestamp::now().unix_millis() - runnable.unix_millis();
        self.worker
            .stats
            .timings
            .waited(Duration::from_millis(waited.max(0) as u64));
        if control.reason() == Some(&StopReason::Cancelled) {
            return Ending::Cancelled;
        }

        // The job's own timeout, else the worker's for the kind.
        let limit = state
            .timeout_ms
            .map(Duration::from_millis)
            .or_else(|| self.worker.timeouts.get(&kind).copied());
        let ctx = JobContext::new(state, reporter.clone());
        let mut task = tokio::spawn(async move { handler.run(ctx).await }.in_current_span());
        let out_of_time = async {
            match limit {
                Some(limit) => tokio::time::sleep(limit).await,
                None => std::future::pending().await,
            }
        };
        let result = tokio::select! {
            r = &mut task => r,
            () = self.worker.release.cancelled() => {
                control.stop(StopReason::Shutdown);
                match tokio::time::timeout(STOP_GRACE, &mut task).await {
                    Ok(r) => r,
                    Err(_) => {
                        tracing::warn!("the handler did not stop within {STOP_GRACE:?}; aborting it");
                        task.abort();
                        return Ending::Release;
                    }
                }
            }
            () = out_of_time => {
                let limit = limit.unwrap_or_default();
                // The handler sees it as it sees a cancel (its next report
                // or `reporter.stopped()`), and has a grace to stop.
                control.stop(StopReason::TimedOut(limit));
                if tokio::time::timeout(STOP_GRACE, &mut task).await.is_err() {
                    tracing::warn!("the timed-out handler did not stop within {STOP_GRACE:?}; aborting it");
                    task.abort();
                }
                return timed_out(limit);
            }
        };
        // The control's reason is authoritative: a handler may have turned
        // a stop into an error of its own, or finished regardless.
        match (result, control.reason().cloned()) {
            (_, Some(reason @ (StopReason::Lost(_) | StopReason::Gone))) => Ending::Lost(reason),
            (Ok(Ok(outcome)), _) => Ending::Completed(outcome),
            (_, Some(StopReason::Cancelled)) => Ending::Cancelled,
            (_, Some(StopReason::Shutdown)) => Ending::Release,
            (_, Some(StopReason::TimedOut(limit))) => timed_out(limit),
            (Ok(Err(e)), None) => match e.stop_reason() {
                Some(reason) => stopped(Stopped(reason.clone())),
                None => Ending::Failed {
                    error: e.to_string(),
                    ask: e.retry_ask(),
                },
            },
            (Err(join), None) => Ending::Failed {
                error: panic_message(join),
                ask: RetryAsk::Policy,
            },
        }
    }

    /// Publishes the ending and acks (or releases) the entry.
    async fn finish(
        &self,
        ending: Ending,
        reporter: &Reporter,
        attempt: u32,
        policy: &RetryPolicy,
    ) {
        let stats = &self.worker.stats;
        let (kind, data) = match ending {
            Ending::Lost(reason) => {
                tracing::warn!(attempt, %reason, "stopped: this attempt is over");
                stats.lost.fetch_add(1, Ordering::Relaxed);
                // A job that ended elsewhere (cancelled before it started
                // here, say) or was deleted needs its entry acked; one that
                // another worker runs does not.
                let id = &self.claim.job_id;
                match self.retrying("read the job", || self.store().job(id)).await {
                    Ok(state) if state.status.is_terminal() => self.ack().await,
                    Err(BackendError::NotFound(_)) => self.ack().await,
                    _ => {}
                }
                return;
            }
            Ending::Completed(outcome) => {
                let mut data = serde_json::Map::new();
                if let Some(result) = outcome.result {
                    data.insert("result".to_owned(), result);
                }
                if let Some(message) = outcome.message {
                    data.insert("message".to_owned(), message.into());
                }
                (EventType::JobCompleted, Value::Object(data))
            }
            Ending::Failed { error, ask } => {
                match retry_wait(policy, ask, attempt, self.worker.config.max_attempts) {
                    Some(wait) => {
                        let retry_at = Timestamp::now().plus(wait);
                        tracing::info!(attempt, %error, %retry_at, "attempt failed; retrying");
                        (
                            EventType::JobRetrying,
                            json!({
                                "reason": format!("attempt {attempt} failed: {error}"),
                                "error": error,
                                "retry_at": retry_at.to_string(),
                                "previous_attempt": attempt,
                            }),
                        )
                    }
                    None => {
                        tracing::info!(attempt, %error, "job failed");
                        let error = if attempt > 1 {
                            format!("{error} (attempt {attempt}, the last)")
                        } else {
                            error
                        };
                        (EventType::JobFailed, json!({ "error": error }))
                    }
                }
            }
            Ending::Cancelled => (
                EventType::JobCancelled,
                json!({ "reason": "cancelled on request" }),
            ),
            Ending::Release => (
                EventType::JobRetrying,
                json!({
                    "reason": format!("worker {} shut down during attempt {attempt}", self.consumer()),
                    "previous_attempt": attempt,
                }),
            ),
        };
        // A retry after a backoff waits on the schedule, not in the queue.
        let backs_off = kind == EventType::JobRetrying && data.get("retry_at").is_some();
        let counter = match kind {
            EventType::JobCompleted => &stats.completed,
            EventType::JobFailed => &stats.failed,
            EventType::JobCancelled => &stats.cancelled,
            _ if backs_off => &stats.retried,
            _ => &stats.released,
        };
        let published = async {
            reporter.push_final(kind.clone(), data).await?;
            reporter.flush().await
        };
        let published = tokio::select! {
            r = published => r,
            () = self.worker.give_up.cancelled() => {
                tracing::warn!("gave up publishing the job's ending; it will be reclaimed");
                return;
            }
        };
        stats
            .events
            .fetch_add(reporter.reported(), Ordering::Relaxed);
        if let Err(e) = published {
            tracing::warn!(error = %e, "the job's ending was not published");
            stats.lost.fetch_add(1, Ordering::Relaxed);
            return;
        }
        counter.fetch_add(1, Ordering::Relaxed);
        if kind == EventType::JobRetrying && !backs_off {
            let entry = &self.claim.entry;
            match self
                .retrying("release the job", || {
                    self.queue().release(self.consumer(), entry)
                })
                .await
            {
                Ok(true) => tracing::info!("released to the queue for another worker"),
                Ok(false) => tracing::info!("another worker already took the job over"),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot release the job; it will be reclaimed")
                }
            }
        } else {
            tracing::debug!(ending = %kind, "done");
            self.ack().await;
        }
    }

    async fn ack(&self) {
        let entry = &self.claim.entry;
        if let Err(e) = self
            .retrying("ack the job", || self.queue().ack(entry))
            .await
        {
            tracing::warn!(error = %e, "cannot ack the job's queue entry; it will be dropped when reclaimed");
        }
    }

    /// Runs `op`, retrying while the store is unreachable, until the worker
    /// gives up (shutdown deadline passed).
    async fn retrying<'a, T, F, Fut>(&'a self, what: &str, mut op: F) -> Result<T, BackendError>
    where
        F: FnMut() -> Fut + 'a,
        Fut: std::future::Future<Output = Result<T, BackendError>> + 'a,
    {
        let mut backoff = Retries::default();
        loop {
            match op().await {
                Err(e) if e.is_retryable() && !self.worker.give_up.is_cancelled() => {
                    backoff.failed(what, &e);
                    tokio::select! {
                        () = backoff.wait() => {}
                        () = self.worker.give_up.cancelled() => return Err(e),
                    }
                }
                other => return other,
            }
        }
    }
}

/// Keeps the lease on the job's entry while it runs; a refused renewal means
/// another worker took the job over, and this attempt stops.
async fn keep_lease(worker: Arc<WorkerShared>, entry: String, control: Arc<Control>) {
    let every = worker.config.visibility_timeout / 3;
    let mut backoff = Retries::default();
    loop {
        tokio::time::sleep(every).await;
        loop {
            match worker.queue.renew(&worker.config.consumer, &entry).await {
                Ok(true) => {
                    backoff.reset();
                    break;
                }
                Ok(false) => {
                    control.stop(StopReason::Lost(
                        "its lease expired and another worker took it over".to_owned(),
                    ));
                    return;
                }
                Err(e) => {
                    backoff.failed("renew the job's lease", &e);
                    backoff.wait().await;
                }
            }
        }
    }
}

fn stopped(Stopped(reason): Stopped) -> Ending {
    match reason {
        StopReason::Cancelled => Ending::Cancelled,
        StopReason::Shutdown => Ending::Release,
        StopReason::TimedOut(limit) => timed_out(limit),
        reason => Ending::Lost(reason),
    }
}

/// A timed-out attempt: failed, and retried as the policy says.
fn timed_out(limit: Duration) -> Ending {
    Ending::Failed {
        error: format!("timed out after {limit:?}"),
        ask: RetryAsk::Policy,
    }
}

/// How long to wait before retrying failed attempt `attempt`, or `None`
/// when the job fails now (docs/workers.md, "Retries"): a plain failure
/// retries only under a retry policy (the job's or its kind's); one the
/// handler marked permanent never; one it marked for retry always, while
/// attempts remain (`policy.max_attempts`, else `default_attempts`).
fn retry_wait(
    policy: &RetryPolicy,
    ask: RetryAsk,
    attempt: u32,
    default_attempts: u32,
) -> Option<Duration> {
    let wanted = match ask {
        RetryAsk::Never => false,
        RetryAsk::Retry(_) => true,
        RetryAsk::Policy => !policy.is_unset(),
    };
    let attempts = policy.max_attempts.unwrap_or(default_attempts);
    if !wanted || attempt >= attempts {
        return None;
    }
    Some(match ask {
        RetryAsk::Retry(Some(wait)) => wait.min(RetryBackoff::LONGEST),
        _ => policy.backoff.clone().unwrap_or_default().jittered(attempt),
    })
}

fn panic_message(join: JoinError) -> String {
    if !join.is_panic() {
        return "the handler was aborted".to_owned();
    }
    let payload = join.into_panic();
    let text = payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".to_owned());
    format!("the handler panicked: {text}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_retry_as_the_policy_and_the_handler_say() {
        let none = RetryPolicy::default();
        let three = RetryPolicy {
            max_attempts: Some(3),
            backoff: Some(RetryBackoff {
                base: Duration::from_secs(10),
                factor: 2.0,
                max: Duration::from_secs(60),
            }),
        };
        // No policy: a plain failure fails; a retry the handler asks for is
        // honoured up to the worker's default attempts.
        assert_eq!(retry_wait(&none, RetryAsk::Policy, 1, 3), None);
        let asked = Some(Duration::from_secs(7));
        assert_eq!(retry_wait(&none, RetryAsk::Retry(asked), 1, 3), asked);
        assert_eq!(retry_wait(&none, RetryAsk::Retry(asked), 3, 3), None);
        // A policy: backoff grows, attempts are capped, permanent wins.
        let first = retry_wait(&three, RetryAsk::Policy, 1, 9).expect("retries");
        assert!((8..=12).contains(&first.as_secs()), "{first:?}");
        let second = retry_wait(&three, RetryAsk::Policy, 2, 9).expect("retries");
        assert!((16..=24).contains(&second.as_secs()), "{second:?}");
        assert_eq!(retry_wait(&three, RetryAsk::Policy, 3, 9), None);
        assert_eq!(retry_wait(&three, RetryAsk::Never, 1, 9), None);
        assert!(retry_wait(&none, RetryAsk::Retry(None), 1, 3).is_some());
    }
}
