//! What a job kind implements, and what it works with.
//!
//! A handler is `async fn run(&self, job: JobContext) -> Result<JobOutcome,
//! JobError>`. It reads its parameters from the context and reports progress
//! through [`JobContext::reporter`]; every report call returns an error once
//! the job must stop (cancelled, taken over by another worker, or the worker
//! is shutting down), so a handler written with `?` stops by itself.
//!
//! The runtime publishes `job_started` before the handler runs and the
//! terminal event after it returns: `job_completed` with the outcome's result,
//! `job_failed` with the error's message (also when the handler panics), or
//! `job_cancelled`.

use std::fmt;
use std::future::Future;

use async_trait::async_trait;
use jobwire_core::{JobId, JobState};
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::reporter::Reporter;

/// A job kind's code.
#[async_trait]
pub trait Handler: Send + Sync + 'static {
    /// Runs one attempt of a job. A retried job runs again from the start,
    /// with a fresh reporter and the attempt's counters at zero.
    async fn run(&self, job: JobContext) -> Result<JobOutcome, JobError>;
}

/// A handler made of an async function or closure.
pub fn handler_fn<F, Fut>(f: F) -> impl Handler
where
    F: Fn(JobContext) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<JobOutcome, JobError>> + Send + 'static,
{
    FnHandler(f)
}

struct FnHandler<F>(F);

#[async_trait]
impl<F, Fut> Handler for FnHandler<F>
where
    F: Fn(JobContext) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<JobOutcome, JobError>> + Send + 'static,
{
    async fn run(&self, job: JobContext) -> Result<JobOutcome, JobError> {
        (self.0)(job).await
    }
}

/// What a handler gets: the job as it was when this attempt started, and
/// the reporter for its progress.
#[derive(Debug)]
pub struct JobContext {
    job: JobState,
    reporter: Reporter,
}

impl JobContext {
    pub(crate) fn new(job: JobState, reporter: Reporter) -> JobContext {
        JobContext { job, reporter }
    }

    pub fn id(&self) -> &JobId {
        &self.job.id
    }

    pub fn kind(&self) -> &str {
        &self.job.kind
    }

    /// The job's parameters as submitted.
    pub fn params(&self) -> &Value {
        &self.job.params
    }

    /// The parameters read into a type.
    ///
    /// # Errors
    /// A [`JobError`] naming what does not fit, which fails the job.
    pub fn params_as<T: DeserializeOwned>(&self) -> Result<T, JobError> {
        serde_json::from_value(self.job.params.clone())
            .map_err(|e| JobError::msg(format!("invalid params: {e}")))
    }

    /// The user who submitted the job.
    pub fn owner(&self) -> &str {
        &self.job.owner
    }

    /// 1 for the first run, one more for each retry.
    pub fn attempt(&self) -> u32 {
        self.job.attempt
    }

    pub fn reporter(&self) -> &Reporter {
        &self.reporter
    }
}

/// A successful run's outcome.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct JobOutcome {
    /// Stored on the job as `result` (e.g. the `scan` manifest summary).
    pub result: Option<Value>,
    /// A closing message for the job's `message`.
    pub message: Option<String>,
}

impl JobOutcome {
    /// Completed, with nothing to store.
    pub fn done() -> JobOutcome {
        JobOutcome::default()
    }

    /// Completed with a result.
    pub fn with_result(result: Value) -> JobOutcome {
        JobOutcome {
            result: Some(result),
            message: None,
        }
    }

    /// The same outcome with a closing message.
    pub fn message(mut self, message: impl Into<String>) -> JobOutcome {
        self.message = Some(message.into());
        self
    }
}

/// Why a job must stop before it finished.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StopReason {
    /// Somebody cancelled the job; it ends as `cancelled`.
    Cancelled,
    /// The worker is shutting down; the job goes back to the queue for
    /// another worker.
    Shutdown,
    /// The job is not this worker's any more: its lease expired and another
    /// worker took it over (this one is a zombie), or it was finished
    /// elsewhere. Nothing more is published for this attempt.
    Lost(String),
    /// The job was deleted.
    Gone,
    /// The attempt ran longer than its timeout; the job fails.
    TimedOut(std::time::Duration),
}

impl fmt::Display for StopReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StopReason::Cancelled => f.write_str("the job was cancelled"),
            StopReason::Shutdown => f.write_str("the worker is shutting down"),
            StopReason::Lost(why) => write!(f, "the job is no longer this worker's: {why}"),
            StopReason::Gone => f.write_str("the job was deleted"),
            StopReason::TimedOut(limit) => write!(f, "the attempt timed out after {limit:?}"),
        }
    }
}

