//! Jobs that end early: cancelled, taken over from a stalled (zombie)
//! worker, or released by a worker shutting down.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use jobwire_core::{CancelOutcome, EventType, JobStatus, NewEvent, NewJob, QueueStats, Reclaimed};
use jobwire_testkit::RedisServer;
use jobwire_worker::{handler_fn, JobOutcome, Reporter, StopReason, Stopped, Worker};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use jobwire_testkit::jobs::{create_demo, ensure_queue_empty, wait_progressing};

use crate::support::{self, attempt_of, builtin, config, count, log, wait_finished, Running};

/// A job cancelled while queued never starts; a running one stops at its
/// next report and ends `cancelled`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_and_running_jobs_can_be_cancelled() -> Result<()> {
    let server = RedisServer::start()?;
    let backend = support::backend(&server).await?;
    let queued = create_demo(backend.as_ref(), json!({"steps": 2, "delay_ms": 0})).await?;
    ensure!(backend.cancel(&queued.id).await? == CancelOutcome::Cancelled);

    let running = Running::start(builtin(&backend, config("w1")).build()?);
    let long = create_demo(backend.as_ref(), json!({"steps": 100_000, "delay_ms": 10})).await?;
    wait_progressing(backend.as_ref(), &long.id).await?;
    ensure!(backend.cancel(&long.id).await? == CancelOutcome::Requested);
    let state = wait_finished(backend.as_ref(), &long.id).await?;
    ensure!(state.status == JobStatus::Cancelled, "{state:?}");
    let events = log(backend.as_ref(), &long.id).await?;
    ensure!(
        events.last().map(|e| &e.kind) == Some(&EventType::JobCancelled),
        "{events:?}"
    );

    let events = log(backend.as_ref(), &queued.id).await?;
    let kinds: Vec<&str> = events.iter().map(|e| e.kind.as_str()).collect();
    ensure!(kinds == ["job_queued", "job_cancelled"], "{kinds:?}");
    let stats = running.shut_down().await?.stats().snapshot();
    ensure!(stats.cancelled == 1 && stats.completed == 0, "{stats:?}");
    ensure_queue_empty(backend.as_ref()).await?;
    Ok(())
}

/// A reporter whose job was taken over by another attempt cannot publish:
/// its events are refused as stale, and it reports itself stopped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reporter_of_a_superseded_attempt_is_fenced() -> Result<()> {
    let server = RedisServer::start()?;
    let backend = support::backend(&server).await?;
    let job = create_demo(backend.as_ref(), json!({})).await?;
    backend
        .claim("w1", &["demo".to_owned()], 1, Duration::from_millis(100))
        .await?;
    backend
        .publish(&job.id, &[NewEvent::new(EventType::JobStarted, json!({}))])
        .await?;
    let reporter = Reporter::new(backend.clone(), job.id.clone(), 1, 100);
    reporter.progress(1, 3, "").await?;
    reporter.flush().await?;

    tokio::time::sleep(Duration::from_millis(300)).await;
    let taken = backend
        .take_over_idle("w2", &["demo".to_owned()], Duration::from_millis(200), 10)
        .await?;
    let taken = jobwire_core::settle::settle_all(&*backend, &*backend, taken, &|_| 5).await?;
    ensure!(
        matches!(taken.as_slice(), [Reclaimed::Retry { attempt: 2, .. }]),
        "{taken:?}"
    );

    reporter.progress(2, 3, "").await?;
    let flushed = reporter.flush().await;
    ensure!(
        matches!(flushed, Err(Stopped(StopReason::Lost(_)))),
        "{flushed:?}"
    );
    let again = reporter.progress(3, 3, "").await;
    ensure!(
        matches!(again, Err(Stopped(StopReason::Lost(_)))),
        "{again:?}"
    );
    let kinds: Vec<String> = log(backend.as_ref(), &job.id)
        .await?
        .iter()
        .map(|e| e.kind.to_string())
        .collect();
    ensure!(
        kinds == ["job_queued", "job_started", "progress", "job_retrying"],
        "{kinds:?}"
    );
    Ok(())
}

