//! Workers through Redis losing acknowledged writes: the job's end and the
//! queue ack are lost, so the job is `running` again with its entry leased
//! to a worker that finished it long ago. That worker settles its orphan
//! at its next reap and runs the job again (after a `job_retrying`, under
//! a new epoch): the job is never left running with no worker, and never
//! finishes twice without a retry between.

use std::time::Duration;

use anyhow::{ensure, Result};
use jobwire_core::{EventType, JobStatus, NewJob};
use jobwire_testkit::lost_writes::Snapshot;
use jobwire_testkit::{Persistence, RedisServer};
use serde_json::json;

use crate::support::{self, config, count, log, wait_finished, wait_for, Running};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_whose_end_was_lost_runs_again_without_waiting_for_the_lease() -> Result<()> {
    let mut server = RedisServer::start_private(Persistence::Aof)?;
    let backend = support::backend(&server).await?;
    // A long visibility timeout: another worker's reaper would wait a
    // minute; the orphan check runs at every reap (every 10 s here).
    let c = jobwire_worker::WorkerConfig {
        visibility_timeout: Duration::from_secs(60),
        ..config("w1")
    };
    let running = Running::start(support::builtin(&backend, c).build()?);
    let job = backend
        .create_job(NewJob::new(
            "demo",
            json!({"steps": 100, "delay_ms": 20}),
            "alice",
        ))
        .await?;
    wait_for(backend.as_ref(), &job.id, Duration::from_secs(20), |s| {
        s.status == JobStatus::Running && s.progress > 0.0
    })
    .await?;
    let snapshot = Snapshot::take(&server).await?;
    // (The job must still have been running when the snapshot was taken:
    // 100 steps of 20 ms leave time on a loaded machine.)
    let done = wait_finished(backend.as_ref(), &job.id).await?;
    ensure!(done.status == JobStatus::Completed, "{done:?}");

    // Its completion and its ack are lost; the worker is idle.
    snapshot.lose_writes_since(&mut server).await?;

    let again = wait_for(backend.as_ref(), &job.id, Duration::from_secs(30), |s| {
        s.status == JobStatus::Completed
    })
    .await?;
    ensure!(again.attempt == 2, "{again:?}");
    ensure!(again.epoch != done.epoch, "ran again under the old epoch");
    let events = log(backend.as_ref(), &job.id).await?;
    ensure!(count(&events, EventType::JobRetrying) == 1, "{events:?}");
    ensure!(count(&events, EventType::JobCompleted) == 1, "{events:?}");
    jobwire_testkit::jobs::ensure_queue_empty(backend.as_ref()).await?;
    running.shut_down().await?;
    Ok(())
}