/// Returned by report calls once the job must stop. A handler passes it on
/// with `?`; the runtime recognizes it inside a [`JobError`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("job stopped: {0}")]
pub struct Stopped(pub StopReason);

/// A handler's failure: any `std::error::Error` converts into it with `?`,
/// and [`JobError::msg`] makes one from a message. The job fails with its
/// message, causes included, unless it is a [`Stopped`].
///
/// Whether the attempt is retried (docs/workers.md, "Retries"): a plain
/// error is retried when the job or its kind has a retry policy; one marked
/// [`JobError::permanent`] never is; one marked [`JobError::retry`] or
/// [`JobError::retry_after`] always is, while attempts remain.
///
/// Like `anyhow::Error`, it deliberately does not implement
/// `std::error::Error` itself, which is what allows the blanket conversion.
pub struct JobError {
    error: Box<dyn std::error::Error + Send + Sync + 'static>,
    retry: RetryAsk,
}

/// What a failed attempt asks about being retried.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum RetryAsk {
    /// As the job's (or its kind's) retry policy says.
    #[default]
    Policy,
    /// Never: the error will not go away by trying again.
    Never,
    /// Retry while attempts remain: after the policy's backoff, or after
    /// the given wait.
    Retry(Option<std::time::Duration>),
}

impl JobError {
    /// A failure with this message.
    pub fn msg(message: impl fmt::Display) -> JobError {
        JobError {
            error: message.to_string().into(),
            retry: RetryAsk::Policy,
        }
    }

    /// Marks the failure as permanent: the job fails at once, whatever its
    /// retry policy (bad input, say).
    pub fn permanent(mut self) -> JobError {
        self.retry = RetryAsk::Never;
        self
    }

    /// Marks the failure as passing: the job is retried after its backoff
    /// while attempts remain, even without a retry policy of its own.
    pub fn retry(mut self) -> JobError {
        self.retry = RetryAsk::Retry(None);
        self
    }

    /// Asks for a retry after `wait` (a rate limit's `Retry-After`, say),
    /// while attempts remain.
    pub fn retry_after(mut self, wait: std::time::Duration) -> JobError {
        self.retry = RetryAsk::Retry(Some(wait));
        self
    }

    /// What this failure asks about a retry.
    pub fn retry_ask(&self) -> RetryAsk {
        self.retry
    }

    /// The stop reason, when this is a stop rather than a failure.
    pub fn stop_reason(&self) -> Option<&StopReason> {
        self.error.downcast_ref::<Stopped>().map(|s| &s.0)
    }
}

impl<E: std::error::Error + Send + Sync + 'static> From<E> for JobError {
    fn from(e: E) -> JobError {
        JobError {
            error: Box::new(e),
            retry: RetryAsk::Policy,
        }
    }
}

impl fmt::Display for JobError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.error)?;
        // Include the causes, as `{:#}` does for anyhow errors: the message
        // is all the job's owner will see.
        let mut source = self.error.source();
        while let Some(cause) = source {
            write!(f, ": {cause}")?;
            source = cause.source();
        }
        Ok(())
    }
}

impl fmt::Debug for JobError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JobError")
            .field("error", &self.error)
            .field("retry", &self.retry)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_convert_and_keep_their_causes() {
        fn open() -> Result<(), JobError> {
            std::fs::File::open("/nonexistent/jobwire")?;
            Ok(())
        }
        let e = open().expect_err("the file does not exist");
        assert!(e.stop_reason().is_none());
        assert!(e.to_string().contains("No such file"), "{e}");
        let stop = JobError::from(Stopped(StopReason::Cancelled));
        assert_eq!(stop.stop_reason(), Some(&StopReason::Cancelled));
        assert_eq!(JobError::msg("boom").to_string(), "boom");
        assert_eq!(JobError::msg("boom").retry_ask(), RetryAsk::Policy);
        assert_eq!(JobError::msg("x").permanent().retry_ask(), RetryAsk::Never);
        let later = std::time::Duration::from_secs(3);
        let e = JobError::msg("busy").retry_after(later);
        assert_eq!(e.retry_ask(), RetryAsk::Retry(Some(later)));
        assert_eq!(e.to_string(), "busy");
    }
}