/// A worker whose whole process stalls past the visibility timeout loses its
/// job to another worker; when it wakes up, nothing it reports is
/// published, and it stops that job without ending or acking it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_worker_is_fenced_and_stops_its_job() -> Result<()> {
    let server = RedisServer::start()?;
    let backend = support::backend(&server).await?;
    let stall = || {
        handler_fn(|job| async move {
            job.reporter().progress(1, 2, "before").await?;
            job.reporter().flush().await?;
            if job.attempt() == 1 {
                // Freezes the stalled worker's whole runtime, lease keeper
                // included, as a long GC pause or SIGSTOP would. Long
                // enough past the 1 s visibility timeout that the rescuer
                // takes over first even on a loaded host.
                std::thread::sleep(Duration::from_secs(5));
            }
            job.reporter().progress(2, 2, "after").await?;
            job.reporter().flush().await?;
            Ok(JobOutcome::done())
        })
    };
    let fast = |name: &str| {
        let mut c = config(name);
        c.visibility_timeout = Duration::from_secs(1);
        c
    };

    // The stalled worker runs alone on a one-thread runtime of its own.
    let (url, stop_a) = (server.url(), CancellationToken::new());
    let (config_a, stop) = (fast("stalled"), stop_a.clone());
    let thread_a = std::thread::spawn(move || -> Result<Worker> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        rt.block_on(async move {
            let backend = support::backend_at(&url).await?;
            let worker = Worker::builder(backend)
                .config(config_a)
                .handler("stall", stall())
                .build()?;
            worker.run(stop).await;
            Ok(worker)
        })
    });
    let job = backend
        .create_job(NewJob::new("stall", json!({}), "alice"))
        .await?;
    wait_progressing(backend.as_ref(), &job.id).await?;

    let b = Running::start(
        Worker::builder(Arc::clone(&backend))
            .config(fast("rescuer"))
            .handler("stall", stall())
            .build()?,
    );
    let state = wait_finished(backend.as_ref(), &job.id).await?;
    ensure!(
        state.status == JobStatus::Completed && state.attempt == 2,
        "{state:?}"
    );
    // Let the stalled worker wake up and try.
    tokio::time::sleep(Duration::from_secs(5)).await;
    stop_a.cancel();
    let a = thread_a
        .join()
        .map_err(|_| anyhow::anyhow!("worker thread panicked"))??;
    let b = b.shut_down().await?;

    let events = log(backend.as_ref(), &job.id).await?;
    let retry = events
        .iter()
        .position(|e| e.kind == EventType::JobRetrying)
        .context("no job_retrying")?;
    ensure!(
        events[retry..].iter().all(|e| attempt_of(e) == 2),
        "attempt 1 published after it was superseded: {events:#?}"
    );
    ensure!(count(&events, EventType::JobCompleted) == 1, "{events:#?}");
    ensure!(count(&events, EventType::JobStarted) == 2, "{events:#?}");
    let (a, b) = (a.stats().snapshot(), b.stats().snapshot());
    ensure!(a.lost == 1 && a.completed == 0, "stalled worker: {a:?}");
    ensure!(b.reclaimed == 1 && b.completed == 1, "rescuer: {b:?}");
    ensure_queue_empty(backend.as_ref()).await?;
    Ok(())
}

/// On shutdown a worker lets short jobs finish and, at the deadline, hands
/// long ones back to the queue with `job_retrying`; another worker finishes
/// them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_finishes_short_jobs_and_releases_long_ones() -> Result<()> {
    let server = RedisServer::start()?;
    let backend = support::backend(&server).await?;
    // The deadline leaves the short job (0.4 s) ample time on a loaded host;
    // the long one (4.5 s) cannot make it.
    let mut c = config("leaving");
    c.shutdown_timeout = Duration::from_secs(3);
    let a = Running::start(builtin(&backend, c).build()?);
    let short = create_demo(backend.as_ref(), json!({"steps": 4, "delay_ms": 100})).await?;
    let long = create_demo(backend.as_ref(), json!({"steps": 150, "delay_ms": 30})).await?;
    for id in [&short.id, &long.id] {
        wait_progressing(backend.as_ref(), id).await?;
    }
    let a = a.shut_down().await?.stats().snapshot();
    ensure!(a.completed == 1 && a.released == 1, "{a:?}");
    ensure!(backend.job(&short.id).await?.status == JobStatus::Completed);
    let released = backend.job(&long.id).await?;
    ensure!(
        released.status == JobStatus::Queued && released.attempt == 2,
        "{released:?}"
    );
    ensure!(
        released
            .message
            .as_deref()
            .is_some_and(|m| m.contains("shut down")),
        "{released:?}"
    );
    ensure!(
        backend.queue_stats().await?
            == QueueStats {
                waiting: 1,
                pending: 0,
                scheduled: 0
            },
        "{:?}",
        backend.queue_stats().await?
    );

    let b = Running::start(builtin(&backend, config("arriving")).build()?);
    let state = wait_finished(backend.as_ref(), &long.id).await?;
    ensure!(
        state.status == JobStatus::Completed && state.attempt == 2,
        "{state:?}"
    );
    let b = b.shut_down().await?.stats().snapshot();
    ensure!(b.completed == 1 && b.reclaimed == 0, "{b:?}");
    Ok(())
}

/// A job whose workers keep dying is failed by a reaper once it has used
/// its attempts (dead letter), and its entry leaves the queue.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_past_its_attempts_is_dead_lettered_by_the_reaper() -> Result<()> {
    let server = RedisServer::start()?;
    let backend = support::backend(&server).await?;
    let job = create_demo(backend.as_ref(), json!({})).await?;
    // A worker that claims the job and dies before renewing its lease.
    let taken = backend
        .claim("ghost", &["demo".to_owned()], 1, Duration::from_millis(100))
        .await?;
    ensure!(taken.len() == 1, "{taken:?}");
    let mut c = config("reaper");
    c.visibility_timeout = Duration::from_secs(1);
    c.max_attempts = 1;
    let reaper = Running::start(builtin(&backend, c).build()?);
    let state = wait_finished(backend.as_ref(), &job.id).await?;
    ensure!(state.status == JobStatus::Failed, "{state:?}");
    ensure!(
        state
            .error
            .as_deref()
            .is_some_and(|e| e.contains("gave up after 1 attempt:")),
        "{state:?}"
    );
    let last = log(backend.as_ref(), &job.id)
        .await?
        .pop()
        .context("empty log")?;
    ensure!(last.data["dead_letter"] == json!(true), "{last:?}");
    let stats = reaper.shut_down().await?.stats().snapshot();
    ensure!(
        stats.dead_lettered == 1 && stats.completed == 0,
        "{stats:?}"
    );
    ensure_queue_empty(backend.as_ref()).await?;
    Ok(())
}
