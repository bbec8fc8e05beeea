//! Retry policies, delayed jobs and priorities through a running worker:
//! what the event log shows of each.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use jobwire_core::{EventType, JobStatus, NewJob, RetryBackoff, RetryPolicy, Timestamp};
use jobwire_testkit::RedisServer;
use jobwire_worker::{handler_fn, JobError, JobOutcome, Worker};
use serde_json::json;

use crate::support::{self, config, count, log, wait_finished, Running};

/// The retry_at of a `job_retrying` event.
fn retry_at(event: &jobwire_core::Event) -> Result<Timestamp> {
    event
        .data
        .get("retry_at")
        .and_then(|v| v.as_str())
        .context("job_retrying without retry_at")?
        .parse()
        .context("retry_at is not a time")
}

/// A kind with a policy (3 attempts, 300 ms doubling): a handler that
/// always fails runs three times, each retry waiting on the schedule for
/// its backoff (±20% jitter), and the job fails on the last, saying so. The
/// schedule is read back from the event log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_attempts_are_retried_on_their_backoff_schedule() -> Result<()> {
    let server = RedisServer::start()?;
    let backend = support::backend(&server).await?;
    let policy = RetryPolicy {
        max_attempts: Some(3),
        backoff: Some(RetryBackoff {
            base: Duration::from_millis(300),
            factor: 2.0,
            max: Duration::from_secs(5),
        }),
    };
    let worker = Worker::builder(Arc::clone(&backend))
        .config(config("w1"))
        .handler(
            "flaky",
            handler_fn(|job| async move {
                Err(JobError::msg(format!("broke on attempt {}", job.attempt())))
            }),
        )
        .retry("flaky", policy)
        .build()?;
    let running = Running::start(worker);
    let job = backend
        .create_job(NewJob::new("flaky", json!({}), "alice"))
        .await?;
    let state = wait_finished(backend.as_ref(), &job.id).await?;
    ensure!(
        state.status == JobStatus::Failed && state.attempt == 3,
        "{state:?}"
    );
    let error = state.error.unwrap_or_default();
    ensure!(error.contains("broke on attempt 3"), "{error}");
    let events = log(backend.as_ref(), &job.id).await?;
    let kinds: Vec<&str> = events.iter().map(|e| e.kind.as_str()).collect();
    ensure!(
        kinds
            == [
                "job_queued",
                "job_started",
                "job_retrying",
                "job_queued",
                "job_started",
                "job_retrying",
                "job_queued",
                "job_started",
                "job_failed"
            ],
        "{kinds:?}"
    );
    for (nth, at) in [(2usize, 300u64), (5, 600)] {
        let retrying = &events[nth];
        let due = retry_at(retrying)?;
        let wait = (due.unix_millis() - retrying.timestamp.unix_millis()) as u64;
        // ±20% jitter; the event is stamped a moment after `retry_at` was
        // computed, so the low end allows for that moment on a loaded host.
        let (low, high) = (at * 8 / 10 - 50, at * 12 / 10 + 1);
        ensure!(
            (low..=high).contains(&wait),
            "retry {nth} waits {wait} ms, not {at} ms ±20%"
        );
        ensure!(retrying.data["status"] == "scheduled");
        // Queued no sooner than its time, and started after that.
        ensure!(events[nth + 1].timestamp >= due, "promoted early");
        ensure!(events[nth + 2].timestamp >= events[nth + 1].timestamp);
    }
    let stats = running.shut_down().await?.stats().snapshot();
    ensure!(stats.retried == 2 && stats.failed == 1, "{stats:?}");
    Ok(())
}

/// What a handler says about its error wins over the policy: a permanent
/// error fails at once; a retry it asks for (after a wait it names) happens
/// even without a policy, and the second attempt completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handlers_mark_errors_permanent_or_ask_for_a_retry() -> Result<()> {
    let server = RedisServer::start()?;
    let backend = support::backend(&server).await?;
    let calls = Arc::new(AtomicU32::new(0));
    let counted = Arc::clone(&calls);
    let worker = Worker::builder(Arc::clone(&backend))
        .config(config("w1"))
        .handler(
            "bad_input",
            handler_fn(|_job| async move { Err(JobError::msg("no such file").permanent()) }),
        )
        .handler(
            "rate_limited",
            handler_fn(move |job| {
                counted.fetch_add(1, Ordering::SeqCst);
                async move {
                    if job.attempt() == 1 {
                        return Err(JobError::msg("429 from upstream")
                            .retry_after(Duration::from_millis(400)));
                    }
                    Ok(JobOutcome::done())
                }
            }),
        )
        .build()?;
    let running = Running::start(worker);
    let mut bad = NewJob::new("bad_input", json!({}), "alice");
    bad.retry.max_attempts = Some(5);
    let bad = backend.create_job(bad).await?;
    let limited = backend
        .create_job(NewJob::new("rate_limited", json!({}), "alice"))
        .await?;
    let state = wait_finished(backend.as_ref(), &bad.id).await?;
    ensure!(
        state.status == JobStatus::Failed && state.attempt == 1,
        "a permanent error was retried: {state:?}"
    );
    let state = wait_finished(backend.as_ref(), &limited.id).await?;
    ensure!(
        state.status == JobStatus::Completed && state.attempt == 2,
        "{state:?}"
    );
    let events = log(backend.as_ref(), &limited.id).await?;
    let retrying = events
        .iter()
        .find(|e| e.kind == EventType::JobRetrying)
        .context("no job_retrying")?;
    // `retry_at` is taken when the attempt fails, the event's timestamp when
    // it is published a moment later: the gap is at most the asked-for wait.
    // The default backoff (a second) would be far outside this range.
    let wait = retry_at(retrying)?.unix_millis() - retrying.timestamp.unix_millis();
    ensure!(
        (300..=400).contains(&wait),
        "the asked-for wait was {wait} ms"
    );
    ensure!(calls.load(Ordering::SeqCst) == 2);
    running.shut_down().await?;
    Ok(())
}

/// A delayed job waits as `scheduled` and starts once its time has come;
/// a cancelled one never starts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delayed_jobs_start_at_their_time_and_can_be_cancelled_before() -> Result<()> {
    let server = RedisServer::start()?;
    let backend = support::backend(&server).await?;
    let running = Running::start(support::builtin(&backend, config("w1")).build()?);
    let at = Timestamp::now().plus(Duration::from_millis(800));
    let delayed = backend
        .create_job(NewJob::new("demo", json!({"steps": 1}), "alice").not_before(at))
        .await?;
    let cancelled = backend
        .create_job(NewJob::new("demo", json!({"steps": 1}), "alice").not_before(at))
        .await?;
    ensure!(delayed.status == JobStatus::Scheduled);
    backend.cancel(&cancelled.id).await?;
    let state = wait_finished(backend.as_ref(), &delayed.id).await?;
    ensure!(state.status == JobStatus::Completed, "{state:?}");
    let events = log(backend.as_ref(), &delayed.id).await?;
    let started = events
        .iter()
        .find(|e| e.kind == EventType::JobStarted)
        .context("never started")?;
    ensure!(started.timestamp >= at, "started before its time");
    ensure!(count(&events, EventType::JobQueued) == 2, "{events:?}");
    let cancelled = log(backend.as_ref(), &cancelled.id).await?;
    ensure!(count(&cancelled, EventType::JobStarted) == 0);
    running.shut_down().await?;
    Ok(())
}
