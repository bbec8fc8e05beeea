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
/// Like `anyhow::Error`, it deliberately does not implement
/// `std::error::Error` itself, which is what allows the blanket conversion.
pub struct JobError(Box<dyn std::error::Error + Send + Sync + 'static>);

impl JobError {
    /// A failure with this message.
    pub fn msg(message: impl fmt::Display) -> JobError {
        JobError(message.to_string().into())
    }

    /// The stop reason, when this is a stop rather than a failure.
    pub fn stop_reason(&self) -> Option<&StopReason> {
        self.0.downcast_ref::<Stopped>().map(|s| &s.0)
    }
}

impl<E: std::error::Error + Send + Sync + 'static> From<E> for JobError {
    fn from(e: E) -> JobError {
        JobError(Box::new(e))
    }
}

impl fmt::Display for JobError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        // Include the causes, as `{:#}` does for anyhow errors: the message
        // is all the job's owner will see.
        let mut source = self.0.source();
        while let Some(cause) = source {
            write!(f, ": {cause}")?;
            source = cause.source();
        }
        Ok(())
    }
}

impl fmt::Debug for JobError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("JobError").field(&self.0).finish()
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
    }
}
