//! Fleet operations with real `jobwire worker` processes on one Redis:
//! queue limits set with `jobwire queues limit` through a gateway and
//! checked from the jobs' event timestamps (a concurrency cap through a
//! `kill -9`, a rate limit), and a dead-lettered job retried by hand.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use jobwire_core::{Backend, EventType, JobState, JobStatus, NewJob, Timestamp};
use jobwire_testkit::jobs::{log, wait_for};
use jobwire_testkit::RedisServer;
use serde_json::json;

use crate::{as_admin, redis_backend, Jobwire};

fn worker(redis: &RedisServer, name: &str) -> Result<Jobwire> {
    Jobwire::start(
        &["worker"],
        &[
            ("REDIS_URL", redis.url()),
            ("JOBWIRE_WORKER_NAME", name.to_owned()),
            ("JOBWIRE_VISIBILITY_TIMEOUT", "2s".to_owned()),
            ("JOBWIRE_WORKER_CONCURRENCY", "8".to_owned()),
        ],
    )
}

/// A Redis, a backend on it for the test's own reads, and a gateway.
async fn fleet() -> Result<(RedisServer, Arc<dyn Backend>, Jobwire)> {
    let redis = RedisServer::start()?;
    let backend = redis_backend(&redis.url()).await?;
    let gateway = Jobwire::start(&["serve"], &[("REDIS_URL", redis.url())])?;
    gateway
        .wait_for("/readyz", 200, Duration::from_secs(20))
        .await?;
    Ok((redis, backend, gateway))
}

/// `jobwire queues limit ARGS` through `gateway`, as an operator.
fn limit(gateway: &Jobwire, args: &[&str]) -> Result<()> {
    let out = as_admin(gateway, &[&["queues", "limit"], args].concat())?;
    ensure!(out.status.success(), "{out:?}");
    Ok(())
}

/// The worker of `workers` (named `<prefix><index>`) running `job` now, or
/// any job when `job` is `None`: its index and registry entry.
async fn busy_worker(
    backend: &dyn Backend,
    prefix: &str,
    job: Option<&jobwire_core::JobId>,
) -> Result<(usize, jobwire_core::WorkerInfo)> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let busy = backend.workers().await?.into_iter().find(|w| match job {
            Some(job) => w.running.contains(job),
            None => !w.running.is_empty(),
        });
        if let Some(w) = busy {
            return Ok((w.name.trim_start_matches(prefix).parse()?, w));
        }
        if Instant::now() > deadline {
            bail!("no worker ran {job:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn demo_jobs(
    backend: &dyn Backend,
    n: usize,
    params: serde_json::Value,
) -> Result<Vec<JobState>> {
    let mut jobs = Vec::with_capacity(n);
    for _ in 0..n {
        jobs.push(
            backend
                .create_job(NewJob::new("demo", params.clone(), "alice"))
                .await?,
        );
    }
    Ok(jobs)
}

/// Each job's last attempt, from its `job_started` to its end.
async fn runs(
    backend: &dyn Backend,
    jobs: &[JobState],
) -> Result<Vec<(Timestamp, Timestamp, u32)>> {
    let mut runs = Vec::with_capacity(jobs.len());
    for job in jobs {
        let done = wait_for(backend, &job.id, Duration::from_secs(90), |s| {
            s.status.is_terminal()
        })
        .await?;
        ensure!(done.status == JobStatus::Completed, "{done:?}");
        let events = log(backend, &job.id).await?;
        let start = events
            .iter()
            .rev()
            .find(|e| e.kind == EventType::JobStarted)
            .context("never started")?;
        let end = events.last().context("no events")?;
        runs.push((start.timestamp, end.timestamp, done.attempt));
    }
    Ok(runs)
}

/// The most runs that overlap at any moment (an end before a start at the
/// same millisecond: the slot was freed first).
fn most_at_once(runs: &[(Timestamp, Timestamp, u32)]) -> usize {
    let mut edges: Vec<(i64, i8)> = runs
        .iter()
        .flat_map(|(s, e, _)| [(s.unix_millis(), 1), (e.unix_millis(), -1)])
        .collect();
    edges.sort();
    let (mut now, mut most) = (0i64, 0i64);
    for (_, d) in edges {
        now += i64::from(d);
        most = most.max(now);
    }
    most as usize
}

/// `scan ≤ 2`-style cap: 100 jobs queued, three workers of concurrency 8,
/// and one of them killed with SIGKILL while it runs a job. Never more
/// than 2 run at once (from the event timestamps); the dead worker's slot
/// comes back when its lease lapses, and its job completes on attempt 2.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_concurrency_cap_holds_across_workers_through_a_kill() -> Result<()> {
    let (redis, backend, gateway) = fleet().await?;
    limit(&gateway, &["demo", "--concurrency", "2"])?;
    // One long job, claimed first, for the kill: the registry shows what a
    // worker runs as of its last heartbeat, so a short job could be over
    // by the time the kill lands (it then completes on attempt 1).
    let long = backend
        .create_job(
            NewJob::new("demo", json!({"steps": 100, "delay_ms": 30}), "alice").at_priority(9),
        )
        .await?;
    let mut jobs = demo_jobs(backend.as_ref(), 100, json!({"steps": 3, "delay_ms": 30})).await?;
    jobs.push(long.clone());
    let mut workers = Vec::new();
    for i in 0..3 {
        workers.push(worker(&redis, &format!("w{i}"))?);
    }
    // Kill the worker running the long job (the registry says which).
    let (index, _) = busy_worker(backend.as_ref(), "w", Some(&long.id)).await?;
    workers[index].signal("KILL")?;
    workers[index].wait_exit(Duration::from_secs(5))?;

    let runs = runs(backend.as_ref(), &jobs).await?;
    let most = most_at_once(&runs);
    ensure!(most <= 2, "{most} jobs ran at once under a cap of 2");
    ensure!(
        most == 2,
        "the cap was never reached ({most}): the test proves nothing"
    );
    let done = backend.job(&long.id).await?;
    ensure!(
        done.status == JobStatus::Completed && done.attempt == 2,
        "the killed worker's job: {done:?}"
    );
    Ok(())
}

