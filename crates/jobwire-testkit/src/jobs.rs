//! Reading jobs back in tests: wait until a job gets somewhere, and read its
//! whole log, checked to have the consecutive ids the contract promises.

use std::time::Duration;

use anyhow::{bail, ensure, Result};
use jobwire_core::{Backend, Event, EventId, EventsAfter, JobId, JobState};

/// Polls the job until `done` holds, for at most `timeout`.
///
/// # Errors
/// When the time runs out (the error shows the job's last state) or the
/// job cannot be read by then.
pub async fn wait_for(
    backend: &dyn Backend,
    job: &JobId,
    timeout: Duration,
    done: impl Fn(&JobState) -> bool,
) -> Result<JobState> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let late = tokio::time::Instant::now() > deadline;
        match backend.job(job).await {
            Ok(state) if done(&state) => return Ok(state),
            Ok(state) if late => {
                bail!("job {job} did not get there in {timeout:?}; it is {state:?}")
            }
            Err(e) if late => return Err(e.into()),
            _ => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

/// The job's whole log, checked to be the consecutive ids 1, 2, 3 …
///
/// # Errors
/// When the log was trimmed, cannot be read, or has a hole.
pub async fn log(backend: &dyn Backend, job: &JobId) -> Result<Vec<Event>> {
    let EventsAfter::Events(records) = backend
        .events_after(job, EventId::ZERO, None, 1_000_000)
        .await?
    else {
        bail!("the log of {job} was trimmed");
    };
    let events = records
        .iter()
        .map(|r| r.parse())
        .collect::<Result<Vec<Event>, _>>()?;
    for (i, e) in events.iter().enumerate() {
        ensure!(
            e.id.0 == i as u64 + 1,
            "ids not consecutive at {i}: {events:#?}"
        );
    }
    Ok(events)
}

/// Checks that the queue holds nothing: every job was acked (or released and
/// taken again), none left behind.
///
/// # Errors
/// When entries remain, or the queue cannot be read.
pub async fn ensure_queue_empty(backend: &dyn Backend) -> Result<()> {
    let stats = backend.queue_stats().await?;
    ensure!(
        stats == Default::default(),
        "entries left behind: {stats:?}"
    );
    Ok(())
}

/// Creates a `demo` job for user `alice` with these parameters.
///
/// # Errors
/// When the backend refuses it.
pub async fn create_demo(backend: &dyn Backend, params: serde_json::Value) -> Result<JobState> {
    Ok(backend
        .create_job(jobwire_core::NewJob::new("demo", params, "alice"))
        .await?)
}

/// Waits (up to 20 s) until a worker has made progress on the job.
///
/// # Errors
/// As [`wait_for`].
pub async fn wait_progressing(backend: &dyn Backend, job: &JobId) -> Result<JobState> {
    wait_for(backend, job, Duration::from_secs(20), |s| s.progress > 0.0).await
}
