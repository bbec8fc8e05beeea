//! Queue controls with real `jobwire worker` processes on one Redis:
//! delayed jobs promoted once each through a `kill -9`, and priority order
//! under a backlog.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use jobwire_core::job::lowest_first;
use jobwire_core::{Backend, EventType, JobState, JobStatus, NewJob, Timestamp};
use jobwire_testkit::jobs::{ensure_queue_empty, log, wait_for};
use jobwire_testkit::RedisServer;
use serde_json::json;

use crate::{redis_backend, Jobwire};

fn start_worker(redis: &RedisServer, name: &str, concurrency: u32) -> Result<Jobwire> {
    Jobwire::start(
        &["worker"],
        &[
            ("REDIS_URL", redis.url()),
            ("JOBWIRE_WORKER_NAME", name.to_owned()),
            ("JOBWIRE_VISIBILITY_TIMEOUT", "2s".to_owned()),
            ("JOBWIRE_WORKER_CONCURRENCY", concurrency.to_string()),
        ],
    )
}

async fn wait_all_finished(backend: &dyn Backend, jobs: &[JobState]) -> Result<Vec<JobState>> {
    let mut finished = Vec::with_capacity(jobs.len());
    for job in jobs {
        finished.push(
            wait_for(backend, &job.id, Duration::from_secs(60), |s| {
                s.status.is_terminal()
            })
            .await?,
        );
    }
    Ok(finished)
}

/// 1,000 jobs delayed 0.5 to 3 s, three workers (each also promoting), one
/// killed with SIGKILL in the middle: every job is queued exactly once
/// (two `job_queued` events: its creation and its promotion), starts no
/// sooner than its time, and completes; ids stay consecutive (checked by
/// `log`), and nothing is left on the schedule or in the queue.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_delayed_jobs_are_promoted_once_each_through_a_kill() -> Result<()> {
    let redis = RedisServer::start()?;
    let backend: Arc<dyn Backend> = redis_backend(&redis.url()).await?;
    let start = Timestamp::now();
    let mut jobs = Vec::with_capacity(1000);
    for i in 0..1000u64 {
        let at = start.plus(Duration::from_millis(500 + i * 5 / 2));
        let new = NewJob::new("demo", json!({"steps": 1, "delay_ms": 0}), "alice").not_before(at);
        jobs.push(backend.create_job(new).await?);
    }
    ensure!(jobs.iter().all(|j| j.status == JobStatus::Scheduled));
    let mut workers = Vec::new();
    for i in 0..3 {
        workers.push(start_worker(&redis, &format!("w{i}"), 8)?);
    }
    // Half-way through the promotions.
    tokio::time::sleep(Duration::from_millis(1700)).await;
    workers[0].signal("KILL")?;
    workers[0].wait_exit(Duration::from_secs(5))?;

    let finished = wait_all_finished(backend.as_ref(), &jobs).await?;
    for (job, state) in jobs.iter().zip(&finished) {
        ensure!(state.status == JobStatus::Completed, "{state:?}");
        let events = log(backend.as_ref(), &job.id).await?;
        let queued: Vec<_> = events
            .iter()
            .filter(|e| e.kind == EventType::JobQueued)
            .collect();
        ensure!(
            queued.len() == 2,
            "queued {} times: {events:?}",
            queued.len()
        );
        let run_at = job.run_at.context("no run_at")?;
        ensure!(queued[1].timestamp >= run_at, "promoted early: {events:?}");
        let first_start = events
            .iter()
            .find(|e| e.kind == EventType::JobStarted)
            .context("never started")?;
        ensure!(first_start.timestamp >= run_at, "started early");
    }
    ensure!(backend.due(Timestamp::now(), 10).await?.is_empty());
    ensure_queue_empty(backend.as_ref()).await?;
    ensure!(backend.queue_stats().await?.scheduled == 0);
    Ok(())
}

/// A backlog of 25 jobs of mixed priorities, one worker taking one at a
/// time: they start highest priority first, except that every tenth claim
/// takes the lowest waiting priority (the starvation rule).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_runs_in_priority_order() -> Result<()> {
    let redis = RedisServer::start()?;
    let backend: Arc<dyn Backend> = redis_backend(&redis.url()).await?;
    let mut jobs = Vec::new();
    for i in 0..25u8 {
        let priority = (i * 7) % 10;
        let new =
            NewJob::new("demo", json!({"steps": 1, "delay_ms": 0}), "alice").at_priority(priority);
        jobs.push(backend.create_job(new).await?);
    }
    let _worker = start_worker(&redis, "solo", 1)?;
    let mut finished = wait_all_finished(backend.as_ref(), &jobs).await?;
    finished.sort_by_key(|s| s.started_at);
    let order: Vec<u8> = finished.iter().map(|s| s.priority).collect();
    let mut waiting: Vec<u8> = order.clone();
    for (claim, &p) in order.iter().enumerate() {
        let expected = if lowest_first(claim as u64) {
            waiting.iter().min()
        } else {
            waiting.iter().max()
        }
        .copied();
        ensure!(
            Some(p) == expected,
            "claim {claim} took priority {p}, not {expected:?}: {order:?}"
        );
        if let Some(at) = waiting.iter().position(|&w| w == p) {
            waiting.remove(at);
        }
    }
    Ok(())
}