/// 5 starts a second at most: 20 jobs through two workers start no faster,
/// measured from the `job_started` timestamps. The slot is taken a moment
/// before the event is written, and that moment differs between the two
/// worker processes on a loaded host, so a 700 ms window holds at most 5
/// (unlimited, all 20 would start within a few tens of ms).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limit_spaces_the_starts_across_workers() -> Result<()> {
    let (redis, backend, gateway) = fleet().await?;
    limit(&gateway, &["demo", "--rate", "5/1s"])?;
    let jobs = demo_jobs(backend.as_ref(), 20, json!({"steps": 1, "delay_ms": 0})).await?;
    let _workers = [worker(&redis, "r0")?, worker(&redis, "r1")?];
    let mut starts: Vec<i64> = runs(backend.as_ref(), &jobs)
        .await?
        .iter()
        .map(|(s, ..)| s.unix_millis())
        .collect();
    starts.sort();
    for (i, pair) in starts.windows(6).enumerate() {
        ensure!(
            pair[5] - pair[0] >= 700,
            "6 starts within {} ms (from start {i}): {starts:?}",
            pair[5] - pair[0]
        );
    }
    let span = starts[starts.len() - 1] - starts[0];
    ensure!(span >= 2_400, "20 starts at 5/s took only {span} ms");
    Ok(())
}

/// A job whose worker dies on its only attempt is dead-lettered by
/// another worker's reaper; `jobwire retry` gives it a new attempt on the
/// same job, which completes: one history, ids consecutive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_lettered_job_is_retried_by_hand() -> Result<()> {
    let (redis, backend, gateway) = fleet().await?;
    let mut new = NewJob::new("demo", json!({"steps": 20, "delay_ms": 100}), "alice");
    new.retry.max_attempts = Some(1);
    let job = backend.create_job(new).await?;
    let mut workers = [worker(&redis, "d0")?, worker(&redis, "d1")?];
    let running = wait_for(backend.as_ref(), &job.id, Duration::from_secs(20), |s| {
        s.status == JobStatus::Running
    })
    .await?;
    ensure!(running.attempt == 1);
    let (index, _) = busy_worker(backend.as_ref(), "d", Some(&job.id)).await?;
    workers[index].signal("KILL")?;
    workers[index].wait_exit(Duration::from_secs(5))?;
    let failed = wait_for(backend.as_ref(), &job.id, Duration::from_secs(30), |s| {
        s.status.is_terminal()
    })
    .await?;
    ensure!(failed.status == JobStatus::Failed, "{failed:?}");

    let out = as_admin(&gateway, &["retry", job.id.as_str()])?;
    ensure!(out.status.success(), "{out:?}");
    let done = wait_for(backend.as_ref(), &job.id, Duration::from_secs(30), |s| {
        s.status.is_terminal()
    })
    .await?;
    ensure!(
        done.status == JobStatus::Completed && done.attempt == 2,
        "{done:?}"
    );
    // `log` checks the ids are consecutive.
    let events = log(backend.as_ref(), &job.id).await?;
    let kinds: Vec<&EventType> = events.iter().map(|e| &e.kind).collect();
    let failed_at = kinds
        .iter()
        .position(|k| **k == EventType::JobFailed)
        .context("never failed")?;
    ensure!(
        kinds[failed_at + 1] == &EventType::JobRetrying
            && kinds[failed_at + 2] == &EventType::JobQueued
            && kinds.last() == Some(&&EventType::JobCompleted),
        "{kinds:?}"
    );
    Ok(())
}
